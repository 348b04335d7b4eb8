"""The Raft core's vocabulary: what its modules and its hosts share.

Why a module of its own: the core is split the way etcd-raft is (`node.raft` the role
logic, `node.raft_log`, `node.raft_progress`, `node.raft_ready`, `node.raft_wire`), and
each part needs these names without importing the others. Hosts import them from
`node.raft`, which re-exports everything here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum

from node.types import Entry, Snapshot

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
    # Not Raft: the elastickv profile's RegisterEncryptionWriter RPC (row 9), a follower
    # asking the leader to propose its writer registration, over the same switchboard
    # (so partitions and loss cut it like the gRPC call they stand for). The host takes
    # them before the core: `node/replica.py` `Replica.on_peer_rpc`.
    REG = 10  # entries = (the 0x03 payload,), index = request number
    REG_RESP = 11  # index = request number, reject = refused


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
