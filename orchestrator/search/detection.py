"""`cutover bench detection`: how many defects that are *not* bug switches the harness
finds. The switches are a regression suite written while looking at known bugs; a
harness tuned to them says little about the next bug. So this benchmark keeps its own
realistic one-to-five-line mistakes in `node/` (`tests/defects/*.patch`, each with a
`Defect:` / `What:` / `Exposed by:` header), applies each to a temporary copy of the
source tree, runs the default `cutover run` on a few seeds against it, and prints per
defect: the seeds that caught it, the invariant that caught it first, and the median
time to the first violation. A defect whose header says `Exposed by: none` is one no
fault can expose with this workload; it is listed and marked, not counted.

`--mode hunt` (issue 19) measures `cutover hunt` instead: one hunt per defect, or per
bug switch on the unpatched tree (`--switches`), one at a time (a hunt uses the two
workers of the machine), each read back from the hunt's own results database: found
(any finding), each finding's kind and `confirmed k/K` on real processes, the time to
the first failing seed, and the cost beyond the search (shrinking and real replays).
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checker import suite
from node.server import ALL_BUGS
from orchestrator import store

PACKAGES = ("node", "orchestrator", "nemesis", "checker", "workloads")
MODES = ("run", "hunt")  # `bench detection --mode`: real runs per seed, or one hunt per defect


def default_defects_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "tests" / "defects"


@dataclass
class Defect:
    name: str
    path: Path
    what: str
    exposed_by: str
    switch: str | None = None  # a bug switch (`--bug NAME`) on the unpatched tree

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

    def add(self, verdict: str, first: str | None, t: float | None, err: str | None) -> None:
        """One run's (or one search's) outcome, as both modes record it."""
        self.verdicts.append(verdict)
        if first:
            self.firsts.append(first)
        if t is not None:
            self.times.append(t)
        if err:
            self.errors.append(err)


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
    if defect.switch is not None:
        return src  # a switch runs on the tree as it is
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
    root = Path(__file__).resolve().parents[2]
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
                row.add(verdict, first, t, err)
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
    first = re.search(r"^seed \d+[^:\n]*: INVALID: ([^:]+):", r.stdout, re.M)
    after = re.search(r"\(the first after ([0-9.]+) s\)", r.stdout)
    if r.returncode == 1 and first:
        return "invalid", first.group(1), float(after.group(1)) if after else wall, None, seeds
    return "valid", None, None, None, seeds


def run_detection_sim(defects: list[Defect], budget: float, extra: list[str] | None = None,
                      progress: object = None) -> list[DefectRow]:
    """Every defect in the simulator: `cutover sim --budget` seconds each."""
    root = Path(__file__).resolve().parents[2]
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
            row.add(verdict, first, t, err)
            if callable(progress):
                progress(d.name, seeds, verdict, first)
    return rows


# ------------------------------------------------------------------- --mode hunt


def switch_targets() -> list[Defect]:
    """The bug switches (`cutover bugs`) as targets: each is `--bug NAME` on the
    unpatched tree."""

    return [Defect(name, Path(), what, "bug switch", switch=name)
            for name, what in sorted(ALL_BUGS.items())]


@dataclass
class HuntRow:
    """One `cutover hunt` of one target (a defect or a switch), read back from its
    results database."""

    defect: Defect
    exit_code: int | None = None
    status: str | None = None
    summary: str = ""
    findings: list[dict[str, Any]] = field(default_factory=list)
    seeds: int = 0  # simulated seeds searched
    search_s: float | None = None
    first_failure_s: float | None = None
    shrink_s: float = 0.0
    confirm_s: float = 0.0
    wall_s: float | None = None  # the whole hunt process, as this benchmark saw it
    confirm: int = 0
    lines: list[str] = field(default_factory=list)  # the hunt's verdict lines
    error: str | None = None

    @property
    def found(self) -> bool:
        return bool(self.findings)

    @property
    def confirmed(self) -> bool:
        """Some finding failed the same invariant on real processes at least once."""
        return any((f.get("confirmed") or 0) > 0 for f in self.findings)

    @property
    def all_confirmed(self) -> bool:
        """Every finding confirmed by every one of its real replays."""
        return self.found and all(
            f.get("attempts") and f.get("confirmed") == f.get("attempts")
            for f in self.findings)

    @property
    def beyond_s(self) -> float:
        """What the hunt cost beyond its search: the shrinking and the real replays."""
        return self.shrink_s + self.confirm_s

    def per_finding(self) -> list[float]:
        """The cost beyond the search of each finding: its share of the shrinking plus
        the wall time of its own real replays."""
        n = len(self.findings)
        return [self.shrink_s / n + sum(f.get("replay_s") or [])
                for f in self.findings] if n else []


def read_hunt(results: str, row: HuntRow) -> HuntRow:
    """Fill `row` from the one hunt recorded in `results` (`hunts`, `hunt_findings`,
    `hunt_runs`); `row.error` when there is none. Returns `row`."""
    try:
        with store.opened(results) as db:
            hunts = store.hunts(db)
            if not hunts:
                row.error = row.error or "no hunt recorded"
                return row
            h = hunts[0]
            findings = store.hunt_findings(db, h["id"])
            runs = store.hunt_runs(db, h["id"])
    except store.StoreError as e:
        row.error = row.error or str(e)
        return row
    d = h.get("detail") or {}
    search = d.get("search") or {}
    row.exit_code = h.get("exit_code") if row.exit_code is None else row.exit_code
    row.status = h.get("status")
    row.summary = h.get("summary") or ""
    row.seeds = int(search.get("seeds") or 0)
    row.search_s = search.get("wall_s")
    row.first_failure_s = search.get("first_failure_s")
    row.shrink_s = float(d.get("shrink_s") or 0.0)
    row.confirm_s = float(d.get("confirm_s") or 0.0)
    row.confirm = int(d.get("confirm") or (h.get("config") or {}).get("confirm") or 0)
    row.findings = []
    for f in findings:
        fd = f.get("detail") or {}
        mine = [r for r in runs if r.get("finding") == f["finding"]]
        row.findings.append({
            "kind": f.get("kind"), "signature": f.get("signature"),
            "confirmed": int(f.get("confirmed") or 0), "attempts": int(f.get("attempts") or 0),
            "gap": bool(f.get("gap")), "outcomes": [r.get("outcome") for r in mine],
            "replay_s": [float(r.get("seconds") or 0.0) for r in mine],
            "complete": (fd.get("shrunk") or {}).get("complete", True),
            "simulations": (fd.get("shrunk") or {}).get("simulations")})
    return row


# The lines of a hunt's summary that say what it found (kept for the progress output,
# and said for a target that was not found).
_VERDICT_LINE = re.compile(r"^(search:|shrink:|real runs:|finding \d+:|  confirmed on real|"
                           r"  FIDELITY GAP|harness error:|exit \d+:)")


def _stop_group(p: subprocess.Popen[str], grace: float = 60.0) -> None:
    """End the hunt this benchmark started (its own process group): SIGTERM first, so
    it stops its nodes and records itself aborted; SIGKILL after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def hunt_timeout(budget: float, confirm: int, time_limit: float) -> float:
    """How long one hunt may take before it is stopped: its budget, then real replays
    (a few findings of `confirm` runs of up to `time_limit` + set-up each), generously."""
    return budget + 300 + 6 * max(1, confirm) * (time_limit + 30)


