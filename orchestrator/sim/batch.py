"""`cutover sim`: many seeds in worker processes, failing seeds stored as runs, shrunk.

Each seed is one simulated run (`simulate`) of the same `RunConfig` with that seed (its own plan). A
worker returns a small summary; a failing seed's whole record (config, plan, history,
nemesis, events, checks, coverage, the nodes' files) comes back too, and is stored as a
run of the results database (source `sim`) so `show`, `report`, `serve` and `export`
work on it unchanged. The first failing seed of each failure kind is shrunk
(`shrink.py`) and its minimal plan written next to it, replayable with
`cutover sim --replay FILE` and, on real processes, `cutover run --plan FILE`.
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from checker import suite
from nemesis.plan import Plan
from orchestrator import store
from orchestrator.lifeline import worker_pool
from orchestrator.run.config import RunConfig
from orchestrator.run.program import new_run_id, verdict_line
from orchestrator.sim.corpus import Guide, features
from orchestrator.sim.crashpoints import pick_crash_points
from orchestrator.sim.run import SimOutcome, simulate


@dataclass
class SeedResult:
    seed: int
    verdict: str
    failing: str | None
    sentence: str
    t_ns: Any
    coverage: list[str]
    sim_seconds: float
    cpu_seconds: float
    record: dict[str, Any] | None = None  # only for a failing seed: what to store
    error: str | None = None
    checker: str = ""  # the checker behind a verdict that is not valid ("vacuity", ...)
    # What the run reached, finer than `coverage` (`corpus.features`): the guided search's
    # news. The plan that ran, when the search keeps a corpus (it may keep this one).
    features: list[str] = field(default_factory=list)
    plan: dict[str, Any] | None = None
    lineage: str = ""  # a mutant's parent and mutations (`corpus.Job`); "" for a seed's own
    # Crash-consistency exploration (`crashpoints.py`): the crash points a base run
    # picked for its re-runs, and a re-run's own (None for a seed's own run).
    crash_points: list[dict[str, Any]] = field(default_factory=list)
    crash_point: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        """How a person names this run: its seed, and a re-run's crash point."""
        cp = self.crash_point
        if cp is None:
            return f"seed {self.seed}"
        return (f"seed {self.seed} crashed at {cp['node']}'s boundary {cp['k']} "
                f"({cp.get('point', '?')}, {cp['action']}"
                + (f", again {cp['again']} later" if cp.get("again") else "") + ")")

    @property
    def is_vacuous(self) -> bool:
        """It tested less than it was asked to (no cutover, no fault, no operation)."""
        return self.verdict == "unknown" and self.checker == "vacuity"

    @property
    def is_failure(self) -> bool:
        """It found something (or could not decide): not a vacuous seed."""
        return self.verdict == "invalid" or (self.verdict == "unknown" and not self.is_vacuous)


def _record(o: SimOutcome) -> dict[str, Any]:
    files: dict[str, bytes] = {}
    for root, _dirs, fs in os.walk(o.run_dir):
        for f in fs:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                files[os.path.relpath(p, o.run_dir)] = fh.read()
    return {"config": o.config, "ops": o.ops, "nemesis": o.nemesis,
            "events": [{k: v for k, v in e.items() if k != "_i"} for e in o.events],
            "checks": o.checks, "coverage": o.coverage, "t0_ns": o.t0_ns, "files": files,
            "verdict": o.verdict, "first": o.first, "sim_seconds": o.sim_seconds,
            "cpu_seconds": o.cpu_seconds,
            "log_entries": o.log_entries, "rows": o.rows}


