"""What a linearizability check returns (verdicts, steps, results) and its bounds.

Kept apart from `checker.lin_search` on purpose: that module may be compiled (mypyc,
`docs/checker.md`, "The compiled path"), and these are the objects the rest of the
project builds, pickles, extends and inspects. As plain Python classes they behave the
same whichever path searched.
"""
from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .history import Op


class Verdict(StrEnum):
    """The outcome of a check; the order of badness is invalid > unknown > valid."""

    VALID = "valid"
    INVALID = "invalid"
    UNKNOWN = "unknown"

    @property
    def rank(self) -> int:
        """Badness; the one ranking of verdicts (checks, runs, partitions, pages)."""
        return {"valid": 0, "unknown": 1, "invalid": 2}[self.value]

    @property
    def exit_code(self) -> int:
        return {"valid": 0, "invalid": 1, "unknown": 2}[self.value]

    @staticmethod
    def rank_of(value: str) -> int:
        """The rank of a stored verdict string; one this build does not know ranks as
        `unknown` (it is not a pass, and not a proven violation either)."""
        try:
            return Verdict(value).rank
        except ValueError:
            return Verdict.UNKNOWN.rank

    @staticmethod
    def worst(verdicts: list[Verdict]) -> Verdict:
        return max(verdicts, key=lambda v: v.rank, default=Verdict.VALID)


@dataclass
class Step:
    """One op placed in a linearization, with the model state right after it."""

    op: Op
    state: Any
    unknown_chain: bool = False  # an indeterminate op applied to enable the next one


@dataclass
class PartitionResult:
    """The verdict for one independent part of the history (e.g. one key)."""

    verdict: Verdict
    ops: list[Op]
    linearization: list[Step] = field(default_factory=list)  # full, or the longest prefix
    blocked: list[tuple[Op, bool]] = field(default_factory=list)  # (op, illegal right there)
    reason: str = ""
    configurations: int = 0
    key: Any = None

    @property
    def valid(self) -> bool | str:
        return _as_valid(self.verdict)


@dataclass
class CheckResult:
    """The overall verdict is the worst of the partitions."""

    verdict: Verdict
    partitions: list[PartitionResult]
    model: str
    seconds: float = 0.0

    @property
    def valid(self) -> bool | str:
        return _as_valid(self.verdict)

    def failures(self) -> list[PartitionResult]:
        return [p for p in self.partitions if p.verdict is not Verdict.VALID]


def _as_valid(v: Verdict) -> bool | str:
    return True if v is Verdict.VALID else False if v is Verdict.INVALID else "unknown"


class _Abort(Exception):
    """Thrown into a search (or raised in it) to stop it with `unknown`."""


def rss_mb() -> float:
    """This process's resident memory now, in MB (its peak where /proc is missing).
    The search's memory grows with the depth of its path (a frame per linearized op),
    so a bound on configurations alone does not bound memory; this does."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE / 1e6
    except (OSError, ValueError, IndexError):  # not Linux: the peak is the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


DEFAULT_MAX_CONFIGS = 3_000_000
