"""The node process: one event loop around the pure Raft core.

The loop drains every message and request that is ready (so many proposals share one
Ready, one WAL write and one fsync: group commit), ticks the core on a fixed period,
then handles Ready in the order the core's contract demands: persist (and fsync),
send, apply, answer. Everything that can block is outside the core, here.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import random
import signal
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq

from node import payload as pl
from node.cutover import CUTOVER_BUGS, Busy, Cutover, EnableFlow, FileStore, Halt
from node.events import EventLog
from node.keystore import KeystoreError, load_kek
from node.kv import KV, snapshot_data, snapshot_enc, snapshot_kv
from node.raft import (
    Config,
    Message,
    NotLeader,
    RaftNode,
    Ready,
    Role,
    from_wire,
    may_send_early,
    to_wire,
)
from node.storage import Storage, StorageError
from node.types import EntryKind, Snapshot

NODE_BUGS = {
    "stale-read": "reads served from local state on whichever node is asked",
    "commit-old-term": "the leader commits older-term entries by counting replicas "
                       "(Figure 8 of the Raft paper)",
}

_PR_SET_PDEATHSIG = 1


@dataclass
class NodeOptions:
    """Everything a node needs to start; the orchestrator builds one per node."""

    node_id: str
    data_dir: str
    listen: str
    switchboard: str
    peers: list[str]
    bugs: list[str] = field(default_factory=list)
    tick_ms: float = 25.0
    election_ticks: int = 10
    heartbeat_ticks: int = 3
    lease_interval: float = 1.0
    snapshot_every: int = 20_000
    proposal_timeout: float = 30.0
    linger_ms: float = 1.0
    kek_path: str | None = None  # None: a node without encryption (admin ops refused)
    enable_timeout_ticks: int = 200
    seed: int | None = None


def die_with_parent() -> None:
    """No orphans: the kernel kills us when the process that started us dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the getppid() watch in the loop still applies


