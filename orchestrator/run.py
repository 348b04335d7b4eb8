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
import random
import resource
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from checker import suite
from checker.coverage import coverage
from nemesis.plan import (
    parse_families,
)
from node.events import EventKind, read_events
from node.keystore import generate_dek, write_kek
from workloads import MODEL_OF, make_workload

from . import owner, store
from .client import Client, ClientTimeout
from .cluster import Cluster, ClusterError
from .config import (  # noqa: F401 - the run's names, re-exported for its callers
    RANGES,
    RunConfig,
    RunError,
    read_plan_file,
    replay_config,
)
from .corrupt import corrupt_and_replay
from .errors import EXIT_ABORTED, EXIT_HARNESS
from .nemesis_exec import Nemesis, RealWorld
from .switchboard import SwitchboardError
from .watch import EventWatch


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


def new_run_id(results: str, seed: int) -> str:
    """A fresh id whose run directory this call created (atomically: two runs started
    in the same second with the same seed, say by two matrices, get two ids)."""
    base = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + f"-s{seed}"
    rid, k = base, 1
    while True:
        try:
            os.makedirs(os.path.join(results, rid))
            return rid
        except FileExistsError:
            k += 1
            rid = f"{base}-{k}"


class _Progress:
    """A one-line status on stderr: elapsed, ops/s, ok/fail/info, active faults."""

    def __init__(self, out: TextIO | None, limit: float) -> None:
        self.out = out
        self.limit = limit
        self.tty = bool(out and hasattr(out, "isatty") and out.isatty())
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._last = (time.monotonic(), 0)
        self._last_line = 0.0

    def count(self, kind: str) -> None:
        with self.lock:
            self.counts[kind] += 1

    def show(self, elapsed: float, phase: str, faults: list[str], final: bool = False) -> None:
        if self.out is None:
            return
        now = time.monotonic()
        done = self.counts["ok"] + self.counts["fail"] + self.counts["info"]
        t, n = self._last
        rate = (done - n) / (now - t) if now > t else 0.0
        self._last = (now, done)
        line = (f"[{elapsed:5.1f}s/{self.limit:g}s] {phase:<9} {rate:6.0f} ops/s  "
                f"ok {self.counts['ok']}  fail {self.counts['fail']}  "
                f"info {self.counts['info']}  faults: {', '.join(faults) or '-'}")
        if self.tty:
            self.out.write("\r\x1b[K" + line[:160] + ("\n" if final else ""))
            self.out.flush()
        elif final or now - self._last_line >= 5:
            self._last_line = now
            self.out.write(line + "\n")
            self.out.flush()


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
    def __init__(self, cfg: RunConfig, plan: Any, run_id: str, run_dir: str,
                 rec: store.Recorder, progress: TextIO | None) -> None:
        self.cfg = cfg
        self.plan = plan
        self.run_id = run_id
        self.run_dir = run_dir
        self.rec = rec
        self.progress = _Progress(progress, cfg.time_limit)
        self.stop_all = threading.Event()
        self.stop_clients = threading.Event()
        self.cluster: Cluster | None = None
        self.watch: EventWatch | None = None
        self.nem: Nemesis | None = None
        self.workers: list[threading.Thread] = []
        self.t0 = time.monotonic()
        self.t_start = time.monotonic()
        self.phase = "setup"

    # -------------------------------------------------------------- the run

    def go(self) -> RunOutcome:
        cfg = self.cfg
        kek_path = os.path.join(self.run_dir, "kek")
        kek = write_kek(kek_path)
        self.cluster = cl = Cluster(os.path.join(self.run_dir, "nodes"), cfg.nodes,
                                    bugs=cfg.bugs, profile=cfg.profile,
                                    seed=cfg.seed or 0, tick_ms=cfg.tick_ms,
                                    election_ticks=cfg.election_ticks,
                                    snapshot_every=cfg.snapshot_every, kek_path=kek_path,
                                    enable_timeout_ticks=cfg.enable_timeout_ticks,
                                    max_msg_bytes=cfg.max_msg_bytes or 64 * 1024,
                                    max_inflight=cfg.max_inflight or 64)
        cl.start()
        leader = cl.wait_leader(15)
        self._bootstrap(leader, kek.wrap_dek(generate_dek()))
        self.watch = EventWatch({n: h.data_dir for n, h in cl.nodes.items()}).start()
        self.t0 = time.monotonic()
        t0_ns = time.monotonic_ns()
        self.rec.t0_ns = t0_ns
        self.rec.run_row(t0_ns=t0_ns)
        world = RealWorld(cl, self.rec, self.t0, lambda: kek.wrap_dek(generate_dek()))
        self.nem = Nemesis(world, self.plan, self.watch, seed=cfg.seed or 0,
                           time_limit=cfg.time_limit, stop=self.stop_all)
        workload = make_workload(cfg.workload, cfg.keys, cfg.seed or 0,
                                 run_tag=self.run_id[-6:].replace("-", ""))
        self._start_clients(workload)
        self.phase = "faults"
        self.nem.start()
        while time.monotonic() - self.t0 < cfg.time_limit:
            self._tick()
            time.sleep(0.25)
        # The final generator: no more faults; heal, resume, restart, then a quiet spell.
        self.phase = "heal"
        self.stop_all.set()
        self.nem.join(2)
        self.nem.heal_all(wait=min(8.0, max(2.0, self._left() - 7)))
        self.phase = "quiet"
        end_quiet = time.monotonic() + min(cfg.quiet_period, max(0.5, self._left() - 8))
        while time.monotonic() < end_quiet:
            self._tick()
            time.sleep(0.25)
        self.stop_clients.set()
        for w in self.workers:
            w.join(cfg.op_timeout * 3 + 1)
        self.phase = "final"
        self._final_reads(workload, min(8.0, max(1.0, self._left() - 6)))
        excused = self._corrupt_if_planned(min(10.0, max(2.0, self._left() - 4)))
        self._tick(final=True)
        self.phase = "check"
        time.sleep(0.3)  # let followers apply the last commits before their stop digests
        cl.stop_all(grace=2.0)
        self.watch.stop()
        return self._check_and_store(kek_path, excused)

    def _left(self) -> float:
        """Seconds left before the run must be over and checked (`finish_within`)."""
        return self.t_start + self.cfg.time_limit + self.cfg.finish_within - time.monotonic()

    def _bootstrap(self, leader: str, wrapped: bytes) -> None:
        assert self.cluster is not None
        end = time.monotonic() + 10
        with Client(self.cluster.endpoints(), timeout=2.0) as c:
            while True:
                try:
                    rep = c.admin(leader, "bootstrap", key_id=1, wrapped=wrapped)
                    if rep.get("ok"):
                        return
                    err = f"{rep.get('code')}: {rep.get('text')}"
                except ClientTimeout as e:
                    err = str(e)
                if time.monotonic() > end:
                    raise RunError(f"could not bootstrap encryption on {leader}: {err}")
                time.sleep(0.2)
                leader = self.cluster.wait_leader(10)

    def _tick(self, final: bool = False) -> None:
        faults = list(self.nem.active.values()) if self.nem else []
        self.progress.show(time.monotonic() - self.t0, self.phase, faults, final)

    # -------------------------------------------------------------- clients

    def _start_clients(self, workload: Any) -> None:
        cfg = self.cfg
        assert self.cluster is not None and cfg.concurrency is not None
        period = cfg.concurrency / cfg.rate
        ids = self.cluster.ids
        endpoints = self.cluster.endpoints()

        def worker(i: int) -> None:
            rng = random.Random(f"client:{cfg.seed}:{i}")
            process = i
            home = ids[i % len(ids)]
            with Client(endpoints, timeout=cfg.op_timeout, preferred=home) as c:
                nxt = time.monotonic() + rng.uniform(0, period)
                while not self.stop_clients.is_set():
                    delay = nxt - time.monotonic()
                    if delay > 0 and self.stop_clients.wait(delay):
                        break
                    nxt = max(nxt + period * rng.uniform(0.5, 1.5), time.monotonic())
                    spec = workload.next_op()
                    hv = spec.as_history_value()
                    # Reads go to this worker's own node first (Jepsen binds a client to
                    # a node); writes start at the last known leader.
                    start = home if spec.f == "read" else None
                    self.rec.op(time.monotonic_ns(), process, "invoke", spec.f, spec.key,
                                hv, node=start or c.leader or home)
                    if spec.f == "cas":
                        res = c.invoke("cas", spec.key, None, from_=spec.value[0],
                                       to=spec.value[1])
                    elif spec.f == "write":
                        res = c.invoke("write", spec.key, spec.value)
                    else:
                        res = c.invoke("read", spec.key, node=start)
                    value = res.value if spec.f == "read" else hv
                    if spec.f == "read" and res.type != "ok":
                        value = None
                    self.rec.op(time.monotonic_ns(), process, res.type, spec.f, spec.key,
                                value, error=res.error, node=res.node)
                    self.progress.count(res.type)
                    if res.type == "info":
                        process += cfg.concurrency  # Jepsen: a crashed process is retired

        for i in range(cfg.concurrency):
            t = threading.Thread(target=worker, args=(i,), name=f"client-{i}", daemon=True)
            t.start()
            self.workers.append(t)

    def _final_reads(self, workload: Any, seconds: float) -> None:
        assert self.cluster is not None
        budget = time.monotonic() + seconds  # a halted cluster answers nothing: bound it
        with Client(self.cluster.endpoints(), timeout=1.0) as c:
            for n, spec in enumerate(workload.final_reads()):
                end = min(time.monotonic() + 3, budget)
                process = f"final-{n}"
                while True:
                    self.rec.op(time.monotonic_ns(), process, "invoke", "read", spec.key, None,
                                node=c.leader)
                    res = c.invoke("read", spec.key)
                    self.rec.op(time.monotonic_ns(), process, res.type, "read", spec.key,
                                res.value if res.type == "ok" else None, error=res.error,
                                node=res.node)
                    if res.type == "ok" or time.monotonic() > end:
                        break
                    time.sleep(0.1)

    # -------------------------------------------------------------- corruption

    def _corrupt_if_planned(self, seconds: float) -> list[tuple[str, int]]:
        fault = self.plan.step("corrupt-entry")
        if fault is None or self.nem is None or not self.nem.ctx.cutover:
            return []
        return corrupt_and_replay(self, fault, seconds)

    # -------------------------------------------------------------- checking

    def _check_and_store(self, kek_path: str, excused: list[tuple[str, int]]) -> RunOutcome:
        assert self.cluster is not None and self.watch is not None
        self.rec.flush()
        ingest_node_events(self.rec, self.cluster)
        self.rec.flush()
        db = store.open_db(self.cfg.results)
        try:
            results = run_checkers(db, self.run_id, self.run_dir, self.rec, excused,
                                   lin_timeout=min(self.cfg.lin_timeout,
                                                   max(3.0, self._left() - 1)))
            cov = store.coverage_of(db, self.run_id)
        finally:
            db.conn.close()
        out = self._finish(results)
        out.coverage = cov
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
        self.stop_all.set()
        self.stop_clients.set()
        code = EXIT_ABORTED if verdict == "aborted" else EXIT_HARNESS
        summary = f"{verdict.upper()}: {why} (run {self.run_id}; history so far is stored)"
        self.rec.run_row(status=verdict, verdict=verdict, exit_code=code, summary=summary,
                         finished=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                         duration_s=round(time.monotonic() - self.t_start, 3))
        if self.progress.tty and self.progress.out is not None:
            self.progress.out.write("\n")
        return RunOutcome(self.run_id, self.run_dir, verdict, code, summary, seed=self.cfg.seed,
                          seconds=round(time.monotonic() - self.t_start, 3))

    def teardown(self) -> None:
        """Nothing may outlive the run: clients, nemesis, nodes, switchboard."""
        self.stop_all.set()
        self.stop_clients.set()
        if self.watch is not None:
            self.watch.stop()
        if self.nem is not None:
            self.nem.close()
        if self.cluster is not None:
            self.cluster.close()
        for w in self.workers:
            w.join(self.cfg.op_timeout * 3 + 1)


