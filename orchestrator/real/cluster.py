"""Real node processes on one machine: spawn, kill, restart, pause, and tear down.

Nodes are started with stdlib `multiprocessing` (spawn context: forking a process that
holds ZeroMQ state is undefined behaviour). Every node dies with this process (the node
sets PR_SET_PDEATHSIG first thing, then checks that the pid this process passed it is
still its parent: killed while the node was importing, we would otherwise leave it to
init; then it watches its parent), and `close()` kills whatever is left, so a run never
leaves a node behind, even on Ctrl-C or SIGKILL.

This is also the one place that knows which exits were planned: `kill` (the nemesis),
`stop_all` and `close` (the end of a run). Any other exit of a node process, and any
start that does not come up, is written to `ROOT/exits.jsonl` as it is noticed
(`checker.crashes` owns the format and judges it): a node that dies on its own is
evidence, even when the heal restarts it and everything else comes out valid.
"""
from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import queue
import random
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from checker.crashes import EXITS_FILE
from checker.crashes import record as exit_record
from node.disk import power_loss
from node.server import TICK_FACTOR_OP, NodeOptions, die_with_parent, run_node
from orchestrator.real.client import Client, ClientTimeout
from orchestrator.real.switchboard import SwitchboardControl, SwitchboardProcess, spawn_switchboard
from orchestrator.run.config import KNOB_DEFAULTS


class ClusterError(RuntimeError):
    """The cluster could not do what was asked (a node that will not start, no leader)."""


