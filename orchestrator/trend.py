"""`cutover trend`: the matrices of many nights side by side, and their flakes.

Each recorded matrix (`matrices`) gives, per row of its detection table (a build, and
its mode or profile when the matrix varies them), a point: the detection rate (a bug
build: the share of its judged runs found invalid; the fixed build: the share found
valid), and the median time into the run of the first violation. Runs without a
verdict (harness errors, aborted runs) are not judged; the point counts them apart.

A **flake** is the same test giving two verdicts: the same build, seed and project
revision, and the same config otherwise (`tasks.config_digest`), judged valid in one
matrix and invalid (or unknown) in another. A simulated seed is deterministic, so a
flake there is a bug of the simulator or of the code's determinism, worth a look too.
Matrices without a recorded revision (not run from a git checkout) have no flakes.
"""
from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from . import config_check, store
from .matrix import MatrixSpec, is_fixed, rows_of
from .run import RunError
from .tasks import config_digest

JUDGED = ("valid", "invalid", "unknown")


@dataclass
class Point:
    """One row of one matrix's table, as a point of the trend."""

    matrix: str
    started: str
    revision: str | None
    label: str
    judged: int
    hits: int  # a bug build: invalid runs; the fixed build: valid ones
    errors: int
    median_s: float | None

    @property
    def rate(self) -> float | None:
        return self.hits / self.judged if self.judged else None


@dataclass
class Flake:
    label: str
    seed: int
    revision: str
    verdicts: list[tuple[str, str, str]]  # (matrix, verdict, run id or "")


@dataclass
class TrendData:
    matrices: list[dict[str, Any]] = field(default_factory=list)
    series: dict[str, list[Point]] = field(default_factory=dict)  # label -> points, in time
    flakes: list[Flake] = field(default_factory=list)


def trend_data(db: sqlite_utils.Database, builds: Iterable[str] | None = None,
               last: int | None = None) -> TrendData:
    """The trend of the recorded matrices (the `last` ones), restricted to rows whose
    label or build is in `builds`."""
    want = set(builds) if builds else None
    ms = store.matrices(db)
    if last:
        ms = ms[-last:]
    out = TrendData(matrices=ms)
    for m in ms:
        for label, outs in rows_of(db, m):
            if want is not None and label not in want and label.split(" ")[0] not in want:
                continue
            judged = [o for o in outs if o.verdict in JUDGED]
            good = "valid" if is_fixed(label) else "invalid"
            times = [o.first[2] / 1e9 for o in judged if o.verdict == "invalid" and o.first
                     and isinstance(o.first[2], int | float)]
            out.series.setdefault(label, []).append(Point(
                m["id"], m.get("started") or "", m.get("revision"), label, len(judged),
                sum(o.verdict == good for o in judged), len(outs) - len(judged),
                statistics.median(times) if times else None))
    out.flakes = flakes(db, ms, want)
    return out


def flakes(db: sqlite_utils.Database, ms: list[Mapping[str, Any]],
           want: set[str] | None = None) -> list[Flake]:
    """Same build, seed, revision and config; different verdicts (judged ones only)."""
    seen: dict[tuple[str, int, str, str], list[tuple[str, str, str]]] = {}
    for m in ms:
        rev = m.get("revision")
        if not rev:
            continue
        spec = MatrixSpec.from_dict(m["config"])
        done = config_check.task_records(db, m["id"])
        runs = store.runs_by_id(db, [r for t in done.values() for r in t["runs"]])
        for task in spec.tasks():
            rec = done.get(task.key)
            label = spec.label(task)
            if rec is None or rec["status"] != "done" or (
                    want is not None and label not in want and task.build not in want):
                continue
            try:
                digest = config_digest(task, spec.base)
            except RunError:
                continue
            if task.kind == "sim":
                got = [(d.get("seed"), d.get("verdict"), d.get("run") or "")
                       for d in rec["detail"].get("seeds") or []]
            else:
                r = runs.get(rec["runs"][0]) if rec["runs"] else None
                got = [(task.seed, r["verdict"], r["id"])] if r else []
            for seed, verdict, rid in got:
                if verdict in JUDGED and seed is not None:
                    seen.setdefault((label, int(seed), rev, digest), []).append(
                        (m["id"], verdict, rid))
    return [Flake(label, seed, rev, vs) for (label, seed, rev, _d), vs in sorted(seen.items())
            if len({v for _m, v, _r in vs}) > 1]


def _pct(p: Point) -> str:
    if not p.judged:
        return "-"
    what = f"{p.hits}/{p.judged}" + (" valid" if is_fixed(p.label) else "")
    return f"{what} ({p.hits / p.judged:.0%})"


def trend_lines(data: TrendData) -> list[str]:
    """What `cutover trend` prints."""
    if not data.matrices:
        return ["no matrices recorded yet (`cutover matrix` records one)"]
    head = (f"{'build':<28} {'matrix':<22} {'started':<16} {'revision':<12} "
            f"{'detected':>16} {'median s':>8}  errors")
    lines = [head, "-" * len(head)]
    for label, points in data.series.items():
        for i, p in enumerate(points):
            med = "-" if p.median_s is None else f"{p.median_s:.1f}"
            lines.append(f"{label if i == 0 else '':<28} {p.matrix:<22} "
                         f"{p.started.replace('T', ' ')[:16]:<16} {(p.revision or '-')[:12]:<12} "
                         f"{_pct(p):>16} {med:>8}  {p.errors or ''}")
    lines.append("")
    if not data.flakes:
        lines.append(f"flakes: none in {len(data.matrices)} matrices")
    else:
        lines.append(f"flakes: {len(data.flakes)} (same build, seed and revision; "
                     f"different verdicts)")
        for f in data.flakes:
            vs = ", ".join(f"{v} in {m}" + (f" (run {r})" if r else "") for m, v, r in f.verdicts)
            lines.append(f"  {f.label} seed {f.seed} at {f.revision[:12]}: {vs}")
    return lines
