"""Raft consensus as a pure, deterministic state machine (etcd-raft style).

Why pure: the same core runs inside the real node process (ZeroMQ, a WAL on disk) and
inside the seeded simulator (`tests/raftsim.py`), so a schedule that breaks it in
simulation replays bit for bit. The core owns no socket, no file, no clock and no global
randomness: time is `tick()`, input is `step(msg)`, `propose(data)` and `read_index(ctx)`,
and every effect is handed back to the host in a `Ready`.

The Ready contract (the same as etcd-raft's; breaking it breaks Raft, not only this code):

1. When `node.has_ready()`, take `rd = node.ready()`. At most one Ready is outstanding:
   `ready()` raises until the previous one was passed to `advance()`.
2. Persist, in this order: `rd.snapshot` if any (it replaces the whole stored log and the
   stored snapshot), then `rd.entries` (first drop every stored entry whose index is
   >= `rd.entries[0].index`, then append), then `rd.hard_state` if not None. If
   `rd.must_sync`, fsync before going on.
3. Only then send `rd.messages`. A vote or an append acknowledgement is a promise that
   the state behind it is durable: sent before the fsync, a crash can break that promise
   (two votes in one term, or an acknowledged entry missing from the quorum that
   committed it). One exception (Raft thesis §10.2.1): messages for which
   `may_send_early(m)` is true (a leader's APP, HEARTBEAT and SNAP) promise nothing
   and may be sent before persisting, so the leader's fsync overlaps its followers'.
   The leader counts its own entries towards commit only after `advance`, i.e. once
   they are durable.
4. Restore the state machine from `rd.snapshot` if any, then apply
   `rd.committed_entries` in order. `rd.read_states` are released linearizable reads:
   answer each once the local applied index is >= its `index`.
5. Call `node.advance(rd)`: it marks the entries stable and the committed entries applied.

Restart: build a `RaftNode` from what step 2 persisted (hard state, the latest snapshot,
the entries after it). The state machine must be restored from that snapshot (the core
then reports `applied == snapshot index`, unless the host passes `applied=` because its
state machine is durable on its own); committed entries after it come back in the next
Ready and are applied again.

Compaction: after the host snapshotted its state machine at an applied index `i`, it
calls `compact(i, data)`; the core drops entries <= i and keeps that snapshot to send
(`MsgType.SNAP`) to followers whose next entry is no longer in the log. The host persists
that snapshot itself (it made it), before dropping entries from its storage.

Membership is fixed at construction. PreVote is on by default (`Config.pre_vote`): a
partitioned node then cannot inflate its term and depose a healthy leader when it comes
back, which keeps fault-injection runs from measuring needless elections.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum, StrEnum
from typing import Any

from node.types import Entry, EntryKind, HardState, Snapshot, SnapshotMeta

BUG_COMMIT_OLD_TERM = "commit-old-term"
KNOWN_BUGS: frozenset[str] = frozenset({BUG_COMMIT_OLD_TERM})


class Role(StrEnum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class MsgType(IntEnum):
    """Message kinds; the integer values are the wire encoding, so never renumber them."""

    APP = 1  # append entries (also the commit-only nudge: no entries)
    APP_RESP = 2  # ack (index = last matching index) or reject (with a hint)
    VOTE = 3
    VOTE_RESP = 4
    PRE_VOTE = 5  # "would you vote for me at term+1?" without anyone changing term
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7  # keeps followers from campaigning; carries the ReadIndex round number
    HEARTBEAT_RESP = 8
    SNAP = 9  # InstallSnapshot: the follower's next entry was compacted away


@dataclass(frozen=True, slots=True)
class Message:
    """One Raft message; one flat shape for every type, like etcd's raftpb.Message.

    Field use per type:
    - APP: `index`/`log_term` = the entry preceding `entries`; `commit` = leader's commit.
    - APP_RESP: accept: `index` = highest index known to match the leader. Reject:
      `index` = the rejected `index`, `reject_hint`/`log_term` = the follower's guess of
      the last index that could match and its term (the fast-backtracking hint).
    - VOTE/PRE_VOTE: `index`/`log_term` = candidate's last entry; for PRE_VOTE `term`
      is the term the candidate would campaign in (its own term + 1).
    - VOTE_RESP/PRE_VOTE_RESP: `reject` = not granted.
    - HEARTBEAT: `commit` = min(follower's match, leader's commit): a follower's log
      beyond its match may still diverge, so it must not commit past it.
    - HEARTBEAT/HEARTBEAT_RESP and APP/APP_RESP: `read_seq` = the leader's ReadIndex
      round when it sent the message, echoed back: any answer in the leader's term to a
      message sent after a read started confirms leadership for that read.
    - SNAP: `snapshot` (its meta in `index`/`log_term` too, for logs and filters).
    """

    type: MsgType
    src: str
    dst: str
    term: int
    index: int = 0
    log_term: int = 0
    commit: int = 0
    entries: tuple[Entry, ...] = ()
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    read_seq: int = 0


@dataclass(frozen=True, slots=True)
class ReadState:
    """A confirmed linearizable read: serve `ctx` once applied >= `index`."""

    index: int
    ctx: bytes


@dataclass(slots=True)
class Ready:
    """Everything the host must do, in the order given in the module docstring."""

    messages: list[Message] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    hard_state: HardState | None = None
    must_sync: bool = False
    committed_entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    read_states: list[ReadState] = field(default_factory=list)


_EARLY = frozenset({MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP})


def may_send_early(m: Message) -> bool:
    """True for messages that promise nothing about the sender's disk (a leader's
    appends, heartbeats and snapshots): the host may send them before persisting."""
    return m.type in _EARLY


class NotLeader(Exception):
    """Raised by `propose`/`read_index` on a non-leader; `leader` is a hint (may be None)."""

    def __init__(self, leader: str | None) -> None:
        super().__init__(f"not the leader (leader hint: {leader})")
        self.leader = leader


class RaftPanic(RuntimeError):
    """The core saw a state that correct Raft can never reach (e.g. a committed entry
    being overwritten). Like etcd's panic: the node must stop rather than diverge."""


