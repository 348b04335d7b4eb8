"""What `cutover sim` prints and stores (the click command is in `orchestrator/cli.py`),
and the budgeted search it shares with `cutover hunt` (`search`: a budget covers the
search and the shrinking of what it finds) and the record of a batch's coverage
(`record_coverage`: every seed, passing ones included, for `cutover coverage`)."""
from __future__ import annotations

import datetime as dt
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import click

from checker.coverage import BUGGIFY_PREFIX, POINTS, buggify_fired
from nemesis.plan import PLAN_FORMAT, Plan
from orchestrator import store
from orchestrator.errors import EXIT_HARNESS
from orchestrator.run.config import RunConfig, RunError, default, read_plan_file
from orchestrator.sim.batch import SeedResult, run_batch, store_run
from orchestrator.sim.corpus import Guide
from orchestrator.sim.run import simulate
from orchestrator.sim.shrink import Shrunk, shrink

# With a budget, the search stops at this share of it once something failed: the rest
# is for shrinking each kind.
SEARCH_SHARE = 0.5
# Whether a search keeps a corpus and mutates its plans (`orchestrator/sim/corpus.py`)
# when its caller does not say: `tests/defects/measure_guided.py` measured both.
GUIDED = False


class _Enough(Exception):
    """Raised from run_batch's callback to end the search: the pool is ended, not drained
    (`lifeline.worker_pool`), so the seeds in flight are abandoned, not waited for."""


@dataclass
class Search:
    """What a search simulated: every finished seed (sorted), and how it ended."""

    results: list[SeedResult] = field(default_factory=list)
    wall_seconds: float = 0.0
    first_failure_s: float | None = None
    stopped: str = "seeds"  # seeds | budget | found (half the budget, something failed)
    guide: Guide | None = None  # the corpus of a guided search

    @property
    def mutants(self) -> list[SeedResult]:
        """Seeds that ran a mutated corpus plan instead of their own."""
        return [r for r in self.results if r.lineage]

    @property
    def failed(self) -> list[SeedResult]:
        return [r for r in self.results if r.is_failure]

    @property
    def invalid(self) -> list[SeedResult]:
        return [r for r in self.results if r.verdict == "invalid"]

    @property
    def vacuous(self) -> list[SeedResult]:
        return [r for r in self.results if r.is_vacuous]

    @property
    def undecided(self) -> list[SeedResult]:
        """Unknown verdicts that are not vacuity (a linearizability check that ran out of
        time or memory): neither a pass nor a finding."""
        return [r for r in self.results if r.is_failure and r.verdict != "invalid"
                and r.verdict != "error"]

    @property
    def errors(self) -> list[SeedResult]:
        return [r for r in self.results if r.verdict == "error"]

    @property
    def passed(self) -> list[SeedResult]:
        return [r for r in self.results if r.verdict == "valid"]

    def coverage_counts(self) -> dict[str, int]:
        """Point -> seeds that reached it, over every seed (passing ones included)."""
        c: Counter[str] = Counter()
        for r in self.results:
            c.update(p for p in set(r.coverage) if p in POINTS)
        return dict(sorted(c.items()))


