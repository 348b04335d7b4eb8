"""`cutover hunt`: search where it is cheap, confirm where it is real (issue 19).

A simulated seed costs a second of CPU; a real run costs its time limit plus ten
seconds of set-up, heal and checks. So a hunt searches in the simulator, then spends
real runs only where they tell something:

1. **Search** (`orchestrator.sim.cli.search`, shared with `cutover sim`): simulated
   seeds in worker processes, for `--seeds N` or within `--budget` seconds. With a
   budget, the search stops at half of it once a seed has failed (the rest is for
   shrinking), and uses all of it when none has.
2. **Shrink** each distinct failure kind once (`SeedResult.failing`, e.g.
   `cutover I1 (lease)`), the first seed of that kind, within what is left of the
   budget (`shrink(deadline=)`: at the deadline, the smallest failing plan so far).
   The budget covers search and shrinking; nothing after it does.
3. **Confirm** each shrunk plan on real processes K times (`--confirm`), the same
   plan file `cutover run --plan` plays, and make `--rare` real runs of passing seeds
   the simulator picked because they reached rare coverage points. These come after
   the budget, with their own wall time: K runs of the shrunk plan's length each.
4. **Record** (`store`: `hunts`, `hunt_findings`, `hunt_runs`, `sim_batches`): the
   simulated run of each finding, its plan file, its real runs and how each came out,
   and the coverage of every searched seed, passing ones included. `list`, `show`,
   `serve` and `trend` read it.

A plan that fails in simulation and passes on real processes is a **fidelity gap**: it
is recorded with what differed (the protocol-event sequence of each world and the
times of its milestones), never dropped. `cutover bench fidelity` measures the same on
N plans of the fixed build: the share whose protocol-event sequence matches.

Exit codes: 0 nothing found and something tested, 1 a finding, 2 everything searched
was vacuous or undecided, 3 a harness error (with no finding to report).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from checker.coverage import POINTS
from nemesis.plan import Plan
from orchestrator import store
from orchestrator.errors import EXIT_HARNESS
from orchestrator.lifeline import Interrupted
from orchestrator.real.run import RunOutcome, execute
from orchestrator.run.config import RunConfig, RunError, config_for_plan_file, read_plan_file
from orchestrator.search.fidelity import CLASSES, compare_events, differed_line
from orchestrator.sim.batch import SeedResult, store_run
from orchestrator.sim.cli import Search, batch_counts, record_coverage, search
from orchestrator.sim.run import simulate
from orchestrator.sim.shrink import Shrunk, shrink

Say = Callable[[str], None]


def _quiet(_m: str) -> None:
    pass


# ------------------------------------------------------------------ real runs


def base_kind(kind: str | None) -> str:
    """`cutover I1 (lease)` -> `cutover I1`: the invariant, without the entry kind."""
    return (kind or "").split(" (")[0]


def failing_kind(verdict: str, first: tuple[str, str, Any] | None,
                 checks: Mapping[str, Mapping[str, Any]]) -> str | None:
    """What failed first in a real run, named as `SimOutcome.failing` names it (a checker,
    or `cutover I<n>`, with the entry kind for a structural I1): the two worlds' kinds
    compare."""
    if first is None or verdict != "invalid":
        return None
    name = first[0]
    if name != "cutover":
        return name
    c = checks.get("cutover") or {}
    d = c.get("detail") if isinstance(c.get("detail"), Mapping) else c
    inv = d.get("failing")
    if not inv:
        return name
    v = ((d.get("invariants") or {}).get(inv) or {}).get("first_violation") or {}
    kind = v.get("opcode_name") if inv == "I1" and v.get("half") == "structural" else None
    return f"cutover {inv}" + (f" ({kind})" if kind else "")


def plan_file_config(path: str, results: str) -> RunConfig:
    """The config a plan file carries, to play it on real processes exactly as `cutover
    run --plan FILE` does (`config.config_for_plan_file`: its nodes, time limit, bugs,
    seed and cutover time belong to the schedule); RunError when it carries none."""
    if read_plan_file(path)[0] is None:
        raise RunError(f"{path} carries no run config")
    return config_for_plan_file(path, RunConfig(results=results), ())


@dataclass
class RealRun:
    """One real run a hunt made, and how it compares with the simulation."""

    run_id: str
    role: str  # confirm | rare
    seed: int | None
    verdict: str
    kind: str | None
    outcome: str  # confirmed | other | passed | unknown | error | aborted | reached
    seconds: float
    sentence: str
    coverage: list[str]
    compare: dict[str, Any] = field(default_factory=dict)
    finding: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    report: str | None = None


def _real(cfg: RunConfig) -> RunOutcome:
    """One real run, quiet (the hunt prints its own lines). Ctrl-C during it marks the
    run aborted (execute's own handlers: every node stopped, the history kept); the
    caller records it, then `_stop_if_aborted` ends the hunt."""
    return execute(cfg, out=None, progress=None, handle_signals=True)


def _stop_if_aborted(o: RunOutcome) -> None:
    if o.verdict == "aborted":
        raise Interrupted("SIGINT")


def _real_events(results: str, run_id: str) -> list[dict[str, Any]]:
    try:
        with store.opened(results) as db:
            return store.node_events(db, run_id)
    except store.StoreError:
        return []


def _sim_events(cfg: RunConfig, plan: Plan | None) -> tuple[list[dict[str, Any]], Any]:
    """The protocol events of one simulation (deterministic: the same as the search's)."""
    with tempfile.TemporaryDirectory(prefix="cutover-hunt-") as tmp:
        o = simulate(cfg, tmp, plan)
    return o.events, o


def _confirm_outcome(kind: str, o: RunOutcome, real_kind: str | None) -> str:
    if o.verdict == "invalid":
        return "confirmed" if base_kind(real_kind) == base_kind(kind) else "other"
    if o.verdict == "valid":
        return "passed"
    return o.verdict if o.verdict in ("unknown", "error", "aborted") else "unknown"


# ----------------------------------------------------------------------- the hunt


@dataclass
class Finding:
    """One distinct failure kind: its first seed, stored and shrunk, and its real runs."""

    index: int
    kind: str
    seed: int
    sentence: str
    t_ns: Any
    sim_run: str
    seeds: list[int] = field(default_factory=list)  # every seed that failed this way
    plan_file: str | None = None
    shrunk: dict[str, Any] = field(default_factory=dict)
    signature: str = ""
    runs: list[RealRun] = field(default_factory=list)
    gap: dict[str, Any] | None = None
    report: str | None = None

    @property
    def confirmed(self) -> int:
        return sum(r.outcome == "confirmed" for r in self.runs)


@dataclass
class HuntResult:
    hunt_id: str
    results: str
    cfg: RunConfig
    budget: float | None
    confirm: int
    search: Search
    findings: list[Finding] = field(default_factory=list)
    undecided: list[tuple[int, str, str | None]] = field(default_factory=list)  # seed, why, run
    rare: list[RealRun] = field(default_factory=list)
    shrink_seconds: float = 0.0
    confirm_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    exit_code: int = 0

    def real_runs(self) -> list[RealRun]:
        return [r for f in self.findings for r in f.runs] + self.rare

    def sim_coverage(self) -> set[str]:
        return set(self.search.coverage_counts())

    def real_coverage(self) -> set[str]:
        return {p for r in self.real_runs() for p in r.coverage if p in POINTS}


def _signature(kind: str, plan: Plan) -> str:
    """What makes two findings the same: the failure kind (the invariant, and for I1
    the kind of entry that broke it) and the fault kinds the shrunk plan still needs."""
    faults = sorted({s.action for s in plan.steps
                     if not (s.action == "enable" and s.params.get("main"))})
    return f"{kind} | {','.join(faults) or 'no fault'}"


def _shrink_kind(f: Finding, rec: Mapping[str, Any], results: str, workers: int,
                 deadline: float | None, say: Say) -> Shrunk:
    doc = dict(rec["config"])
    plan = Plan.from_dict(doc.pop("plan"))
    full = RunConfig.from_dict(doc)
    n = len([s for s in plan.steps if not (s.action == "enable" and s.params.get("main"))])
    if deadline is not None and deadline - time.monotonic() <= 0.5:
        say(f"  finding {f.index} ({f.kind}): no budget left to shrink; its whole plan "
            f"is kept")
        return Shrunk(full, plan, f.kind, 0, n, complete=False)
    say(f"  shrinking seed {f.seed} ({n} faults, fails {f.kind})...")
    return shrink(full, plan, f.kind, workers=workers, deadline=deadline,
                  log=lambda m: say(f"    {m}"))


def hunt(cfg: RunConfig, *, results: str, budget: float | None, seeds: int | None,
         first_seed: int, workers: int, confirm: int, rare: int,
         say: Say = _quiet, report: Callable[[str], str | None] | None = None,
         config_doc: Mapping[str, Any] | None = None, guided: bool | None = None,
         crash_points: int = 0) -> HuntResult:
    """The whole hunt (see the module docstring). `say` gets the progress lines;
    `report(run_id)` writes a run's report and returns its path (the CLI's UI layer).
    Raises RunError or StoreError before anything is searched when the results dir
    cannot be used; harness errors later are counted in the result (exit code 3)."""
    store.check_writable(results)
    db = store.open_db(results, create=True)
    try:
        hunt_id = store.create_hunt(db, "hunt-" + dt.datetime.now(dt.UTC).strftime(
            "%Y%m%dT%H%M%S"), dict(config_doc or {}) | {"run": asdict(cfg)})
    finally:
        db.conn.close()
    res: HuntResult | None = None
    try:
        res = _hunt(hunt_id, cfg, results=results, budget=budget, seeds=seeds,
                    first_seed=first_seed, workers=workers, confirm=confirm, rare=rare,
                    say=say, report=report, guided=guided, crash_points=crash_points)
    except BaseException:
        _finish(results, hunt_id, res, status="aborted")
        raise
    _finish(results, hunt_id, res, status="done")
    return res


def _hunt(hunt_id: str, cfg: RunConfig, *, results: str, budget: float | None,
          seeds: int | None, first_seed: int, workers: int, confirm: int, rare: int,
          say: Say, report: Callable[[str], str | None] | None,
          guided: bool | None = None, crash_points: int = 0) -> HuntResult:
    t0 = time.monotonic()
    s, firsts = _search_phase(hunt_id, cfg, budget=budget, seeds=seeds,
                              first_seed=first_seed, workers=workers, t0=t0, say=say,
                              guided=guided, crash_points=crash_points)
    res = HuntResult(hunt_id, results, cfg, budget, confirm, s)
    _store_failures(res, firsts)
    _shrink_findings(res, t0, workers, say)
    _confirm_phase(res, rare, say, report)
    if report is not None:
        for f in res.findings:
            f.report = _safe_report(report, f.sim_run, res)
    res.exit_code = _exit_code(res)
    return res


def _search_phase(hunt_id: str, cfg: RunConfig, *, budget: float | None, seeds: int | None,
                  first_seed: int, workers: int, t0: float, say: Say,
                  guided: bool | None = None,
                  crash_points: int = 0) -> tuple[Search, dict[str, int]]:
    """The simulated search, keeping the record of only the first seed of each failure
    kind (a record is a whole run held in memory: the other seeds of a kind are counted,
    never stored). Also returns kind -> that first seed, in the order the kinds were
    found, which is the order the findings are numbered in."""
    seed_list = list(range(first_seed, first_seed + seeds)) if seeds is not None else None
    firsts: dict[str, int] = {}  # kind -> its first seed (the one kept)

    def keep(r: SeedResult) -> bool:
        kind = r.failing or f"unknown ({r.checker or '?'})"
        if kind in firsts:
            return False
        firsts[kind] = r.seed
        return True

    def progress(r: SeedResult, s: Search) -> None:
        n = len(s.results)
        if r.verdict == "invalid" and firsts.get(r.failing or "") == r.seed:
            say(f"  {r.label}: {r.failing}: {r.sentence[:160]}"
                + (f" ({r.lineage})" if r.lineage else ""))
        if n % 25 == 0:
            say(f"  {n} seeds, {n / max(1e-9, time.monotonic() - t0):.2f} seeds/s, "
                f"{len(s.invalid)} failed, coverage {len(s.coverage_counts())}/{len(POINTS)}")

    say(f"hunt {hunt_id}: searching in simulation"
        + (f" for up to {budget:g} s (search and shrinking)" if budget else "")
        + (f", seeds {first_seed}..{first_seed + seeds - 1}" if seeds else "")
        + f", {workers} workers")
    s = search(cfg, seeds=seed_list, budget=budget, first_seed=first_seed, workers=workers,
               t0=t0, keep=keep, on_result=progress, guided=guided,
               crash_points=crash_points)
    return s, firsts


def _store_failures(res: HuntResult, firsts: Mapping[str, int]) -> None:
    """Store each kind's first seed as a run (a finding when it is invalid, else an
    undecided seed), then the coverage of every seed: a finding must point at a stored
    run before anything is shrunk or confirmed, so an interrupted hunt still shows it."""
    s, results = res.search, res.results
    stored: list[int] = []
    by_kind: dict[str, list[int]] = {}
    for r in s.failed:
        by_kind.setdefault(r.failing or f"unknown ({r.checker or '?'})", []).append(r.seed)
    order = list(firsts.values())  # the kinds in the order they were found
    reps = [r for r in s.failed if r.record is not None]
    reps.sort(key=lambda r: order.index(r.seed) if r.seed in order else len(order))
    for r in reps:
        assert r.record is not None
        run_id = store_run(results, r.record)
        stored.append(r.seed)
        if r.verdict == "invalid" and r.failing:
            res.findings.append(Finding(len(res.findings) + 1, r.failing, r.seed,
                                        r.sentence, r.t_ns, run_id,
                                        seeds=by_kind.get(r.failing, [r.seed])))
        else:
            res.undecided.append((r.seed, f"{r.verdict}: {r.checker}: {r.sentence[:160]}",
                                  run_id))
    for r in s.undecided:
        if r.seed not in stored:
            res.undecided.append((r.seed, f"{r.verdict}: {r.checker}: {r.sentence[:160]}",
                                  None))
    res.errors += [f"seed {r.seed}: {r.error}" for r in s.errors]
    record_coverage(results, res.hunt_id, "hunt", res.cfg, s, stored)


def _shrink_findings(res: HuntResult, t0: float, workers: int, say: Say) -> None:
    """Shrink each kind once, within what is left of the budget: each finding gets an
    equal share of what remains when its turn comes, so a quick shrink leaves more time
    to the ones after it."""
    t_shrink = time.monotonic()
    end = None if res.budget is None else t0 + res.budget
    recs = {r.seed: r.record for r in res.search.invalid if r.record is not None}
    for i, f in enumerate(res.findings):
        deadline = None if end is None else time.monotonic() + max(
            0.0, end - time.monotonic()) / (len(res.findings) - i)
        sh = _shrink_kind(f, recs[f.seed], res.results, workers, deadline, say)
        recs.pop(f.seed, None)
        _keep_shrunk(res, f, sh, say)
    res.shrink_seconds = round(time.monotonic() - t_shrink, 3)


def _keep_shrunk(res: HuntResult, f: Finding, sh: Shrunk, say: Say) -> None:
    """Write the shrunk plan next to the finding's simulated run, as the plan file
    `cutover run --plan` plays (the confirmations replay that very file), and record it."""
    path = os.path.join(res.results, f.sim_run, "shrunk-plan.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(sh.to_file_doc(f.seed), fh, indent=2, default=str)
    f.plan_file = path
    f.signature = _signature(f.kind, sh.plan)
    f.shrunk = {"faults": sh.plan.describe()[1:], "time_limit": sh.config.time_limit,
                "nodes": sh.config.nodes, "simulations": sh.simulations,
                "complete": sh.complete, "steps_before": sh.steps_before,
                "steps": len([x for x in sh.plan.steps if not (
                    x.action == "enable" and x.params.get("main"))])}
    _put_finding(res.results, res.hunt_id, f)
    say(f"  finding {f.index}: {f.kind}: shrunk to {f.shrunk['steps']} fault(s), "
        f"{sh.config.time_limit:g} s, {sh.config.nodes} nodes "
        f"({sh.simulations} simulations{'' if sh.complete else ', not minimal'}): {path}")


def _confirm_phase(res: HuntResult, rare: int, say: Say,
                   report: Callable[[str], str | None] | None) -> None:
    """Real runs come after the budget (their cost is their schedules' length, not
    search time), so their wall time is measured apart."""
    t_conf = time.monotonic()
    for f in res.findings:
        _confirm(res, f, say, report)
    _rare_runs(res, rare, say, report)
    res.confirm_seconds = round(time.monotonic() - t_conf, 3)


def _safe_report(report: Callable[[str], str | None], run_id: str,
                 res: HuntResult) -> str | None:
    try:
        return report(run_id)
    except Exception as e:  # noqa: BLE001 - a report that cannot be written is said, not fatal
        res.errors.append(f"report of {run_id}: {e}")
        return None


def _put_finding(results: str, hunt_id: str, f: Finding) -> None:
    db = store.open_db(results, create=True)
    try:
        store.put_finding(db, hunt_id, f.index, kind=f.kind, signature=f.signature,
                          sentence=f.sentence, seed=f.seed, sim_run=f.sim_run,
                          plan_file=None if f.plan_file is None
                          else os.path.relpath(f.plan_file, results),
                          confirmed=f.confirmed, attempts=len(f.runs), gap=f.gap,
                          detail={"seeds": f.seeds, "shrunk": f.shrunk, "t_ns": f.t_ns})
    finally:
        db.conn.close()


def _add_run(results: str, hunt_id: str, r: RealRun) -> None:
    db = store.open_db(results, create=True)
    try:
        store.add_hunt_run(db, hunt_id, r.run_id, finding=r.finding, role=r.role,
                           seed=r.seed, verdict=r.verdict, kind=r.kind, outcome=r.outcome,
                           seconds=r.seconds, detail={"sentence": r.sentence,
                                                      "compare": r.compare, **r.detail})
    finally:
        db.conn.close()


def _record_real(res: HuntResult, o: RunOutcome, role: str, outcome: str, started: float,
                 sim_events: list[dict[str, Any]], who: str,
                 report: Callable[[str], str | None] | None, **extra: Any) -> RealRun:
    """A real run the hunt made, kept: compared with its simulation, its report written,
    stored in the hunt record; a harness error is the hunt's too, and Ctrl-C during it
    ends the hunt (after it is recorded)."""
    rr = RealRun(o.run_id, role, o.seed, o.verdict, failing_kind(o.verdict, o.first, o.checks),
                 outcome, round(time.monotonic() - started, 1),
                 (o.first or ("", o.summary, None))[1], sorted(o.coverage),
                 compare_events(sim_events, _real_events(res.results, o.run_id)), **extra)
    if o.verdict == "error":
        res.errors.append(f"{who}: real run {o.run_id}: {o.summary}")
    if report is not None:
        rr.report = _safe_report(report, o.run_id, res)
    _add_run(res.results, res.hunt_id, rr)
    return rr


def _confirm(res: HuntResult, f: Finding, say: Say,
             report: Callable[[str], str | None] | None) -> None:
    """The shrunk plan, `res.confirm` times on real processes; a pass is a fidelity gap,
    recorded with what differed."""
    if not res.confirm or f.plan_file is None:
        return
    try:
        rcfg = plan_file_config(f.plan_file, res.results)
        sim_events, _o = _sim_events(replace(rcfg, plan_file=None),
                                     read_plan_file(f.plan_file)[1])
    except (RunError, OSError) as e:
        res.errors.append(f"finding {f.index}: cannot replay {f.plan_file}: {e}")
        return
    for k in range(1, res.confirm + 1):
        say(f"  confirming finding {f.index} on real processes ({k}/{res.confirm}, "
            f"{rcfg.time_limit:g} s schedule)...")
        t = time.monotonic()
        try:
            o = _real(rcfg)
        except RunError as e:
            res.errors.append(f"finding {f.index}: real run {k}: {e}")
            say(f"    harness error: {e}")
            continue
        kind = failing_kind(o.verdict, o.first, o.checks)
        rr = _record_real(res, o, "confirm", _confirm_outcome(f.kind, o, kind), t, sim_events,
                          f"finding {f.index}", report, finding=f.index)
        f.runs.append(rr)
        _stop_if_aborted(o)
        say(f"    real run {o.run_id}: {o.verdict.upper()}"
            + (f" {kind}" if kind else "") + f" ({rr.outcome}, {rr.seconds:.0f} s)")
    passed = [r for r in f.runs if r.outcome == "passed"]
    if passed:
        f.gap = {"passed": len(passed), "of": len(f.runs), "runs": [r.run_id for r in passed],
                 "differed": passed[0].compare, "line": differed_line(passed[0].compare)}
    _put_finding(res.results, res.hunt_id, f)


def pick_rare(s: Search, n: int) -> list[tuple[SeedResult, list[str]]]:
    """Up to `n` passing seeds that reached the rarest coverage points (the fewest other
    seeds reached them), each with its rare points: where a real run is worth most."""
    if n <= 0:
        return []
    counts = s.coverage_counts()
    total = max(1, len(s.results))
    cands = []
    for r in s.passed:
        if r.lineage:  # a mutant's plan is not its seed's: a real run of the seed is not it
            continue
        pts = [p for p in r.coverage if p in counts]
        if not pts:
            continue
        low = min(counts[p] for p in pts)
        rare = sorted(p for p in pts if counts[p] <= max(low, total * 0.1))
        cands.append((low, -len(rare), r.seed, r, rare))
    cands.sort(key=lambda c: c[:3])
    return [(c[3], c[4]) for c in cands[:n]]


def _rare_runs(res: HuntResult, n: int, say: Say,
               report: Callable[[str], str | None] | None) -> None:
    counts = res.search.coverage_counts()
    for r, points in pick_rare(res.search, n):
        rcfg = replace(res.cfg, seed=r.seed, results=res.results, plan_file=None)
        say(f"  real run of seed {r.seed} (simulated, it reached rare points: "
            f"{', '.join(f'{p} ({counts[p]}/{len(res.search.results)} seeds)' for p in points)})"
            f"...")
        t = time.monotonic()
        try:
            sim_events, _o = _sim_events(replace(res.cfg, seed=r.seed), None)
            o = _real(rcfg)
        except RunError as e:
            res.errors.append(f"rare seed {r.seed}: {e}")
            continue
        reached = sorted(p for p in points if p in o.coverage)
        outcome = {"valid": "reached" if len(reached) == len(points) else "missed",
                   "invalid": "failed"}.get(o.verdict, o.verdict)
        rr = _record_real(res, o, "rare", outcome, t, sim_events, f"rare seed {r.seed}",
                          report, detail={"rare_points": points, "reached": reached})
        kind = rr.kind
        res.rare.append(rr)
        _stop_if_aborted(o)
        say(f"    real run {o.run_id}: {o.verdict.upper()}" + (f" {kind}" if kind else "")
            + f", reached {len(reached)}/{len(points)} of those points ({rr.seconds:.0f} s)")


def _exit_code(res: HuntResult) -> int:
    """1 a finding; 3 a harness error (and no finding); 2 nothing judged (every seed
    vacuous or undecided, or none finished); 0 nothing found, something tested. A real
    run that failed is a finding too (a rare-coverage seed the simulator passed)."""
    if res.findings or any(r.verdict == "invalid" for r in res.rare):
        return 1
    if res.errors:
        return EXIT_HARNESS
    if not res.search.passed:
        return 2
    return 0


def _finish(results: str, hunt_id: str, res: HuntResult | None, status: str) -> None:
    try:
        db = store.open_db(results, create=True)
    except store.StoreError:
        return
    try:
        if res is None:
            store.finish_hunt(db, hunt_id, status=status, exit_code=130,
                              summary="ABORTED: the hunt was interrupted", detail={})
            return
        store.finish_hunt(db, hunt_id, status=status, exit_code=res.exit_code,
                          summary=verdict_line(res), detail=_detail_doc(res))
    finally:
        db.conn.close()


def _detail_doc(res: HuntResult) -> dict[str, Any]:
    s = res.search
    return {"budget": res.budget, "confirm": res.confirm,
            "search": {**batch_counts(s), "wall_s": s.wall_seconds,
                       "first_failure_s": s.first_failure_s, "stopped": s.stopped,
                       "undecided": len(s.undecided)},
            "shrink_s": res.shrink_seconds, "confirm_s": res.confirm_seconds,
            "coverage": {"sim": sorted(res.sim_coverage()),
                         "real": sorted(res.real_coverage()),
                         "sim_counts": s.coverage_counts()},
            "undecided": [{"seed": a, "why": b, "run": c} for a, b, c in res.undecided],
            "errors": res.errors[:50]}


def verdict_line(res: HuntResult) -> str:
    """The hunt's one-line verdict (stored as its summary, printed before the exit)."""
    n = len(res.search.results)
    if res.findings:
        parts = [f"{f.kind} (seed {f.seed}, confirmed on real processes "
                 f"{f.confirmed}/{len(f.runs) if f.runs else res.confirm})"
                 for f in res.findings]
        return f"FOUND {len(res.findings)}: " + "; ".join(parts)
    bad = [r for r in res.rare if r.verdict == "invalid"]
    if bad:
        return (f"FOUND on real processes only: seed {bad[0].seed}: {bad[0].kind}: "
                f"{bad[0].sentence[:200]}")
    if res.errors:
        return f"HARNESS ERROR: {res.errors[0][:200]}"
    if not res.search.passed:
        return (f"NOTHING TESTED: {n} seeds, {len(res.search.vacuous)} vacuous, "
                f"{len(res.search.undecided)} undecided")
    return f"NOTHING FOUND in {n} simulated seeds and {len(res.real_runs())} real runs"


# ----------------------------------------------------------------------- the summary


def summary_lines(res: HuntResult) -> list[str]:
    """What `cutover hunt` prints last: each finding (kind, first violation, seed, shrunk
    plan, real confirmations, reports), the coverage in both worlds, the exit, and the
    next commands."""
    out = _phase_lines(res)
    for f in res.findings:
        out.append("")
        out += _finding_lines(res, f)
    if res.undecided:
        out.append("")
        out.append(f"undecided ({len(res.undecided)} seeds, neither a pass nor a finding):")
        for seed, why_, run in res.undecided[:5]:
            out.append(f"  seed {seed}: {why_}" + (f" (run {run})" if run else ""))
    if res.rare:
        out.append("")
        out += _rare_lines(res)
    for e in res.errors[:5]:
        out.append(f"harness error: {e}")
    out.append("")
    out += _coverage_lines(res)
    out.append("")
    out.append(f"exit {res.exit_code}: {verdict_line(res)}")
    out.append("next:")
    out += [f"  {c}" for c in _next_commands(res)]
    return out


def _phase_lines(res: HuntResult) -> list[str]:
    """The build and one line per phase, with its time: a reader weighs a finding (or
    its absence) by how much was searched, and sees where the wall time went."""
    s, cfg = res.search, res.cfg
    build = ",".join(cfg.bugs) or cfg.profile
    out = [f"hunt {res.hunt_id}: {build}, {cfg.nodes} nodes, {cfg.time_limit:g} s "
           f"schedules, scenario {cfg.scenario}, nemesis {cfg.nemesis}"]
    rate = len(s.results) / max(s.wall_seconds, 1e-9)
    why = {"found": "stopped at half the budget: something failed",
           "budget": "the budget was spent", "seeds": "every seed given"}[s.stopped]
    out.append(f"search: {len(s.results)} simulated seeds in {s.wall_seconds:.1f} s "
               f"({rate:.2f} seeds/s; {why}): {len(s.invalid)} failed in "
               f"{len(res.findings)} kind(s), {len(s.passed)} passed, {len(s.vacuous)} "
               f"vacuous, {len(s.undecided)} undecided, {len(s.errors)} harness errors")
    total = s.wall_seconds + res.shrink_seconds
    out.append(f"shrink: {len(res.findings)} kind(s) in {res.shrink_seconds:.1f} s"
               + (f" (search and shrinking {total:.1f} s of the {res.budget:g} s budget)"
                  if res.budget else ""))
    out.append(f"real runs: {len(res.real_runs())} in {res.confirm_seconds:.1f} s (after the "
               f"budget: {res.confirm} per finding, {len(res.rare)} on rare-coverage seeds)")
    return out


def _finding_lines(res: HuntResult, f: Finding) -> list[str]:
    """One finding, told in the order a reader acts on it: what broke, the smallest plan
    that still breaks it, whether real processes agree (a fidelity gap when they do
    not), and where the reports are."""
    out = [f"finding {f.index}: {f.kind}"]
    when = f" at {f.t_ns / 1e9:.1f}s" if isinstance(f.t_ns, int | float) else ""
    out.append(f"  first violation{when}: {f.sentence}")
    others = len(f.seeds) - 1
    out.append(f"  simulated seed {f.seed} (run {f.sim_run})"
               + (f"; {others} other seed(s) failed this way" if others > 0 else ""))
    sh = f.shrunk
    if f.plan_file:
        out.append(f"  shrunk plan: {f.plan_file} ({sh.get('steps')} fault(s) of "
                   f"{sh.get('steps_before')}, {sh.get('time_limit'):g} s, "
                   f"{sh.get('nodes')} nodes"
                   + ("" if sh.get("complete", True) else "; not minimal: budget spent")
                   + ")")
        for ln in sh.get("faults") or []:
            out.append(f"    {ln}")
    out.append(f"  signature: {f.signature}")
    k = len(f.runs)
    out.append(f"  confirmed on real processes {f.confirmed}/{k or res.confirm}"
               + ("" if k or not res.confirm else " (no real run could be made)")
               + ("" if res.confirm else " (--confirm 0: not attempted)"))
    for r in f.runs:
        out.append(f"    real run {r.run_id}: {r.verdict.upper()}"
                   + (f" {r.kind}" if r.kind else "") + f" ({r.outcome}, "
                   f"{r.seconds:.0f} s; events: {differed_line(r.compare)})")
    if f.gap:
        out.append(f"  FIDELITY GAP: it passed on real processes {f.gap['passed']}/"
                   f"{f.gap['of']}; what differed: {f.gap['line']}")
    reps = [x for x in [f.report, *(r.report for r in f.runs)] if x]
    out.append("  reports: " + (", ".join(reps) if reps else
                                 f"cutover report {f.sim_run}"))
    return out


def _rare_lines(res: HuntResult) -> list[str]:
    """The real runs of rare-coverage seeds: whether real processes reached the points
    the simulator says are rare, which is what those runs were spent on."""
    out = []
    for r in res.rare:
        pts = r.detail.get("rare_points") or []
        out.append(f"rare coverage: seed {r.seed} on real processes: run {r.run_id} "
                   f"{r.verdict.upper()}" + (f" {r.kind}" if r.kind else "")
                   + f", reached {len(r.detail.get('reached') or [])}/{len(pts)} of its "
                   f"rare points ({', '.join(pts)}); events: {differed_line(r.compare)}")
    return out


def _coverage_lines(res: HuntResult) -> list[str]:
    """Coverage in both worlds and together: a point reached only in simulation is one
    the real runs never exercised, and a point never reached is a blind spot of the
    whole hunt."""
    s = res.search
    n_real = len(res.real_runs())
    sim_cov, real_cov = res.sim_coverage(), res.real_coverage()
    out = [f"coverage: simulated {len(sim_cov)}/{len(POINTS)} points over "
           f"{len(s.results)} seeds ({len(s.passed)} passing, included); real "
           f"{len(real_cov)}/{len(POINTS)} over {n_real} runs; together "
           f"{len(sim_cov | real_cov)}/{len(POINTS)}"]
    only_sim = sorted(sim_cov - real_cov) if n_real else []
    if only_sim:
        out.append(f"  reached in simulation only: {', '.join(only_sim)}")
    never = sorted(set(POINTS) - sim_cov - real_cov)
    if never:
        out.append(f"  never reached: {', '.join(never)}")
    return out


def _next_commands(res: HuntResult) -> list[str]:
    """The commands to look further, the first findings' first: their runs, and the plan
    file to replay."""
    opt = "" if res.results == "results" else f" --results {res.results}"
    nxt = []
    for f in res.findings[:2]:
        nxt.append(f"cutover show {f.sim_run}{opt}")
        if f.runs:
            nxt.append(f"cutover show {f.runs[0].run_id}{opt}")
        if f.plan_file:
            nxt.append(f"cutover run --plan {f.plan_file}{opt}")
    for r in res.rare[:1]:
        nxt.append(f"cutover show {r.run_id}{opt}")
    nxt += [f"cutover list{opt}", f"cutover coverage{opt}", f"cutover serve{opt}"]
    return nxt


# ------------------------------------------------------------ cutover bench fidelity


@dataclass
class FidelityRow:
    seed: int
    sim_verdict: str
    real_verdict: str
    real_run: str | None
    compare: dict[str, Any]


def bench_fidelity(cfg: RunConfig, seeds: list[int], results: str,
                   say: Say = _quiet) -> list[FidelityRow]:
    """The same plans in both worlds: each seed simulated, its plan written as a plan file
    and played on real processes (`cutover run --plan`), and the protocol-event
    sequences compared (`compare_events`). Real runs are stored in `results`."""
    store.check_writable(results)
    rows = []
    for seed in seeds:
        c = replace(cfg, seed=seed, results=results, plan_file=None)
        events, o = _sim_events(c, None)
        doc = {"format": "cutover-plan", "failing": o.failing,
               "config": {k: v for k, v in o.config.items() if k not in ("plan", "plan_file")},
               "plan": o.plan.to_dict()}
        fd, path = tempfile.mkstemp(prefix=f"fidelity-s{seed}-", suffix=".json", dir=results)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=2, default=str)
        try:
            r = _real(plan_file_config(path, results))
        finally:
            os.unlink(path)
        _stop_if_aborted(r)
        cmp = compare_events(events, _real_events(results, r.run_id))
        rows.append(FidelityRow(seed, o.verdict, r.verdict, r.run_id, cmp))
        say(f"seed {seed}: sim {o.verdict}, real {r.verdict} (run {r.run_id}): "
            f"{'match' if cmp['match'] else 'differ: ' + differed_line(cmp)}")
    return rows


def fidelity_lines(rows: list[FidelityRow]) -> list[str]:
    """The figure (`fidelity=K/N`) and the mismatch kinds, with how often each."""
    n = len(rows)
    k = sum(r.compare["match"] for r in rows)
    kinds: Counter[str] = Counter(m for r in rows for m in r.compare["mismatch"])
    per_class: Counter[str] = Counter()
    for r in rows:
        for cls in r.compare["counts"]:
            if cls not in r.compare["mismatch"]:
                per_class[cls] += 1
    out = ["mismatch kinds: " + (", ".join(f"{m} {c}/{n}" for m, c in kinds.most_common())
                                 or "none")]
    out.append("agreement per class: " + ", ".join(
        f"{cls} {per_class[cls]}/{n}" for cls in dict.fromkeys(CLASSES.values())))
    verdicts = sum(r.sim_verdict == r.real_verdict for r in rows)
    out.append(f"same verdict in both worlds: {verdicts}/{n}")
    out.append(f"fidelity={k}/{n} ({k / max(n, 1):.0%} of the plans have the same "
               f"protocol-event sequence in both worlds)")
    return out