def verdict_line(verdict: str, first: tuple[str, str, Any] | None, seed: int | None,
                 bugs: list[str], profile: str = "fixed") -> str:
    """The run's one-line summary (printed last, stored in `runs.summary`); `cutover
    check` writes it again from the stored seed, bugs and profile."""
    with_bugs = f" with --bug {','.join(bugs)}" if bugs else ""
    if profile != "fixed":
        with_bugs += f" --profile {profile}"
    if verdict == "valid":
        return f"VALID: every checker passed (seed {seed}{with_bugs})"
    if first is None:
        return f"{verdict.upper()} (seed {seed}{with_bugs})"
    name, sentence, t = first
    when = f" at {t / 1e9:.1f}s" if isinstance(t, int | float) else ""
    return f"{verdict.upper()}: {name}{when}: {sentence} (seed {seed}{with_bugs})"


def ingest_node_events(rec: store.Recorder, cluster: Cluster) -> None:
    for nid, h in cluster.nodes.items():
        rows = []
        for seq, ev in enumerate(read_events(h.data_dir)):
            t = ev.get("t")
            kind = ev.get("kind")
            detail = {k: v for k, v in ev.items() if k not in ("t", "kind", "node")}
            rows.append({"node": nid, "seq": seq,
                         "time_ns": rec.rel(t) if isinstance(t, int) else None,
                         "kind": kind, "detail": json.dumps(detail, default=str)})
        rec.rows("node_events", rows)


