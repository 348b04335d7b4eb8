"""The run's world on real processes: node processes and their switchboard, ZeroMQ
requests, the wall clock, the nodes' event logs tailed from disk, and SQLite written as
the run goes (`orchestrator/run/program.py: World`).

A process of the run (a client, a fault step) is a generator; here each one gets a
thread that performs its effects by blocking: `Sleep` waits on its group's stop event,
`Ask` is a request on the thread's own ZeroMQ client, `AwaitEvent` tails the event logs
(`watch.EventWatch`), `AwaitFlag` waits on a `threading.Event`. When its group is
stopped (the faults' time is up; the clients' quiet period is over) a process is closed
at its next wait, as the simulator drops a process's pending wait.
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any, TextIO

from nemesis.faults import Net, Sleep, Until
from node.disk import REAL
from node.events import read_events
from node.keystore import Kek, generate_dek
from node.wal import WalError, damage_entry
from orchestrator import store
from orchestrator.real.client import Client, ClientTimeout
from orchestrator.real.cluster import Cluster, ClusterError
from orchestrator.real.watch import EventWatch
from orchestrator.run.config import KNOB_DEFAULTS, RunConfig
from orchestrator.run.invoke import Ask
from orchestrator.run.program import AwaitEvent, AwaitFlag, Evidence, Proc
from orchestrator.run.storage import described, locate


class Progress:
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


class _Stopped(Exception):
    """The process's group was stopped while it waited."""


