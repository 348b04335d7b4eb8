"""The replica's protocol logic, shared by the node process and the simulator.

Everything between the Raft core and the outside world that is not I/O lives here:
client requests (read / write / cas and the admin ops), the new-leader rule, the
proposers, the EnableRaftEnvelope flow, applying committed entries through the cutover's
strict hook, ReadIndex bookkeeping, and what a snapshot carries. The node process
(`node/server.py`) adds sockets, storage and the loop; the deterministic simulator adds
its in-memory network, so a bug found in simulation is a bug in this code.
"""
from __future__ import annotations

import hashlib
import hmac
import random
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from node import payload as pl
from node import registry
from node.cutover import Busy, Cutover, EnableFlow, Halt
from node.envelope import parse_header
from node.events import EventKind
from node.keystore import generate_dek
from node.kv import KV, Unopened, snapshot_data, snapshot_enc, snapshot_kv
from node.raft import Message, MsgType, NotLeader, RaftNode, ReadState, Role
from node.registration import PEER_RPC, PeerIdent, RegistrationWatcher, _Registration
from node.storenv import STORAGE_KEY_ID
from node.types import EntryKind, Snapshot

__all__ = ["PEER_RPC", "ApplyError", "NodeExit", "Replica", "sealed_image_facts"]

def sealed_image_facts(data: bytes) -> dict[str, Any]:
    """Key id, nonce and a digest of a sealed snapshot image, all public (they are in
    the file): the event keeps them after the file is pruned, so I5 sees the images of
    every incarnation, and tells a copy (same bytes) from a reuse (other bytes)."""
    image = snapshot_kv(data)
    head = parse_header(image) if image else None
    if head is None:
        return {}
    return {"image_key_id": head[0], "image_nonce": head[1].hex(),
            "image_sha": hashlib.sha256(image).hexdigest()[:32]}


class NodeExit(Exception):
    """The node process must end now: the elastickv profile's answer to a halt (its
    engine fails and the process exits: main.go startRaftEngineLifecycleWatchers
    640-672). The host turns it into an `exit` event and the end of the process; a
    restart replays the same entry and halts again."""

    def __init__(self, index: int, term: int, reason: str) -> None:
        super().__init__(f"apply halted at entry {index} (term {term}): {reason}")
        self.index = index
        self.term = term
        self.reason = reason


class ApplyError(Exception):
    """elastickv answers this payload with an error response and advances the applied
    index (engine.go applyNormalCommitted: a non-halting Apply error): the entry is
    consumed without effect, silently as far as the cluster can tell."""


