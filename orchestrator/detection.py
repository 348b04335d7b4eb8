"""`cutover bench detection`: how many defects that are *not* bug switches the harness
finds. The switches are a regression suite written while looking at known bugs; a
harness tuned to them says little about the next bug. So this benchmark keeps its own
realistic one-to-five-line mistakes in `node/` (`tests/defects/*.patch`, each with a
`Defect:` / `What:` / `Exposed by:` header), applies each to a temporary copy of the
source tree, runs the default `cutover run` on a few seeds against it, and prints per
defect: the seeds that caught it, the invariant that caught it first, and the median
time to the first violation. A defect whose header says `Exposed by: none` is one no
fault can expose with this workload; it is listed and marked, not counted.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from checker import suite

from . import store

PACKAGES = ("node", "orchestrator", "nemesis", "checker", "workloads")


def default_defects_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "tests" / "defects"


@dataclass
class Defect:
    name: str
    path: Path
    what: str
    exposed_by: str

    @property
    def unexposable(self) -> bool:
        return self.exposed_by.lower().startswith("none")


@dataclass
class DefectRow:
    defect: Defect
    verdicts: list[str] = field(default_factory=list)
    firsts: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def caught(self) -> int:
        return sum(1 for v in self.verdicts if v == "invalid")


def load_defects(directory: Path) -> list[Defect]:
    """Every `*.patch` in `directory`, with its header; ValueError on a malformed one."""
    out = []
    for p in sorted(directory.glob("*.patch")):
        head: dict[str, str] = {}
        for line in p.read_text(encoding="utf-8").splitlines():
            if line.startswith("diff --git"):
                break
            k, _, v = line.partition(":")
            if v:
                head[k.strip().lower()] = v.strip()
        if "defect" not in head or "exposed by" not in head:
            raise ValueError(f"{p}: needs `Defect:` and `Exposed by:` header lines")
        out.append(Defect(head["defect"], p, head.get("what", ""), head["exposed by"]))
    return out


def patched_tree(defect: Defect, root: Path, into: Path) -> Path:
    """A copy of the source packages with the defect applied (RuntimeError if it does
    not apply: the tree moved on and the patch must be refreshed)."""
    src = into / "src"
    for pkg in PACKAGES:
        shutil.copytree(root / pkg, src / pkg,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    r = subprocess.run(["git", "apply", "-p1", str(defect.path)], cwd=src,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{defect.name}: the patch does not apply: "
                           f"{(r.stderr or r.stdout).strip().splitlines()[0]}")
    return src


def run_one(src: Path, seed: int, time_limit: float, results: str,
            extra: list[str]) -> tuple[str, str | None, float | None, str | None]:
    """(verdict, first failing checker/invariant, seconds to it, error) of one run of the
    patched tree (a child process whose imports come from `src`)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", "--seed", str(seed),
           "--time-limit", str(time_limit), "--results", results, *extra]
    r = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True,
                       timeout=time_limit + 240)
    if r.returncode >= 3:
        lines = [ln for ln in (r.stdout + "\n" + r.stderr).splitlines()
                 if ln.startswith(("ERROR", "error", "HARNESS")) or "Error" in ln]
        return "error", None, None, (lines or [f"exit code {r.returncode}"])[-1]
    with store.opened(results) as db:
        rows = [x for x in store.runs(db) if x["seed"] == seed]
        row = rows[0] if rows else None
        if row is None:
            return "error", None, None, "no run recorded"
        checks = {k: v["detail"] or {"valid": v["valid"]}
                  for k, v in store.checks(db, row["id"]).items()}
    first = suite.first_violation(checks) if row["verdict"] == "invalid" else None
    name = None
    t = None
    if first:
        name = first[0]
        if name == "cutover":
            name = (checks.get("cutover") or {}).get("failing") or "cutover"
        t = first[2] / 1e9 if isinstance(first[2], int | float) else None
    return row["verdict"] or "unknown", name, t, None


