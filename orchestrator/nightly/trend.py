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

from orchestrator import store
from orchestrator.nightly import config_check
from orchestrator.nightly.matrix import MatrixSpec, is_fixed, rows_of
from orchestrator.nightly.tasks import config_digest
from orchestrator.run.config import RunError

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
class HuntPoint:
    """One `cutover hunt`: its findings, each with its real confirmations."""

    hunt: str
    started: str
    build: str
    seeds: int | None
    exit_code: int | None
    findings: list[dict[str, Any]]  # kind, signature, confirmed, attempts, gap (bool)


@dataclass
class TrendData:
    matrices: list[dict[str, Any]] = field(default_factory=list)
    series: dict[str, list[Point]] = field(default_factory=dict)  # label -> points, in time
    flakes: list[Flake] = field(default_factory=list)
    hunts: list[HuntPoint] = field(default_factory=list)  # oldest first

    def signatures(self) -> list[tuple[str, int, int, int, int]]:
        """Per finding signature over the hunts: (signature, hunts that found it, real
        runs that confirmed it, real runs made, fidelity gaps), most often found first."""
        acc: dict[str, list[int]] = {}
        for h in self.hunts:
            for f in h.findings:
                a = acc.setdefault(f["signature"] or f["kind"], [0, 0, 0, 0])
                a[0] += 1
                a[1] += f["confirmed"]
                a[2] += f["attempts"]
                a[3] += bool(f["gap"])
        return sorted(((k, *v) for k, v in acc.items()), key=lambda r: (-r[1], r[0]))


def hunt_points(db: sqlite_utils.Database, last: int | None = None) -> list[HuntPoint]:
    """The recorded hunts, oldest first (the `last` ones)."""
    out = []
    for h in reversed(store.hunts(db)):
        cfg = (h.get("config") or {}).get("run") or {} if isinstance(h.get("config"), dict) \
            else {}
        runs = store.hunt_runs(db, h["id"])
        fs = [{"kind": f.get("kind"), "signature": f.get("signature") or "",
               "confirmed": int(f.get("confirmed") or 0),
               "attempts": sum(r.get("finding") == f["finding"] for r in runs),
               "gap": bool(f.get("gap"))} for f in store.hunt_findings(db, h["id"])]
        out.append(HuntPoint(h["id"], h.get("started") or "",
                             ",".join(cfg.get("bugs") or []) or str(cfg.get("profile")
                                                                     or "fixed"),
                             ((h.get("detail") or {}).get("search") or {}).get("seeds"),
                             h.get("exit_code"), fs))
    return out[-last:] if last else out


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
    out.hunts = [h for h in hunt_points(db, last)
                 if want is None or h.build in want or any(b in want for b in h.build.split(","))]
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
            if task.kind == "hunt":
                continue  # a hunt's seeds depend on its budget; its findings are trended apart
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
        return ["no matrices recorded yet (`cutover matrix` records one)"] + (
            ["", *hunt_lines(data)] if data.hunts else [])
    head = ("build", "matrix", "started", "revision", "detected", "median s", "errors")
    rows = []
    for label, points in data.series.items():
        for i, p in enumerate(points):
            rows.append((label if i == 0 else "", p.matrix, p.started.replace("T", " ")[:16],
                         (p.revision or "-")[:12], _pct(p),
                         "-" if p.median_s is None else f"{p.median_s:.1f}",
                         str(p.errors or "")))
    lines = _table(head, rows, right=(4, 5))
    lines.append("")
    if not data.flakes:
        lines.append(f"flakes: none in {len(data.matrices)} matrices")
    else:
        lines.append(f"flakes: {len(data.flakes)} (same build, seed and revision; "
                     f"different verdicts)")
        for f in data.flakes:
            vs = ", ".join(f"{v} in {m}" + (f" (run {r})" if r else "") for m, v, r in f.verdicts)
            lines.append(f"  {f.label} seed {f.seed} at {f.revision[:12]}: {vs}")
    if data.hunts:
        lines += ["", *hunt_lines(data)]
    return lines


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]],
           right: tuple[int, ...] = ()) -> list[str]:
    """Columns as wide as their widest cell, two spaces apart: a long build label or
    matrix id pushes its column out instead of running into the next one."""
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def line(r: tuple[str, ...]) -> str:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        return "  ".join(cells).rstrip()

    first = line(head)
    return [first, "-" * len(first), *(line(r) for r in rows)]


def hunt_lines(data: TrendData) -> list[str]:
    """The hunts, oldest first (each finding confirmed k/K on real processes), then each
    finding signature over them: found in how many hunts, confirmed how often."""
    out = [f"hunts: {len(data.hunts)} (oldest first; a finding: confirmed on real "
           f"processes k/K)"]
    for h in data.hunts:
        fs = "; ".join(f"{f['kind']} {f['confirmed']}/{f['attempts']}"
                       + (" (fidelity gap)" if f["gap"] else "") for f in h.findings)
        out.append(f"  {h.hunt:<22} {h.started.replace('T', ' ')[:16]:<16} {h.build:<20} "
                   f"{h.seeds if h.seeds is not None else '-':>6} seeds  "
                   f"{fs or 'nothing found'}")
    sigs = data.signatures()
    if sigs:
        out.append("findings by signature (hunts that found it; real runs that confirmed "
                   "it; fidelity gaps):")
        for sig, n, k, tries, gaps in sigs:
            out.append(f"  {sig}: {n} hunt(s), confirmed {k}/{tries}"
                       + (f", {gaps} fidelity gap(s)" if gaps else ""))
    return out
