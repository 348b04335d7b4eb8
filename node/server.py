"""The node process: one event loop around the pure Raft core.

The loop drains every message and request that is ready (so many proposals share one
Ready, one WAL write and one fsync: group commit), ticks the core on a fixed period,
then handles Ready in the order the core's contract demands: persist (and fsync),
send, apply, answer. Everything that can block is outside the core, here.
"""
from __future__ import annotations

import argparse
import ctypes
import faulthandler
import math
import os
import random
import signal
import sys
import time
from typing import Any

import msgpack
import zmq

from node.buggify import from_env
from node.disk import JOURNAL_NAME, REAL, Disk
from node.events import EXIT_HALTED, EXIT_REFUSED, EXIT_STORAGE, EventKind, EventLog
from node.host import ALL_BUGS, NODE_BUGS, PROFILES, NodeExit, NodeHost, NodeOptions
from node.keystore import KeystoreError, load_kek
from node.raft import Message, from_wire, to_wire
from node.sidecar import SidecarError
from node.snapshot import SnapshotError
from node.storage import StorageError, storage_failure
from node.wal import WalError

__all__ = ["ALL_BUGS", "EXIT_HALTED", "NODE_BUGS", "PARENT_ENV", "PROFILES",
           "TICK_FACTOR_OP", "Node", "NodeOptions", "die_with_parent", "main", "parse_args",
           "run_node"]

_PR_SET_PDEATHSIG = 1
# `python -m node` started by a harness: the pid of the process it must die with. The
# harness's own nodes get it as an argument of `run_node` instead.
PARENT_ENV = "CUTOVER_PARENT_PID"