def search(cfg: RunConfig, *, seeds: list[int] | None, budget: float | None,
           first_seed: int, workers: int, t0: float | None = None,
           share: float = SEARCH_SHARE,
           keep: Callable[[SeedResult], bool] | None = None,
           on_result: Callable[[SeedResult, Search], None] | None = None,
           guided: bool | None = None, crash_points: int = 0) -> Search:
    """Simulate `seeds` (or seeds from `first_seed` on) in `workers` processes. With a
    `budget` (seconds from `t0`): stop at `share` of it once a seed failed, and at the
    budget in any case (a seed's time over at most: the search stops when a seed ends),
    so that shrinking fits in the same budget. `keep(r)` says
    whether a failing seed's record (its whole run, held in memory until stored) is
    kept; a dropped one is counted, not stored. `guided` (default `GUIDED`): some seeds
    run mutants of the plans that reached something new (`corpus.py`), chosen from
    `first_seed` alone, so the same search replays. `crash_points` N: each seed that held
    is re-run N times, crashed at a durability boundary (`crashpoints.py`)."""
    start = time.monotonic() if t0 is None else t0
    out = Search(stopped="budget" if seeds is None else "seeds")
    if GUIDED if guided is None else guided:
        out.guide = Guide(first_seed if seeds is None or not seeds else seeds[0],
                          time_limit=cfg.time_limit)

    def got(r: SeedResult, _b: Any) -> None:
        if r.record is not None and (r.is_vacuous or (keep is not None and not keep(r))):
            r.record = None  # not stored: no need to hold its files
        out.results.append(r)
        now = time.monotonic() - start
        if out.first_failure_s is None and r.verdict == "invalid":
            out.first_failure_s = round(now, 3)
        if on_result is not None:
            on_result(r, out)
        if budget is not None:
            if now >= budget:
                out.stopped = "budget"
                raise _Enough
            if out.first_failure_s is not None and now >= share * budget and share < 1:
                out.stopped = "found"
                raise _Enough

    left = None if budget is None else max(0.0, budget - (time.monotonic() - start))
    if left is None or left > 0:
        try:
            run_batch(cfg, seeds=seeds, budget=left if seeds is None else None,
                      first_seed=first_seed, workers=workers, on_result=got,
                      guide=out.guide, crash_points=crash_points)
        except _Enough:
            pass
    if out.guide is not None:
        out.guide.settle()
    out.results.sort(key=lambda r: (r.seed, r.crash_point is not None,
                                    json.dumps(r.crash_point, sort_keys=True)))
    out.wall_seconds = round(time.monotonic() - start, 3)
    return out


def batch_counts(s: Search) -> dict[str, int]:
    return {"seeds": len(s.results), "passed": len(s.passed), "vacuous": len(s.vacuous),
            "failed": len(s.failed), "errors": len(s.errors)}


def record_coverage(results: str, base_id: str, kind: str, cfg: RunConfig, s: Search,
                    stored: Iterable[int]) -> str:
    """The search's coverage as one `sim_batches` row: every seed counted, and the
    points of each seed not stored as a run (so `cutover coverage` counts it)."""
    kept = set(stored)
    unstored: dict[int, list[str]] = {}
    for r in s.results:  # a seed's crash re-runs add to its own points
        if r.seed not in kept and r.verdict != "error":
            unstored[r.seed] = sorted(set(unstored.get(r.seed, ())) | set(r.coverage))
    db = store.open_db(results, create=True)
    try:
        return store.record_sim_batch(db, base_id, kind, asdict(cfg), batch_counts(s),
                                      s.coverage_counts(), unstored)
    finally:
        db.conn.close()


def _progress(r: SeedResult, b: Search, t0: float) -> None:
    n = len(b.results)
    rate = n / max(1e-9, time.monotonic() - t0)
    cov = set().union(*(set(x.coverage) for x in b.results)) & set(POINTS)
    line = (f"[seed {r.seed}] {n} seeds, {rate:.2f} seeds/s, violations {len(b.failed)}, "
            f"coverage {len(cov)}/{len(POINTS)}")
    if sys.stderr.isatty():
        click.echo("\r\x1b[K" + line, err=True, nl=False)
    elif n % 10 == 0:
        click.echo(line, err=True)


