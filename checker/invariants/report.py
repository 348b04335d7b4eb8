"""What the invariant checker hands back: one result per invariant, one report per run.

The shapes here are stored (the `checks` table keeps `CutoverReport.to_dict()`) and read
by the UI, `show` and `cutover check` on runs stored by older builds, so a field is
added, never renamed. Every invariant module fills its result through one `Collector`,
so all seven sort, cap and count their violations the same way.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

INVARIANTS = {
    "I1": "no cleartext above the cutover",
    "I2": "one cutover",
    "I3": "no halts",
    "I4": "convergence",
    "I5": "nonce uniqueness",
    "I6": "keys precede use",
    "I7": "rotation takes effect",
}
MAX_LISTED = 200  # violations kept per invariant (the count is always exact)


class LogRow(NamedTuple):
    """One durable log entry as scanned, for the results database (`log_entries`).

    `opcode` is the cleartext ``payload[0]`` (of the unwrapped payload for a wrapped
    entry), None for no-ops and for entries that do not open.
    """

    node: str
    index: int
    term: int
    opcode: int | None
    wrapped: bool
    key_id: int | None


@dataclass
class InvariantResult:
    """The verdict on one invariant: the first violation and per-node details."""

    name: str
    title: str
    valid: bool = True
    first_violation: dict[str, Any] | None = None
    violations: list[dict[str, Any]] = field(default_factory=list)  # at most MAX_LISTED
    violation_count: int = 0
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    unknown: str | None = None  # why a violation-free invariant is still not shown to hold

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "valid": self.valid,
            "unknown": self.unknown,
            "first_violation": self.first_violation,
            "violation_count": self.violation_count,
            "violations": self.violations,
            "nodes": self.nodes,
            "summary": self.summary,
        }


@dataclass
class CutoverReport:
    """Everything `check_cutover` found; `to_dict()` is JSON-serializable."""

    cutover: int
    cutover_time_ns: int | None
    results: dict[str, InvariantResult]
    rows: list[LogRow]
    nodes: dict[str, dict[str, Any]]
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors and all(r.valid for r in self.results.values())

    @property
    def unknown(self) -> str | None:
        """Why a report without violations still does not show the invariants hold."""
        if self.errors:
            return self.errors[0]
        return next((f"{r.name}: {r.unknown}" for r in self.results.values() if r.unknown),
                    None)

    def __getitem__(self, name: str) -> InvariantResult:
        return self.results[name]

    def first_violation(self) -> tuple[str, dict[str, Any]] | None:
        """(invariant, violation) of the first failing invariant, in I1..I7 order."""
        for name, r in self.results.items():
            if r.first_violation is not None:
                return name, r.first_violation
        return None

    def to_dict(self, *, include_rows: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "valid": self.valid,
            "cutover": self.cutover,
            "cutover_time_ns": self.cutover_time_ns,
            "invariants": {k: r.to_dict() for k, r in self.results.items()},
            "nodes": self.nodes,
            "errors": list(self.errors),
            "notes": list(self.notes),
        }
        if include_rows:
            out["log_entries"] = [r._asdict() for r in self.rows]
        return out


Violation = dict[str, Any]


class Collector:
    """One invariant's findings while it is checked; `finish` turns them into its result.

    `found` stays open until then because I1 moves findings out again (a deposed
    leader's tail is a warning, not a violation)."""

    def __init__(self, name: str) -> None:
        self.result = InvariantResult(name, INVARIANTS[name])
        self.found: list[Violation] = []

    def add(self, node: str | None, index: int | None, term: int | None,
            opcode: int | str | None, reason: str, **extra: Any) -> None:
        v: Violation = {"node": node, "index": index, "term": term, "opcode": opcode,
                        "reason": reason}
        v.update({k: x for k, x in extra.items() if x is not None})
        self.found.append(v)

    def finish(self, order: Callable[[Violation], Any] | None = None) -> InvariantResult:
        def default(v: Violation) -> tuple[Any, ...]:
            i = v.get("index")
            return (i if isinstance(i, int) else float("inf"), v.get("node") or "")

        self.found.sort(key=order or default)
        r = self.result
        r.violation_count = len(self.found)
        r.valid = not self.found
        r.violations = self.found[:MAX_LISTED]
        r.first_violation = self.found[0] if self.found else None
        return r
