"""`cutover run`: one whole test, as data in (`RunConfig`) and a verdict out.

Phases (Jepsen's shape, Maelstrom's defaults): start the switchboard and the nodes,
wait for a leader, bootstrap encryption; then clients at `rate` over `concurrency`
workers while the nemesis plays its plan and the cutover sequence asks for
EnableRaftEnvelope at `cutover_at`; at `time_limit` heal everything (network, paused
and dead nodes, stuck barriers); a quiet period; a final read of every key; stop the
nodes cleanly (their last digests are I4's evidence); run every checker; store it all.

Everything recorded goes to SQLite as it happens, so Ctrl-C (or SIGTERM, or a crash)
keeps the history so far; the run is then marked `aborted` and no process is left.
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import os
import resource
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from checker import suite
from nemesis.plan import parse_families
from node.keystore import write_kek
from orchestrator import store
from orchestrator.errors import EXIT_ABORTED, EXIT_HARNESS
from orchestrator.real.cluster import ClusterError
from orchestrator.real.switchboard import SwitchboardError
from orchestrator.real.world import RealWorld, ingest_node_events  # noqa: F401
from orchestrator.run.config import (  # noqa: F401 - the run's names, re-exported for its callers
    RANGES,
    RunConfig,
    RunError,
    read_plan_file,
    replay_config,
)
from orchestrator.run.program import (  # noqa: F401 - re-exported: `cutover check` and the simulator's
    Run,
    new_run_id,
    node_dirs,
    run_checkers,
    verdict_line,
)
from orchestrator.store import owner


class Aborted(BaseException):
    """SIGINT / SIGTERM during a run."""


@dataclass
class RunOutcome:
    run_id: str
    run_dir: str
    verdict: str  # valid | invalid | unknown | aborted | error
    exit_code: int
    summary: str
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    first: tuple[str, str, Any] | None = None  # (checker, sentence, ns into the run)
    seed: int | None = None
    seconds: float = 0.0
    coverage: dict[str, dict[str, Any]] = field(default_factory=dict)  # point -> count, first
    phases: list[str] = field(default_factory=list)  # the run program's, in order


def execute(cfg: RunConfig, *, out: TextIO | None = sys.stdout,
            progress: TextIO | None = sys.stderr,
            handle_signals: bool = True) -> RunOutcome:
    """Run one test end to end; never raises for a harness failure (exit code >= 3)."""
    cfg.validate()
    cfg = cfg.resolved()
    assert cfg.seed is not None and cfg.concurrency is not None
    try:
        store.check_writable(cfg.results)
    except store.StoreError as e:
        raise RunError(str(e)) from None
    if out is not None:
        print(f"seed {cfg.seed}", file=out, flush=True)
    plan = cfg.plan()
    cfg = cfg.with_knobs(plan)
    families = plan.families if cfg.plan_file else parse_families(cfg.nemesis)
    try:
        run_id = new_run_id(cfg.results, cfg.seed)
    except OSError as e:
        raise RunError(f"cannot start the run: {failure_why(e, cfg.results)}") from None
    run_dir = os.path.join(cfg.results, run_id)
    try:
        owner.write(run_dir)  # before the row says `running`: a later command can tell if we die
        config_doc = {**asdict(cfg), "plan": plan.to_dict()}
        with open(os.path.join(run_dir, "config.json"), "w") as fh:
            json.dump(config_doc, fh, indent=2)
        reserve = reserve_space(run_dir)
        started = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
        rec = store.Recorder(cfg.results, run_id, time.monotonic_ns())
    except (OSError, store.StoreError) as e:  # no row yet: nothing of the run to keep
        shutil.rmtree(run_dir, ignore_errors=True)
        raise RunError(f"cannot start the run: {failure_why(e, cfg.results)}") from None
    first_row = {"started": started, "seed": cfg.seed, "workload": cfg.workload,
                 "nemesis": ",".join(families) or "none", "bugs": ",".join(cfg.bugs),
                 "config": config_doc, "run_dir": run_id}
    rec.run_row(**first_row, status="running")
    runner = _Runner(cfg, plan, run_id, run_dir, rec, progress)
    old: dict[int, Any] = {}
    if handle_signals and threading.current_thread() is threading.main_thread():
        def on_signal(signum: int, _frame: Any) -> None:
            raise Aborted(signal.Signals(signum).name)
        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, on_signal)
    beat = owner.Heartbeat(run_dir).start()  # how a reader elsewhere tells we are alive
    lost: store.StoreError | None = None
    try:
        outcome = runner.go()
    except Aborted as e:
        outcome = runner.abort(f"aborted by {e}")
    except (ClusterError, RunError, store.StoreError, OSError, SwitchboardError) as e:
        outcome = runner.abort(failure_why(e, cfg.results), verdict="error")
    finally:
        beat.stop()
        for s, h in old.items():
            signal.signal(s, h)
        teardown_fully(runner, cfg.nodes + 3)
        release_space(reserve)  # the nodes are gone: the room is for the last rows
        try:
            rec.flush()
        except store.StoreError as e:  # the writer failed (a full disk): said below
            lost = e
        finally:
            rec.close()
    if lost is not None:
        outcome = _record_despite(cfg, run_id, first_row, outcome, lost)
    if out is not None:
        print(outcome.summary, file=out, flush=True)
    return outcome


DISK_RESERVE = 1 << 20  # bytes a run sets aside in its directory (`reserve_space`)
RESERVE_FILE = ".disk-reserve"
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def reserve_space(run_dir: str) -> str:
    """Set `DISK_RESERVE` bytes aside in the run dir, as a file; its path. A results disk
    that fills up during a run left the run `running` for ever: not even the row that
    says how it ended could be written. Deleting this file (`release_space`, once the
    nodes are stopped) makes the room for it."""
    path = os.path.join(run_dir, RESERVE_FILE)
    with open(path, "wb") as fh:
        fh.write(bytes(DISK_RESERVE))  # written, not sparse: the blocks are taken now
    return path


def release_space(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _size_limited() -> bool:
    """Whether this process has a file size limit (RLIMIT_FSIZE, `ulimit -f`)."""
    return resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY


def disk_full(e: BaseException | None, results: str) -> bool:
    """Whether a failure is the results disk being full: ENOSPC (or EDQUOT, EFBIG: a
    quota, a file size limit) anywhere in the exception's chain, SQLite's "database or
    disk is full" in its text (the writer thread reports it as a `StoreError`), or less
    than `DISK_RESERVE` bytes left on the results file system now."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL or "disk is full" in str(e):
            return True
        if "disk I/O error" in str(e) and _size_limited():  # SQLite's word for EFBIG
            return True
        e = e.__cause__ or e.__context__
    try:
        st = os.statvfs(results)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < DISK_RESERVE