def free_port() -> int:
    """A port nobody listens on right now (the node binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_entry(opts: Any, log_path: str, parent_pid: int,
                tick: tuple[float, int] = (1.0, 0)) -> None:
    """Child side: first the lifeline to the orchestrator (`parent_pid`, read by the
    parent: a child reading it would get init's once the parent is gone), then
    stdout/stderr to the node's log file, then run the node (its timers at `tick`'s
    factor and sequence number: `Cluster.set_tick_factor`)."""
    die_with_parent(parent_pid)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os._exit(run_node(opts, parent_pid, tick_factor=tick[0], tick_seq=tick[1]))


@dataclass
class NodeHandle:
    """One node: its fixed identity and endpoint, and its current process (if any)."""

    id: str
    data_dir: str
    endpoint: str
    log_path: str
    process: BaseProcess | None = None
    paused: bool = False
    starts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # Its timers' speed (the clock-skew fault): what the harness asked for last, with
    # that request's sequence number, and what its current process is known to run at.
    tick_factor: float = 1.0
    tick_seq: int = 0
    tick_live: float = 1.0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()


class Cluster:
    """N nodes plus the switchboard, under one root directory."""

    def __init__(self, root: str, n: int = 3, *, bugs: list[str] | tuple[str, ...] = (),
                 profile: str = "fixed", seed: int = 0, tick_ms: float = 25.0, election_ticks: int = 10,
                 snapshot_every: int = KNOB_DEFAULTS["snapshot_every"],
                 node_ids: list[str] | None = None,
                 kek_path: str | None = None, enable_timeout_ticks: int = 200,
                 max_msg_bytes: int = KNOB_DEFAULTS["max_msg_bytes"],
                 max_inflight: int = KNOB_DEFAULTS["max_inflight"],
                 durability_journal: bool = True) -> None:
        self.root = root
        self.ids = node_ids or [f"n{i + 1}" for i in range(n)]
        self.bugs = list(bugs)
        self.profile = profile
        self.seed = seed
        self.tick_ms = tick_ms
        self.election_ticks = election_ticks
        self.snapshot_every = snapshot_every
        self.kek_path = kek_path
        self.enable_timeout_ticks = enable_timeout_ticks
        self.max_msg_bytes = max_msg_bytes
        self.max_inflight = max_inflight
        self.durability_journal = durability_journal
        self.switchboard: SwitchboardProcess | None = None
        self.control: SwitchboardControl | None = None
        self._mp = multiprocessing.get_context("spawn")
        self._spawn_q: queue.Queue[Any] = queue.Queue()
        self._spawn_lock = threading.Lock()
        self._spawner: threading.Thread | None = None
        os.makedirs(root, exist_ok=True)
        self.exits_path = os.path.join(root, EXITS_FILE)
        with open(self.exits_path, "a"):
            pass  # present from the start: an empty record says "no node died on its own"
        self.exits: list[dict[str, Any]] = []
        self._planned: set[int] = set()  # pids whose exit the harness asked for
        self._reaped: set[int] = set()  # pids whose exit has been looked at
        self._exit_lock = threading.Lock()
        self._monitor: threading.Thread | None = None
        self._monitor_stop = threading.Event()
        self._tick_lock = threading.Lock()
        self._tick_seqs = itertools.count(1)
        self.nodes: dict[str, NodeHandle] = {}
        for nid in self.ids:
            self.nodes[nid] = NodeHandle(
                nid, os.path.join(root, nid), f"tcp://127.0.0.1:{free_port()}",
                os.path.join(root, f"{nid}.log"))

    # ----------------------------------------------------------- lifecycle

    def _spawn(self, start: Any) -> None:
        """Run `start` (a Process.start) on the cluster's own spawner thread.

        A node asks the kernel to kill it when its parent goes (PR_SET_PDEATHSIG), and
        on Linux "parent" means the *thread* that forked it: a node started from a
        short-lived thread (a nemesis restarting it) would die with that thread. One
        long-lived thread starts every node, so only the orchestrator's exit kills them.
        """
        if threading.current_thread() is threading.main_thread():
            start()
            return
        with self._spawn_lock:
            if self._spawner is None or not self._spawner.is_alive():
                self._spawner = threading.Thread(target=self._spawn_loop, daemon=True,
                                                 name="cluster-spawner")
                self._spawner.start()
        done = threading.Event()
        box: list[BaseException] = []
        self._spawn_q.put((start, done, box))
        done.wait()
        if box:
            raise box[0]

    def _spawn_loop(self) -> None:
        while True:
            item = self._spawn_q.get()
            if item is None:
                return
            start, done, box = item
            try:
                start()
            except BaseException as e:  # noqa: BLE001 - handed back to the caller
                box.append(e)
            done.set()

    def start(self, wait: float = 20.0) -> None:
        """Switchboard first, then every node; waits until each answers `status`."""
        self.switchboard = spawn_switchboard(seed=self.seed)
        self.control = SwitchboardControl(self.switchboard.control)
        for nid in self.ids:
            self.start_node(nid, wait=None)
        for nid in self.ids:
            for attempt in range(3):
                try:
                    self.wait_up(nid, wait, record=False)
                    break
                except ClusterError:
                    # `free_port` can race with another process taking the port before
                    # the node binds it: nobody has used the endpoint yet, so move it.
                    if attempt == 2 or "Address already in use" not in _tail(
                            self.nodes[nid].log_path, 2000):
                        raise
                    self._forget(self.nodes[nid])  # the harness's race, not the node's
                    self.nodes[nid].endpoint = f"tcp://127.0.0.1:{free_port()}"
                    self.start_node(nid, wait=None)
        self._monitor = threading.Thread(target=self._watch_exits, daemon=True,
                                         name="cluster-exits")
        self._monitor.start()

    def start_node(self, nid: str, wait: float | None = 20.0) -> None:
        h = self.nodes[nid]
        if h.alive:
            return
        self._reap(h)  # a node that died on its own since the last look: say so first
        assert self.switchboard is not None
        opts = NodeOptions(node_id=nid, data_dir=h.data_dir, listen=h.endpoint,
                           switchboard=self.switchboard.bind, peers=list(self.ids),
                           bugs=list(self.bugs), profile=self.profile, tick_ms=self.tick_ms,
                           election_ticks=self.election_ticks,
                           snapshot_every=self.snapshot_every, kek_path=self.kek_path,
                           enable_timeout_ticks=self.enable_timeout_ticks,
                           seed=(self.seed * 1000 + h.starts * 17 + self.ids.index(nid)),
                           max_msg_bytes=self.max_msg_bytes, max_inflight=self.max_inflight,
                           durability_journal=self.durability_journal)
        with self._tick_lock:  # a skewed node restarted keeps its skew
            tick = (h.tick_factor, h.tick_seq)
            h.tick_live = h.tick_factor
        proc = self._mp.Process(target=_node_entry,
                                args=(opts, h.log_path, os.getpid(), tick),
                                name=f"node-{nid}", daemon=True)
        self._spawn(proc.start)
        h.process = proc
        h.paused = False
        h.starts += 1
        if wait is not None:
            self.wait_up(nid, wait)

    def wait_up(self, nid: str, timeout: float = 20.0, *,
                record: bool = True) -> dict[str, Any]:
        """Status of `nid` once it answers; a clear error naming its log if it never does
        (recorded as a failed start unless `record` is False)."""
        h = self.nodes[nid]
        deadline = time.monotonic() + timeout
        with Client({nid: h.endpoint}, timeout=0.5) as c:
            while True:
                if h.process is not None and not h.process.is_alive():
                    if record:
                        self._reap(h)
                    raise ClusterError(f"node {nid} exited with code {h.process.exitcode} "
                                       f"while starting; see {h.log_path}: "
                                       f"{_tail(h.log_path)}")
                try:
                    rep = c.admin(nid, "status", timeout=0.5)
                    if rep.get("ok"):
                        return rep["value"]
                except ClientTimeout:
                    pass
                if time.monotonic() > deadline:
                    if record:
                        self._record("failed-start", h, reason=f"no answer within "
                                                              f"{timeout:.0f} s")
                    raise ClusterError(f"node {nid} did not come up within {timeout:.0f} s; "
                                       f"see {h.log_path}")

    def kill(self, nid: str, *, power: bool = False,
             torn: random.Random | None = None) -> dict[str, Any] | None:
        """SIGKILL: no goodbye, no flush. The page cache survives it, so nothing written
        is lost; with `power`, the node's files are then cut back to what they durably
        held (`node.disk.power_loss`), as a power failure at that instant would leave
        them (with `torn`, a random part of the unsynced bytes survives). Returns what the
        power loss undid (None without `power`)."""
        h = self.nodes[nid]
        self._reap(h)  # it may have died on its own before the nemesis came for it
        if h.process is not None and h.process.is_alive():
            self._plan_exit(h)
            os.kill(h.process.pid, signal.SIGKILL)
            h.process.join(5)
        h.paused = False
        if not power:
            return None
        if h.process is not None and h.process.is_alive():  # pragma: no cover - defensive
            raise ClusterError(f"node {nid} survived SIGKILL; not touching its files")
        return dict(power_loss(h.data_dir, torn))

    def restart(self, nid: str, wait: float | None = 20.0) -> None:
        self.kill(nid)
        self.start_node(nid, wait=wait)

    def pause(self, nid: str) -> None:
        h = self.nodes[nid]
        if h.alive and not h.paused:
            os.kill(h.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            h.paused = True

    def resume(self, nid: str) -> None:
        h = self.nodes[nid]
        if h.alive and h.paused:
            os.kill(h.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
        h.paused = False
        if h.alive and h.tick_live != h.tick_factor:  # skewed (or reset) while stopped
            self._send_tick(h)

    def set_tick_factor(self, nid: str, factor: float, timeout: float = 2.0) -> bool:
        """From now on `nid`'s timers run `factor` times as fast (1: its own speed), in
        this process and in every later one (a node's skew is its machine's: a restart
        keeps it). Whether its process said so: a paused one is told when resumed, a
        dead one when started. Not through Raft: the node process answers it itself
        (`node.server.TICK_FACTOR_OP`)."""
        h = self.nodes[nid]
        with self._tick_lock:
            h.tick_factor, h.tick_seq = factor, next(self._tick_seqs)
        return self._send_tick(h, timeout)

    def _send_tick(self, h: NodeHandle, timeout: float = 2.0) -> bool:
        with self._tick_lock:
            factor, seq = h.tick_factor, h.tick_seq
        if not h.alive or h.paused:
            return False
        try:
            with Client({h.id: h.endpoint}, timeout=timeout) as c:
                rep = c.admin(h.id, TICK_FACTOR_OP, timeout=timeout, factor=factor, seq=seq)
        except ClientTimeout:
            return False
        if not rep.get("ok"):
            return False
        with self._tick_lock:
            h.tick_live = float(rep["value"]["factor"])
        return True

    def stop_all(self, grace: float = 3.0) -> None:
        """SIGTERM every live node (a paused one is resumed first) so each logs its final
        digest (`stop` event, which I4 compares); SIGKILL whatever is still up after
        `grace` seconds."""
        self._stop_watching()
        for h in self.nodes.values():
            self._reap(h)
        live = [h for h in self.nodes.values() if h.alive]
        for h in live:
            self._plan_exit(h)
            try:
                if h.paused:
                    os.kill(h.process.pid, signal.SIGCONT)  # type: ignore[union-attr]
                    h.paused = False
                os.kill(h.process.pid, signal.SIGTERM)  # type: ignore[union-attr]
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        for h in live:
            h.process.join(max(0.0, deadline - time.monotonic()))  # type: ignore[union-attr]
        self.close()

    def close(self) -> None:
        """Kill everything this cluster started; safe to call twice. An exit that
        happened before (the watch looks every 100 ms) is still recorded."""
        self._stop_watching()
        for h in self.nodes.values():
            self._reap(h)
            self._plan_exit(h)
            if h.process is not None and h.process.is_alive():
                try:
                    os.kill(h.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for h in self.nodes.values():
            if h.process is not None:
                h.process.join(5)
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.switchboard is not None:
            self.switchboard.stop()
            self.switchboard = None
        if self._spawner is not None:
            self._spawn_q.put(None)
            self._spawner = None

    def __enter__(self) -> Cluster:
        return self

    # ------------------------------------------------------------- exits

    def _plan_exit(self, h: NodeHandle) -> None:
        """The harness is about to end this process: its exit is not evidence."""
        if h.process is not None and h.process.pid is not None:
            with self._exit_lock:
                self._planned.add(h.process.pid)

    def _forget(self, h: NodeHandle) -> None:
        if h.process is not None and h.process.pid is not None:
            with self._exit_lock:
                self._reaped.add(h.process.pid)

    def _reap(self, h: NodeHandle) -> None:
        """Look at `h`'s process once it has exited: unless the harness asked for it,
        record the exit with its code and the end of its log."""
        p = h.process
        if p is None or p.pid is None or p.is_alive():
            return
        with self._exit_lock:
            if p.pid in self._reaped:
                return
            self._reaped.add(p.pid)
            planned = p.pid in self._planned
        if not planned:
            self._record("exit", h, code=p.exitcode, pid=p.pid)

    def _record(self, kind: str, h: NodeHandle, **fields: Any) -> None:
        line = exit_record(kind, h.id, time.monotonic_ns(), start=h.starts,
                           log=_tail_lines(h.log_path), **fields)
        with self._exit_lock:
            self.exits.append(json.loads(line))
            with open(self.exits_path, "a", encoding="utf-8") as fh:
                fh.write(line)

    def _watch_exits(self) -> None:
        while not self._monitor_stop.wait(0.1):
            for h in list(self.nodes.values()):
                try:
                    self._reap(h)
                except Exception:  # noqa: BLE001 - the watch must outlive one bad look
                    continue

    def _stop_watching(self) -> None:
        self._monitor_stop.set()
        if self._monitor is not None and self._monitor is not threading.current_thread():
            self._monitor.join(2)

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- queries

    def endpoints(self) -> dict[str, str]:
        return {nid: h.endpoint for nid, h in self.nodes.items()}

    def pids(self) -> list[int]:
        out = [h.process.pid for h in self.nodes.values() if h.alive and h.process]
        if self.switchboard is not None and self.switchboard.pid:
            out.append(self.switchboard.pid)
        return out

    def statuses(self, timeout: float = 0.5) -> dict[str, dict[str, Any] | None]:
        out: dict[str, dict[str, Any] | None] = {}
        with Client(self.endpoints(), timeout=timeout) as c:
            for nid, h in self.nodes.items():
                if not h.alive or h.paused:
                    out[nid] = None
                    continue
                try:
                    rep = c.admin(nid, "status", timeout=timeout)
                    out[nid] = rep.get("value") if rep.get("ok") else None
                except ClientTimeout:
                    out[nid] = None
        return out

    def leader(self, among: list[str] | None = None) -> str | None:
        """The node that says it leads in the highest term (among `among`), if any."""
        best: tuple[int, str] | None = None
        for nid, st in self.statuses().items():
            if st and st["role"] == "leader" and (among is None or nid in among):
                if best is None or st["term"] > best[0]:
                    best = (st["term"], nid)
        return best[1] if best else None

    def wait_leader(self, timeout: float = 10.0, among: list[str] | None = None,
                    exclude: str | None = None) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            nid = self.leader(among)
            if nid is not None and nid != exclude:
                return nid
            time.sleep(0.02)
        raise ClusterError(f"no leader within {timeout:.0f} s")


def _tail_lines(path: str, lines: int = 20, size: int = 4096) -> list[str]:
    """The last `lines` lines of a node's log (its traceback, when it died of one)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - size))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [ln for ln in text.splitlines() if ln.strip()][-lines:]


def _tail(path: str, n: int = 300) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - n))
            return fh.read().decode("utf-8", "replace").strip().replace("\n", " | ")
    except OSError:
        return "(no log)"