def run_detection(defects: list[Defect], seeds: list[int], time_limit: float,
                  jobs: int = 2, extra: list[str] | None = None,
                  progress: object = None) -> list[DefectRow]:
    """Every defect over `seeds`, `jobs` runs at a time."""
    root = Path(__file__).resolve().parents[1]
    rows = {d.name: DefectRow(d) for d in defects}
    with tempfile.TemporaryDirectory(prefix="cutover-defects-") as tmp:
        trees: dict[str, Path] = {}
        for d in defects:
            try:
                trees[d.name] = patched_tree(d, root, Path(tmp) / d.name)
            except RuntimeError as e:
                rows[d.name].errors.append(str(e))
        tasks = [(d, s) for d in defects if d.name in trees for s in seeds]
        with cf.ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
            futs = {ex.submit(run_one, trees[d.name], s, time_limit,
                              str(Path(tmp) / d.name / f"results-{s}"), extra or []): (d, s)
                    for d, s in tasks}
            for fut in cf.as_completed(futs):
                d, s = futs[fut]
                row = rows[d.name]
                try:
                    verdict, first, t, err = fut.result()
                except Exception as e:  # noqa: BLE001 - one broken run is one error row
                    verdict, first, t, err = "error", None, None, str(e)
                row.verdicts.append(verdict)
                if first:
                    row.firsts.append(first)
                if t is not None:
                    row.times.append(t)
                if err:
                    row.errors.append(err)
                if callable(progress):
                    progress(d.name, s, verdict, first)
    return [rows[d.name] for d in defects]


def table(rows: list[DefectRow], n_seeds: int, sim_budget: float | None = None) -> list[str]:
    width = max([len(r.defect.name) for r in rows] + [6])
    out = [f"{'defect':<{width}}  {'caught':>7}  {'median s':>8}  first invariant"]
    if sim_budget is not None:
        out[0] = f"{'defect':<{width}}  {'found':>7}  {'wall s':>8}  first invariant"
    caught = counted = 0
    for r in rows:
        first = ", ".join(f"{k} ({n})" for k, n in Counter(r.firsts).most_common()) or "-"
        med = f"{statistics.median(r.times):.1f}" if r.times else "-"
        note = ""
        if r.defect.unexposable:
            note = "  [no fault can expose it: " + r.defect.exposed_by + "]"
        else:
            counted += 1
            caught += r.caught > 0
        if r.errors:
            note += f"  [{len(r.errors)} error(s): {r.errors[0][:80]}]"
        out.append(f"{r.defect.name:<{width}}  {r.caught:>3}/{n_seeds:<3}  {med:>8}  "
                   f"{first}{note}")
    if sim_budget is not None:
        out.append(f"detected={caught}/{counted} defects found by `cutover sim --budget "
                   f"{sim_budget:g}`")
    else:
        out.append(f"detected={caught}/{counted} defects caught in at least 1 of {n_seeds} "
                   f"seeds")
    return out


def run_sim_one(src: Path, budget: float, results: str,
                extra: list[str]) -> tuple[str, str | None, float | None, str | None, int]:
    """`cutover sim --budget` on a patched tree: (verdict, what failed first, seconds of
    wall time to the first failing seed, error, seeds simulated)."""
    import re
    import time

    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "orchestrator.cli", "sim", "--budget", str(budget),
           "--no-shrink", "--results", results, *extra]
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True,
                       timeout=budget + 600)
    wall = time.monotonic() - t0
    m = re.search(r"sim: (\d+) seeds", r.stdout)
    seeds = int(m.group(1)) if m else 0
    if r.returncode >= 3:
        lines = [ln for ln in (r.stdout + "\n" + r.stderr).splitlines() if "error" in ln]
        return "error", None, None, (lines or [f"exit code {r.returncode}"])[-1], seeds
    first = re.search(r"^seed \d+: INVALID: ([^:]+):", r.stdout, re.M)
    after = re.search(r"\(the first after ([0-9.]+) s\)", r.stdout)
    if r.returncode == 1 and first:
        return "invalid", first.group(1), float(after.group(1)) if after else wall, None, seeds
    return "valid", None, None, None, seeds


def run_detection_sim(defects: list[Defect], budget: float, extra: list[str] | None = None,
                      progress: object = None) -> list[DefectRow]:
    """Every defect in the simulator: `cutover sim --budget` seconds each."""
    root = Path(__file__).resolve().parents[1]
    rows = []
    with tempfile.TemporaryDirectory(prefix="cutover-defects-sim-") as tmp:
        for d in defects:
            row = DefectRow(d)
            rows.append(row)
            try:
                src = patched_tree(d, root, Path(tmp) / d.name)
            except RuntimeError as e:
                row.errors.append(str(e))
                continue
            verdict, first, t, err, seeds = run_sim_one(src, budget,
                                                        str(Path(tmp) / d.name / "results"),
                                                        extra or [])
            row.verdicts.append(verdict)
            if first:
                row.firsts.append(first)
            if t is not None:
                row.times.append(t)
            if err:
                row.errors.append(err)
            if callable(progress):
                progress(d.name, seeds, verdict, first)
    return rows