@dataclass(frozen=True, slots=True)
class Config:
    """Timing and flow-control knobs.

    Ticks are abstract: the host decides how long one lasts. The election timeout is
    re-drawn from [election_ticks, 2 * election_ticks) every time a node resets its
    timer, so that split votes do not repeat forever.
    """

    election_ticks: int = 10
    heartbeat_ticks: int = 2
    max_msg_bytes: int = 64 * 1024  # payload bytes per APP; one entry always fits
    max_inflight: int = 64  # pipelined APPs in flight per follower
    pre_vote: bool = True
    snapshot_retry_ticks: int = 30  # resend a snapshot nobody acknowledged

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_ticks < self.election_ticks:
            raise ValueError("need 0 < heartbeat_ticks < election_ticks")
        if self.max_msg_bytes < 1 or self.max_inflight < 1 or self.snapshot_retry_ticks < 1:
            raise ValueError("max_msg_bytes, max_inflight, snapshot_retry_ticks must be >= 1")


class ProgressState(Enum):
    PROBE = "probe"  # unsure where the follower's log matches: one APP per heartbeat
    REPLICATE = "replicate"  # matched: stream APPs optimistically (pipelining)
    SNAPSHOT = "snapshot"  # a snapshot is in flight: send nothing else


@dataclass(slots=True)
class _Progress:
    """The leader's view of one follower (etcd's tracker.Progress, trimmed)."""

    match: int
    next: int
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    inflight: deque[int] = field(default_factory=deque)  # last index of each APP in flight
    pending_snapshot: int = 0
    snapshot_ticks: int = 0
    commit_sent: int = 0
    read_ack: int = 0  # highest ReadIndex round this follower acknowledged

    def paused(self, max_inflight: int) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= max_inflight
        return True

    def become_probe(self) -> None:
        # After a snapshot the follower has at least the snapshot's index.
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight.clear()
        self.pending_snapshot = 0

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.inflight.clear()

    def become_snapshot(self, index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = index
        self.snapshot_ticks = 0
        self.inflight.clear()

    def maybe_update(self, index: int) -> bool:
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """Move `next` back after a rejection; False when the rejection is stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        if rejected <= self.match and match_hint < self.match:
            # The follower no longer has entries it acknowledged: its disk was wiped (an
            # operator's or a test's doing; Raft assumes it never happens). Start over
            # from what it says it has, which leads to a snapshot when that is compacted.
            # A stale rejection taking this path only costs a re-probe.
            self.match = match_hint
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def free_to(self, index: int) -> None:
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()


def _entry_term(e: Entry) -> int:
    return e.term


class RaftNode:
    """One Raft peer. See the module docstring for the host contract."""

    def __init__(
        self,
        node_id: str,
        peers: Iterable[str],
        *,
        rng: random.Random,
        config: Config | None = None,
        bugs: frozenset[str] = frozenset(),
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: Sequence[Entry] = (),
        applied: int | None = None,
    ) -> None:
        unknown = set(bugs) - KNOWN_BUGS
        if unknown:
            raise ValueError(f"unknown raft bug switch(es): {sorted(unknown)}")
        self.id = node_id
        # Sorted so that every iteration over peers is deterministic for a given seed.
        self._peers: tuple[str, ...] = tuple(sorted(set(peers) | {node_id}))
        self._others: tuple[str, ...] = tuple(p for p in self._peers if p != node_id)
        self._quorum = len(self._peers) // 2 + 1
        self._rng = rng
        self._cfg = config or Config()
        self._bugs = frozenset(bugs)

        hs = hard_state or HardState()
        snap = snapshot or Snapshot()
        expect = snap.meta.index + 1
        prev_term = snap.meta.term
        for e in entries:
            if e.index != expect or e.term < prev_term:
                raise ValueError(f"entries must follow the snapshot contiguously: {e}")
            expect += 1
            prev_term = e.term
        self._snapshot = snap
        self._ents: list[Entry] = list(entries)
        self._stable = self.last_index
        self._term = hs.term
        self._vote = hs.vote
        self._commit = max(hs.commit, snap.meta.index)
        if self._commit > self.last_index:
            raise ValueError(
                f"hard state commit {self._commit} beyond last index {self.last_index}: "
                "storage lost synced entries"
            )
        self._applied = snap.meta.index if applied is None else applied
        if not snap.meta.index <= self._applied <= self._commit:
            raise ValueError(f"applied {self._applied} outside [snapshot, commit]")
        self._persisted_hs = hs
        self._pending_snapshot: Snapshot | None = None
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._ready_out = False

        self._role = Role.FOLLOWER
        self._leader: str | None = None
        self._elapsed = 0
        self._timeout = self._random_timeout()
        self._hb_elapsed = 0
        self._votes: dict[str, bool] = {}
        self._prs: dict[str, _Progress] = {}
        self._term_start = 0
        self._read_seq = 0
        self._reads: deque[tuple[int, int, bytes]] = deque()  # (round, index, ctx)
        self._reads_before_commit: list[bytes] = []
        self._flush_append = False
        self._flush_heartbeat = False

    # ---------------------------------------------------------------- inspection

    @property
    def role(self) -> Role:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def vote(self) -> str | None:
        return self._vote

    @property
    def leader(self) -> str | None:
        return self._leader

    @property
    def peers(self) -> tuple[str, ...]:
        return self._peers

    @property
    def commit(self) -> int:
        return self._commit

    @property
    def applied(self) -> int:
        """Highest index handed to the host for applying and acknowledged by `advance`."""
        return self._applied

    @property
    def snapshot_index(self) -> int:
        return self._snapshot.meta.index

    @property
    def snapshot_term(self) -> int:
        return self._snapshot.meta.term

    @property
    def snapshot(self) -> Snapshot:
        """The latest snapshot (taken by `compact` or received); index 0 = none yet."""
        return self._snapshot

    @property
    def last_index(self) -> int:
        return self._snapshot.meta.index + len(self._ents)

    @property
    def last_term(self) -> int:
        return self._ents[-1].term if self._ents else self._snapshot.meta.term

    @property
    def term_start_index(self) -> int:
        """Index of the no-op this leader appended when it took office; 0 if not leader.

        A new leader must not serve anything until `applied >= term_start_index`: only
        then has it applied every entry committed by earlier leaders (the cutover
        protocol depends on this to see a marker that is committed but not yet applied).
        """
        return self._term_start if self._role is Role.LEADER else 0

    @property
    def term_start_applied(self) -> bool:
        """True on a leader that has applied its own term's first entry."""
        return self._role is Role.LEADER and self._applied >= self._term_start

    def term_at(self, index: int) -> int | None:
        """Term of the entry at `index`, or None if compacted away or beyond the log."""
        snap = self._snapshot.meta
        if index == snap.index:
            return snap.term
        if snap.index < index <= self.last_index:
            return self._ents[index - snap.index - 1].term
        return None

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Retained entries with lo <= index < hi (lo must be above the snapshot)."""
        base = self._snapshot.meta.index
        if lo <= base:
            raise ValueError(f"entries below {base + 1} are compacted")
        return self._ents[lo - base - 1 : max(hi - base - 1, 0)]

    def status(self) -> dict[str, Any]:
        """A flat summary for event logs."""
        return {
            "id": self.id,
            "role": str(self._role),
            "term": self._term,
            "leader": self._leader,
            "commit": self._commit,
            "applied": self._applied,
            "last_index": self.last_index,
            "snapshot_index": self.snapshot_index,
        }

    def __repr__(self) -> str:
        return f"RaftNode({self.status()})"

    # ---------------------------------------------------------------- inputs

    def tick(self) -> None:
        """Advance logical time by one tick."""
        if self._role is Role.LEADER:
            self._tick_leader()
            return
        self._elapsed += 1
        if self._elapsed >= self._timeout:
            self._campaign(pre=self._cfg.pre_vote)

    def propose(self, data: bytes) -> int:
        """Append `data` as a new entry; returns its index. Raises NotLeader.

        The entry is only committed when a later Ready hands it back in
        `committed_entries` with this same term; a new leader may overwrite it.
        """
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader)
        index = self.last_index + 1
        self._append_as_leader([Entry(index, self._term, EntryKind.NORMAL, bytes(data))])
        # Sending waits for ready(): proposals made in one host loop share APPs.
        self._flush_append = True
        return index

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read; the answer arrives as a ReadState in a Ready.

        The leader records its commit index, then proves it is still leader with a
        heartbeat round acknowledged by a quorum. Before it has committed an entry of its
        own term its commit index may lag behind what earlier leaders committed, so the
        read waits until then. Reads are dropped if leadership is lost; the host times
        them out. Raises NotLeader on a non-leader.
        """
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader)
        if self._commit < self._term_start:
            self._reads_before_commit.append(bytes(ctx))
            return
        self._start_read(bytes(ctx))

    def step(self, m: Message) -> None:
        """Feed one message received from the network (duplicates and stale ones welcome)."""
        if m.dst != self.id or m.src == self.id or m.src not in self._peers:
            return
        if m.term > self._term:
            pre_vote_traffic = m.type is MsgType.PRE_VOTE or (
                m.type is MsgType.PRE_VOTE_RESP and not m.reject
            )
            # A pre-vote changes nobody's term: that is its whole point.
            if not pre_vote_traffic:
                from_leader = m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP)
                self._become_follower(m.term, m.src if from_leader else None)
        elif m.term < self._term:
            if m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
                # Tell a deposed leader about the newer term so it steps down.
                self._send(MsgType.APP_RESP, m.src, reject=True)
            elif m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
                # Answering (instead of dropping) lets a pre-candidate with a stale term
                # learn ours; otherwise a node with a higher term could stall elections.
                resp = MsgType.VOTE_RESP if m.type is MsgType.VOTE else MsgType.PRE_VOTE_RESP
                self._send(resp, m.src, reject=True)
            return

        if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
            self._handle_vote_request(m)
        elif self._role is Role.LEADER:
            self._step_leader(m)
        elif self._role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def compact(self, index: int, data: bytes) -> Snapshot:
        """Record a state-machine snapshot taken at applied `index`; drop entries <= index.

        Returns the Snapshot the core will send to lagging followers (the host persists
        it). A stale index (<= current snapshot) is ignored.
        """
        if index > self._applied:
            raise ValueError(f"cannot compact at {index}: only {self._applied} applied")
        base = self._snapshot.meta.index
        if index <= base:
            return self._snapshot
        term = self.term_at(index)
        assert term is not None and index <= self._stable
        self._ents = self._ents[index - base :]
        self._snapshot = Snapshot(SnapshotMeta(index, term), bytes(data))
        return self._snapshot

    # ---------------------------------------------------------------- Ready

    def has_ready(self) -> bool:
        # Called on every loop turn: the fields are compared directly (no HardState built).
        phs = self._persisted_hs
        return bool(
            self._msgs
            or self._read_states
            or self._pending_snapshot is not None
            or self._stable < self._snapshot.meta.index + len(self._ents)
            or self._term != phs.term
            or self._vote != phs.vote
            or self._commit != phs.commit
            or self._commit > self._applied
            or (self._role is Role.LEADER and (self._flush_append or self._flush_heartbeat))
        )

    def ready(self) -> Ready:
        """Collect pending output. See the module docstring for what the host must do."""
        if self._ready_out:
            raise RuntimeError("advance() the previous Ready before asking for another")
        self._flush()
        hs = self._hard_state()
        hs_changed = hs != self._persisted_hs
        base = self._snapshot.meta.index
        entries = self._ents[max(self._stable - base, 0) :]
        lo = max(self._applied, self._pending_snapshot_index()) + 1
        committed = self.entries(lo, self._commit + 1) if self._commit >= lo else []
        must_sync = bool(
            entries
            or self._pending_snapshot is not None
            or (
                hs_changed
                and (hs.term, hs.vote) != (self._persisted_hs.term, self._persisted_hs.vote)
            )
        )
        rd = Ready(
            messages=self._msgs,
            entries=entries,
            hard_state=hs if hs_changed else None,
            must_sync=must_sync,
            committed_entries=committed,
            snapshot=self._pending_snapshot,
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
        if rd.snapshot is not None:
            if self._pending_snapshot is rd.snapshot:
                self._pending_snapshot = None
            self._applied = max(self._applied, rd.snapshot.meta.index)
        # Entries truncated while the Ready was out are not stable: keep only the part
        # of what was written that still matches the log.
        for e in reversed(rd.entries):
            if self.term_at(e.index) == e.term:
                self._stable = max(self._stable, e.index)
                break
        if self._role is Role.LEADER:
            me = self._prs[self.id]
            if self._stable > me.match:
                me.match = self._stable
                if self._maybe_commit():
                    self._flush_append = True  # tell the followers the new commit index
        if rd.hard_state is not None:
            self._persisted_hs = rd.hard_state
        if rd.committed_entries:
            self._applied = max(self._applied, rd.committed_entries[-1].index)

    def _hard_state(self) -> HardState:
        return HardState(self._term, self._vote, self._commit)

    def _pending_snapshot_index(self) -> int:
        return self._pending_snapshot.meta.index if self._pending_snapshot else 0

    def _flush(self) -> None:
        """Send what propose/ack/read deferred, once per Ready (batching)."""
        if self._role is not Role.LEADER:
            self._flush_append = self._flush_heartbeat = False
            return
        heartbeat = self._flush_heartbeat
        self._flush_heartbeat = False
        covered: set[str] = set()  # followers that get an APP carrying the read round
        if self._flush_append:
            self._flush_append = False
            for p in self._others:
                sent = False
                while self._maybe_send_append(p, send_if_empty=False):
                    sent = True
                if not sent:
                    self._maybe_send_commit(p)
                last = self._msgs[-1] if self._msgs else None
                if last is not None and last.dst == p and last.type is MsgType.APP:
                    covered.add(p)
        if heartbeat:
            self._bcast_heartbeat(skip=covered)

    # ---------------------------------------------------------------- roles

    def _random_timeout(self) -> int:
        n = self._cfg.election_ticks
        return n + self._rng.randrange(n)

    def _reset_timer(self) -> None:
        self._elapsed = 0
        self._timeout = self._random_timeout()

    def _clear_leader_state(self) -> None:
        self._prs = {}
        self._term_start = 0
        self._reads.clear()
        self._reads_before_commit.clear()
        self._read_seq = 0
        self._flush_append = self._flush_heartbeat = False

    def _become_follower(self, term: int, leader: str | None) -> None:
        if term > self._term:
            self._term = term
            self._vote = None
        self._role = Role.FOLLOWER
        self._leader = leader
        self._votes = {}
        self._clear_leader_state()
        self._reset_timer()

    def _campaign(self, *, pre: bool) -> None:
        self._clear_leader_state()
        self._leader = None
        self._reset_timer()
        if pre:
            self._role = Role.PRE_CANDIDATE
            vote_term, kind = self._term + 1, MsgType.PRE_VOTE
        else:
            self._term += 1
            self._vote = self.id
            self._role = Role.CANDIDATE
            vote_term, kind = self._term, MsgType.VOTE
        self._votes = {self.id: True}
        if self._poll_result() is True:  # single-node cluster
            self._won_poll()
            return
        for p in self._others:
            self._msgs.append(
                Message(kind, self.id, p, vote_term, index=self.last_index, log_term=self.last_term)
            )

    def _poll_result(self) -> bool | None:
        granted = sum(1 for v in self._votes.values() if v)
        rejected = len(self._votes) - granted
        if granted >= self._quorum:
            return True
        if len(self._peers) - rejected < self._quorum:
            return False
        return None

    def _won_poll(self) -> None:
        if self._role is Role.PRE_CANDIDATE:
            self._campaign(pre=False)
        else:
            self._become_leader()

    def _become_leader(self) -> None:
        self._role = Role.LEADER
        self._leader = self.id
        self._hb_elapsed = 0
        self._clear_leader_state()
        last = self.last_index
        self._prs = {p: _Progress(match=0, next=last + 1) for p in self._peers}
        self._prs[self.id].match = min(self._stable, last)
        # The no-op lets the leader commit (and so learn) everything earlier terms left
        # behind: entries of older terms may not be committed by counting alone.
        self._term_start = last + 1
        self._append_as_leader([Entry(last + 1, self._term, EntryKind.NOOP, b"")])
        for p in self._others:
            self._maybe_send_append(p, send_if_empty=True)

    def _handle_vote_request(self, m: Message) -> None:
        pre = m.type is MsgType.PRE_VOTE
        resp = MsgType.PRE_VOTE_RESP if pre else MsgType.VOTE_RESP
        can_vote = (
            self._vote == m.src
            or (self._vote is None and self._leader is None)
            or (pre and m.term > self._term)
        )
        up_to_date = m.log_term > self.last_term or (
            m.log_term == self.last_term and m.index >= self.last_index
        )
        if can_vote and up_to_date:
            # A granted pre-vote answers in the proposed term so the pre-candidate can
            # tell it apart from a rejection carrying our (possibly higher) term.
            self._msgs.append(Message(resp, self.id, m.src, m.term))
            if not pre:
                self._vote = m.src
                self._reset_timer()
        else:
            self._send(resp, m.src, reject=True)

    def _step_candidate(self, m: Message) -> None:
        if m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
            # Someone already won this term.
            self._become_follower(m.term, m.src)
            self._step_follower(m)
            return
        if self._role is Role.CANDIDATE:
            counts = m.type is MsgType.VOTE_RESP and m.term == self._term
        else:
            counts = m.type is MsgType.PRE_VOTE_RESP and (
                (not m.reject and m.term == self._term + 1) or (m.reject and m.term == self._term)
            )
        if not counts:
            return
        self._votes.setdefault(m.src, not m.reject)
        result = self._poll_result()
        if result is True:
            self._won_poll()
        elif result is False:
            self._become_follower(self._term, None)

    # ---------------------------------------------------------------- follower

    def _step_follower(self, m: Message) -> None:
        if m.type not in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
            return
        self._elapsed = 0
        self._leader = m.src
        if m.type is MsgType.APP:
            self._handle_append(m)
        elif m.type is MsgType.HEARTBEAT:
            self._commit_to(min(m.commit, self.last_index))
            self._send(MsgType.HEARTBEAT_RESP, m.src, read_seq=m.read_seq)
        else:
            self._handle_snapshot(m)

    def _handle_append(self, m: Message) -> None:
        if m.index < self._commit:
            # Everything up to our commit matches any leader's log (Leader Completeness).
            self._send(MsgType.APP_RESP, m.src, index=self._commit, read_seq=m.read_seq)
            return
        if self.term_at(m.index) == m.log_term:
            last_new = m.index + len(m.entries)
            self._append_from_leader(m.entries)
            self._commit_to(min(m.commit, last_new))
            # Ack only what this message proved: our log beyond last_new may diverge.
            self._send(MsgType.APP_RESP, m.src, index=last_new, read_seq=m.read_seq)
            return
        if m.index == self._commit:
            raise RaftPanic(
                f"{self.id}: leader {m.src} has term {m.log_term} at committed index {m.index}, "
                f"we have {self.term_at(m.index)}"
            )
        hint, hint_term = self._find_conflict_by_term(min(m.index, self.last_index), m.log_term)
        self._send(
            MsgType.APP_RESP,
            m.src,
            index=m.index,
            reject=True,
            reject_hint=hint,
            log_term=hint_term,
            read_seq=m.read_seq,
        )

    def _append_from_leader(self, entries: Sequence[Entry]) -> None:
        base = self._snapshot.meta.index
        for k, e in enumerate(entries):
            if e.index <= base:
                continue
            if self.term_at(e.index) == e.term:
                continue  # already have it; never truncate on a stale/duplicate APP
            if e.index <= self._commit:
                raise RaftPanic(
                    f"{self.id}: entry {e.index} conflicts with the committed log "
                    f"(commit {self._commit})"
                )
            del self._ents[e.index - base - 1 :]
            self._ents.extend(entries[k:])
            self._stable = min(self._stable, e.index - 1)
            return

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        if snap is None:
            return
        meta = snap.meta
        if meta.index <= self._commit:
            self._send(MsgType.APP_RESP, m.src, index=self._commit)
            return
        if self.term_at(meta.index) == meta.term:
            # We hold the snapshot's last entry, hence its whole prefix: just commit.
            self._commit_to(meta.index)
            self._send(MsgType.APP_RESP, m.src, index=self._commit)
            return
        self._snapshot = snap
        self._ents = []
        self._stable = meta.index
        self._commit = meta.index
        self._pending_snapshot = snap
        self._send(MsgType.APP_RESP, m.src, index=meta.index)

    def _find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest i <= index whose term is <= `term`, with its term; (i, 0) if unknown.

        Terms never decrease along a log, so this is a binary search. Used on both sides
        of a rejection to skip a whole divergent term per round trip, not one entry.
        """
        snap = self._snapshot.meta
        index = min(index, self.last_index)
        if index < snap.index:
            return index, 0
        k = bisect_right(self._ents, term, hi=index - snap.index, key=_entry_term)
        if k > 0:
            return snap.index + k, self._ents[k - 1].term
        if snap.term <= term:
            return snap.index, snap.term
        return max(snap.index - 1, 0), 0

    def _commit_to(self, index: int) -> None:
        if index <= self._commit:
            return
        assert index <= self.last_index, (index, self.last_index)
        self._commit = index
        if self._role is Role.LEADER and self._commit >= self._term_start:
            waiting, self._reads_before_commit = self._reads_before_commit, []
            for ctx in waiting:
                self._start_read(ctx)

    # ---------------------------------------------------------------- leader

    def _tick_leader(self) -> None:
        self._hb_elapsed += 1
        if self._hb_elapsed >= self._cfg.heartbeat_ticks:
            self._hb_elapsed = 0
            self._bcast_heartbeat()
        for p in self._others:
            pr = self._prs[p]
            if pr.state is ProgressState.SNAPSHOT:
                pr.snapshot_ticks += 1
                if pr.snapshot_ticks >= self._cfg.snapshot_retry_ticks:
                    # Presumed lost: probe from the follower's match, which leads back
                    # to a fresh snapshot if the log still does not reach it.
                    pr.pending_snapshot = 0
                    pr.become_probe()

    def _step_leader(self, m: Message) -> None:
        pr = self._prs.get(m.src)
        if pr is None:
            return
        if m.type is MsgType.APP_RESP:
            self._handle_append_response(m, pr)
        elif m.type is MsgType.HEARTBEAT_RESP:
            if pr.state is ProgressState.PROBE:
                pr.probe_sent = False
            elif pr.state is ProgressState.REPLICATE and pr.paused(self._cfg.max_inflight):
                pr.inflight.popleft()  # let one APP through: the window may hold lost ones
            if pr.match < self.last_index:
                # Also how lost APPs get noticed: an APP past the follower's log is
                # rejected, which drops the follower back to probing.
                self._maybe_send_append(m.src, send_if_empty=True)
            if m.read_seq > pr.read_ack:
                pr.read_ack = m.read_seq
                self._release_reads()

    def _handle_append_response(self, m: Message, pr: _Progress) -> None:
        if m.read_seq > pr.read_ack:
            # An answer in our term to an APP sent after read round r started proves,
            # like a heartbeat answer, that this follower still follows us.
            pr.read_ack = m.read_seq
            self._release_reads()
        if m.reject:
            next_probe = m.reject_hint
            if m.log_term > 0:
                next_probe, _ = self._find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._maybe_send_append(m.src, send_if_empty=True)
            return
        if not pr.maybe_update(m.index):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT:
            if pr.match >= pr.pending_snapshot or pr.match >= self.snapshot_index:
                pr.become_probe()
                if pr.match >= self.snapshot_index:
                    pr.become_replicate()
        else:
            pr.free_to(m.index)
        self._maybe_commit()
        self._flush_append = True

    def _append_as_leader(self, entries: list[Entry]) -> None:
        # The leader's own copy counts towards commit only once it is durable (see
        # `advance`): that is what lets the host send APPs before its own fsync.
        self._ents.extend(entries)
        self._prs[self.id].next = self.last_index + 1

    def _maybe_commit(self) -> bool:
        matches = sorted((pr.match for pr in self._prs.values()), reverse=True)
        n = matches[self._quorum - 1]
        if n <= self._commit:
            return False
        # Raft's commit rule (paper §5.4.2): counting replicas is only proof of
        # commitment for an entry of the leader's own term (Figure 8 shows why).
        if self.term_at(n) != self._term and BUG_COMMIT_OLD_TERM not in self._bugs:
            return False
        self._commit_to(n)
        return True

    def _entries_for_msg(self, lo: int) -> tuple[Entry, ...]:
        if lo > self.last_index:
            return ()
        base = self._snapshot.meta.index
        out: list[Entry] = []
        size = 0
        for pos in range(lo - base - 1, len(self._ents)):  # no slice: the tail may be long
            e = self._ents[pos]
            size += len(e.data)
            if out and size > self._cfg.max_msg_bytes:
                break
            out.append(e)
        return tuple(out)

    def _maybe_send_append(self, to: str, *, send_if_empty: bool) -> bool:
        pr = self._prs[to]
        if pr.paused(self._cfg.max_inflight):
            return False
        prev = pr.next - 1
        prev_term = self.term_at(prev)
        if prev_term is None:
            if prev > self.last_index:  # cannot happen; keep the invariant next <= last+1
                pr.next = self.last_index + 1
                return False
            snap = self._snapshot
            self._msgs.append(
                Message(
                    MsgType.SNAP,
                    self.id,
                    to,
                    self._term,
                    index=snap.meta.index,
                    log_term=snap.meta.term,
                    snapshot=snap,
                )
            )
            pr.become_snapshot(snap.meta.index)
            return True
        ents = self._entries_for_msg(pr.next)
        if not ents and not send_if_empty:
            return False
        self._msgs.append(
            Message(
                MsgType.APP,
                self.id,
                to,
                self._term,
                index=prev,
                log_term=prev_term,
                commit=self._commit,
                entries=ents,
                read_seq=self._read_seq,
            )
        )
        pr.commit_sent = max(pr.commit_sent, min(self._commit, prev + len(ents)))
        if pr.state is ProgressState.REPLICATE:
            if ents:
                pr.next = ents[-1].index + 1
                pr.inflight.append(ents[-1].index)
        else:
            pr.probe_sent = True
        return True

    def _maybe_send_commit(self, to: str) -> None:
        """Tell a caught-up follower about a new commit index without waiting for the
        next heartbeat. Anchored at its match so that it is never rejected, even when
        pipelined APPs are still in flight."""
        pr = self._prs[to]
        target = min(self._commit, pr.match)
        if pr.state is not ProgressState.REPLICATE or target <= pr.commit_sent:
            return
        match_term = self.term_at(pr.match)
        if match_term is None:
            return
        self._msgs.append(
            Message(
                MsgType.APP,
                self.id,
                to,
                self._term,
                index=pr.match,
                log_term=match_term,
                commit=self._commit,
                read_seq=self._read_seq,
            )
        )
        pr.commit_sent = target

    def _bcast_heartbeat(self, skip: set[str] | frozenset[str] = frozenset()) -> None:
        for p in self._others:
            if p in skip:
                continue
            pr = self._prs[p]
            commit = min(pr.match, self._commit)
            self._msgs.append(
                Message(
                    MsgType.HEARTBEAT,
                    self.id,
                    p,
                    self._term,
                    commit=commit,
                    read_seq=self._read_seq,
                )
            )
            pr.commit_sent = max(pr.commit_sent, commit)

    def _start_read(self, ctx: bytes) -> None:
        if len(self._peers) == 1:
            self._read_states.append(ReadState(self._commit, ctx))
            return
        self._read_seq += 1
        self._reads.append((self._read_seq, self._commit, ctx))
        self._flush_heartbeat = True

    def _release_reads(self) -> None:
        # A quorum that acknowledged round r, all still in our term, proves nobody
        # could have been elected and committed anything between the read and now.
        while self._reads:
            seq, index, ctx = self._reads[0]
            acks = 1 + sum(1 for p in self._others if self._prs[p].read_ack >= seq)
            if acks < self._quorum:
                return
            self._reads.popleft()
            self._read_states.append(ReadState(index, ctx))

    def _send(
        self,
        kind: MsgType,
        to: str,
        *,
        index: int = 0,
        reject: bool = False,
        reject_hint: int = 0,
        log_term: int = 0,
        read_seq: int = 0,
    ) -> None:
        self._msgs.append(
            Message(
                kind,
                self.id,
                to,
                self._term,
                index=index,
                log_term=log_term,
                reject=reject,
                reject_hint=reject_hint,
                read_seq=read_seq,
            )
        )


# -------------------------------------------------------------------- wire format
#
# The only place that knows how a Message looks on the wire: a msgpack-friendly map with
# ints, strings, booleans, bytes and lists. Entries are [index, term, kind, data];
# a snapshot is [index, term, data].


def to_wire(m: Message) -> dict[str, Any]:
    """Encode a Message as a plain map for msgpack (bytes stay bytes)."""
    d: dict[str, Any] = {
        "type": int(m.type),
        "from": m.src,
        "to": m.dst,
        "term": m.term,
        "index": m.index,
        "log_term": m.log_term,
        "commit": m.commit,
        "entries": [[e.index, e.term, int(e.kind), e.data] for e in m.entries],
        "reject": m.reject,
        "hint": m.reject_hint,
        "read_seq": m.read_seq,
    }
    if m.snapshot is not None:
        s = m.snapshot
        d["snapshot"] = [s.meta.index, s.meta.term, s.data]
    return d


def _int(v: Any) -> int:
    if type(v) is not int or v < 0:
        raise ValueError(f"expected a non-negative int, got {v!r}")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {v!r}")
    return v


def _bytes(v: Any) -> bytes:
    if not isinstance(v, bytes | bytearray):
        raise ValueError(f"expected bytes, got {type(v).__name__}")
    return bytes(v)


_MSG_TYPES = {int(t): t for t in MsgType}
_KINDS = {int(k): k for k in EntryKind}


def from_wire(d: dict[str, Any]) -> Message:
    """Decode what `to_wire` produced; raises ValueError on anything malformed, so the
    node can drop garbage from the network instead of crashing on it.

    This runs for every message a node receives, so the checks are table lookups and
    type tests rather than enum constructor calls."""
    if not isinstance(d, dict):
        raise ValueError(f"malformed raft message: not a map but {type(d).__name__}")
    try:
        entries: tuple[Entry, ...] = ()
        raw = d["entries"]
        if raw:
            out = []
            for i, t, k, data in raw:
                if type(i) is not int or type(t) is not int or i < 0 or t < 0 \
                        or type(data) is not bytes:
                    raise ValueError(f"bad entry {i!r}/{t!r}")
                out.append(Entry(i, t, _KINDS[k], data))
            entries = tuple(out)
        snap = d.get("snapshot")
        snapshot = None
        if snap is not None:
            si, st, sdata = snap
            snapshot = Snapshot(SnapshotMeta(_int(si), _int(st)), _bytes(sdata))
        reject = d["reject"]
        if not isinstance(reject, bool):
            raise ValueError("reject must be a bool")
        return Message(
            type=_MSG_TYPES[d["type"]],
            src=_str(d["from"]),
            dst=_str(d["to"]),
            term=_int(d["term"]),
            index=_int(d["index"]),
            log_term=_int(d["log_term"]),
            commit=_int(d["commit"]),
            entries=entries,
            reject=reject,
            reject_hint=_int(d["hint"]),
            snapshot=snapshot,
            read_seq=_int(d["read_seq"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed raft message: {exc!r}") from exc