def run(cfg: RunConfig, *, seeds: int | None, budget: float | None, first_seed: int,
        workers: int, results: str, shrink: bool, guided: bool | None = None,
        crash_points: int = 0) -> int:
    """`cutover sim`: the seeds, every failing one stored, the first of each failure kind
    shrunk. A `budget` covers the search and the shrinking (`orchestrator.search.hunt.search`:
    the search stops at half of it once a seed failed, and each kind is shrunk with a
    deadline, the smallest plan found by then kept). Every seed's coverage, passing ones
    included, is recorded (`sim_batches`), so `cutover coverage` counts what this
    printed. `guided`: the search keeps a corpus (`search`); a failing mutant's plan is
    written next to its run (`plan.json`), since its seed alone does not replay it."""
    try:
        store.check_writable(results)
    except store.StoreError as e:
        click.echo(f"error: {e}", err=True)
        return EXIT_HARNESS
    t0 = time.monotonic()
    seed_list = list(range(first_seed, first_seed + seeds)) if seeds is not None else None
    b = search(cfg, seeds=seed_list, budget=budget, first_seed=first_seed, workers=workers,
               t0=t0, share=SEARCH_SHARE if shrink else 1.0,
               on_result=lambda r, b: _progress(r, b, t0), guided=guided,
               crash_points=crash_points)
    if sys.stderr.isatty():
        click.echo("", err=True)
    stored: dict[int, str] = {}
    firsts: list[tuple[SeedResult, str]] = []
    for r in b.failed:
        assert r.record is not None
        run_id = store_run(results, r.record)
        stored[r.seed] = run_id
        click.echo(f"{r.label}: {r.verdict.upper()}: {r.failing}: {r.sentence[:200]} "
                   f"(run {run_id})")
        if r.lineage:
            path = write_plan_file(results, run_id, r)
            click.echo(f"  ({r.lineage}; its plan: {path})")
        if shrink and r.verdict == "invalid" and r.failing \
                and r.failing not in {x.failing for x, _ in firsts}:
            firsts.append((r, run_id))
        r.record = None if not shrink or r.verdict != "invalid" else r.record
    t_shrink = time.monotonic()
    end = None if budget is None else t0 + budget
    for i, (r, run_id) in enumerate(firsts):
        deadline = None if end is None else time.monotonic() + max(
            0.0, end - time.monotonic()) / (len(firsts) - i)
        _shrink_one(r, cfg, results, run_id, workers, deadline)
    shrink_s = time.monotonic() - t_shrink
    for r in b.errors:
        click.echo(f"seed {r.seed}: harness error: {r.error}", err=True)
    try:
        record_coverage(results, "sim-" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S"),
                        "sim", cfg, b, stored)
    except store.StoreError as e:
        click.echo(f"error: the batch's coverage was not recorded: {e}", err=True)
        return EXIT_HARNESS
    click.echo(_summary(b, crash_points, len(firsts) > 0, shrink_s, budget, t0))
    for line in _next_lines(results, list(stored.values()), [rid for _r, rid in firsts]):
        click.echo(line)
    if b.errors:
        return EXIT_HARNESS
    if b.failed:
        return 1
    # Seeds that tested nothing are no pass: a batch of only those is unknown (2).
    return 2 if b.results and len(b.vacuous) == len(b.results) else 0


def _summary(b: Search, crash_points: int, shrunk: bool, shrink_s: float,
             budget: float | None, t0: float) -> str:
    """The batch's last line: its speed, what failed, coverage, what BUGGIFY fired."""
    cov = set().union(*(set(x.coverage) for x in b.results)) & set(POINTS)
    fired = sorted({p.removeprefix(BUGGIFY_PREFIX) for x in b.results
                    for p in buggify_fired(x.coverage)})
    sim_s = sum(x.sim_seconds for x in b.results)
    cpu_s = sum(x.cpu_seconds for x in b.results)
    reruns = [x for x in b.results if x.crash_point is not None]
    return (f"sim: {len(b.results)} seeds in {b.wall_seconds:.1f} s "
            f"({len(b.results) / max(b.wall_seconds, 1e-9):.2f} seeds/s, "
            f"{sim_s / max(cpu_s, 1e-9):.1f} simulated s per CPU s), "
            f"{len(b.failed)} failed"
            + (f" (the first after {b.first_failure_s:.1f} s)" if b.failed
               and b.first_failure_s is not None else "")
            + (f", {len(b.vacuous)} vacuous (no cutover, fault or operation they "
               f"were asked for)" if b.vacuous else "")
            + (f"; of them {len(reruns)} crash re-runs, "
               f"{sum(1 for x in reruns if x.is_failure)} failed" if crash_points else "")
            + f", coverage {len(cov)}/{len(POINTS)}"
            + (f", buggify fired {len(fired)}: {', '.join(fired)}" if fired else "")
            + (f"; guided: {b.guide.summary()}" if b.guide is not None else "")
            + (f"; shrinking {shrink_s:.1f} s" if shrunk else "")
            + (f" (search and shrinking {time.monotonic() - t0:.1f} s of the "
               f"{budget:g} s budget)" if budget is not None and shrunk else ""))


