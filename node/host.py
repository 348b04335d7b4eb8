"""A whole node without its process: storage, the Raft core, the KV state machine, the
cutover and the protocol logic of `Replica`, with every piece of the outside world
injected: the disk (`node.disk`), the clock, the event log, the network and the client
connection.

Why: the node process (`node.server`) wraps this in ZeroMQ sockets and a poll loop;
the deterministic simulator (`orchestrator/sim/`) wraps the very same code in a
simulated disk, network and clock. A schedule that breaks the node in simulation breaks
this code, and replays bit for bit.

A host drives it: `on_messages(msgs)` and `on_request(ident, req)` for input,
`on_tick()` once per Raft tick, `process()` after any of them (it handles every Ready:
persist, send, apply, answer), `expire()` now and then, `close()` on a clean stop.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from node.buggify import OFF, Buggify
from node.cutover import CUTOVER_BUGS, PROFILES, Cutover, FileStore, Halt
from node.disk import Disk
from node.events import EventKind
from node.keystore import Kek
from node.kv import KV, snapshot_enc, snapshot_kv
from node.raft import Config, Message, RaftNode, Ready
from node.replica import NodeExit, Replica
from node.sidecar import SidecarError
from node.storage import Storage, StorageError
from node.types import Snapshot

NODE_BUGS = {
    "stale-read": "reads served from local state on whichever node is asked",
    "commit-old-term": "the leader commits older-term entries by counting replicas "
                       "(Figure 8 of the Raft paper)",
}
# Every bug switch a node can be started with: the one list (`cutover bugs`, the run's
# validation, the detection matrix's builds, the node's own refusal of unknown names).
ALL_BUGS = {**NODE_BUGS, **CUTOVER_BUGS}

__all__ = ["ALL_BUGS", "NODE_BUGS", "PROFILES", "EventSink", "NodeExit", "NodeHost",
           "NodeOptions"]


@dataclass
class NodeOptions:
    """Everything a node needs to start; the orchestrator builds one per node."""

    node_id: str
    data_dir: str
    listen: str
    switchboard: str
    peers: list[str]
    bugs: list[str] = field(default_factory=list)
    # "fixed" or "elastickv" (node/cutover.py PROFILES): which system the node behaves as
    profile: str = "fixed"
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
    # Raft flow control (etcd's MaxSizePerMsg / MaxInflightMsgs): a tiny append size sends
    # one entry per message, which is what lets an old term's entry reach a majority
    # before the new leader's no-op does (Raft's Figure 8).
    max_msg_bytes: int = 64 * 1024
    max_inflight: int = 64
    # Under the harness: journal every durability point, for the kill-power fault.
    durability_journal: bool = False


def node16(node_id: str) -> int:
    """The elastickv profile's nonce node field (row 10): the low 16 bits of FNV-64a of
    the raft id, 0 read as 1 (`internal/raftengine/etcd/peers.go` DeriveNodeID 46-57,
    `internal/encryption/write_path_startup.go` NodeID16 124-126,
    `main_encryption_write_wiring.go` 259-265). Why it matters: unlike the fixed
    profile's sorted-peer index it is not unique by construction (elastickv refuses a
    start on a collision, `ErrNodeIDCollision`); n1..n9 do not collide."""
    h = 0xCBF29CE484222325
    for b in node_id.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFF_FFFF_FFFF_FFFF
    return (h or 1) & 0xFFFF


class EventSink:
    """What the host writes its events to (`node.events.EventLog`, or a simulator's)."""

    def emit(self, kind: EventKind | str, **detail: Any) -> None:  # pragma: no cover
        raise NotImplementedError


class NodeHost(Replica):
    """The node's logic over injected I/O (see the module docstring)."""

    def __init__(self, opts: NodeOptions, *, disk: Disk, log: Any, kek: Kek | None,
                 clock: Callable[[], float], send: Callable[[list[Message]], None],
                 deliver: Callable[[Any, dict[str, Any]], None], rng: random.Random,
                 start_info: dict[str, Any] | None = None, buggify: Buggify = OFF) -> None:
        self.opts = opts
        # BUGGIFY (node/buggify.py): the storage code reads the hook from its disk.
        self.buggify = buggify
        if buggify is not OFF:
            disk.buggify = buggify  # type: ignore[attr-defined]
        self.id = opts.node_id
        unknown = sorted(set(opts.bugs) - set(ALL_BUGS))
        if unknown:
            raise ValueError(f"unknown bug switch(es) {unknown}; known: {sorted(ALL_BUGS)}")
        if opts.profile not in PROFILES:
            raise ValueError(f"unknown profile {opts.profile!r}; known: {sorted(PROFILES)}")
        self.bugs = frozenset(opts.bugs)
        self.disk = disk
        self.clock = clock
        self._send = send
        self._deliver_to = deliver
        self.storage = Storage.open(opts.data_dir, opts.node_id, disk=disk)
        self.log = log
        for ev in self.storage.recovered_events:
            ev = dict(ev)
            self.log.emit(ev.pop("kind"), **ev)
        self.kv = KV()
        self.cut: Cutover | None = None
        if kek is not None:
            node_num = sorted(opts.peers).index(opts.node_id) + 1
            if opts.profile == "elastickv":
                node_num = node16(opts.node_id)
            header = self.storage.snapshot_header
            try:  # the start-up divergence guard (§6), then the epoch bump
                self.cut = Cutover(node_num, FileStore(opts.data_dir, disk), kek,
                                   frozenset(self.bugs & set(CUTOVER_BUGS)),
                                   on_event=self.log.emit, profile=opts.profile,
                                   snapshot_cutover=header.cutover if header else 0,
                                   snapshot_index=header.index if header else 0)
                if opts.profile == "elastickv":
                    # Row 8b: after the engine opened (elastickv: after
                    # buildShardGroups, so after the epoch bump), before serving. The
                    # model's applied index at start-up is its snapshot's (row 7).
                    s_index = header.index if header else 0
                    self.cut.check_sidecar_behind_log(s_index, s_index,
                                                      self.storage.entries)
            except Halt as h:
                self.storage.close()
                raise StorageError(h.reason) from None
            except SidecarError:  # by its own name (SidecarCorruptError...): start-failed
                self.storage.close()
                raise
        snap = self.storage.snapshot
        if snap is not None:
            image = snapshot_kv(snap.data)
            if self.cut is not None:
                try:
                    image = self.cut.open_image(image)
                except Halt as h:
                    self.storage.close()
                    raise StorageError(h.reason) from None
            self.kv.restore(image)
        cfg = Config(election_ticks=opts.election_ticks, heartbeat_ticks=opts.heartbeat_ticks,
                     max_msg_bytes=opts.max_msg_bytes, max_inflight=opts.max_inflight)
        self.raft = RaftNode(opts.node_id, opts.peers, rng=rng, config=cfg,
                             bugs=frozenset(b for b in self.bugs if b == "commit-old-term"),
                             hard_state=self.storage.hard_state, snapshot=snap,
                             entries=self.storage.entries)
        Replica.__init__(self, lease_interval=opts.lease_interval,
                         proposal_timeout=opts.proposal_timeout,
                         enable_timeout_ticks=opts.enable_timeout_ticks,
                         snapshot_every=opts.snapshot_every, rng=rng, clock=clock,
                         profile=opts.profile)
        self._last_progress_event = float("-inf")
        # No build facts (bugs, profile) in the evidence: the checkers judge what the
        # node did, not what it was told to be. The nonce position is evidence (I5, I7).
        self.log.emit(EventKind.START, **(start_info or {}),
                      cutover=self.cut.sidecar.raft_envelope_cutover_index if self.cut else 0,
                      **(self.cut.nonce_position() if self.cut else {}), **self._positions())

    # ------------------------------------------------------------------ inputs

    def on_messages(self, msgs: list[Message]) -> None:
        for m in msgs:
            self.raft.step(m)

    def on_request(self, ident: Any, req: dict[str, Any]) -> None:
        self._handle(ident, req)

    def on_tick(self) -> None:
        self.raft.tick()
        bg = self.buggify
        if bg.on and bg.hit("host.tick") == "early":
            self.raft.tick()  # the next tick's timer fired early
        self.tick_logic(self.clock())

    def process(self) -> None:
        """Everything the inputs made ready: Readies, the EnableRaftEnvelope flow, reads."""
        self._process_ready()
        if self.enable is not None:
            self._poll_enable()
            self._process_ready()
        self._answer_reads()

    def expire(self) -> None:
        self._expire(self.clock())

    def abandon(self) -> None:
        """The process ends on its own (`NodeExit`): no `stop` event, no final digest,
        the files as they are (a process exit loses nothing that was written)."""
        try:
            self.storage.close()
        except StorageError:
            pass
        self.disk.close()

    def close(self) -> None:
        """A clean stop: the final digest (I4's evidence), then the storage."""
        self.log.emit(EventKind.STOP, digest=self.kv.digest(), **self._positions())
        try:
            self.storage.close()
        except StorageError:
            pass
        self.disk.close()

    # ------------------------------------------------------------------ Ready

    def _deliver(self, ident: Any, rep: dict[str, Any]) -> None:
        self._deliver_to(ident, rep)

    def _process_ready(self) -> None:
        while self.raft.has_ready():
            rd = self.raft.ready()
            self._handle_ready(rd)
            self.raft.advance(rd)
            self.after_advance()
        self.observe_role()

    def _handle_ready(self, rd: Ready) -> None:
        # The core sorted the messages: a leader's appends go out before its own fsync,
        # so the two overlap; replies that promise durability (votes, acks) wait for it.
        bg = self.buggify
        if rd.messages:
            self._send(rd.messages)
            if bg.on:
                self._buggify_sent(rd)
        cutover, enc = (snapshot_enc(rd.snapshot.data) if rd.snapshot is not None
                        else (0, b""))
        if rd.snapshot is not None:
            self.adopt_before_persist(rd.snapshot, cutover, enc)  # the sidecar, then it
        cut = self.storage.save_ready(hard_state=rd.hard_state, entries=rd.entries,
                                      snapshot=rd.snapshot, cutover=cutover, encryption=enc,
                                      sync=rd.must_sync)
        if cut:  # a divergent suffix (a deposed leader's entries) was overwritten
            self.log.emit(EventKind.LOG_TRUNCATED, index=rd.entries[0].index, entries=cut,
                          term=rd.entries[0].term)
        if rd.messages_after_persist:
            self._send(rd.messages_after_persist)
            if bg.on:
                if bg.hit("host.send") == "dup":
                    self._send(rd.messages_after_persist)
                # What they promise (a vote, an ack) must be durable by now: a power
                # loss here shows it if it is not.
                bg.hit("host.sent-persisted")
        self.after_ready(rd.snapshot, rd.committed_entries, rd.read_states)
        now = self.clock()
        if rd.committed_entries and now - self._last_progress_event > 1.0:
            self._last_progress_event = now
            self.log.emit(EventKind.PROGRESS, commit=self.raft.commit, applied=self.applied,
                          term=self.raft.term, digest=self.kv.digest())

    def _buggify_sent(self, rd: Ready) -> None:
        """The early messages just left: the network may duplicate them, and when the
        Ready still has state to persist, the process may die before it does (what was
        sent outlives what was not synced)."""
        bg = self.buggify
        if bg.hit("host.send") == "dup":
            self._send(rd.messages)
        if rd.entries or rd.hard_state is not None or rd.snapshot is not None:
            bg.hit("host.sent-unsynced")

    def persist_snapshot(self, snap: Snapshot, cutover: int, encryption: bytes) -> None:
        self.storage.compact(snap, cutover=cutover, encryption=encryption)