def run_seed(cfg_doc: dict[str, Any], seed: int, keep: bool = True,
             plan_doc: dict[str, Any] | None = None, with_plan: bool = False,
             crash_points: int = 0) -> SeedResult:
    """One seed in this process (a worker's job); never raises. `with_plan`: send the
    plan back (a guided search may keep it in its corpus). `crash_points`: count the
    nodes' durability boundaries and pick that many crash points for re-runs."""

    cfg = RunConfig.from_dict({**cfg_doc, "seed": seed})
    with tempfile.TemporaryDirectory(prefix="cutover-sim-") as tmp:
        try:
            o = simulate(cfg, tmp, Plan.from_dict(plan_doc) if plan_doc else None,
                         probe=crash_points > 0)
        except Exception as e:  # noqa: BLE001 - a harness error, reported as such
            return SeedResult(seed, "error", None, f"{type(e).__name__}: {e}", None, [], 0.0,
                              0.0, error=f"{type(e).__name__}: {e}")
        first = o.first or ("", "", None)
        rec = _record(o) if keep and o.verdict != "valid" else None
        return SeedResult(seed, o.verdict, o.failing, first[1], first[2], sorted(o.coverage),
                          o.sim_seconds, o.cpu_seconds, rec, checker=first[0],
                          features=features(o.events, o.nemesis, o.coverage),
                          plan=o.plan.to_dict() if with_plan else None,
                          crash_points=pick_crash_points(seed, o.boundaries, crash_points),
                          crash_point=cfg.crash_point)


@dataclass
class BatchResult:
    results: list[SeedResult] = field(default_factory=list)
    wall_seconds: float = 0.0
    first_failure_s: float | None = None  # wall time at which the first failing seed ended
    stored: dict[int, str] = field(default_factory=dict)  # seed -> run id

    @property
    def failed(self) -> list[SeedResult]:
        """Seeds that found something (or could not decide): not the vacuous ones."""
        return [r for r in self.results if r.is_failure]

    @property
    def vacuous(self) -> list[SeedResult]:
        """Seeds that tested less than they were asked to (no cutover, no fault, no
        operation): neither a pass nor a finding. A search skips them; a batch of
        nothing else has tested nothing."""
        return [r for r in self.results if r.is_vacuous]

    @property
    def errors(self) -> list[SeedResult]:
        return [r for r in self.results if r.verdict == "error"]


def run_batch(cfg: RunConfig, *, seeds: list[int] | None = None, budget: float | None = None,
              first_seed: int = 1, workers: int = 2,
              on_result: Callable[[SeedResult, BatchResult], None] | None = None,
              keep: bool = True, guide: Guide | None = None,
              crash_points: int = 0) -> BatchResult:
    """Seeds in `workers` processes: the given list, or as many as fit in `budget`
    seconds of wall time (starting at `first_seed`). With a `guide`, each seed runs the
    plan the guide chose for it (its own, or a mutant sent as a plan dict), and a seed
    is submitted only once the guide knows what it needs to choose (`Guide.can_plan`).
    With `crash_points` N, each seed's run that held (valid) is re-run N times, each
    crashed at one durability boundary it picked (`crashpoints.py`); a re-run goes
    before the next seed, and counts against the budget like a seed."""
    doc = asdict(cfg)
    out = BatchResult()
    t0 = time.monotonic()
    nxt = first_seed
    todo = list(seeds) if seeds is not None else None
    lineage: dict[int, str] = {}
    # (seed, crash point, the plan a guided seed ran) of the re-runs still to run
    reruns: list[tuple[int, dict[str, Any], dict[str, Any] | None]] = []
    # Workers that die with us (SIGKILL included), killed at once on Ctrl-C/SIGTERM.
    with worker_pool(workers) as ex:
        pending: set[cf.Future[SeedResult]] = set()

        def submit() -> bool:
            nonlocal nxt
            if reruns:
                if budget is not None and time.monotonic() - t0 >= budget:
                    return False
                s, cp, plan = reruns.pop(0)
                pending.add(ex.submit(run_seed, {**doc, "crash_point": cp}, s, keep, plan))
                return True
            if guide is not None and not guide.can_plan():
                return False  # again when a seed it waits for is done
            if todo is not None:
                if not todo:
                    return False
                s = todo.pop(0)
            else:
                if budget is not None and time.monotonic() - t0 >= budget:
                    return False
                s = nxt
                nxt += 1
            if guide is None:
                pending.add(ex.submit(run_seed, doc, s, keep, None, False, crash_points))
                return True
            job = guide.plan(s)
            lineage[s] = job.lineage
            pending.add(ex.submit(run_seed, doc, s, keep, job.plan, True, crash_points))
            return True

        def fill() -> None:
            while len(pending) < max(1, workers) * 2 and submit():
                pass

        fill()
        while pending:
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                pending.discard(fut)
                r = fut.result()
                if guide is not None and r.crash_point is None:
                    r.lineage = lineage.pop(r.seed, "")
                    guide.done(r.seed, r.plan, r.features)
                    r.plan = r.plan if r.lineage else None  # a seed's own: its seed says it
                out.results.append(r)
                if r.verdict == "valid":  # a failing base run needs no crash to fail
                    reruns.extend((r.seed, cp, r.plan) for cp in r.crash_points)
                if out.first_failure_s is None and r.is_failure:
                    out.first_failure_s = round(time.monotonic() - t0, 3)
                if on_result is not None:
                    on_result(r, out)
                fill()
    out.results.sort(key=lambda r: (r.seed, r.crash_point is not None,
                                    json.dumps(r.crash_point, sort_keys=True)))
    out.wall_seconds = round(time.monotonic() - t0, 3)
    return out