def teardown_fully(runner: _Runner, tries: int) -> None:
    """`runner.teardown()` to its end, even on a full disk: there, recording a node's exit
    fails (ENOSPC) in the middle of `Cluster.close`, and a teardown cut short leaves the
    next nodes running. Each try gets further (`close` is safe to call again; a node
    whose exit could not be recorded is not looked at twice)."""
    for _ in range(tries):
        try:
            runner.teardown()
            return
        except OSError:
            continue


def failure_why(e: BaseException, results: str) -> str:
    """A harness failure in one line, naming the full disk when that is what it is."""
    if disk_full(e, results):
        limit = " (or a file reached the size limit, ulimit -f)" if _size_limited() else ""
        return f"the results disk is full{limit} ({os.path.abspath(results)}): {e}"
    return f"harness failure: {e}"


def _record_despite(cfg: RunConfig, run_id: str, first_row: dict[str, Any],
                    outcome: RunOutcome, lost: store.StoreError) -> RunOutcome:
    """The run's writer failed, so part of what it recorded is not stored (the disk
    filled up, most often): whatever the checkers said, the run is a harness error
    (aborted stays aborted), and its row must say so rather than stay `running`. The
    run's own writer holds its first error for ever, so the row goes through a writer
    of its own, whole (the first row may be what was lost), once the reserve is back."""
    if outcome.verdict not in ("aborted", "error"):
        outcome = RunOutcome(outcome.run_id, outcome.run_dir, "error", EXIT_HARNESS,
                             f"ERROR: {failure_why(lost, cfg.results)} (run {run_id}; "
                             f"what was written before is stored)", seed=outcome.seed,
                             seconds=outcome.seconds)
    try:
        rec = store.Recorder(cfg.results, run_id, 0)
        try:
            rec.run_row(**first_row, status=outcome.verdict, verdict=outcome.verdict,
                        exit_code=outcome.exit_code, summary=outcome.summary,
                        finished=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                        duration_s=outcome.seconds)
            rec.flush()
        finally:
            rec.close()
    except store.StoreError as e:
        outcome.summary += f"; its row could not be updated either ({e})"
    return outcome


