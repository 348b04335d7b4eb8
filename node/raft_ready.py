"""The host-facing half of the Raft core (etcd's RawNode): what is pending, how it is cut
into a `Ready`, and what `advance` acknowledges.

Why the core, not the host, decides which messages may leave before the persist: that
rule is part of Raft's safety argument (a vote or an acknowledgement is a promise about
the sender's disk), so it belongs where Raft is, once, and not in every host (the node
process, the simulators), where one forgetful copy breaks Raft. etcd does the same: its
`send()` puts append and vote responses into `msgsAfterAppend`, and `Ready()` hands the
host lists that are already ordered. This core holds back a little more (vote requests
and heartbeat answers too): only what a leader sends to replicate may leave early.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from node.raft_log import RaftLog
from node.raft_progress import Progress
from node.raft_types import Message, MsgType, ReadState, Role
from node.types import Entry, HardState, Snapshot

# A leader's appends, heartbeats and snapshots promise nothing about its own disk, so
# they may leave before it persists (Raft thesis §10.2.1): the leader's fsync then
# overlaps its followers'. Everything else (votes, vote requests, every response) waits.
_SEND_BEFORE_PERSIST = frozenset({MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP})


@dataclass(slots=True)
class Ready:
    """Everything the host must do, in this order (the module docstring of `node.raft`
    says why each step is where it is):

    1. Send `messages` at once: they may leave before this Ready is persisted.
    2. Persist `snapshot`, then `entries`, then `hard_state`; fsync if `must_sync`.
    3. Only then send `messages_after_persist`: each one promises that what this Ready
       persisted is durable (votes, vote requests, every acknowledgement).
    4. Restore the state machine from `snapshot`, apply `committed_entries`, answer
       `read_states` once applied reaches their index.
    5. `advance(rd)`.

    Both lists keep the order in which the core produced their messages. A host that
    persists synchronously may send both lists after the persist; a host must never send
    `messages_after_persist` before it (a crash in between breaks Raft's promises).
    """

    messages: list[Message] = field(default_factory=list)
    messages_after_persist: list[Message] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    hard_state: HardState | None = None
    must_sync: bool = False
    committed_entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    read_states: list[ReadState] = field(default_factory=list)


class ReadyAssembly:
    """Base of `node.raft.RaftNode`: `has_ready`, `ready` and `advance`.

    The state is RaftNode's (set up in its `__init__`); it is declared here so that this
    half reads on its own. Kept as a base class rather than a separate object because
    these methods run on every host loop turn and an extra object would add a lookup to
    every field they touch.
    """

    id: str
    _log: RaftLog
    _role: Role
    _term: int
    _vote: str | None
    _commit: int
    _applied: int
    _persisted_hs: HardState
    _msgs: list[Message]  # in the order the core produced them; split by `ready`
    _read_states: list[ReadState]
    _ready_out: bool
    _prs: dict[str, Progress]
    _flush_append: bool
    _flush_heartbeat: bool

    def _flush(self) -> None:
        """Send what a leader deferred to batch it (RaftNode's)."""
        raise NotImplementedError

    def _leader_log_durable(self, stable: int) -> None:
        """Count the leader's own durable entries towards commit (RaftNode's)."""
        raise NotImplementedError

    def has_ready(self) -> bool:
        # Called on every loop turn: the fields are compared directly (no HardState built).
        log = self._log
        phs = self._persisted_hs
        return bool(
            self._msgs
            or self._read_states
            or log.unstable_snapshot is not None
            or log.stable < log.offset + len(log.ents)
            or self._term != phs.term
            or self._vote != phs.vote
            or self._commit != phs.commit
            or self._commit > self._applied
            or (self._role is Role.LEADER and (self._flush_append or self._flush_heartbeat))
        )

    def ready(self) -> Ready:
        """Collect pending output. See `Ready` and `node.raft` for what the host must do."""
        if self._ready_out:
            raise RuntimeError("advance() the previous Ready before asking for another")
        self._flush()
        log = self._log
        phs = self._persisted_hs
        term, vote, commit = self._term, self._vote, self._commit
        hs_changed = term != phs.term or vote != phs.vote or commit != phs.commit
        entries = log.unstable_entries()
        lo = max(self._applied, log.unstable_snapshot_index()) + 1
        committed = log.slice(lo, commit + 1) if commit >= lo else []
        must_sync = bool(
            entries
            or log.unstable_snapshot is not None
            or term != phs.term
            or vote != phs.vote  # a vote sent before it is durable can be given twice
        )
        early, after = _split(self._msgs)
        rd = Ready(
            messages=early,
            messages_after_persist=after,
            entries=entries,
            hard_state=HardState(term, vote, commit) if hs_changed else None,
            must_sync=must_sync,
            committed_entries=committed,
            snapshot=log.unstable_snapshot,
            read_states=self._read_states,
        )
        self._msgs = []
        self._read_states = []
        self._ready_out = True
        return rd

    def advance(self, rd: Ready) -> None:
        """Acknowledge that `rd` was persisted, sent and applied."""
        if not self._ready_out:
            raise RuntimeError("advance() without an outstanding Ready")
        self._ready_out = False
        log = self._log
        if rd.snapshot is not None:
            log.snapshot_persisted(rd.snapshot)
            self._applied = max(self._applied, rd.snapshot.meta.index)
        if rd.entries:
            log.stable_to(rd.entries)
        if self._role is Role.LEADER:
            self._leader_log_durable(log.stable)
        if rd.hard_state is not None:
            self._persisted_hs = rd.hard_state
        if rd.committed_entries:
            self._applied = max(self._applied, rd.committed_entries[-1].index)


def _split(msgs: list[Message]) -> tuple[list[Message], list[Message]]:
    """(may leave before the persist, must wait for it), each in production order.
    `msgs` itself may be returned: the caller hands it over."""
    early = [m for m in msgs if m.type in _SEND_BEFORE_PERSIST]
    if not early:
        return early, msgs
    if len(early) == len(msgs):
        return early, []
    return early, [m for m in msgs if m.type not in _SEND_BEFORE_PERSIST]