def node_dirs(run_dir: str) -> dict[str, str]:
    root = os.path.join(run_dir, "nodes")
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return {}
    return {n: os.path.join(root, n) for n in names if os.path.isdir(os.path.join(root, n))}


def run_checkers(db: Any, run_id: str, run_dir: str, rec: store.RowSink | None,
                 excused: list[tuple[str, int]] | None = None,
                 lin_timeout: float | None = None) -> dict[str, dict[str, Any]]:
    """Every checker on a stored run (history from the DB, invariants from the node
    files); stores `checks` and `log_entries` through `rec` when given."""
    row = store.resolve_run(db, run_id)
    config = json.loads(row["config"]) if row.get("config") else {}
    t0_ns = int(row.get("t0_ns") or 0)
    ops = list(store.iter_ops(db, run_id))
    nem = store.nemesis_rows(db, run_id)
    if excused is None:
        excused = [(t[0], int(d["index"])) for r in nem
                   if r["fault"] == "corrupt-entry" and r["f"] == "start"
                   and (d := r["detail"] or {}).get("index") is not None
                   and (t := r["targets"] or [None])[0]]
    model = MODEL_OF.get(config.get("workload", "kv"), "kv")
    results: dict[str, dict[str, Any]] = {}
    results["linearizability"] = suite.check_linearizability(
        ops, model, timeout=lin_timeout or float(config.get("lin_timeout", 60.0)))
    dirs = node_dirs(run_dir)
    kek_path = os.path.join(run_dir, "kek")
    if not dirs or not os.path.exists(kek_path):
        results["cutover"] = {"valid": "unknown", "incomplete": True,
                              "error": f"the run's node data dirs or KEK are missing under "
                                       f"{run_dir}"}
        rep = None
    else:
        tokens = [(str(r["value"]).encode(), r["time_ns"] + t0_ns) for r in ops
                  if r["type"] == "invoke" and r["f"] == "write" and r["value"]]
        tokens += [(str(r["value"][1]).encode(), r["time_ns"] + t0_ns) for r in ops
                   if r["type"] == "invoke" and r["f"] == "cas"
                   and isinstance(r["value"], list) and len(r["value"]) == 2]
        results["cutover"], rep = suite.check_invariants(dirs, kek_path, tokens, t0_ns=t0_ns,
                                                         excused=excused,
                                                         profile=config.get("profile") or "fixed")
    results["crashes"] = suite.check_crashes(os.path.join(run_dir, "nodes"), t0_ns,
                                             halted={e["node"] for e in store.node_events(
                                                 db, run_id, kinds=[EventKind.HALT])})
    results["stats"] = suite.stats(ops)
    end_ns = max((r["time_ns"] for r in ops), default=0)
    results["availability"] = suite.availability(ops, store.fault_windows(nem), end_ns)
    results["vacuity"] = suite.vacuity(config, ops, nem, store.node_events(
        db, run_id, kinds=[EventKind.ENCRYPTION_APPLIED]))
    if rec is not None:
        # Not a checker (it never changes the verdict): which protocol states the run
        # reached, from the nodes' events, the history and what the nemesis did.
        rec.rows("coverage", store.coverage_rows(
            coverage(store.node_events(db, run_id), ops, nem)))
        rec.rows("checks", [{"checker": k, "valid": v["valid"],
                             "detail": json.dumps(v, default=str)} for k, v in results.items()])
        if rep is not None:
            rec.rows("log_entries", [{"node": r.node, "idx": r.index, "term": r.term,
                                      "opcode": r.opcode, "wrapped": int(r.wrapped),
                                      "key_id": r.key_id} for r in rep.rows])
        rec.flush()
    return results
