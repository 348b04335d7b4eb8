"""Benchmark (not a test): does the coverage-guided search (`orchestrator/sim/corpus.py`)
find the held-out defects of `tests/defects/*.patch` sooner than the plain swarm search?

For each defect: a scratch copy of the repository's committed HEAD with the patch
applied (in the system's temporary directory), then `cutover sim --budget B --workers 1
--no-shrink --first-seed K --guided` and `--no-guided` run there, for each K. One worker
so both modes get the same CPU; no shrinking so the search spends the whole budget on
search.

    .venv/bin/python tests/defects/measure_guided.py [--budget 60] [--first-seeds 1,1001]
        [--defects a,b,...] [--parallel 2]

Prints one line per (defect, mode, first seed) as it finishes, then the table: seeds
(jobs, mutants included) and seconds to the first failing seed, or `-` when none failed.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PY = REPO / ".venv" / "bin" / "python"
DEFAULT_DEFECTS = ("ack-beyond-match", "admin-ignores-stuck-barrier",
                   "follower-commit-unbounded", "vote-not-synced", "read-index-no-term-wait",
                   "heartbeat-commit-unbounded")


@dataclass
class Cell:
    defect: str
    guided: bool
    first_seed: int
    seeds: int = 0
    first_job: int | None = None  # 1-based: the first failing seed's place in the search
    first_s: float | None = None
    failed: int = 0
    mutant: bool = False  # the first failing seed ran a mutant
    summary: str = ""


def scratch(name: str) -> Path:
    """The repository with one defect put back, made once."""
    d = Path(tempfile.gettempdir()) / f"cutover-guided-{name}"
    if not (d / ".patched").exists():
        # The committed build: a half-made edit in the working tree must not break the
        # measurement.
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        arc = subprocess.run(["git", "archive", "HEAD"], cwd=REPO, capture_output=True,
                             check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(d)], input=arc, check=True)
        with open(REPO / "tests" / "defects" / f"{name}.patch", "rb") as fh:
            subprocess.run(["patch", "-p1", "-s"], cwd=d, stdin=fh, check=True)
        (d / ".patched").touch()
    return d


def measure(name: str, guided: bool, first_seed: int, budget: float) -> Cell:
    d = scratch(name)
    res = d / f"results-{'g' if guided else 'u'}-{first_seed}"
    cmd = [str(PY), "-m", "orchestrator.cli", "sim", "--budget", f"{budget:g}",
           "--workers", "1", "--no-shrink", "--first-seed", str(first_seed),
           "--guided" if guided else "--no-guided", "--results", str(res)]
    p = subprocess.run(cmd, cwd=d, env={**os.environ, "PYTHONPATH": str(d)},
                       capture_output=True, text=True, check=False)
    c = Cell(name, guided, first_seed)
    m = re.search(r"^sim: (\d+) seeds", p.stdout, re.M)
    c.seeds = int(m.group(1)) if m else 0
    c.summary = m.group(0) if m else (p.stdout + p.stderr)[-300:]
    lines = p.stdout.splitlines()
    for i, ln in enumerate(lines):
        f = re.match(r"seed (\d+): INVALID", ln)
        if f:
            c.failed += 1
            if c.first_job is None:
                c.first_job = int(f.group(1)) - first_seed + 1
                c.mutant = i + 1 < len(lines) and "mutant of seed" in lines[i + 1]
    after = re.search(r"\(the first after ([0-9.]+) s\)", p.stdout)
    c.first_s = float(after.group(1)) if after else None
    g = re.search(r"guided: ([^;]*)", p.stdout)
    c.summary = g.group(1) if g else ""
    return c


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=60.0)
    ap.add_argument("--first-seeds", default="1,1001")
    ap.add_argument("--defects", default=",".join(DEFAULT_DEFECTS))
    ap.add_argument("--parallel", type=int, default=2)
    a = ap.parse_args()
    defects = [x for x in a.defects.split(",") if x]
    seeds = [int(x) for x in a.first_seeds.split(",")]
    for d in defects:
        scratch(d)
    jobs = [(d, g, k) for d in defects for k in seeds for g in (False, True)]
    cells: list[Cell] = []
    with cf.ThreadPoolExecutor(a.parallel) as ex:
        futs = [ex.submit(measure, d, g, k, a.budget) for d, g, k in jobs]
        for fut in cf.as_completed(futs):
            c = fut.result()
            cells.append(c)
            print(f"{c.defect} {'guided' if c.guided else 'plain'} first-seed {c.first_seed}: "
                  f"{c.seeds} seeds, first failure "
                  + (f"at seed #{c.first_job} after {c.first_s} s"
                     + (" (a mutant)" if c.mutant else "") if c.first_job else "none")
                  + f", {c.failed} failing; {c.summary}", flush=True)
    cells.sort(key=lambda c: (defects.index(c.defect), c.first_seed, c.guided))
    print(f"\n{'defect':<30} {'K':>5} {'plain: #seed / s':>20} {'guided: #seed / s':>22}")
    for d in defects:
        for k in seeds:
            row = {c.guided: c for c in cells if c.defect == d and c.first_seed == k}

            def fmt(c: Cell) -> str:
                if c.first_job is None:
                    return f"- ({c.seeds} seeds)"
                return f"{c.first_job} / {c.first_s}" + ("*" if c.mutant else "")
            print(f"{d:<30} {k:>5} {fmt(row[False]):>20} {fmt(row[True]):>22}")
    print("(* the first failing seed ran a mutant; '-': not found within the budget)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