def _next_lines(results: str, stored: list[str], shrunk: list[str]) -> list[str]:
    """What to type next: the first stored failure, its report and its shrunk plan's
    replays (in simulation and on real processes), or the batch's coverage."""
    opt = "" if results == default("results") else f" --results {results}"
    if not stored:
        return ["next:", f"  cutover coverage{opt}", f"  cutover serve{opt}"]
    first = stored[0]
    lines = ["next:", f"  cutover show {first}{opt}",
             f"  cutover report {first}{opt} -o {first}.html"]
    for rid in shrunk[:1]:
        plan = os.path.join(results, rid, "shrunk-plan.json")
        lines += [f"  cutover sim --replay {plan}", f"  cutover run --plan {plan}{opt}"]
    return lines + [f"  cutover list{opt}", f"  cutover serve{opt}"]


def write_plan_file(results: str, run_id: str, r: SeedResult) -> str:
    """A stored mutant's plan as a plan file (`cutover sim --replay`, `cutover run
    --plan`): the run's config with the mutated plan, and where it came from."""
    assert r.record is not None
    cfg = dict(r.record["config"])
    plan = cfg.pop("plan")
    path = os.path.join(results, run_id, "plan.json")
    doc = {"format": PLAN_FORMAT, "failing": r.failing, "mutant": r.lineage,
           "config": {k: v for k, v in cfg.items() if k != "plan_file"}, "plan": plan,
           "faults": Plan.from_dict(plan).describe()}
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, default=str)
    return path


def _shrink_one(r: SeedResult, cfg: RunConfig, results: str, run_id: str,
                workers: int, deadline: float | None = None) -> None:
    assert r.record is not None and r.failing is not None
    doc = dict(r.record["config"])
    plan = Plan.from_dict(doc.pop("plan"))
    full = RunConfig.from_dict(doc)
    r.record = None
    path = os.path.join(results, run_id, "shrunk-plan.json")
    if deadline is not None and deadline - time.monotonic() <= 0.5:
        n = len([x for x in plan.steps if not (x.action == "enable" and x.params.get("main"))])
        s = Shrunk(full, plan, r.failing, 0, n, complete=False)
        click.echo(f"  seed {r.seed}: no budget left to shrink; its whole plan is written",
                   err=True)
    else:
        click.echo(f"  shrinking seed {r.seed} ({len(plan.steps)} steps, fails "
                   f"{r.failing})...", err=True)
        s = shrink(full, plan, r.failing, workers=workers, deadline=deadline,
                   log=lambda m: click.echo(f"  {m}", err=True))
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(s.to_file_doc(r.seed), fh, indent=2, default=str)
    faults = [x for x in s.plan.describe()[1:]]
    click.echo(f"  shrunk to {len(s.plan.steps) - 1} fault(s), time limit "
               f"{s.config.time_limit:g} s, {s.config.nodes} nodes, "
               f"{s.simulations} simulations"
               + ("" if s.complete else " (not minimal: the budget was spent)")
               + f": {path}")
    for line in faults:
        click.echo(f"    {line}")