def die_with_parent(parent_pid: int | None = None) -> int:
    """No orphans: the kernel kills us when the process that started us dies.

    Call it first in the child, with the pid the parent passed down. The flag only
    covers a parent that dies *after* it is set, and a parent that died earlier has
    already handed us to init (or a subreaper): then `getppid()` is no longer
    `parent_pid` and we exit at once, before binding a port or locking a data dir
    (a spawn-context child spends most of a second importing before it gets here).
    Returns the pid the loop keeps watching (`getppid()` when none was passed).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the getppid() check here and in the loop still applies
    ppid = os.getppid()
    if parent_pid is None:
        return ppid
    if ppid != parent_pid:
        os._exit(0)  # the parent is gone: nobody is left to tell, nothing to clean
    return parent_pid


# Test-only: `CUTOVER_TEST_RAISE_AT=n2:40` makes node n2 raise (an unhandled exception,
# so the process dies with a traceback) once it has applied index 40, in its first life
# only (a process started on an empty data dir), so the heal's restart of it comes up.
# It stands for a defect on a rare path; the harness must notice the dead node
# (`checker.crashes`). Nothing sets it outside the tests.
TEST_RAISE_ENV = "CUTOVER_TEST_RAISE_AT"

# An admin request the process answers itself, outside Raft and the node's logic: from
# now on its timers (its ticks) run `factor` times as fast. The harness's clock-skew
# fault uses it; its `seq` orders requests that reach the node over different
# connections (an older one arriving late, say after a pause, is ignored).
TICK_FACTOR_OP = "tick-factor"
TICK_FACTORS = (0.01, 100.0)  # what a process accepts: a tick from 0.25 ms to 2.5 s at 25 ms


def tick_factor_error(factor: Any, seq: Any) -> str | None:
    """Why a tick-factor request cannot be obeyed, or None."""
    lo, hi = TICK_FACTORS
    if isinstance(factor, bool) or not isinstance(factor, int | float) \
            or not math.isfinite(factor) or not lo <= factor <= hi:
        return f"factor must be a number from {lo:g} to {hi:g}"
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        return "seq must be a whole number >= 0"
    return None


def raise_at_hook(opts: NodeOptions) -> int | None:
    """The applied index at which this node process must raise, or None."""
    spec = os.environ.get(TEST_RAISE_ENV, "")
    node, _, index = spec.partition(":")
    if node != opts.node_id or not index.isdigit() or os.path.exists(opts.data_dir) \
            and os.listdir(opts.data_dir):
        return None
    return int(index)


class Node:
    """One replica process: a `NodeHost` (the node's logic) on real files, real time,
    ZeroMQ sockets and one poll loop."""

    def __init__(self, opts: NodeOptions, parent_pid: int | None = None, *,
                 tick_factor: float = 1.0, tick_seq: int = 0) -> None:
        self.opts = opts
        why = tick_factor_error(tick_factor, tick_seq)
        if why is not None:
            raise ValueError(f"tick factor: {why}")
        self.tick_factor = float(tick_factor)
        self._tick_seq = tick_seq
        self.ticks = 0  # this process's, answered with the factor (how fast it runs)
        self._tick_s = opts.tick_ms / 1000.0 / self.tick_factor
        # Read before start-up, not in the loop: by then the parent may be gone already.
        self.parent_pid = os.getppid() if parent_pid is None else parent_pid
        self.id = opts.node_id
        self._raise_at = raise_at_hook(opts)  # read before the data dir fills up
        REAL.makedirs(opts.data_dir)
        disk = (Disk(os.path.join(opts.data_dir, JOURNAL_NAME))
                if opts.durability_journal else REAL)
        self.log = EventLog(opts.data_dir, opts.node_id)
        self.ctx = zmq.Context()
        self.peer = self.ctx.socket(zmq.DEALER)
        self.peer.setsockopt(zmq.IDENTITY, self.id.encode())
        self.peer.setsockopt(zmq.LINGER, 0)
        self.peer.setsockopt(zmq.SNDHWM, 100_000)
        self.client = self.ctx.socket(zmq.ROUTER)
        self.client.setsockopt(zmq.LINGER, 0)
        try:
            self.client.bind(opts.listen)
            bg = from_env(os.environ, self.log.emit)  # BUGGIFY: armed only by the env
            if bg.on and disk is REAL:
                disk = Disk()  # the hook rides on the disk; REAL is shared
            self.host = NodeHost(
                opts, disk=disk, log=self.log, buggify=bg,
                kek=load_kek(opts.kek_path) if opts.kek_path else None,
                clock=time.monotonic, send=self._send_batch, deliver=self._deliver,
                rng=random.Random(opts.seed if opts.seed is not None else os.urandom(8)),
                start_info={"pid": os.getpid(), "listen": opts.listen})
        except BaseException as e:
            if not isinstance(e, zmq.ZMQError):  # a port taken is the harness's problem
                self.log.emit(EventKind.START_FAILED, error=f"{type(e).__name__}: {e}")
            self.client.close(0)
            self.peer.close(0)
            self.ctx.term()
            self.log.close()
            raise
        self.exit: NodeExit | None = None
        self.storage_exit: Exception | None = None
        self.peer.connect(opts.switchboard)
        self.peer.send_multipart([b"", b"hello"])
        self.running = True

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        """Serve until SIGTERM, until the parent dies, or until the node ends itself
        (`NodeExit`, the elastickv profile's halt: `self.exit` says why)."""
        try:
            self._loop()
        except NodeExit as e:
            self.exit = e
            self.log.emit(EventKind.EXIT, reason="halt", index=e.index, term=e.term,
                          code=EXIT_HALTED)
            self.host.abandon()
            self._close_io()
            return
        except Exception as e:
            if storage_failure(e):  # fail-stop on storage it cannot trust: an exit, not a crash
                self.storage_exit = e
                self.log.emit(EventKind.EXIT, reason="storage",
                              error=f"{type(e).__name__}: {e}", code=EXIT_STORAGE)
                self.host.abandon()
                self._close_io()
                return
            # What it dies of is evidence (the `crashes` checker), then the traceback.
            self.log.emit(EventKind.CRASH, error=f"{type(e).__name__}: {e}")
            raise
        self.close()

    def _loop(self) -> None:
        host = self.host
        parent = self.parent_pid
        poller = zmq.Poller()
        poller.register(self.peer, zmq.POLLIN)
        poller.register(self.client, zmq.POLLIN)
        next_tick = time.monotonic() + self._tick_s
        next_parent_check = 0.0
        while self.running:
            tick = self._tick_s  # a tick-factor request changes it between turns
            now = time.monotonic()
            next_tick = min(next_tick, now + tick)  # sped up: the next tick comes sooner
            wait_ms = max(0.0, (next_tick - now) * 1000.0)
            ready = dict(poller.poll(wait_ms))
            if self.peer in ready:
                self._drain_peers()
            if self.client in ready:
                before = (host._pid_next, host._read_ctr)
                self._drain_clients()
                if (host._pid_next, host._read_ctr) != before and self.opts.linger_ms > 0:
                    # Group commit: give concurrent clients a moment to join this batch
                    # (one fsync and one message per follower for all of them).
                    if self.client.poll(self.opts.linger_ms):
                        self._drain_clients()
            now = time.monotonic()
            if now >= next_tick:
                host.on_tick()
                self.ticks += 1
                next_tick += tick
                if now - next_tick > 10 * tick:  # we were stopped (SIGSTOP): do not burst
                    next_tick = now + tick
            host.process()
            if self._raise_at is not None and host.applied >= self._raise_at:
                raise RuntimeError(f"test hook {TEST_RAISE_ENV}: node {self.id} applied "
                                   f"{host.applied} >= {self._raise_at}")
            if now >= next_parent_check:
                next_parent_check = now + 0.5
                if os.getppid() != parent:
                    self.log.emit(EventKind.PARENT_GONE)
                    break
                host.expire()

    def close(self) -> None:
        self.host.close()
        self._close_io()

    def _close_io(self) -> None:
        self.log.close()
        self.peer.close(0)
        self.client.close(0)
        self.ctx.term()

    def _deliver(self, ident: Any, rep: dict[str, Any]) -> None:
        try:
            self.client.send_multipart([ident, msgpack.packb(rep, use_bin_type=True)],
                                       zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client went away

    def _drain_peers(self) -> None:
        for _ in range(5000):
            try:
                frames = self.peer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                continue
            try:
                batch = msgpack.unpackb(frames[1], raw=False)
                msgs = [from_wire(d) for d in (batch if isinstance(batch, list) else [batch])]
            except (ValueError, TypeError, KeyError, msgpack.UnpackException):
                continue  # garbage from the network is dropped, never fatal
            self.host.on_messages(msgs)

    def _drain_clients(self) -> None:
        for _ in range(5000):
            try:
                frames = self.client.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 2:
                continue
            ident, body = frames[0], frames[-1]
            try:
                req = msgpack.unpackb(body, raw=False)
                if not isinstance(req, dict):
                    raise ValueError("request is not a map")
            except (ValueError, msgpack.UnpackException):
                self._deliver(ident, {"id": None, "ok": False, "code": "bad-request",
                                      "text": "request is not a msgpack map",
                                      "definite": True})
                continue
            if req.get("op") == TICK_FACTOR_OP:
                self._set_tick_factor(ident, req)
                continue
            self.host.on_request(ident, req)

    def _set_tick_factor(self, ident: Any, req: dict[str, Any]) -> None:
        """The tick-factor request (`TICK_FACTOR_OP`; without `factor`, a question);
        answers the factor now in force and the ticks this process made."""
        factor, seq = req.get("factor", self.tick_factor), req.get("seq", 0)
        why = tick_factor_error(factor, seq)
        if why is not None:
            self._deliver(ident, {"id": req.get("id"), "ok": False, "code": "bad-request",
                                  "text": why, "definite": True})
            return
        stale = seq != 0 and seq <= self._tick_seq
        if not stale:
            self._tick_seq = max(self._tick_seq, seq)
            self.tick_factor = float(factor)
            self._tick_s = self.opts.tick_ms / 1000.0 / self.tick_factor
        self._deliver(ident, {"id": req.get("id"), "ok": True,
                              "value": {"factor": self.tick_factor, "stale": stale,
                                        "ticks": self.ticks}})

    def _send_batch(self, msgs: list[Message]) -> None:
        """One network message per destination: every send costs a wakeup of ZeroMQ's
        I/O thread here and a forward in the switchboard."""
        by_dst: dict[str, list[dict[str, Any]]] = {}
        for m in msgs:
            by_dst.setdefault(m.dst, []).append(to_wire(m))
        send = self.peer.send_multipart
        for dst, batch in by_dst.items():
            try:
                send([dst.encode(), msgpack.packb(batch, use_bin_type=True)], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the switchboard is gone or full: Raft copes with loss


def parse_args(argv: list[str]) -> NodeOptions:
    ap = argparse.ArgumentParser(prog="python -m node",
                                 description="One replica of the cutover lab's Raft group.")
    ap.add_argument("--id", required=True, dest="node_id")
    ap.add_argument("--data", required=True, dest="data_dir")
    ap.add_argument("--listen", required=True)
    ap.add_argument("--switchboard", required=True)
    ap.add_argument("--peers", required=True, help="comma-separated node ids, self included")
    ap.add_argument("--bug", action="append", default=[], dest="bugs",
                    help=f"put a known defect back: {', '.join(sorted(ALL_BUGS))}")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="fixed",
                    help="behave as the fixed protocol or as elastickv as it stands")
    ap.add_argument("--tick-ms", type=float, default=25.0)
    ap.add_argument("--election-ticks", type=int, default=10)
    ap.add_argument("--snapshot-every", type=int, default=20_000)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--kek", dest="kek_path", help="KEK file (32 bytes, mode 0600)")
    ap.add_argument("--max-msg-bytes", type=int, default=64 * 1024,
                    help="payload bytes per append message (one entry always fits)")
    ap.add_argument("--max-inflight", type=int, default=64)
    ap.add_argument("--durability-journal", action="store_true",
                    help="journal every durability point (for a harness's power-loss fault)")
    a = ap.parse_args(argv)
    peers = [p for p in a.peers.split(",") if p]
    if a.node_id not in peers:
        ap.error(f"--peers must include this node's id {a.node_id!r}")
    return NodeOptions(node_id=a.node_id, data_dir=a.data_dir, listen=a.listen,
                       switchboard=a.switchboard, peers=peers, bugs=a.bugs,
                       profile=a.profile,
                       tick_ms=a.tick_ms, election_ticks=a.election_ticks,
                       snapshot_every=a.snapshot_every, seed=a.seed, kek_path=a.kek_path,
                       max_msg_bytes=a.max_msg_bytes, max_inflight=a.max_inflight,
                       durability_journal=a.durability_journal)


def run_node(opts: NodeOptions, parent_pid: int | None = None, *,
             tick_factor: float = 1.0, tick_seq: int = 0) -> int:
    """Run a node to completion; returns a process exit code (2: refused to start,
    `EXIT_HALTED`: it ended itself after a halt, the elastickv profile). `parent_pid`:
    the process this node must not outlive (see `die_with_parent`); `tick_factor` and
    `tick_seq`: its timers' speed from the start (a skewed node restarted keeps its
    skew: `TICK_FACTOR_OP`)."""
    parent_pid = die_with_parent(parent_pid)
    try:
        node = Node(opts, parent_pid, tick_factor=tick_factor, tick_seq=tick_seq)
    except (StorageError, WalError, SnapshotError, SidecarError, KeystoreError, ValueError,
            OSError, zmq.ZMQError) as e:
        print(f"node {opts.node_id}: refusing to start: {e}", file=sys.stderr)
        return EXIT_REFUSED

    def stop(_sig: int, _frm: Any) -> None:
        node.running = False

    # `kill -USR1 <pid>` writes every thread's stack to the node's log: a node that
    # stops making progress can be looked at without stopping it.
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    prof_dir = os.environ.get("CUTOVER_NODE_PROFILE")
    if prof_dir:  # developer aid: cProfile the node, stats written on a clean stop
        import cProfile

        cProfile.runctx("node.run()", globals(), {"node": node},
                        os.path.join(prof_dir, f"{opts.node_id}.prof"))
    else:
        node.run()
    if node.exit is not None:
        print(f"node {opts.node_id}: exiting: {node.exit}", file=sys.stderr)
        return EXIT_HALTED
    if node.storage_exit is not None:
        print(f"node {opts.node_id}: stopping on its storage: "
              f"{type(node.storage_exit).__name__}: {node.storage_exit}", file=sys.stderr)
        return EXIT_STORAGE
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m node`: dies with the pid in `CUTOVER_PARENT_PID` when a harness sets
    it (checked before anything else), else with whoever started it."""
    env = os.environ.get(PARENT_ENV, "")
    parent_pid = die_with_parent(int(env) if env.isdigit() else None)
    return run_node(parse_args(sys.argv[1:] if argv is None else argv), parent_pid)
