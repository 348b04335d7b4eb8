"""What a leader knows about its followers, and the majority arithmetic of Raft (etcd's
`tracker/` and `quorum/`).

Why apart from the role logic: flow control (probe, pipelined replicate, snapshot) is a
small state machine per follower with rules of its own, and "what does a majority hold"
is the one question commit, elections and ReadIndex all ask; each is easier to check
on its own than spread through the leader's message handlers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum


class ProgressState(Enum):
    PROBE = "probe"  # unsure where the follower's log matches: one APP per heartbeat
    REPLICATE = "replicate"  # matched: stream APPs optimistically (pipelining)
    SNAPSHOT = "snapshot"  # a snapshot is in flight: send nothing else


@dataclass(slots=True)
class Progress:
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


def committed_index(progress: Iterable[Progress], quorum: int) -> int:
    """The highest index that at least `quorum` peers (the leader included) durably hold.

    Only a candidate for commitment: Raft commits it by counting only if it is of the
    leader's own term (the caller's check)."""
    matches = sorted((pr.match for pr in progress), reverse=True)
    return matches[quorum - 1]


def vote_result(votes: dict[str, bool], voters: int, quorum: int) -> bool | None:
    """True once a quorum granted, False once a quorum can no longer grant, else None
    (keep waiting: the missing answers may still win it)."""
    granted = sum(1 for v in votes.values() if v)
    rejected = len(votes) - granted
    if granted >= quorum:
        return True
    if voters - rejected < quorum:
        return False
    return None


def read_confirmed(followers: Iterable[Progress], read_round: int, quorum: int) -> bool:
    """Whether a quorum (the leader, plus followers that answered a message of round
    `read_round` or later) still followed this leader after that read began."""
    return 1 + sum(1 for pr in followers if pr.read_ack >= read_round) >= quorum