def run_hunt_one(src: Path, target: Defect, budget: float, confirm: int, results: str,
                 extra: list[str], timeout: float) -> HuntRow:
    """One `cutover hunt --budget B --confirm K --rare 0` of the tree `src` (a child
    process whose imports come from it; `--bug NAME` for a switch), read back."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "orchestrator.cli", "hunt", "--budget", f"{budget:g}",
           "--confirm", str(confirm), "--rare", "0", "--results", results, *extra]
    if target.switch:
        cmd += ["--bug", target.switch]
    row = HuntRow(target, confirm=confirm)
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=src, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_group(p)
        out, err = p.communicate()
        row.error = f"stopped after {timeout:.0f} s (exit {p.returncode})"
    except BaseException:
        _stop_group(p)
        p.communicate()
        raise
    row.wall_s = round(time.monotonic() - t0, 1)
    row.exit_code = p.returncode
    row.lines = [ln for ln in out.splitlines() if _VERDICT_LINE.match(ln)]
    if p.returncode is not None and p.returncode >= 3 and row.error is None:
        tail = [ln for ln in (out + "\n" + err).splitlines() if ln.strip()]
        bad = [ln for ln in tail if "error" in ln.lower()]
        row.error = (bad or tail or [f"exit code {p.returncode}"])[-1][:200]
    if not os.path.exists(os.path.join(results, "cutover.db")):
        row.error = row.error or "the hunt wrote no results database"
        return row
    return read_hunt(results, row)


def run_detection_hunt(targets: list[Defect], budget: float, confirm: int,
                       time_limit: float = 30.0, extra: list[str] | None = None,
                       progress: Callable[[HuntRow], None] | None = None) -> list[HuntRow]:
    """One hunt per target, one at a time. Defects each get a patched copy of the tree;
    switches share one unpatched copy, taken once at the start."""
    root = Path(__file__).resolve().parents[2]
    rows: list[HuntRow] = []
    timeout = hunt_timeout(budget, confirm, time_limit)
    with tempfile.TemporaryDirectory(prefix="cutover-defects-hunt-") as tmp:
        plain: Path | None = None
        for d in targets:
            row = HuntRow(d, confirm=confirm)
            try:
                if d.switch is not None:
                    if plain is None:
                        plain = patched_tree(d, root, Path(tmp) / "unpatched")
                    src = plain
                else:
                    src = patched_tree(d, root, Path(tmp) / d.name)
            except RuntimeError as e:
                row.error = str(e)
                rows.append(row)
                if progress is not None:
                    progress(row)
                continue
            results = str(Path(tmp) / f"results-{d.name}")
            try:
                row = run_hunt_one(src, d, budget, confirm, results,
                                   ["--time-limit", f"{time_limit:g}", *(extra or [])],
                                   timeout)
            except OSError as e:
                row.error = str(e)
            rows.append(row)
            if progress is not None:
                progress(row)
            shutil.rmtree(results, ignore_errors=True)  # real runs' WALs add up
    return rows


def _pct(n: int, m: int) -> str:
    return f"{n}/{m} ({100 * n / m:.0f}%)" if m else f"{n}/0 (-)"


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def hunt_table(rows: list[HuntRow], budget: float, confirm: int) -> list[str]:
    """One line per target, then the totals: found n/N, confirmed among found n/m, the
    median time to the first failing seed and the median cost beyond the search per
    finding. A defect whose header says `Exposed by: none` is listed, not counted."""
    what = "switch" if rows and all(r.defect.switch for r in rows) else "defect"
    width = max([len(r.defect.name) for r in rows] + [len(what)])
    out = [f"{what:<{width}}  found  {'1st fail':>8}  {'search':>6}  {'shrink':>6}  "
           f"{'replays':>7}  {'beyond/f':>8}  findings: kind confirmed k/K"]
    counted: list[HuntRow] = []
    for r in rows:
        fs = "; ".join(
            f"{f['kind']} {f['confirmed']}/{f['attempts'] or confirm}"
            + (" GAP" if f["gap"] else "") + ("" if f["complete"] else " (not minimal)")
            for f in r.findings) or "-"
        per = r.per_finding()
        found = "yes" if r.found else ("ERR" if r.error else "no")
        note = ""
        if r.defect.unexposable:
            note = "  [not counted: no fault can expose it: " + r.defect.exposed_by + "]"
        else:
            counted.append(r)
        if not r.found and r.summary:
            note += f"  [{r.summary[:120]}]"
        if r.error:
            note += f"  [error: {r.error[:120]}]"
        ex = "" if r.exit_code in (1, None) else f"  (exit {r.exit_code})"
        out.append(f"{r.defect.name:<{width}}  {found:<5}  {_s(r.first_failure_s):>8}  "
                   f"{_s(r.search_s):>6}  {_s(r.shrink_s if r.found else None):>6}  "
                   f"{_s(r.confirm_s if r.found else None):>7}  "
                   f"{_s(statistics.median(per) if per else None):>8}  {fs}{note}{ex}")
    found = [r for r in counted if r.found]
    conf = [r for r in found if r.confirmed]
    every = [r for r in found if r.all_confirmed]
    firsts = [r.first_failure_s for r in found if r.first_failure_s is not None]
    per_f = [x for r in found for x in r.per_finding()]
    shr = [r.shrink_s / len(r.findings) for r in found]
    rep = [sum(f["replay_s"]) for r in found for f in r.findings]
    walls = [r.wall_s for r in counted if r.wall_s is not None]
    errs = [r for r in counted if r.error]
    out.append("")
    out.append(f"`cutover hunt --budget {budget:g} --confirm {confirm} --rare 0` per {what}, "
               f"one at a time" + (f"; {len(errs)} with a harness error" if errs else ""))
    plural = "switches" if what == "switch" else "defects"
    out.append(f"found: {_pct(len(found), len(counted))} {plural} (any finding)")
    out.append(f"confirmed among found: {_pct(len(conf), len(found))} (a finding failed the "
               f"same invariant on real processes at least once; every finding in each of "
               f"its replays: {len(every)}/{len(found)})")
    out.append("median time to the first failing seed: "
               + (f"{statistics.median(firsts):.1f} s of search" if firsts else "-"))
    out.append("median cost beyond the search per finding: "
               + (f"{statistics.median(per_f):.1f} s (shrinking {statistics.median(shr):.1f}"
                  f" s, real replays {statistics.median(rep):.1f} s; "
                  f"{len(per_f)} findings)" if per_f else "-"))
    if walls:
        out.append(f"hunt wall time: median {statistics.median(walls):.0f} s, total "
                   f"{sum(walls) / 60:.1f} min")
    out.append(f"found={len(found)}/{len(counted)} confirmed={len(conf)}/{len(found)}")
    return out
