"""elastickv's writer registration, the node's side (the elastickv profile's row 9): the
watcher that gets this process load registered, the leader's handling of a follower's
forwarded registration, and the apply of registry rows.

Why a module of its own: it is one row of one profile, with its own timers and its own
node-to-node call; `Replica` mixes it in (`RegistrationWatcher`) and calls it from its
tick, its apply and its host's message intake. The rows and their rules are
`node/registry.py`; the gate is the wrap's (`node/cutover.py` `Cutover.seal`).
"""
from __future__ import annotations

from typing import Any

from node import payload as pl
from node import registry
from node.cutover import Busy, Cutover, Halt
from node.events import EventKind
from node.kv import KV
from node.raft import Message, MsgType, NotLeader, RaftNode, Role
from node.types import Entry, EntryKind

# The elastickv profile's node-to-node RPC (row 9): the host hands these to
# `Replica.on_peer_rpc` instead of the Raft core.
PEER_RPC = (MsgType.REG, MsgType.REG_RESP)

# elastickv's registration cadence (main_encryption_registration.go 20-57): the watcher
# polls every second; one registration runs a retry loop with backoff 100 ms doubling to
# 5 s, each attempt bounded by 5 s, the whole loop by 30 s.
REG_POLL = 1.0
REG_BACKOFF = (0.1, 5.0)
REG_ATTEMPT_TIMEOUT = 5.0
REG_TICK_TIMEOUT = 30.0


class PeerIdent:
    """A pending proposal made for a peer (a forwarded registration): its answer goes
    back over the switchboard as a `REG_RESP`, not to a client."""

    __slots__ = ("node", "seq")

    def __init__(self, node: str, seq: int) -> None:
        self.node = node
        self.seq = seq


class _Registration:
    """One run of elastickv's registration loop (runWriterRegistrationWithProposer,
    main_encryption_registration.go 641-700) for (DEK, epoch): verify, propose (leader)
    or forward (follower), back off, until the row commits or 30 s pass."""

    __slots__ = ("backoff", "deadline", "dek", "in_flight_until", "next_attempt", "seq")

    def __init__(self, dek: int, now: float) -> None:
        self.dek = dek
        self.deadline = now + REG_TICK_TIMEOUT
        self.next_attempt = now
        self.backoff = REG_BACKOFF[0]
        self.in_flight_until = 0.0  # an attempt waiting for its answer (0: none)
        self.seq = 0