class Replica(RegistrationWatcher):
    """Protocol logic of one replica over a Raft core, a KV map and (maybe) a Cutover.

    A host sets `raft`, `kv`, `cut`, `bugs`, `id` and `log` (an object with
    `emit(kind, **detail)`), calls `Replica.__init__`, implements `_deliver` and
    `persist_snapshot` (and, to keep the map durable on its own, `persist_writes` and
    `persist_installed_image`), and drives: `_handle` for requests, `tick_logic` on each tick,
    `after_ready` after persisting and sending each Ready, `after_advance` after
    `raft.advance`, `observe_role` after the Ready loop, and `_answer_reads`.
    """

    id: str
    raft: RaftNode
    kv: KV
    cut: Cutover | None
    bugs: frozenset[str]
    log: Any

    def __init__(self, *, lease_interval: float = 1.0, proposal_timeout: float = 30.0,
                 enable_timeout_ticks: int = 200, rng: random.Random | None = None,
                 snapshot_every: int = 0,
                 clock: Callable[[], float] = time.monotonic,
                 profile: str = "fixed") -> None:
        self.clock = clock  # the host's: real monotonic time, or simulated time
        self.ekv = profile == "elastickv"  # see node/cutover.py PROFILES
        self.lease_interval = lease_interval
        self.snapshot_every = snapshot_every
        self.proposal_timeout = proposal_timeout
        self.enable_timeout_ticks = enable_timeout_ticks
        self.applied = self.raft.applied
        self.halted: str | None = None
        self._pid_next = (rng or random.Random()).getrandbits(40) << 20
        # proposal id -> (client, request id, index, deadline, admin?)
        self.pending: dict[int, tuple[Any, Any, int, float, bool]] = {}
        self.read_wait: dict[bytes, tuple[Any, Any, str, float]] = {}  # ctx -> request
        self.reads_ready: deque[tuple[int, Any, Any, str]] = deque()  # (index, who, id, key)
        self._read_ctr = 0
        self.admin_busy = False
        self.enable: tuple[EnableFlow, Any, Any] | None = None
        self._last_role: tuple[Any, int, Any] = (None, -1, None)
        self._last_lease = 0.0
        self._next_lease_tick = 0.0  # elastickv: the renewal timer's next tick
        # elastickv, row 9: the registration watcher (its first tick runs at once)
        self._reg_next_poll = 0.0
        self._reg_run: _Registration | None = None
        self._reg_seq = 0
        if self.cut is not None and self.cut.gated:
            self.cut.registration_verifier = self._registry_has
        # elastickv (row 7): the entries at or below this index that the core hands over
        # after a start-up are duplicates of what the durable store already holds
        # (`start_replay_window`); 0 in the fixed profile, which replays from its snapshot.
        self.replay_until = 0

    # ------------------------------------------------------------- driving

    def tick_logic(self, now: float) -> None:
        """Once per Raft tick: the flow's timeouts and the leader's lease entry."""
        if self.enable is not None:
            self.enable[0].tick()
        self._maybe_lease(now)
        if self.cut is not None and self.cut.gated:
            self._registration_watcher(now)

    def observe_role(self) -> None:
        raft = self.raft
        last = self._last_role
        if raft.term == last[1] and raft.role is last[0] and raft.leader == last[2]:
            return  # every loop turn asks; the role rarely changes
        role = (raft.role, raft.term, raft.leader)
        self._last_role = role
        # Where the log stood: coverage asks whether a new leader held the marker
        # unapplied, or a deposed one left entries uncommitted.
        self.log.emit(EventKind.ROLE, role=str(role[0]), term=role[1], leader=role[2],
                      applied=self.applied, commit=self.raft.commit,
                      last_index=self.raft.last_index)
        if role[0] is not Role.LEADER:
            # Reads waiting for a leadership confirmation will never get it here.
            for ctx, (ident, rid, _k, _d) in list(self.read_wait.items()):
                del self.read_wait[ctx]
                self._not_leader(ident, rid)

    def after_ready(self, snapshot: Snapshot | None, committed: list[Any],
                    read_states: list[ReadState]) -> None:
        """Step 4 of the Ready contract: install, apply, release reads."""
        if snapshot is not None:
            self.install_snapshot(snapshot)
        for e in committed:
            if self.halted:
                break
            self._apply(e)
        for rs in read_states:
            w = self.read_wait.pop(rs.ctx, None)
            if w is not None:
                self.reads_ready.append((rs.index, w[0], w[1], w[2]))

    def adopt_before_persist(self, snapshot: Snapshot, cutover: int, enc: bytes) -> None:
        """Make the encryption state a received snapshot carries durable (the sidecar)
        before the snapshot itself is: a power loss between the two writes must leave
        the sidecar ahead of the snapshot, never behind it. A snapshot that says C
        beside a sidecar that says C = 0 fails the start-up guard for good (`cutover
        sim`, seed 2178: the node never started again); a sidecar ahead only makes the
        replay of the entries below the snapshot take the replay branches."""
        if self.cut is not None:
            self.cut.adopt_snapshot(cutover, enc, snapshot.meta.index)

    def install_snapshot(self, snapshot: Snapshot) -> None:
        """A snapshot received at run time, now durable: its image (its encryption state
        was adopted before it was persisted, `adopt_before_persist`)."""
        prev_applied = self.applied
        cutover, _enc = snapshot_enc(snapshot.data)
        image = snapshot_kv(snapshot.data)
        if self.cut is not None:
            try:
                image = self.cut.open_image(image)
            except Halt as h:
                self._halt(snapshot.meta.index, snapshot.meta.term, h.reason)
                image = b""
        self.kv.restore(image)
        self.open_stored_values()
        self.applied = snapshot.meta.index
        self.replay_until = 0  # the map is the image now: nothing above it is a duplicate
        self.persist_installed_image(snapshot.meta.index, image)
        self.log.emit(EventKind.SNAPSHOT_INSTALLED, index=snapshot.meta.index,
                      term=snapshot.meta.term, prev_applied=prev_applied, cutover=cutover)
        # A proposal of ours at or below the snapshot's index may be in its image or may
        # have lost its slot: the image does not say whose entries it holds. A definite
        # `dropped` here made a client record `fail` for a write that had taken effect
        # (`cutover sim`, seed 894).
        self._drop_pending(snapshot.meta.index, lambda i: False)

    def _drop_pending(self, upto: int, replaced: Callable[[int], bool]) -> None:
        """Answer every pending proposal at or below `upto`: `dropped`, definite only
        where `replaced(index)` says another entry certainly holds its slot."""
        for opid, (ident, rid, index, _, admin) in list(self.pending.items()):
            if index > upto:
                continue
            del self.pending[opid]
            if admin:
                self.admin_busy = False
            if replaced(index):
                self._fail(ident, rid, "dropped",
                           f"entry {index} was replaced after a leader change")
            else:
                self._fail(ident, rid, "dropped", f"entry {index} was not applied here one "
                           f"by one (a snapshot covered it): it may or may not have taken "
                           f"effect", definite=False)

    def snapshot_image(self, index: int) -> tuple[bytes, int, bytes]:
        """(snapshot data, header cutover, encryption blob) for a snapshot at `index`."""
        image = self.stored_image()
        cutover, enc = (0, b"")
        if self.cut is not None:
            cutover, enc = self.cut.snapshot_fields(index)
            image = self.cut.seal_image(index, image)
        return snapshot_data(image, cutover, enc), cutover, enc

    # ------------------------------------------------------------ requests

    def _reply(self, ident: Any, rep: dict[str, Any]) -> None:
        if isinstance(ident, PeerIdent):
            self._send_peer([Message(MsgType.REG_RESP, self.id, ident.node, self.raft.term,
                                     index=ident.seq, reject=not rep.get("ok"))])
            return
        self._deliver(ident, rep)

    def _send_peer(self, msgs: list[Message]) -> None:
        """Send non-Raft messages to peers over the switchboard (the host's network)."""
        raise NotImplementedError

    def _deliver(self, ident: Any, rep: dict[str, Any]) -> None:
        """Send `rep` to the client behind `ident` (a socket identity, a test's handle)."""
        raise NotImplementedError

    def persist_snapshot(self, snap: Snapshot, cutover: int, encryption: bytes) -> None:
        """Make a snapshot the core just compacted to durable (the host owns storage)."""
        raise NotImplementedError

    def persist_writes(self, index: int, writes: list[tuple[str, Any]],
                       moves_applied: bool) -> None:
        """Make the KV writes of entry `index` durable before going on (the elastickv
        profile's durable store, row 7); nothing to do for a map that is rebuilt from the
        snapshot and the log at every start (the fixed profile)."""

    def persist_installed_image(self, index: int, image: bytes) -> None:
        """The KV map was replaced by an installed snapshot's `image` at `index`: a
        durable store (elastickv profile) must hold that image, as it came, from now on."""

    def stored_image(self) -> bytes:
        """The map as a snapshot image holds it: the map itself here; the elastickv
        profile's host gives its durable store's image (values as stored: sealed under
        the storage envelope once it is on, row 11)."""
        return self.kv.snapshot()

    def open_stored_values(self) -> None:
        """A map just restored from stored bytes: open what the storage envelope sealed
        (elastickv profile, row 11), an `Unopened` where this node cannot."""
        if self.cut is not None and self.cut.storage is not None:
            self.kv.data = self.cut.storage.open_map(self.kv.data)

    def take_snapshot(self) -> int:
        """Snapshot the state machine, compact the log behind it; returns its index.

        The one rule for every snapshot, automatic or asked for (`snapshot-now`), in the
        node and in the simulator: its index is exactly the last entry whose effect its
        image holds, the replica's own applied index. Not the core's: inside a Ready the
        core has not yet counted the entries being applied, and a snapshot labelled there
        holds entries above its index, which every restart and every follower that
        installs it applies a second time; and a halted replica stops short of what the
        core handed it. So a snapshot is taken only between Readies.
        """
        index = self.applied
        if self.raft.applied < self.replay_until:
            # elastickv (row 7): the duplicates above the core's applied index are not
            # delivered yet, so there is no log position to compact at that holds the
            # map's state; the next snapshot comes once they are.
            return self.raft.snapshot_index
        if index > self.raft.applied:
            raise RuntimeError(f"snapshot at {index} inside a Ready (the core has applied "
                               f"{self.raft.applied}): snapshots are taken between Readies")
        if index <= self.raft.snapshot_index:
            return self.raft.snapshot_index
        data, cutover, enc = self.snapshot_image(index)
        snap = self.raft.compact(index, data)
        self.persist_snapshot(snap, cutover, enc)
        self.log.emit(EventKind.SNAPSHOT_TAKEN, index=index, term=snap.meta.term, cutover=cutover,
                      applied=index, digest=self.kv.digest(), **sealed_image_facts(data))
        return index

    def after_advance(self) -> None:
        """After `raft.advance(rd)`: the automatic snapshot, once `snapshot_every` entries
        were applied since the last one (0 = never)."""
        if self.snapshot_every and self.applied - self.raft.snapshot_index >= self.snapshot_every:
            self.take_snapshot()

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
        if op in ("bootstrap", "rotate-dek", "enable-raft-envelope") or (
                op == "enable-storage-envelope" and self.ekv):
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
                self._read_reply(ident, rid, key)
                return
            self._read_ctr += 1
            ctx = struct.pack(">Q", self._read_ctr)
            try:
                self.raft.read_index(ctx)
            except NotLeader:
                self._not_leader(ident, rid)
                return
            self.read_wait[ctx] = (ident, rid, key, self.clock() + self.proposal_timeout)
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
        if op != "enable-raft-envelope" and not self._can_serve(ident, rid):
            return
        if op == "enable-storage-envelope":
            self._enable_storage(ident, rid)
            return
        if op == "enable-raft-envelope":  # its pre-check waits for the log itself
            self.admin_busy = True
            self.enable = (EnableFlow(self.cut, self.enable_timeout_ticks), ident, rid)
            self._poll_enable()
            return
        key_id, wrapped = req.get("key_id"), req.get("wrapped")
        if not isinstance(key_id, int) or not 0 < key_id < 2**32 \
                or not isinstance(wrapped, bytes):
            self._fail(ident, rid, "bad-request", "need key_id (uint32 > 0) and wrapped bytes")
            return
        if op == "rotate-dek" and not self.ekv:
            # The early answer to a rotation this node already went past (its apply would
            # skip it anyway): no second entry for an operator's retry that timed out
            # although its first copy committed. elastickv has no such check.
            try:
                done = self.cut.rotation_done(key_id, wrapped)
            except Busy as b:
                self._fail(ident, rid, b.code, str(b))
                return
            if done is not None:
                self._reply(ident, {"id": rid, "ok": True, "value": done})
                return
        if op == "bootstrap":
            writers = None
            if self.cut.gated:
                # elastickv's BootstrapEncryption needs a writer batch (at least one,
                # adapter/encryption_admin.go buildBootstrapBatch 710-746); its CLI's
                # `--discover-from` lists each member's full id and reported epoch
                # (cmd/elastickv-admin/encryption_mutators.go 626-683). Before any
                # cut-over start every raft epoch is 0 (prepareRaftNonceEpoch).
                writers = [(registry.full_node_id(p), 0) for p in self.raft.peers]
            entry = pl.bootstrap_payload(key_id, wrapped, writers, self._storage_dek(req))
        else:
            entry = pl.rotate_payload(key_id, wrapped)
        try:
            payload = self.cut.admin_proposal(entry)
        except Busy as b:
            self._fail(ident, rid, b.code, str(b))
            return
        self.admin_busy = True
        self._propose(payload, ident, rid, admin=True)

    def _storage_dek(self, req: dict[str, Any]) -> tuple[int, bytes] | None:
        """The bootstrap's storage DEK (elastickv profile, row 11): the request's
        `storage_key_id` / `storage_wrapped`, or one made here under the KEK (elastickv's
        operator CLI makes it before it calls BootstrapEncryption). Made from the raft
        DEK by HMAC, and wrapped under a nonce drawn from the raft DEK's wrapping, so a
        simulated seed still replays bit for bit; as secret as the raft DEK it comes from
        (elastickv's two DEKs are independent: folded, docs/protocol.md row 11)."""
        if self.cut is None or self.cut.storage is None:
            return None
        sid, swrapped = req.get("storage_key_id"), req.get("storage_wrapped")
        if isinstance(sid, int) and isinstance(swrapped, bytes):
            return sid, swrapped
        wrapped = req.get("wrapped")
        try:
            raft_dek = self.cut.kek.unwrap_dek(wrapped)
        except Exception:  # noqa: BLE001 - a bad raft DEK halts at its apply anyway
            return STORAGE_KEY_ID, self.cut.kek.wrap_dek(generate_dek())
        dek = hmac.new(raft_dek, b"cutover storage DEK", hashlib.sha256).digest()
        nonce = hashlib.sha256(b"cutover storage DEK wrap" + bytes(wrapped)).digest()[:12]
        return STORAGE_KEY_ID, self.cut.kek.wrap_dek(dek, nonce)

    def _enable_storage(self, ident: bytes, rid: Any) -> None:
        """EnableStorageEnvelope (adapter/encryption_admin.go 960-1045, cutoverPrecheck
        1064-1093): refused before a bootstrap, answered at once when already active,
        else the 0x05 0x04 entry with the active storage DEK id is proposed."""
        assert self.cut is not None
        sc = self.cut.sidecar
        if not sc.active_storage_dek:
            self._fail(ident, rid, "not-bootstrapped", "no storage DEK is active")
            return
        if sc.storage_envelope_active:
            self._reply(ident, {"id": rid, "ok": True, "value": {
                "status": "already-active", "cutover": sc.storage_cutover_index}})
            return
        try:
            payload = self.cut.admin_proposal(pl.enable_storage_payload(sc.active_storage_dek))
        except Busy as b:
            self._fail(ident, rid, b.code, str(b))
            return
        self.admin_busy = True
        self._propose(payload, ident, rid, admin=True)

    def _poll_enable(self) -> None:
        if self.enable is None:
            return
        flow, ident, rid = self.enable
        res = flow.poll(self)
        if res is None:
            return
        self.enable = None
        self.admin_busy = False
        self.log.emit(EventKind.ENABLE_RAFT_ENVELOPE, status=res.status, cutover=res.cutover,
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

    def ready_to_serve(self) -> bool:
        return self.raft.role is Role.LEADER and self.applied >= self.raft.term_start_index

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
                                 self.clock() + self.proposal_timeout, admin)

    def _maybe_lease(self, now: float) -> None:
        if self.ekv:
            # elastickv's HLC renewal: a timer every second since the process started
            # (kv/sharded_coordinator.go RunHLCLeaseRenewal 2310-2336) that asks only "am
            # I the leader" (renewHLCLeases 2377-2407, engine.go handleProposal
            # 1939-1962). A new leader's first lease goes out at the next tick, applied
            # log or not, a committed marker in it included (R1).
            if self._next_lease_tick == 0.0:
                self._next_lease_tick = now + self.lease_interval
            if now < self._next_lease_tick:
                return
            self._next_lease_tick = now + self.lease_interval
            if self.raft.role is not Role.LEADER or self.halted:
                return
        elif not (self.raft.role is Role.LEADER and now - self._last_lease >= self.lease_interval
                  and not self.halted and self._can_serve(None, None)):
            return
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

    def _flush_writes(self, index: int, body: bytes | None) -> None:
        """After entry `index` applied (or halted): its KV writes made durable. Only a user
        command's writes move the durable applied index (elastickv bundles
        metaAppliedIndex into the data mutation's batch); writes made by any other entry
        are synced without it (elastickv's writer-registry rows)."""
        writes = self.kv.take_writes()
        if writes:
            self.persist_writes(index, writes,
                                moves_applied=bool(body) and body[0] == pl.OP_USER)

    def _apply_duplicate(self, e: Any) -> None:
        """elastickv's cold-start duplicate (engine.go applyNormalCommitted 2795-2815,
        applyNormalEntry 2882-2976 with dropIfNonVolatile): an entry at or below the
        applied index the node started from, which its durable store already holds. It
        is decoded and unwrapped as any entry (a failure halts, row 1a); a lease is
        re-applied for its in-memory effect (kv/fsm.go IsVolatileOnlyPayload 655-657:
        only opcode 0x02); anything else, an encryption entry included, is dropped. The
        applied index and the proposals stay as they are."""
        if e.kind is EntryKind.NOOP or not e.data:
            return
        try:
            _pid, body = pl.decode_proposal(e.data)
        except pl.PayloadError:
            return
        if self.cut is not None:
            try:
                self.cut.open_entry(e.index, body)
            except Halt as h:
                self._halt(e.index, e.term, h.reason)
                return
        # What is left: a lease's effect is the HLC ceiling, which the model does not
        # keep, so re-applying one changes nothing here; any other entry is dropped.

    def _apply(self, e: Any) -> None:
        if e.index <= self.replay_until and e.index <= self.applied:
            self._apply_duplicate(e)
            return
        if e.kind is EntryKind.NOOP or not e.data:
            self.applied = e.index
            return
        body: bytes | None = None
        try:
            try:
                pid, body = pl.decode_proposal(e.data)
            except pl.PayloadError as err:
                if not self.ekv:
                    raise
                # elastickv skips data that is not a proposal envelope before the
                # cutover test, above C too (engine.go applyNormalEntry 2882-2889).
                self.log.emit(EventKind.APPLY_ERROR, index=e.index, term=e.term,
                              reason=f"skipped: {err}")
                self.applied = e.index
                return
            if self.cut is not None:
                opened = self.cut.open_entry(e.index, body)  # the strict hook (§3)
                if opened is None:  # only with silent-unwrap-skip
                    self.log.emit(EventKind.UNWRAP_SKIPPED, index=e.index, term=e.term)
                    self.applied = e.index
                    return
                body = opened
            ok, value = self._apply_payload(e, body)
        except pl.PayloadError as err:
            self._flush_writes(e.index, None)
            self._halt(e.index, e.term, str(err))
            return
        except Halt as h:
            self._flush_writes(e.index, None)
            self._halt(e.index, e.term, h.reason)
            return
        except ApplyError as err:
            # elastickv: an error response, and the applied index moves on.
            self._flush_writes(e.index, None)
            self.log.emit(EventKind.APPLY_ERROR, index=e.index, term=e.term, reason=str(err))
            self.applied = e.index
            w = self.pending.pop(pid, None)
            if w is not None:
                if w[4]:
                    self.admin_busy = False
                self._fail(w[0], w[1], "apply-error", f"entry {e.index}: {err}")
            return
        self._flush_writes(e.index, body)
        self.applied = e.index
        w = self.pending.pop(pid, None)
        if w is not None:
            ident, rid, index, _, admin = w
            if admin:
                self.admin_busy = False
            if index != e.index:  # pragma: no cover - ids are unique per proposal
                self._fail(ident, rid, "dropped", "proposal lost", definite=False)
            elif ok:
                self._reply(ident, {"id": rid, "ok": True, "value": value, "index": e.index})
            elif isinstance(value, Unopened):
                self._fail(ident, rid, "read-error", f"entry {e.index}: the current value "
                           f"does not open here ({value.code})")
            else:
                self._fail(ident, rid, "cas-mismatch", f"current value {value!r}",
                           value=value)
        # Proposals at this index did not make it: a different entry won the slot. One
        # below it was never applied here one by one (a snapshot skipped over it): its
        # fate is not known here, so its answer is indeterminate.
        self._drop_pending(e.index, lambda i: i == e.index)

    def _apply_payload(self, e: Any, body: bytes) -> tuple[bool, Any]:
        """The cleartext payload through the state machine: (ok, value) for the proposer.
        PayloadError / Halt halt apply; ApplyError (elastickv only) is an error response.

        elastickv's FSM (kv/fsm.go Apply 308-318, applyReservedOpcode 355, applyHLCLease
        374, decodeRaftRequests 395; kv/fsm_encryption.go applyEncryption 78-141) halts
        only on the encryption band 0x03-0x07; anything else it cannot decode, a
        wrapped envelope read as opcode 0x01 (a batch) included, is an error response."""
        op = pl.opcode(body)
        if op == pl.OP_USER:
            try:
                cmd = pl.decode_body(body)
            except pl.PayloadError as err:
                if self.ekv:
                    raise ApplyError(f"user command does not decode: {err}") from None
                raise
            return self.kv.apply(cmd)
        if op == pl.OP_LEASE:
            if self.ekv:
                try:
                    pl.decode_body(body)
                except pl.PayloadError as err:
                    raise ApplyError(f"malformed lease: {err}") from None
            return True, None
        if op == pl.OP_REGISTRATION and self.cut is not None and self.cut.gated:
            # kv/fsm_encryption.go applyEncryption 84-85, applyRegistration 99-110: a body
            # that does not decode halts like a refused row does.
            for dek, full, epoch in pl.registry_rows(body):
                self._register(e, dek, full, epoch, via="entry")
            return True, None
        if op in (pl.OP_BOOTSTRAP, pl.OP_ROTATION) and self.cut is not None:
            applied = self.cut.apply(e.index, body)
            pos = self.cut.nonce_position() if applied.kind.startswith("rotate") else {}
            self.log.emit(EventKind.ENCRYPTION_APPLIED, what=applied.kind, index=e.index,
                          term=e.term, cutover=applied.cutover, active=applied.active,
                          **({"dek": applied.dek} if applied.dek else {}),
                          **({"note": applied.note} if applied.note else {}), **pos)
            if op == pl.OP_BOOTSTRAP and self.cut.gated:
                # ApplyBootstrap 708-713: the writer batch, after the sidecar write. On
                # every bootstrap entry that applies, a replay too (its rows are then
                # the same replay of an idempotent insert): what the rows hold must
                # follow from the log alone, as the checker's replay reads it.
                for dek, full, epoch in pl.registry_rows(body):
                    self._register(e, dek, full, epoch, via="bootstrap")
            return True, {"cutover": applied.cutover, "active": applied.active}
        if self.ekv and not pl.OP_ENCRYPTION_MIN <= op <= pl.OP_ENCRYPTION_MAX:
            raise ApplyError(f"opcode 0x{op:02x} does not decode")
        raise pl.PayloadError(f"unknown opcode 0x{op:02x}")

    def _halt(self, index: int, term: int, reason: str) -> None:
        """Fail closed: never skip an entry that cannot be applied. The fixed profile
        stays up and refuses writes; elastickv's process exits (`NodeExit`)."""
        self.halted = f"entry {index} (term {term}): {reason}"
        self.log.emit(EventKind.HALT, index=index, term=term, reason=reason)
        if self.ekv:
            raise NodeExit(index, term, reason)

    def _answer_reads(self) -> None:
        while self.reads_ready and self.reads_ready[0][0] <= self.applied:
            _, ident, rid, key = self.reads_ready.popleft()
            self._read_reply(ident, rid, key)

    def _read_reply(self, ident: Any, rid: Any, key: str) -> None:
        """A read's answer; a value this node cannot open (elastickv profile, row 11:
        decryptForKey's error) fails the read, and nothing else changes."""
        value = self.kv.read(key)
        if isinstance(value, Unopened):
            self._fail(ident, rid, "read-error", f"stored value of {key!r} does not open "
                       f"({value.code}, key id {value.key_id})")
            return
        self._reply(ident, {"id": rid, "ok": True, "value": value})

    # ---------------------------------------------------------------- admin

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

