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

from node import payload as pl
from node.buggify import OFF, Buggify
from node.cutover import CUTOVER_BUGS, PROFILES, Cutover, FileStore, Halt
from node.disk import Disk
from node.events import EventKind
from node.fsmstore import FsmStore
from node.keystore import Kek
from node.kv import KV, snapshot_enc, snapshot_kv
from node.raft import Config, Message, MsgType, RaftNode, Ready
from node.registry import full_node_id, startup_epoch_refusal
from node.replica import PEER_RPC, NodeExit, Replica
from node.sidecar import SidecarError
from node.storage import Storage, StorageError
from node.types import Entry, EntryKind, Snapshot

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
    return full_node_id(node_id) & 0xFFFF


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
        # The elastickv profile's durable KV store (row 7): it keeps the map across a
        # restart, so start-up replays only what it does not hold.
        self.fsm: FsmStore | None = None
        self.cut = self._open_cutover(kek) if kek is not None else None
        snap = self.storage.snapshot
        applied, raft_applied, start_facts = self._start_state(snap)
        self._check_registration_epoch()
        cfg = Config(election_ticks=opts.election_ticks, heartbeat_ticks=opts.heartbeat_ticks,
                     max_msg_bytes=opts.max_msg_bytes, max_inflight=opts.max_inflight)
        self.raft = RaftNode(opts.node_id, opts.peers, rng=rng, config=cfg, buggify=buggify,
                             bugs=frozenset(b for b in self.bugs if b == "commit-old-term"),
                             hard_state=self.storage.hard_state, snapshot=snap,
                             entries=self.storage.entries,
                             applied=raft_applied if self.fsm is not None else None)
        Replica.__init__(self, lease_interval=opts.lease_interval,
                         proposal_timeout=opts.proposal_timeout,
                         enable_timeout_ticks=opts.enable_timeout_ticks,
                         snapshot_every=opts.snapshot_every, rng=rng, clock=clock,
                         profile=opts.profile)
        if self.fsm is not None:
            # elastickv keeps two counters (engine.go Open 609-616, 670, 685): the
            # engine's applied index is where the state is, the raw node's where the
            # delivery of committed entries starts; what lies between is delivered as
            # duplicates (`Replica._apply_duplicate`).
            self.applied = applied
            self.replay_until = applied
        self._last_progress_event = float("-inf")
        # No build facts (bugs, profile) in the evidence: the checkers judge what the
        # node did, not what it was told to be. The nonce position is evidence (I5, I7).
        self.log.emit(EventKind.START, **(start_info or {}),
                      cutover=self.cut.sidecar.raft_envelope_cutover_index if self.cut else 0,
                      **(self.cut.nonce_position() if self.cut else {}), **self._positions(),
                      vote=self.raft.vote, **start_facts)

    # ------------------------------------------------------------------ start-up

    def _open_cutover(self, kek: Kek) -> Cutover:
        """The start-up divergence guard (§6), then the epoch bump: a refusal closes the
        storage and is a start-failed by its own name (`StorageError`, or a
        `SidecarError` such as SidecarCorruptError)."""
        opts = self.opts
        node_num = sorted(opts.peers).index(opts.node_id) + 1
        if opts.profile == "elastickv":
            node_num = node16(opts.node_id)
        header = self.storage.snapshot_header
        try:
            return Cutover(node_num, FileStore(opts.data_dir, self.disk), kek,
                           frozenset(self.bugs & set(CUTOVER_BUGS)),
                           on_event=self.log.emit, profile=opts.profile,
                           snapshot_cutover=header.cutover if header else 0,
                           snapshot_index=header.index if header else 0,
                           full_node_id=full_node_id(opts.node_id))
        except Halt as h:
            self.storage.close()
            raise StorageError(h.reason) from None
        except SidecarError:
            self.storage.close()
            raise

    def _start_state(self, snap: Snapshot | None) -> tuple[int, int, dict[str, Any]]:
        """The map, the applied index it stands for and where the core starts delivering
        entries (row 7 in the elastickv profile), then row 8b's guard against that
        applied index; the `start` event's facts of where the state came from."""
        s_index = snap.meta.index if snap is not None else 0
        start_facts: dict[str, Any] = {}
        try:
            applied = raft_applied = self._open_state(snap)
            if self.opts.profile == "elastickv":
                assert self.fsm is not None
                raft_applied = self._cold_start_applied(s_index, applied)
                # Evidence of where the state came from: the map (`state_from`), the
                # store's own index, and where the delivery of entries starts.
                start_facts = {"state_from": "store" if self._from_store else "snapshot",
                               "durable_applied": self.fsm.applied_index,
                               "raft_applied": raft_applied}
                if self.cut is not None:
                    # Row 8b: after the engine opened (elastickv: after buildShardGroups,
                    # so after the epoch bump), before serving, against the engine's
                    # applied index (row 7: max(snapshot, durable store), engine.go Open
                    # 609, 685).
                    self.cut.check_sidecar_behind_log(applied, s_index, self.storage.entries)
        except Halt as h:
            self._close_files()
            raise StorageError(h.reason) from None
        except BaseException:
            if self.fsm is not None:  # the storage as before: left to the process's end
                self.fsm.close()
            raise
        return applied, raft_applied, start_facts

    def _close_files(self) -> None:
        if self.fsm is not None:
            self.fsm.close()
        self.storage.close()

    def _open_state(self, snap: Snapshot | None) -> int:
        """The KV map at start-up and the applied index it stands for.

        The fixed profile restores the newest snapshot. The elastickv profile first opens
        its durable store and, like elastickv's cold start (`wal_store.go` loadWalState
        128-191, restoreSnapshotStateFromToken 387-412, decideSkipOutcome 440-457), takes
        the map from it when its applied index is at or past the snapshot's (the
        snapshot's body is not read: the skip path applies only its header, and the
        model's header state is the cutover that the start-up guard already read);
        otherwise it restores the snapshot and the store is made to hold that image
        (elastickv's Restore replaces the Pebble store). The applied index is
        max(snapshot, durable store) (coldStartApplied 257-263). elastickv bootstraps
        every node with a snapshot token (bootstrapWalState 108-126), so a node without a
        snapshot file here stands for one at index 0."""
        s_index = snap.meta.index if snap is not None else 0
        self._from_store = False
        if self.opts.profile == "elastickv":
            self.fsm = FsmStore.open(self.opts.data_dir, self.disk)
            for ev in self.fsm.recovered_events:
                ev = dict(ev)
                self.log.emit(ev.pop("kind"), **ev)
            if self.fsm.applied_index >= s_index:
                self._from_store = True
                self.kv.restore(self.fsm.image())
                self.open_stored_values()  # row 11: an Unopened where it cannot
                return self.fsm.applied_index
        image = b""
        if snap is not None:
            image = snapshot_kv(snap.data)
            if self.cut is not None:
                image = self.cut.open_image(image)  # Halt: a refused start
            self.kv.restore(image)
            self.open_stored_values()
        if self.fsm is not None:
            self.fsm.reset(image or self.kv.snapshot(), s_index)
        return s_index

    def _cold_start_applied(self, base: int, applied: int) -> int:
        """Where the Raft core starts delivering committed entries (elastickv
        `engine.go` rawNodeAppliedForOpen 815-833): the applied index capped at the
        commit (rawNodeAppliedBounds 835-856), then cut back to just before the first
        entry above the snapshot whose cold-start decode fails (trimRawNodeAppliedForReplay
        858-872, coldStartEntryRequiresReplay 874-884, coldStartNormalPayload 911-931:
        above the cutover cell and the unwrap fails), so that entry is delivered again
        and halts as it did (row 1a). The leases in (snapshot, that index] are re-applied
        for their in-memory effect (replayColdStartVolatileEntries 886-905), which in the
        model is none. Encryption entries at or below it are never applied again."""
        commit = max(self.storage.hard_state.commit, base)
        applied = min(applied, commit)
        if applied <= base:
            return applied
        for e in self.storage.entries:
            if base < e.index <= applied and self._cold_start_fails(e):
                return e.index - 1
        return applied

    def _cold_start_fails(self, e: Entry) -> bool:
        if e.kind is EntryKind.NOOP or not e.data or self.cut is None:
            return False
        try:
            _pid, body = pl.decode_proposal(e.data)
        except pl.PayloadError:
            return False  # not a proposal envelope: skipped, not a failure
        try:
            self.cut.open_entry(e.index, body)
        except Halt:
            return True
        return False

    def _check_registration_epoch(self) -> None:
        """Row 9's start-up refusal (elastickv profile), once the registry (the KV map) is
        readable: elastickv runs it in setupDistributionAndRegistration, after the
        engine opened and the 8b guard, before serving."""
        cut = self.cut
        if cut is None or not cut.gated:
            return
        why = startup_epoch_refusal(self.kv, cut.sidecar, cut.full_node_id, cut.raft_epoch)
        if why:
            self._close_files()
            raise StorageError(why)

    # ------------------------------------------------------------------ inputs

    def on_messages(self, msgs: list[Message]) -> None:
        for m in msgs:
            if m.type in PEER_RPC:
                self.on_peer_rpc(m)  # elastickv's forwarded registration (row 9)
                continue
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
        if self.fsm is not None:
            self.fsm.close()
        try:
            self.storage.close()
        except StorageError:
            pass
        self.disk.close()

    def close(self) -> None:
        """A clean stop: the final digest (I4's evidence), then the storage."""
        self.log.emit(EventKind.STOP, digest=self.kv.digest(), **self._positions())
        if self.fsm is not None:
            self.fsm.close()
        try:
            self.storage.close()
        except StorageError:
            pass
        self.disk.close()

    # ------------------------------------------------------------------ Ready

    def _deliver(self, ident: Any, rep: dict[str, Any]) -> None:
        self._deliver_to(ident, rep)

    def _send_peer(self, msgs: list[Message]) -> None:
        self._send(msgs)

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
            voted = False
            for m in rd.messages_after_persist:
                if m.type is MsgType.VOTE_RESP and not m.reject:
                    voted = True
                    self.log.emit(EventKind.VOTE, term=m.term, candidate=m.dst)
            self._send(rd.messages_after_persist)
            if bg.on:
                if bg.hit("host.send") == "dup":
                    self._send(rd.messages_after_persist)
                # What they promise (a vote, an ack) must be durable by now: a power
                # loss here shows it if it is not. A vote is rare beside the acks, so
                # it has a point of its own that a seed can arm at a high rate.
                if voted:
                    bg.hit("host.sent-vote")
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
        if self.fsm is not None:
            # elastickv pins the durable applied index to the snapshot's, synced, before
            # the snapshot is saved (engine.go bumpDurableAppliedIndexBeforeSave
            # 3575-3581, persistLocalSnapshotPayloadLocked 5141-5158): a saved snapshot
            # then implies a store at or past it, whatever the entries behind it were.
            self.fsm.set_durable_applied_index(snap.meta.index)
        self.storage.compact(snap, cutover=cutover, encryption=encryption)
        if self.fsm is not None:
            self.fsm.compact()  # the journal folded into a new base: it stays short

    def persist_writes(self, index: int, writes: list[tuple[str, Any]],
                       moves_applied: bool) -> None:
        if self.fsm is not None:
            if self.cut is not None and self.cut.storage is not None:
                writes = self.cut.storage.seal_writes(writes)  # row 11: at apply
            self.fsm.apply(writes, index if moves_applied else 0)

    def stored_image(self) -> bytes:
        """elastickv's snapshot is its Pebble store as stored (row 11: values sealed
        once the storage envelope is on), not the map in memory."""
        return self.fsm.image() if self.fsm is not None else self.kv.snapshot()

    def persist_installed_image(self, index: int, image: bytes) -> None:
        """elastickv restores the store from the installed snapshot (engine.go
        applyReadySnapshotLocked 2523-2552). Folded: the restored Pebble store carries
        the sender's pre-snapshot metaAppliedIndex (the comment at 2528-2536), the model's
        the snapshot's index; a restart then restores the same image through the snapshot
        (elastickv) or the store (here), at the same applied index."""
        if self.fsm is not None:
            # The image as it came (restorePebbleNative ingests it raw: sealed values
            # stay sealed, row 11).
            self.fsm.reset(image, index)