class Node:
    """One replica: Raft core + storage + KV state machine + sockets."""

    def __init__(self, opts: NodeOptions) -> None:
        self.opts = opts
        self.id = opts.node_id
        known = set(NODE_BUGS) | set(CUTOVER_BUGS)
        unknown = sorted(set(opts.bugs) - known)
        if unknown:
            raise ValueError(f"unknown bug switch(es) {unknown}; known: {sorted(known)}")
        self.bugs = frozenset(opts.bugs)
        os.makedirs(opts.data_dir, exist_ok=True)
        self.storage = Storage.open(opts.data_dir, opts.node_id)
        self.log = EventLog(opts.data_dir, opts.node_id)
        for ev in self.storage.recovered_events:
            ev = dict(ev)
            self.log.emit(ev.pop("kind"), **ev)
        self.kv = KV()
        self.cut: Cutover | None = None
        if opts.kek_path:
            node_num = sorted(opts.peers).index(opts.node_id) + 1
            self.cut = Cutover(node_num, FileStore(opts.data_dir), load_kek(opts.kek_path),
                               frozenset(self.bugs & set(CUTOVER_BUGS)),
                               on_event=self.log.emit)
            header = self.storage.snapshot_header
            if header is not None:
                try:  # the start-up divergence guard (§6)
                    self.cut.check_startup_snapshot(header.cutover)
                except Halt as h:
                    raise StorageError(h.reason) from None
        snap = self.storage.snapshot
        if snap is not None:
            image = snapshot_kv(snap.data)
            if self.cut is not None:
                try:
                    image = self.cut.open_image(image)
                except Halt as h:
                    raise StorageError(h.reason) from None
            self.kv.restore(image)
        rng = random.Random(opts.seed if opts.seed is not None else os.urandom(8))
        cfg = Config(election_ticks=opts.election_ticks, heartbeat_ticks=opts.heartbeat_ticks)
        self.raft = RaftNode(opts.node_id, opts.peers, rng=rng, config=cfg,
                             bugs=frozenset(b for b in self.bugs if b == "commit-old-term"),
                             hard_state=self.storage.hard_state, snapshot=snap,
                             entries=self.storage.entries)
        self.applied = self.raft.applied
        self.halted: str | None = None
        self._pid_next = random.getrandbits(40) << 20
        # proposal id -> (client identity, request id, index, deadline)
        self.pending: dict[int, tuple[bytes, Any, int, float]] = {}
        self.read_wait: dict[bytes, tuple[bytes, Any, str, float]] = {}  # ctx -> request
        self.reads_ready: deque[tuple[int, bytes, Any, str]] = deque()  # (index, ident, id, key)
        self._read_ctr = 0
        self.admin_busy = False
        self.enable: tuple[EnableFlow, bytes, Any] | None = None
        self._last_role = (None, -1, None)
        self._last_lease = 0.0
        self._last_progress_event = 0.0
        self.ctx = zmq.Context()
        self.peer = self.ctx.socket(zmq.DEALER)
        self.peer.setsockopt(zmq.IDENTITY, self.id.encode())
        self.peer.setsockopt(zmq.LINGER, 0)
        self.peer.setsockopt(zmq.SNDHWM, 100_000)
        self.peer.connect(opts.switchboard)
        self.client = self.ctx.socket(zmq.ROUTER)
        self.client.setsockopt(zmq.LINGER, 0)
        self.client.bind(opts.listen)
        self.peer.send_multipart([b"", b"hello"])
        self.running = True
        self.log.emit("start", pid=os.getpid(), listen=opts.listen, bugs=sorted(self.bugs),
                      **self._positions())

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        """Serve until SIGTERM or until the parent dies."""
        parent = os.getppid()
        poller = zmq.Poller()
        poller.register(self.peer, zmq.POLLIN)
        poller.register(self.client, zmq.POLLIN)
        tick = self.opts.tick_ms / 1000.0
        next_tick = time.monotonic() + tick
        next_parent_check = 0.0
        while self.running:
            now = time.monotonic()
            wait_ms = max(0.0, (next_tick - now) * 1000.0)
            ready = dict(poller.poll(wait_ms))
            if self.peer in ready:
                self._drain_peers()
            if self.client in ready:
                before = (self._pid_next, self._read_ctr)
                self._drain_clients()
                if (self._pid_next, self._read_ctr) != before and self.opts.linger_ms > 0:
                    # Group commit: give concurrent clients a moment to join this batch
                    # (one fsync and one message per follower for all of them).
                    if self.client.poll(self.opts.linger_ms):
                        self._drain_clients()
            now = time.monotonic()
            if now >= next_tick:
                self.raft.tick()
                if self.enable is not None:
                    self.enable[0].tick()
                next_tick += tick
                if now - next_tick > 10 * tick:  # we were stopped (SIGSTOP): do not burst
                    next_tick = now + tick
                self._maybe_lease(now)
            self._process_ready()
            if self.enable is not None:
                self._poll_enable()
                self._process_ready()
            self._answer_reads()
            if now >= next_parent_check:
                next_parent_check = now + 0.5
                if os.getppid() != parent:
                    self.log.emit("parent-gone")
                    break
                self._expire(now)
        self.close()

    def close(self) -> None:
        self.log.emit("stop", digest=self.kv.digest(), **self._positions())
        try:
            self.storage.close()
        except StorageError:
            pass
        self.log.close()
        self.peer.close(0)
        self.client.close(0)
        self.ctx.term()

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
            for msg in msgs:
                self.raft.step(msg)

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
                self._reply(ident, {"id": None, "ok": False, "code": "bad-request",
                                    "text": "request is not a msgpack map", "definite": True})
                continue
            self._handle(ident, req)

    # -------------------------------------------------------------- requests

    def _reply(self, ident: bytes, rep: dict[str, Any]) -> None:
        try:
            self.client.send_multipart([ident, msgpack.packb(rep, use_bin_type=True)],
                                       zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client went away

    def _fail(self, ident: bytes, rid: Any, code: str, text: str, definite: bool = True,
              **extra: Any) -> None:
        self._reply(ident, {"id": rid, "ok": False, "code": code, "text": text,
                            "definite": definite, **extra})

    def _not_leader(self, ident: bytes, rid: Any) -> None:
        self._fail(ident, rid, "not-leader", f"{self.id} is not the leader",
                   leader=self.raft.leader)

    def _handle(self, ident: bytes, req: dict[str, Any]) -> None:
        rid = req.get("id")
        op = req.get("op")
        if op == "status":
            self._reply(ident, {"id": rid, "ok": True, "value": self.status()})
            return
        if op == "snapshot-now":
            idx = self.take_snapshot()
            self._reply(ident, {"id": rid, "ok": True, "value": {"snapshot_index": idx}})
            return
        if op in ("bootstrap", "rotate-dek", "enable-raft-envelope"):
            self._admin(ident, rid, op, req)
            return
        if op not in ("read", "write", "cas"):
            self._fail(ident, rid, "bad-request", f"unknown op {op!r}")
            return
        key = req.get("key")
        if not isinstance(key, str):
            self._fail(ident, rid, "bad-request", "key must be a string")
            return
        if self.halted:
            self._fail(ident, rid, "halted", f"apply halted: {self.halted}")
            return
        if op == "read":
            if "stale-read" in self.bugs:
                self._reply(ident, {"id": rid, "ok": True, "value": self.kv.read(key)})
                return
            self._read_ctr += 1
            ctx = struct.pack(">Q", self._read_ctr)
            try:
                self.raft.read_index(ctx)
            except NotLeader:
                self._not_leader(ident, rid)
                return
            self.read_wait[ctx] = (ident, rid, key, time.monotonic() + self.opts.proposal_timeout)
            return
        if not self._can_serve(ident, rid):
            return
        cmd: dict[str, Any] = {"op": op, "key": key}
        if op == "write":
            cmd["value"] = req.get("value")
        else:
            cmd["from"] = req.get("from")
            cmd["to"] = req.get("to")
        payload = pl.user_payload(cmd)
        if self.cut is not None:
            try:
                payload = self.cut.user_proposal(payload, self.cut.barrier)
            except Busy as b:
                self._fail(ident, rid, b.code, str(b))
                return
        self._propose(payload, ident, rid)

    def _can_serve(self, ident: bytes | None, rid: Any) -> bool:
        """A leader serves no proposal until it has applied its own term's first entry
        (§5): a marker committed by an earlier leader is then applied and installed."""
        if self.raft.role is not Role.LEADER:
            if ident is not None:
                self._not_leader(ident, rid)
            return False
        if "leader-unapplied-marker" in self.bugs:
            return True
        if self.applied < self.raft.term_start_index:
            if ident is not None:
                self._fail(ident, rid, "not-ready", "new leader still applying its log")
            return False
        return True

    def _admin(self, ident: bytes, rid: Any, op: str, req: dict[str, Any]) -> None:
        """bootstrap / rotate-dek / enable-raft-envelope: one at a time per node."""
        if self.cut is None:
            self._fail(ident, rid, "not-configured", "this node runs without a KEK")
            return
        if self.admin_busy or self.enable is not None:
            self._fail(ident, rid, "busy", "another admin request is running here")
            return
        if not self._can_serve(ident, rid):
            return
        if op == "enable-raft-envelope":
            self.admin_busy = True
            self.enable = (EnableFlow(self.cut, self.opts.enable_timeout_ticks), ident, rid)
            self._poll_enable()
            return
        key_id, wrapped = req.get("key_id"), req.get("wrapped")
        if not isinstance(key_id, int) or not 0 < key_id < 2**32 \
                or not isinstance(wrapped, bytes):
            self._fail(ident, rid, "bad-request", "need key_id (uint32 > 0) and wrapped bytes")
            return
        make = pl.bootstrap_payload if op == "bootstrap" else pl.rotate_payload
        self.admin_busy = True
        self._propose(self.cut.admin_proposal(make(key_id, wrapped)), ident, rid,
                      admin=True)

    def _poll_enable(self) -> None:
        if self.enable is None:
            return
        flow, ident, rid = self.enable
        res = flow.poll(self)
        if res is None:
            return
        self.enable = None
        self.admin_busy = False
        self.log.emit("enable-raft-envelope", status=res.status, cutover=res.cutover,
                      text=res.text)
        if res.status in ("ok", "already-active", "stale"):
            self._reply(ident, {"id": rid, "ok": True,
                                "value": {"status": res.status, "cutover": res.cutover}})
        else:
            self._fail(ident, rid, res.status, res.text or res.status,
                       definite=res.status != "failed", cutover=res.cutover)

    # EnableHost, for the flow
    def is_leader(self) -> bool:
        return self.raft.role is Role.LEADER

    def commit_index(self) -> int:
        return self.raft.commit

    def applied_index(self) -> int:
        return self.applied

    def inflight_user(self) -> int:
        return sum(1 for w in self.pending.values() if not w[4])

    def propose_raw(self, payload: bytes) -> int:
        self._pid_next += 1
        return self.raft.propose(pl.encode_proposal(self._pid_next, payload))

    def _propose(self, payload: bytes, ident: bytes | None, rid: Any,
                 admin: bool = False) -> None:
        self._pid_next += 1
        pid = self._pid_next
        try:
            index = self.raft.propose(pl.encode_proposal(pid, payload))
        except NotLeader:
            if admin:
                self.admin_busy = False
            if ident is not None:
                self._not_leader(ident, rid)
            return
        if ident is not None:
            self.pending[pid] = (ident, rid, index,
                                 time.monotonic() + self.opts.proposal_timeout, admin)

    def _maybe_lease(self, now: float) -> None:
        if (self.raft.role is Role.LEADER and now - self._last_lease >= self.opts.lease_interval
                and not self.halted and self._can_serve(None, None)):
            self._last_lease = now
            payload = pl.lease_payload(self.id, self.raft.term)
            if self.cut is not None:
                try:
                    payload = self.cut.user_proposal(payload, self.cut.barrier)
                except Busy:
                    return  # no lease while the barrier is up
            self._propose(payload, None, None)

    def _expire(self, now: float) -> None:
        """Forget requests nobody will answer (the client has long recorded `info`)."""
        for pid, (ident, rid, _idx, deadline, admin) in list(self.pending.items()):
            if now > deadline:
                del self.pending[pid]
                if admin:
                    self.admin_busy = False
                self._fail(ident, rid, "timeout", "not committed in time", definite=False)
        for ctx, (ident, rid, _key, deadline) in list(self.read_wait.items()):
            if now > deadline:
                del self.read_wait[ctx]
                self._fail(ident, rid, "timeout", "read not confirmed in time",
                           definite=False)

    # ----------------------------------------------------------------- ready

    def _process_ready(self) -> None:
        while self.raft.has_ready():
            rd = self.raft.ready()
            self._handle_ready(rd)
            self.raft.advance(rd)
        role = (self.raft.role, self.raft.term, self.raft.leader)
        if role != self._last_role:
            self._last_role = role
            self.log.emit("role", role=str(role[0]), term=role[1], leader=role[2])
            if role[0] is not Role.LEADER:
                # Reads waiting for a leadership confirmation will never get it here.
                for ctx, (ident, rid, _k, _d) in list(self.read_wait.items()):
                    del self.read_wait[ctx]
                    self._not_leader(ident, rid)

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

    def _handle_ready(self, rd: Ready) -> None:
        # A leader's appends go out before its own fsync, so the two overlap; replies
        # that promise durability (votes, acks) wait for it (the core's contract).
        early = [m for m in rd.messages if may_send_early(m)]
        if early:
            self._send_batch(early)
        cutover, enc = (snapshot_enc(rd.snapshot.data) if rd.snapshot is not None
                        else (0, b""))
        self.storage.save_ready(hard_state=rd.hard_state, entries=rd.entries,
                                snapshot=rd.snapshot, cutover=cutover, encryption=enc,
                                sync=rd.must_sync)
        if len(early) < len(rd.messages):
            self._send_batch([m for m in rd.messages if not may_send_early(m)])
        if rd.snapshot is not None:
            image = snapshot_kv(rd.snapshot.data)
            if self.cut is not None:  # runtime InstallSnapshot adopts the encryption state
                self.cut.adopt_snapshot(cutover, enc, rd.snapshot.meta.index)
                try:
                    image = self.cut.open_image(image)
                except Halt as h:
                    self._halt(rd.snapshot.meta.index, rd.snapshot.meta.term, h.reason)
                    image = b""
            self.kv.restore(image)
            self.applied = rd.snapshot.meta.index
            self.log.emit("snapshot-installed", index=rd.snapshot.meta.index,
                          term=rd.snapshot.meta.term)
        for e in rd.committed_entries:
            if self.halted:
                break
            self._apply(e)
        for rs in rd.read_states:
            w = self.read_wait.pop(rs.ctx, None)
            if w is not None:
                self.reads_ready.append((rs.index, w[0], w[1], w[2]))
        now = time.monotonic()
        if rd.committed_entries and now - self._last_progress_event > 1.0:
            self._last_progress_event = now
            self.log.emit("progress", commit=self.raft.commit, applied=self.applied,
                          term=self.raft.term, digest=self.kv.digest())
        if self.applied - self.raft.snapshot_index >= self.opts.snapshot_every:
            self.take_snapshot()

    def _apply(self, e: Any) -> None:
        if e.kind is EntryKind.NOOP or not e.data:
            self.applied = e.index
            return
        try:
            pid, body = pl.decode_proposal(e.data)
            if self.cut is not None:
                opened = self.cut.open_entry(e.index, body)  # the strict hook (§3)
                if opened is None:  # only with silent-unwrap-skip
                    self.log.emit("unwrap-skipped", index=e.index, term=e.term)
                    self.applied = e.index
                    return
                body = opened
            op = pl.opcode(body)
            if op == pl.OP_USER:
                ok, value = self.kv.apply(pl.decode_body(body))
            elif op == pl.OP_LEASE:
                ok, value = True, None
            elif op in (pl.OP_BOOTSTRAP, pl.OP_ROTATION) and self.cut is not None:
                applied = self.cut.apply(e.index, body)
                self.log.emit("encryption-applied", what=applied.kind, index=e.index,
                              term=e.term, cutover=applied.cutover, active=applied.active)
                ok, value = True, {"cutover": applied.cutover, "active": applied.active}
            else:
                raise pl.PayloadError(f"unknown opcode 0x{op:02x}")
        except pl.PayloadError as err:
            self._halt(e.index, e.term, str(err))
            return
        except Halt as h:
            self._halt(e.index, e.term, h.reason)
            return
        self.applied = e.index
        w = self.pending.pop(pid, None)
        if w is not None:
            ident, rid, index, _, admin = w
            if admin:
                self.admin_busy = False
            if index != e.index:  # pragma: no cover - ids are unique per proposal
                self._fail(ident, rid, "dropped", "proposal lost", definite=False)
            elif ok:
                self._reply(ident, {"id": rid, "ok": True, "value": value})
            else:
                self._fail(ident, rid, "cas-mismatch", f"current value {value!r}",
                           value=value)
        # Proposals at this index that did not make it: a different entry won the slot.
        for opid, (ident, rid, index, _, admin) in list(self.pending.items()):
            if index <= e.index:
                del self.pending[opid]
                if admin:
                    self.admin_busy = False
                self._fail(ident, rid, "dropped",
                           f"entry {index} was replaced after a leader change")

    def _halt(self, index: int, term: int, reason: str) -> None:
        """Fail closed: never skip an entry that cannot be applied."""
        self.halted = f"entry {index} (term {term}): {reason}"
        self.log.emit("halt", index=index, term=term, reason=reason)

    def _answer_reads(self) -> None:
        while self.reads_ready and self.reads_ready[0][0] <= self.applied:
            _, ident, rid, key = self.reads_ready.popleft()
            self._reply(ident, {"id": rid, "ok": True, "value": self.kv.read(key)})

    # ---------------------------------------------------------------- admin

    def take_snapshot(self) -> int:
        """Snapshot the FSM at the applied index and compact the log behind it."""
        idx = min(self.applied, self.raft.applied)
        if idx <= self.raft.snapshot_index:
            return self.raft.snapshot_index
        image = self.kv.snapshot()
        cutover, enc = (0, b"")
        if self.cut is not None:
            cutover, enc = self.cut.snapshot_fields(idx)
            image = self.cut.seal_image(idx, image)
        snap: Snapshot = self.raft.compact(idx, snapshot_data(image, cutover, enc))
        self.storage.compact(snap, cutover=cutover, encryption=enc)
        self.log.emit("snapshot-taken", index=snap.meta.index, term=snap.meta.term,
                      cutover=cutover)
        return snap.meta.index

    def _positions(self) -> dict[str, Any]:
        return {"term": self.raft.term, "commit": self.raft.commit, "applied": self.applied,
                "last_index": self.raft.last_index, "snapshot_index": self.raft.snapshot_index}

    def status(self) -> dict[str, Any]:
        out = {"id": self.id, "role": str(self.raft.role), "leader": self.raft.leader,
               "halted": self.halted, "digest": self.kv.digest(), **self._positions()}
        if self.cut is not None:
            out.update(self.cut.status())
            out["barrier"] = self.cut.barrier
        return out


def parse_args(argv: list[str]) -> NodeOptions:
    ap = argparse.ArgumentParser(prog="python -m node",
                                 description="One replica of the cutover lab's Raft group.")
    ap.add_argument("--id", required=True, dest="node_id")
    ap.add_argument("--data", required=True, dest="data_dir")
    ap.add_argument("--listen", required=True)
    ap.add_argument("--switchboard", required=True)
    ap.add_argument("--peers", required=True, help="comma-separated node ids, self included")
    ap.add_argument("--bug", action="append", default=[], dest="bugs",
                    help=f"put a known defect back: {', '.join(sorted(NODE_BUGS))}")
    ap.add_argument("--tick-ms", type=float, default=25.0)
    ap.add_argument("--election-ticks", type=int, default=10)
    ap.add_argument("--snapshot-every", type=int, default=20_000)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--kek", dest="kek_path", help="KEK file (32 bytes, mode 0600)")
    a = ap.parse_args(argv)
    peers = [p for p in a.peers.split(",") if p]
    if a.node_id not in peers:
        ap.error(f"--peers must include this node's id {a.node_id!r}")
    return NodeOptions(node_id=a.node_id, data_dir=a.data_dir, listen=a.listen,
                       switchboard=a.switchboard, peers=peers, bugs=a.bugs,
                       tick_ms=a.tick_ms, election_ticks=a.election_ticks,
                       snapshot_every=a.snapshot_every, seed=a.seed, kek_path=a.kek_path)


def serve(opts: NodeOptions) -> int:
    """Run a node to completion; returns a process exit code (2: refused to start)."""
    die_with_parent()
    try:
        node = Node(opts)
    except (StorageError, KeystoreError, ValueError, OSError, zmq.ZMQError) as e:
        print(f"node {opts.node_id}: refusing to start: {e}", file=sys.stderr)
        return 2

    def stop(_sig: int, _frm: Any) -> None:
        node.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    prof_dir = os.environ.get("CUTOVER_NODE_PROFILE")
    if prof_dir:  # developer aid: cProfile the node, stats written on a clean stop
        import cProfile

        cProfile.runctx("node.run()", globals(), {"node": node},
                        os.path.join(prof_dir, f"{opts.node_id}.prof"))
    else:
        node.run()
    return 0


def main(argv: list[str] | None = None) -> int:
    return serve(parse_args(sys.argv[1:] if argv is None else argv))
