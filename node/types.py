"""Value types shared by the Raft core, storage and the node process.

They live apart from the core so that storage (WAL, snapshots) and the core agree on
one definition without importing each other; the byte encodings of these values are
owned by the storage modules, never by the core.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class EntryKind(IntEnum):
    """What an entry carries; only NORMAL entries carry a proposal payload."""

    NORMAL = 0
    NOOP = 1  # the empty entry a new leader appends at the start of its term


@dataclass(frozen=True, slots=True)
class Entry:
    """One Raft log entry; `data` is the proposal envelope (0x01 | id | payload) or b""."""

    index: int
    term: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before a node answers a vote or an append."""

    term: int = 0
    vote: str | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Position of a snapshot in the log: everything up to `index` is inside it."""

    index: int = 0
    term: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state-machine image; `data` is opaque to the core (the FSM and, later, keys)."""

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""
