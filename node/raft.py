"""Raft consensus as a pure, deterministic state machine (etcd-raft style).

Why pure: the same core runs inside the real node process (ZeroMQ, a WAL on disk) and
inside the seeded simulator (`tests/simkit/raftsim.py`), so a schedule that breaks it in
simulation replays bit for bit. The core owns no socket, no file, no clock and no global
randomness: time is `tick()`, input is `step(msg)`, `propose(data)` and `read_index(ctx)`,
and every effect is handed back to the host in a `Ready`.

The Ready contract (the same as etcd-raft's; breaking it breaks Raft, not only this code):

1. When `node.has_ready()`, take `rd = node.ready()`. At most one Ready is outstanding:
   `ready()` raises until the previous one was passed to `advance()`.
2. Send `rd.messages` now, before persisting: the core put there only messages that
   promise nothing about this node's disk (a leader's APP, HEARTBEAT and SNAP; Raft
   thesis §10.2.1), so the leader's fsync overlaps its followers'. The leader counts
   its own entries towards commit only after `advance`, i.e. once they are durable.
3. Persist, in this order: `rd.snapshot` if any (it replaces the whole stored log and the
   stored snapshot), then `rd.entries` (first drop every stored entry whose index is
   >= `rd.entries[0].index`, then append), then `rd.hard_state` if not None. If
   `rd.must_sync`, fsync before going on.
4. Only then send `rd.messages_after_persist` (votes, vote requests, every response).
   A vote or an append acknowledgement is a promise that the state behind it is
   durable: sent before the fsync, a crash can break that promise (two votes in one
   term, or an acknowledged entry missing from the quorum that committed it). The core
   sorts every message into one of the two lists; a host never looks at message types.
   A host may also send both lists after the persist (later is always safe).
5. Restore the state machine from `rd.snapshot` if any, then apply
   `rd.committed_entries` in order. `rd.read_states` are released linearizable reads:
   answer each once the local applied index is >= its `index`.
6. Call `node.advance(rd)`: it marks the entries stable and the committed entries applied.

Restart: build a `RaftNode` from what step 3 persisted (hard state, the latest snapshot,
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

Layout, split as etcd-raft is; hosts import every name from this module:
- `node.raft` (here): `RaftNode`'s role logic: step, tick, campaigns, leader, follower.
- `node.raft_ready`: `Ready`, and `has_ready`/`ready`/`advance` (etcd's RawNode).
- `node.raft_log`: `RaftLog`, the snapshot, the entries and their stable/unstable split.
- `node.raft_progress`: a leader's `Progress` per follower, and the quorum arithmetic.
- `node.raft_types`: messages, roles, `Config`, errors; `node.raft_wire`: the wire format.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from node.buggify import OFF, Buggify
from node.raft_log import RaftLog
from node.raft_progress import (
    Progress,
    ProgressState,
    committed_index,
    read_confirmed,
    vote_result,
)
from node.raft_ready import Ready, ReadyAssembly
from node.raft_types import (
    BUG_COMMIT_OLD_TERM,
    KNOWN_BUGS,
    Config,
    Message,
    MsgType,
    NotLeader,
    RaftPanic,
    ReadState,
    Role,
)
from node.raft_wire import from_wire, to_wire
from node.types import Entry, EntryKind, HardState, Snapshot

__all__ = [
    "BUG_COMMIT_OLD_TERM",
    "KNOWN_BUGS",
    "Config",
    "Message",
    "MsgType",
    "NotLeader",
    "ProgressState",
    "RaftNode",
    "RaftPanic",
    "ReadState",
    "Ready",
    "Role",
    "from_wire",
    "to_wire",
]


class RaftNode(ReadyAssembly):
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
        buggify: Buggify = OFF,
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
        self._bg = buggify  # `raft.*` points: legal, unusual paths (node/buggify.py)

        hs = hard_state or HardState()
        snap = snapshot or Snapshot()
        self._log = RaftLog(snap, entries)
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
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._ready_out = False

        self._role = Role.FOLLOWER
        self._leader: str | None = None
        self._elapsed = 0
        self._timeout = self._random_timeout()
        self._hb_elapsed = 0
        self._votes: dict[str, bool] = {}
        self._prs: dict[str, Progress] = {}
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
        return self._log.offset

    @property
    def snapshot_term(self) -> int:
        return self._log.snapshot.meta.term

    @property
    def snapshot(self) -> Snapshot:
        """The latest snapshot (taken by `compact` or received); index 0 = none yet."""
        return self._log.snapshot

    @property
    def last_index(self) -> int:
        return self._log.last_index()

    @property
    def last_term(self) -> int:
        return self._log.last_term()

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
        return self._log.term_at(index)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Retained entries with lo <= index < hi (lo must be above the snapshot)."""
        return self._log.slice(lo, hi)

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
            # Without PreVote a stale candidate raises voters' terms (a grant may follow).
            self._campaign(pre=self._cfg.pre_vote and not (
                self._bg.on and self._bg.hit("raft.skip-prevote") == "skip"))
        elif (self._role is not Role.FOLLOWER and self._bg.on
              and self._bg.hit("raft.vote-resend") == "resend"):
            # Ask whoever has not granted again: an answer may have been lost.
            pre = self._role is Role.PRE_CANDIDATE
            self._ask_votes(MsgType.PRE_VOTE if pre else MsgType.VOTE,
                            self._term + 1 if pre else self._term,
                            [p for p in self._others if not self._votes.get(p)])

    def propose(self, data: bytes) -> int:
        """Append `data` as a new entry; returns its index. Raises NotLeader.

        The entry is only committed when a later Ready hands it back in
        `committed_entries` with this same term; a new leader may overwrite it.
        """
        if self._role is not Role.LEADER:
            raise NotLeader(self._leader)
        index = self._log.last_index() + 1
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
        return self._log.compact(index, data)

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
        self._ask_votes(kind, vote_term, self._others)

    def _ask_votes(self, kind: MsgType, vote_term: int, to: Iterable[str]) -> None:
        last_index, last_term = self._log.last_index(), self._log.last_term()
        for p in to:
            self._msgs.append(
                Message(kind, self.id, p, vote_term, index=last_index, log_term=last_term)
            )

    def _poll_result(self) -> bool | None:
        return vote_result(self._votes, len(self._peers), self._quorum)

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
        last = self._log.last_index()
        self._prs = {p: Progress(match=0, next=last + 1) for p in self._peers}
        self._prs[self.id].match = min(self._log.stable, last)
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
            self._commit_to(min(m.commit, self._log.last_index()))
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
        log = self._log
        hint, hint_term = log.find_conflict_by_term(min(m.index, log.last_index()), m.log_term)
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
        # Entries we already hold stay: a stale or duplicate APP must never truncate.
        k = self._log.find_conflict(entries)
        if k < 0:
            return
        e = entries[k]
        if e.index <= self._commit:
            raise RaftPanic(
                f"{self.id}: entry {e.index} conflicts with the committed log "
                f"(commit {self._commit})"
            )
        self._log.truncate_and_append(entries[k:])

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        if snap is None:
            return
        meta = snap.meta
        if meta.index <= self._commit:
            self._send(MsgType.APP_RESP, m.src, index=self._commit)
            return
        if self._log.term_at(meta.index) == meta.term:
            # We hold the snapshot's last entry, hence its whole prefix: just commit.
            self._commit_to(meta.index)
            self._send(MsgType.APP_RESP, m.src, index=self._commit)
            return
        self._log.restore(snap)
        self._commit = meta.index
        self._send(MsgType.APP_RESP, m.src, index=meta.index)

    def _commit_to(self, index: int) -> None:
        if index <= self._commit:
            return
        assert index <= self._log.last_index(), (index, self._log.last_index())
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
            if pr.match < self._log.last_index():
                # Also how lost APPs get noticed: an APP past the follower's log is
                # rejected, which drops the follower back to probing.
                self._maybe_send_append(m.src, send_if_empty=True)
            if m.read_seq > pr.read_ack:
                pr.read_ack = m.read_seq
                self._release_reads()

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        if m.read_seq > pr.read_ack:
            # An answer in our term to an APP sent after read round r started proves,
            # like a heartbeat answer, that this follower still follows us.
            pr.read_ack = m.read_seq
            self._release_reads()
        if m.reject:
            next_probe = m.reject_hint
            if m.log_term > 0:
                next_probe, _ = self._log.find_conflict_by_term(m.reject_hint, m.log_term)
            if pr.maybe_decr_to(m.index, next_probe):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                lo = max(pr.match + 1, self._log.offset + 1)
                if (lo < pr.next and self._bg.on
                        and self._bg.hit("raft.probe-back") == "back"):
                    # Any next above the match is correct (the paper backs off by one).
                    pr.next = self._rng.randint(lo, pr.next - 1)
                self._maybe_send_append(m.src, send_if_empty=True)
            return
        if not pr.maybe_update(m.index):
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT:
            snapshot_index = self._log.offset
            if pr.match >= pr.pending_snapshot or pr.match >= snapshot_index:
                pr.become_probe()
                if pr.match >= snapshot_index:
                    pr.become_replicate()
        else:
            pr.free_to(m.index)
        self._maybe_commit()
        self._flush_append = True

    def _append_as_leader(self, entries: list[Entry]) -> None:
        # The leader's own copy counts towards commit only once it is durable (see
        # `advance`): that is what lets the host send APPs before its own fsync.
        self._log.append(entries)
        self._prs[self.id].next = self._log.last_index() + 1

    def _leader_log_durable(self, stable: int) -> None:
        me = self._prs[self.id]
        if stable > me.match:
            me.match = stable
            if self._maybe_commit():
                self._flush_append = True  # tell the followers the new commit index

    def _maybe_commit(self) -> bool:
        n = committed_index(self._prs.values(), self._quorum)
        if n <= self._commit:
            return False
        # Raft's commit rule (paper §5.4.2): counting replicas is only proof of
        # commitment for an entry of the leader's own term (Figure 8 shows why).
        if self._log.term_at(n) != self._term and BUG_COMMIT_OLD_TERM not in self._bugs:
            return False
        self._commit_to(n)
        return True

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

    def _maybe_send_append(self, to: str, *, send_if_empty: bool) -> bool:
        pr = self._prs[to]
        if pr.paused(self._cfg.max_inflight):
            return False
        log = self._log
        prev = pr.next - 1
        prev_term = log.term_at(prev)
        if prev_term is None:
            if prev > log.last_index():  # cannot happen; keep the invariant next <= last+1
                pr.next = log.last_index() + 1
                return False
            snap = log.snapshot
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
        ents = log.batch_from(pr.next, self._cfg.max_msg_bytes)
        least = 0 if send_if_empty else 1
        if len(ents) > least and self._bg.on and self._bg.hit("raft.append-short") == "short":
            # A smaller batch (none on a probe): the follower's log beyond it stays.
            ents = ents[: self._rng.randint(least, min(len(ents) - 1, 2))]
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
        match_term = self._log.term_at(pr.match)
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
            if not read_confirmed((self._prs[p] for p in self._others), seq, self._quorum):
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
        self._msgs.append(Message(kind, self.id, to, self._term, index=index, log_term=log_term,
                                  reject=reject, reject_hint=reject_hint, read_seq=read_seq))