class RealWorld:
    """A run's world of node processes (module docstring)."""

    simultaneous = False
    name = "real"

    def __init__(self, cfg: RunConfig, run_id: str, run_dir: str, rec: store.Recorder,
                 kek: Kek, progress: TextIO | None = None) -> None:
        self.cfg = cfg
        self.run_id = run_id
        self.run_dir = run_dir
        self.rec = rec
        self.kek = kek
        self.run_tag = run_id[-6:].replace("-", "")
        self.ids = [f"n{i + 1}" for i in range(cfg.nodes)]
        self.progress = Progress(progress, cfg.time_limit)
        self.cl: Cluster | None = None
        self.watch: EventWatch | None = None
        self.t_start = time.monotonic()
        self.t0 = self.t_start
        self.lock = threading.RLock()  # the cluster and the switchboard control
        self.stops: dict[str, threading.Event] = defaultdict(threading.Event)
        self.threads: dict[str, list[threading.Thread]] = defaultdict(list)
        self.flags: dict[str, threading.Event] = defaultdict(threading.Event)
        self._local = threading.local()
        self._clients: list[Client] = []
        self.phase: Callable[[], str] = lambda: "setup"
        self.faults: Callable[[], list[str]] = list

    # ------------------------------------------------------------------ the cluster

    @property
    def cluster(self) -> Cluster:
        if self.cl is None:
            raise ClusterError("the cluster is not started")
        return self.cl

    def boot(self) -> None:
        c = self.cfg
        self.cl = Cluster(os.path.join(self.run_dir, "nodes"), c.nodes, bugs=c.bugs,
                          profile=c.profile, seed=c.seed or 0, tick_ms=c.tick_ms,
                          election_ticks=c.election_ticks,
                          snapshot_every=c.snapshot_every or KNOB_DEFAULTS["snapshot_every"],
                          kek_path=os.path.join(self.run_dir, "kek"),
                          enable_timeout_ticks=c.enable_timeout_ticks,
                          max_msg_bytes=c.max_msg_bytes or KNOB_DEFAULTS["max_msg_bytes"],
                          max_inflight=c.max_inflight or KNOB_DEFAULTS["max_inflight"])
        self.cl.start()

    def settle(self, seconds: float) -> None:
        self.cluster.wait_leader(seconds)

    def leader(self) -> str | None:
        return self.cluster.leader()

    def leader_within(self, seconds: float) -> str | None:
        try:
            return self.cluster.wait_leader(seconds)
        except ClusterError:
            return None

    def _client(self) -> Client:
        c = getattr(self._local, "client", None)
        if c is None:
            c = Client(self.cluster.endpoints(), timeout=1.0)
            self._local.client = c
            with self.lock:
                self._clients.append(c)
        return c

    def ask(self, node: str, req: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        fields = {k: v for k, v in req.items() if k != "op"}
        try:
            return self._client().admin(node, req["op"], timeout=timeout, **fields)
        except ClientTimeout:
            return None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def alive(self, nid: str) -> bool:
        return self.cluster.nodes[nid].alive

    def up(self, nid: str) -> bool:
        h = self.cluster.nodes[nid]
        return h.alive and not h.paused and self.status(nid) is not None

    def paused(self, nid: str) -> bool:
        return self.cluster.nodes[nid].paused

    def kill(self, nid: str, *, power: bool = False,
             torn: random.Random | None = None) -> dict[str, Any] | None:
        with self.lock:
            return self.cluster.kill(nid, power=power, torn=torn)

    def start(self, nid: str) -> None:
        with self.lock:
            self.cluster.start_node(nid, wait=None)

    def pause(self, nid: str) -> None:
        with self.lock:
            self.cluster.pause(nid)

    def resume(self, nid: str) -> None:
        with self.lock:
            self.cluster.resume(nid)

    def status(self, nid: str) -> dict[str, Any] | None:
        h = self.cluster.nodes[nid]
        if not h.alive or h.paused:
            return None
        try:
            rep = self._client().admin(nid, "status", timeout=0.3)
        except ClientTimeout:
            return None
        return rep.get("value") if rep.get("ok") else None

    def snapshot_now(self, nid: str) -> int | None:
        rep = self.ask(nid, {"op": "snapshot-now"}, 3.0) if self.alive(nid) else None
        return (rep.get("value") or {}).get("snapshot_index") if rep and rep.get("ok") else None

    def set_net(self, net: Net) -> None:
        with self.lock:
            ctl = self.cluster.control
            if ctl is None:
                return
            ctl.set_faults(blocked=sorted(net.blocked), loss_all=net.loss_all,
                           loss=[[*k, v] for k, v in sorted(net.loss.items())],
                           dup_all=net.dup_all,
                           dup=[[*k, v] for k, v in sorted(net.dup.items())],
                           delay_all=net.delay_all,
                           delay=[[*k, *v] for k, v in sorted(net.delay.items())])

    def set_tick_factor(self, nid: str, factor: float) -> None:
        self.cluster.set_tick_factor(nid, factor)

    def record(self, f: str, fault: str, targets: Any, **detail: Any) -> None:
        self.rec.fault(time.monotonic_ns(), f, fault, targets, detail or None)

    def new_dek(self) -> bytes:
        return self.kek.wrap_dek(generate_dek())

    def wait_up(self, nodes: list[str], seconds: float) -> dict[str, str]:
        end = time.monotonic() + seconds
        failed = {}
        for nid in nodes:
            try:
                self.cluster.wait_up(nid, max(0.5, end - time.monotonic()))
            except ClusterError as e:  # evidence, not a harness failure: recorded
                failed[nid] = str(e)
        return failed

    def damage_entry(self, nid: str, index: int) -> str | None:
        try:
            damage_entry(os.path.join(self.cluster.nodes[nid].data_dir, "wal"), index)
        except WalError as e:
            return str(e)
        return None

    def damage_storage(self, nid: str, how: str, area: str, pick: int) -> dict[str, Any]:
        """The node's real files damaged in place, synced: one bit flipped, or (a latent
        sector error, which a real disk cannot be told to have) the sector zero-filled,
        as a drive that remapped an unreadable sector returns it."""
        root = self.cluster.nodes[nid].data_dir
        place = locate(REAL, root, area, pick, how)
        if "skipped" in place:
            return place
        with open(place["path"], "r+b") as fh:
            fh.seek(place["offset"])
            if how == "flip":
                old = fh.read(1)[0]
                fh.seek(place["offset"])
                fh.write(bytes([old ^ (1 << place["bit"])]))
            else:
                fh.write(bytes(place["length"]))
            fh.flush()
            os.fsync(fh.fileno())
        out = described(place, root, how)
        if how == "sector":
            out["how"] = "a latent sector error (zero-filled on real files)"
        return out

    def arm_writes(self, nid: str, how: str | None, p: float = 0.0,
                   seed: int = 0) -> dict[str, Any]:
        """Never reached: the run skips the kinds that need it here (`FaultKind.worlds`)."""
        return {"skipped": "a real disk cannot be told to drop or misplace writes"}

    def ended(self, nid: str) -> bool:
        proc = self.cluster.nodes[nid].process
        return proc is not None and not proc.is_alive()

    def start_and_wait(self, nid: str, seconds: float) -> str | None:
        """Start `nid` and wait until it answers; None, or why it never did (a node that
        ends itself during its replay, as the elastickv profile's halt does, is evidence
        of the fault's effect, not a harness failure)."""
        try:
            self.cluster.start_node(nid, wait=seconds)
        except ClusterError as e:
            return str(e)
        return None

    # ------------------------------------------------------------------ time and processes

    def begin(self) -> None:
        self.watch = EventWatch({n: h.data_dir for n, h in self.cluster.nodes.items()}).start()
        self.t0 = time.monotonic()
        t0_ns = time.monotonic_ns()
        self.rec.t0_ns = t0_ns
        self.rec.run_row(t0_ns=t0_ns)

    def listen(self, fn: Callable[[dict[str, Any]], None]) -> None:
        if self.watch is not None:
            self.watch.listen(fn)

    def left(self) -> float:
        """Seconds left before the run must be over and checked (`finish_within`)."""
        return self.t_start + self.cfg.time_limit + self.cfg.finish_within - time.monotonic()

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            self.tick()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.25, left))

    def tick(self, final: bool = False) -> None:
        self.progress.show(self.now(), self.phase(), self.faults(), final)

    def spawn(self, proc: Proc, group: str, label: str) -> None:
        stop = self.stops[group]

        def run() -> None:
            try:
                self.drive(proc, stop)
            except Exception as e:  # noqa: BLE001 - recorded; the run goes on
                if not stop.is_set():
                    self.record("event", "nemesis-error" if group == "steps" else
                                "client-error", None, process=label,
                                error=f"{type(e).__name__}: {e}")

        t = threading.Thread(target=run, name=label, daemon=True)
        t.start()
        self.threads[group].append(t)

    def stop_group(self, group: str, grace: float) -> None:
        self.stops[group].set()
        end = time.monotonic() + grace + 1.0
        for t in self.threads[group]:
            t.join(max(0.0, end - time.monotonic()))

    def run_proc(self, proc: Proc, until: float) -> Any:
        return self.drive(proc, None)

    def drive(self, proc: Proc, stop: threading.Event | None) -> Any:
        """Run a process on this thread to its end, performing each effect by waiting
        for real; a stopped group closes it at its next wait."""
        value: Any = None
        try:
            while True:
                try:
                    eff = proc.send(value)
                except StopIteration as e:
                    return e.value
                try:
                    value = self._perform(eff, stop)
                except _Stopped:
                    return None
        finally:
            proc.close()

    def _perform(self, eff: Any, stop: threading.Event | None) -> Any:
        never = threading.Event()
        halt = stop or never
        if isinstance(eff, Ask):
            return self._client().ask(eff)
        if halt.is_set():
            raise _Stopped
        if isinstance(eff, Sleep):
            if halt.wait(eff.seconds):
                raise _Stopped
            return None
        if isinstance(eff, Until):
            end = time.monotonic() + eff.timeout
            while True:
                if eff.pred():
                    return True
                if time.monotonic() >= end:
                    return False
                if halt.wait(eff.poll):
                    raise _Stopped
        if isinstance(eff, AwaitFlag):
            flag = self.flags[eff.name]
            end = None if eff.timeout is None else time.monotonic() + eff.timeout
            while not flag.is_set():
                if end is not None and time.monotonic() >= end:
                    return False
                if halt.is_set():
                    raise _Stopped
                flag.wait(0.1 if end is None else max(0.0, min(0.1, end - time.monotonic())))
            return True
        if isinstance(eff, AwaitEvent):
            if self.watch is None:
                raise _Stopped
            since = eff.since
            while True:
                ev, since = self.watch.scan(eff.pred, 0.2, since, halt)
                if ev is not None:
                    return ev, since
                if halt.is_set():
                    raise _Stopped
        raise TypeError(f"a process yielded {eff!r}")  # pragma: no cover

    def op(self, process: Any, type_: str, f: str, key: str | None, value: Any,
           error: str | None = None, node: str | None = None) -> None:
        self.rec.op(time.monotonic_ns(), process, type_, f, key, value, error=error, node=node)
        if type_ != "invoke":
            self.progress.count(type_)

    def set_flag(self, name: str) -> None:
        self.flags[name].set()

    def event_mark(self) -> int:
        return self.watch.mark() if self.watch is not None else 0

    # ------------------------------------------------------------------ the end

    def stop_all(self) -> None:
        self.tick(final=True)
        self.cluster.stop_all(grace=2.0)
        if self.watch is not None:
            self.watch.stop()

    def evidence(self) -> Evidence:
        """What the database holds of the run, once everything is written: the verdict is
        about what is stored."""
        self.rec.flush()
        ingest_node_events(self.rec, self.cluster)
        self.rec.flush()
        with store.opened(self.cfg.results) as db:
            row = store.resolve_run(db, self.run_id)
            return Evidence(config=json.loads(row["config"] or "{}"),
                            ops=list(store.iter_ops(db, self.run_id)),
                            nemesis=store.nemesis_rows(db, self.run_id),
                            events=store.node_events(db, self.run_id),
                            run_dir=self.run_dir, t0_ns=int(row.get("t0_ns") or 0))

    def keep(self, results: dict[str, dict[str, Any]], rows: dict[str, list[dict[str, Any]]],
             cov: dict[str, dict[str, Any]]) -> None:
        for table, rs in rows.items():
            self.rec.rows(table, rs)
        self.rec.flush()

    def teardown(self) -> None:
        """Nothing may outlive the run: clients, the nemesis, nodes, the switchboard."""
        for ev in self.stops.values():
            ev.set()
        self.stops["clients"].set()
        self.stops["steps"].set()
        if self.watch is not None:
            self.watch.stop()
        with self.lock:
            for c in self._clients:
                c.close()
            self._clients.clear()
        if self.cl is not None:
            self.cl.close()
        for ts in self.threads.values():
            for t in ts:
                t.join(self.cfg.op_timeout * 3 + 1)


def ingest_node_events(rec: store.Recorder, cluster: Cluster) -> None:
    """Every node's event log into `node_events` (times on the run's clock)."""
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