class _Runner:
    """One run on real processes: the run program (`orchestrator/run/program.py`) over a
    `RealWorld`, and what `execute` needs to end it well (abort, teardown)."""

    def __init__(self, cfg: RunConfig, plan: Any, run_id: str, run_dir: str,
                 rec: store.Recorder, progress: TextIO | None) -> None:
        self.cfg = cfg
        self.plan = plan
        self.run_id = run_id
        self.run_dir = run_dir
        self.rec = rec
        self.progress = progress
        self.t_start = time.monotonic()
        self.world: RealWorld | None = None
        self.program: Run | None = None

    def go(self) -> RunOutcome:
        kek = write_kek(os.path.join(self.run_dir, "kek"))
        self.world = w = RealWorld(self.cfg, self.run_id, self.run_dir, self.rec, kek,
                                   self.progress)
        self.program = prog = Run(w, self.cfg, self.plan)
        w.phase = lambda: prog.phase
        w.faults = lambda: list(prog.ctx.active.values())
        judged = prog.go()
        out = self._finish(judged.results)
        out.coverage = judged.coverage
        out.phases = list(prog.phases)
        return out

    def _finish(self, results: dict[str, dict[str, Any]]) -> RunOutcome:
        verdict = suite.worst(r["valid"] for r in results.values())
        first = suite.first_violation(results)
        code = suite.EXIT_CODES[verdict]
        summary = verdict_line(verdict, first, self.cfg.seed, self.cfg.bugs, self.cfg.profile)
        self.rec.run_row(status="done", verdict=verdict, exit_code=code, summary=summary,
                         finished=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                         duration_s=round(time.monotonic() - self.t_start, 3))
        return RunOutcome(self.run_id, self.run_dir, verdict, code, summary, results, first,
                          self.cfg.seed, round(time.monotonic() - self.t_start, 3))

    def abort(self, why: str, verdict: str = "aborted") -> RunOutcome:
        if self.world is not None:
            for ev in self.world.stops.values():
                ev.set()
        code = EXIT_ABORTED if verdict == "aborted" else EXIT_HARNESS
        summary = f"{verdict.upper()}: {why} (run {self.run_id}; history so far is stored)"
        self.rec.run_row(status=verdict, verdict=verdict, exit_code=code, summary=summary,
                         finished=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                         duration_s=round(time.monotonic() - self.t_start, 3))
        w = self.world
        if w is not None and w.progress.tty and w.progress.out is not None:
            w.progress.out.write("\n")
        return RunOutcome(self.run_id, self.run_dir, verdict, code, summary, seed=self.cfg.seed,
                          seconds=round(time.monotonic() - self.t_start, 3))

    def teardown(self) -> None:
        """Nothing may outlive the run: clients, nemesis, nodes, switchboard."""
        if self.world is not None:
            self.world.teardown()