def load_plan_file(path: str) -> tuple[RunConfig, Plan, dict[str, Any]]:
    """(config, plan, the whole document) of a plan file that carries its run's config
    (`orchestrator.run.config.read_plan_file` reads and checks it: the same reader as `cutover
    run --plan`); RunError, one line, if it is not one. A replay is exact, so the config
    must name its seed."""
    config, plan, doc = read_plan_file(path)
    if config is None:
        raise RunError(f"{path} has no run config to replay (a plan alone: `cutover run "
                       f"--plan` plays it with the flags' config)")
    try:  # where the run stored its results is no part of it (as for `run --plan`)
        cfg = RunConfig.from_dict({k: v for k, v in config.items()
                                   if k not in ("results", "plan_file")})
    except RunError as e:
        raise RunError(f"cannot use {path}: {e}") from None
    if cfg.seed is None:
        raise RunError(f"cannot use {path}: its config has no seed, so it cannot be "
                       f"replayed exactly")
    return cfg, plan, doc


def replay(path: str, results: str) -> int:
    """`cutover sim --replay FILE`: the same simulation, verdict and all."""
    try:  # read and checked in full before anything is simulated
        cfg, plan, doc = load_plan_file(path)
    except RunError as e:
        click.echo(f"error: {e}", err=True)
        return EXIT_HARNESS
    with tempfile.TemporaryDirectory(prefix="cutover-replay-") as tmp:
        o = simulate(cfg, tmp, plan)
    click.echo(f"seed {cfg.seed}: {o.verdict.upper()}"
               + (f": {o.failing}: {(o.first or ('', '', None))[1][:300]}" if o.failing else ""))
    for line in plan.describe():
        click.echo(f"  {line}")
    expected = doc.get("failing")
    if expected and o.failing != expected:
        click.echo(f"note: the plan file was shrunk for {expected}", err=True)
    return {"valid": 0, "invalid": 1}.get(o.verdict, 2)


__all__ = ["GUIDED", "SEARCH_SHARE", "Search", "asdict", "batch_counts", "load_plan_file",
           "record_coverage", "replay", "run", "search", "write_plan_file"]


def bench(seeds: int, switches: list[str], cap_seconds: float) -> None:
    """`cutover bench sim`: how fast the simulator runs the default 5-node schedule
    (simulated seconds per CPU second, checks included), and how soon it finds a few
    switches. Last line: `sim_per_cpu=X`."""
    for bug in switches:
        cpu0 = time.process_time()
        found = None
        seed = 0
        while time.process_time() - cpu0 < cap_seconds:
            seed += 1
            with tempfile.TemporaryDirectory(prefix="cutover-bench-") as tmp:
                o = simulate(RunConfig(seed=seed, time_limit=30, rate=100, bugs=[bug]), tmp)
            if o.verdict == "invalid":
                found = o
                break
        cpu = time.process_time() - cpu0
        if found is None:
            click.echo(f"{bug:<28} not found in {cpu:.1f} CPU s ({seed} seeds)")
        else:
            click.echo(f"{bug:<28} found by seed {seed} after {cpu:.1f} CPU s: "
                       f"{found.failing}")
    sim = cpu = 0.0
    for seed in range(1, seeds + 1):
        c0 = time.process_time()
        with tempfile.TemporaryDirectory(prefix="cutover-bench-") as tmp:
            o = simulate(RunConfig(seed=seed, time_limit=30, rate=100), tmp)
        c = time.process_time() - c0
        sim += o.sim_seconds
        cpu += c
        click.echo(f"seed {seed}: {o.verdict}, {o.sim_seconds:.1f} simulated s "
                   f"(30 s of workload) in {c:.2f} CPU s, {len(o.ops) // 2} ops")
    click.echo(f"sim_per_cpu={sim / max(cpu, 1e-9):.1f}")