class RegistrationWatcher:
    """The registration half of `Replica` (see the module docstring). Everything it
    touches is the replica's: its Raft core, KV map, cutover, clock and proposers."""

    id: str
    raft: RaftNode
    kv: KV
    cut: Cutover | None
    log: Any
    halted: str | None
    admin_busy: bool
    enable: Any
    _pid_next: int
    _reg_next_poll: float
    _reg_run: _Registration | None
    _reg_seq: int

    def clock(self) -> float: ...  # pragma: no cover - the replica's

    def _can_serve(self, ident: Any, rid: Any) -> bool: ...  # pragma: no cover

    def _reply(self, ident: Any, rep: dict[str, Any]) -> None: ...  # pragma: no cover

    def _send_peer(self, msgs: list[Message]) -> None: ...  # pragma: no cover

    def _propose(self, payload: bytes, ident: Any, rid: Any,
                 admin: bool = False) -> None: ...  # pragma: no cover

    def _registry_has(self, dek: int, epoch: int) -> bool:
        assert self.cut is not None
        return registry.committed_at_epoch(self.kv, dek, self.cut.full_node_id, epoch)

    def _registration_watcher(self, now: float) -> None:
        """elastickv's runtime raft registration watcher (main_encryption_registration.go
        runRuntimeRaftRegistrationWatcher 232-251, runtimeRaftRegistrationTick 253-305):
        once a wrap is installed for the active raft DEK, get this load's (DEK, full
        node id, epoch) into the registry, so the wrap's gate opens. A rotation to a DEK
        this load has not registered, or a restart (a new epoch), starts it again."""
        cut = self.cut
        assert cut is not None
        if self.halted:
            return
        run = self._reg_run
        if run is None:
            if now < self._reg_next_poll:
                return
            # time.Ticker: a tick that falls while a registration runs is dropped.
            nxt = now if self._reg_next_poll == 0.0 else self._reg_next_poll
            while nxt <= now:
                nxt += REG_POLL
            self._reg_next_poll = nxt
            sc = cut.store.load()
            dek = sc.active_raft_dek  # activeRaftDEKForRegistration: C != 0, active != 0
            if not sc.raft_envelope_cutover_index or not dek or cut.registered(dek):
                return
            if not cut.wrap_installed_for(dek):
                return
            full, epoch = cut.full_node_id, cut.raft_epoch
            if registry.committed_at_epoch(self.kv, dek, full, epoch):
                cut.mark_registered(dek, "watcher-already-current")
                return
            seen = registry.last_seen(self.kv, dek, full)
            if epoch < seen:  # validateRaftRegistrationEpoch: logged, nothing proposed
                return
            run = self._reg_run = _Registration(dek, now)
        if run.dek != cut.wrap or cut.registered(run.dek):
            self._reg_run = None
            return
        if now >= run.deadline:  # runtimeRegistrationTickTimeout
            self._reg_run = None
            return
        if run.in_flight_until:
            if now < run.in_flight_until:
                return
            self._registration_failed(run, now)  # registrationAttemptTimeout
            return
        if now < run.next_attempt:
            return
        if self._registry_has(run.dek, cut.raft_epoch):  # verify-before-propose
            self._registration_done(run.dek, "watcher-verified")
            return
        payload = pl.registration_payload(run.dek, cut.full_node_id, cut.raft_epoch)
        if self.raft.role is Role.LEADER:
            # proposeWriterRegistrationBlockingOnCutover (737-754): the user Propose
            # path, so the cutover barrier refuses it; the wrap seals it (the gate lets
            # this load's own registration through). Propose returns once it applied.
            try:
                sealed = cut.user_proposal(payload, cut.barrier)
                self.raft.propose(pl.encode_proposal(self._next_pid(), sealed))
            except (Busy, NotLeader):
                self._registration_failed(run, now)
                return
            run.in_flight_until = now + REG_ATTEMPT_TIMEOUT
            return
        leader = self.raft.leader
        if not leader or leader == self.id:  # "no default-group leader known yet"
            self._registration_failed(run, now)
            return
        # forwardWriterRegistrationToLeader (756-774): RegisterEncryptionWriter on the
        # leader, which proposes it itself (adapter/encryption_admin.go 1796-1840).
        self._reg_seq += 1
        run.seq = self._reg_seq
        run.in_flight_until = now + REG_ATTEMPT_TIMEOUT
        self._send_peer([Message(MsgType.REG, self.id, leader, self.raft.term,
                                 index=run.seq, entries=(Entry(0, 0, EntryKind.NORMAL,
                                                               payload),))])

    def _registration_failed(self, run: _Registration, now: float) -> None:
        """An attempt failed: back off (100 ms doubling to 5 s), verify, try again."""
        run.in_flight_until = 0.0
        run.next_attempt = now + run.backoff
        run.backoff = min(run.backoff * 2, REG_BACKOFF[1])

    def _registration_done(self, dek: int, why: str) -> None:
        """releaseBarrier / MarkRegistered: the gate opens for (dek, this epoch)."""
        self._reg_run = None
        if self.cut is not None:
            self.cut.mark_registered(dek, why)

    def on_peer_rpc(self, m: Message) -> None:
        """A RegisterEncryptionWriter request from a follower, or the answer to ours."""
        cut = self.cut
        if m.dst != self.id or m.src not in self.raft.peers or cut is None or not cut.gated:
            return
        if m.type is MsgType.REG_RESP:
            run = self._reg_run
            if run is None or not run.in_flight_until or m.index != run.seq:
                return  # an answer to an attempt that already timed out
            if m.reject:
                self._registration_failed(run, self.clock())
            else:  # the leader applied it: the RPC returns and the gate opens
                self._registration_done(run.dek, "forwarded")
            return
        ident = PeerIdent(m.src, m.index)
        if self.halted or not m.entries or not self._can_serve(None, None):
            self._reply(ident, {"ok": False})  # requireLeader: FailedPrecondition
            return
        payload = m.entries[0].data
        try:
            dek, full, _epoch = pl.decode_registration(payload)
        except pl.PayloadError:
            self._reply(ident, {"ok": False})  # InvalidArgument
            return
        if dek == 0 or full == 0 or self.admin_busy or self.enable is not None:
            # InvalidArgument; or the admin semaphore is held (acquireCutoverSemaphore
            # waits; the caller's 5 s attempt would mostly run out the same way)
            self._reply(ident, {"ok": False})
            return
        try:
            # proposeSerializedEncryptionEntry: the latch after a failed cutover, then
            # ProposeAdmin through the wrap, whose gate asks about *this* node's
            # registration: the follower's row is not this node's own, so an
            # unregistered leader refuses it (ErrWriterNotRegistered -> Unavailable).
            sealed = cut.admin_proposal(payload)
        except Busy:
            self._reply(ident, {"ok": False})
            return
        self.admin_busy = True
        self._propose(sealed, ident, None, admin=True)

    def _register(self, e: Any, dek: int, full: int, epoch: int, via: str) -> None:
        """Apply one registration row (ApplyRegistration); a refusal halts apply."""
        fields = {"index": e.index, "term": e.term, "dek": dek, "full_node_id": full,
                  "node16": registry.node16_of(full), "epoch": epoch, "via": via}
        try:
            what, prev = registry.apply_registration(self.kv, dek, full, epoch)
        except registry.RegistryRefused as r:
            self.log.emit(EventKind.WRITER_REGISTRATION, what=r.what, **fields)
            raise Halt(e.index, r.reason) from None
        self.log.emit(EventKind.WRITER_REGISTRATION, what=what, **fields,
                      **({"last_seen": prev.last_seen} if prev else {}))
        cut = self.cut
        run = self._reg_run
        if cut is not None and run is not None and run.in_flight_until and dek == run.dek \
                and full == cut.full_node_id and epoch == cut.raft_epoch:
            # The leader's own Propose returns once its entry applied. A follower learns
            # it from the RPC's answer (`forwarded`) or, when its own apply comes first,
            # here (`applied`): elastickv's would wait for the answer or its next verify,
            # which the leader sends once it applied the same entry.
            self._registration_done(
                dek, "proposed" if self.raft.role is Role.LEADER else "applied")

    def _next_pid(self) -> int:
        self._pid_next += 1
        return self._pid_next