def store_run(results: str, rec: dict[str, Any]) -> str:
    """Store one simulated run like a real one: the run dir (nodes' files, kek,
    config.json) and its rows (runs with source `sim`, ops, nemesis, node events,
    checks, coverage). Returns the run id."""

    cfg = rec["config"]
    seed = int(cfg.get("seed") or 0)
    run_id = new_run_id(results, seed)
    base = os.path.join(results, run_id)
    for rel, data in rec["files"].items():
        p = os.path.join(base, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        mode = 0o600 if rel == "kek" else 0o644
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    with open(os.path.join(base, "config.json"), "w", encoding="utf-8") as fh:
        json.dump(cfg, fh, indent=2, default=str)
    verdict = rec["verdict"]
    first = tuple(rec["first"]) if rec.get("first") else None
    summary = "SIMULATED " + verdict_line(verdict, first, seed, cfg.get("bugs") or [],
                                          cfg.get("profile") or "fixed")
    r = store.Recorder(results, run_id, 0)
    try:
        # started..finished is the seed's own time in its worker (the UI's wall time of
        # a simulated run; duration_s is simulated seconds)
        end = dt.datetime.now(dt.UTC)
        now = (end - dt.timedelta(seconds=float(rec.get("cpu_seconds") or 0.0))
               ).isoformat(timespec="milliseconds")
        r.run_row(started=now, finished=end.isoformat(timespec="milliseconds"), seed=seed,
                  workload=cfg.get("workload"),
                  nemesis=",".join(cfg.get("plan", {}).get("families") or []) or "none",
                  bugs=",".join(cfg.get("bugs") or []), config=cfg, status="done",
                  verdict=verdict, exit_code=suite.EXIT_CODES.get(verdict, 2),
                  summary=summary, run_dir=run_id, t0_ns=rec["t0_ns"],
                  duration_s=rec.get("sim_seconds"), source="sim")
        r.rows("ops", [{"idx": o["idx"], "time_ns": o["time_ns"], "process": o["process"],
                        "type": o["type"], "f": o["f"], "key": o["key"],
                        "value": None if o["value"] is None else json.dumps(o["value"]),
                        "error": o["error"], "node": o["node"]} for o in rec["ops"]])
        r.rows("nemesis", [{"idx": n["idx"], "time_ns": n["time_ns"], "f": n["f"],
                            "fault": n["fault"], "targets": json.dumps(n["targets"]),
                            "detail": None if n["detail"] is None else json.dumps(
                                n["detail"], default=str)} for n in rec["nemesis"]])
        seqs: dict[str, int] = {}
        rows = []
        for e in rec["events"]:
            node = e["node"]
            seqs[node] = seqs.get(node, -1) + 1
            detail = {k: v for k, v in e.items() if k not in ("t", "kind", "node", "time_ns")}
            rows.append({"node": node, "seq": seqs[node], "time_ns": e["time_ns"],
                         "kind": e["kind"], "detail": json.dumps(detail, default=str)})
        r.rows("node_events", rows)
        # The verdict's rows, as the run program made them (`program.verdict_rows`).
        for table, rows_ in (rec.get("rows") or {}).items():
            r.rows(table, rows_)
        r.flush()
    finally:
        r.close()
    return run_id


def temp_results() -> str:
    return tempfile.mkdtemp(prefix="cutover-sim-results-")


def cleanup(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
