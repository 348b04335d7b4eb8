"""A Raft peer's log: the latest snapshot, the entries after it, and which part of both
the host has made durable (etcd's raftLog with its `unstable`).

Why the stable/unstable split lives here: a Ready hands the host exactly the entries
(and the snapshot) not yet known durable, and a leader may count its own copy towards
commit only once it is. Truncation by a new leader can make entries that were handed
out for persisting obsolete before the host reports them durable; the log is the one
place that can tell which of them still stand.

Commit and applied indexes are not here: they belong to the role logic (`node.raft`),
which reads them on nearly every message.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from node.types import Entry, Snapshot, SnapshotMeta


def _entry_term(e: Entry) -> int:
    return e.term


class RaftLog:
    """Entries `offset + 1 ..` after `snapshot`; those <= `stable` are durable.

    `offset` is `snapshot.meta.index`, kept as a plain attribute because nearly every
    index computation needs it. `unstable_snapshot` is a snapshot received from a leader
    that the host has not persisted yet (it goes out in the next Ready).
    """

    __slots__ = ("snapshot", "offset", "ents", "stable", "unstable_snapshot")

    def __init__(self, snapshot: Snapshot, entries: Sequence[Entry]) -> None:
        expect = snapshot.meta.index + 1
        prev_term = snapshot.meta.term
        for e in entries:
            if e.index != expect or e.term < prev_term:
                raise ValueError(f"entries must follow the snapshot contiguously: {e}")
            expect += 1
            prev_term = e.term
        self.snapshot = snapshot
        self.offset = snapshot.meta.index
        self.ents: list[Entry] = list(entries)
        self.stable = self.offset + len(self.ents)  # what the host handed us is durable
        self.unstable_snapshot: Snapshot | None = None

    # ---------------------------------------------------------------- reading

    def last_index(self) -> int:
        return self.offset + len(self.ents)

    def last_term(self) -> int:
        return self.ents[-1].term if self.ents else self.snapshot.meta.term

    def term_at(self, index: int) -> int | None:
        """Term of the entry at `index`, or None if compacted away or beyond the log."""
        offset = self.offset
        if index == offset:
            return self.snapshot.meta.term
        if offset < index <= offset + len(self.ents):
            return self.ents[index - offset - 1].term
        return None

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Retained entries with lo <= index < hi (lo must be above the snapshot)."""
        base = self.offset
        if lo <= base:
            raise ValueError(f"entries below {base + 1} are compacted")
        return self.ents[lo - base - 1 : max(hi - base - 1, 0)]

    def batch_from(self, lo: int, max_bytes: int) -> tuple[Entry, ...]:
        """Entries from `lo` up to `max_bytes` of payload (at least one entry, if any)."""
        if lo > self.offset + len(self.ents):
            return ()
        ents = self.ents
        out: list[Entry] = []
        size = 0
        for pos in range(lo - self.offset - 1, len(ents)):  # no slice: the tail may be long
            e = ents[pos]
            size += len(e.data)
            if out and size > max_bytes:
                break
            out.append(e)
        return tuple(out)

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest i <= index whose term is <= `term`, with its term; (i, 0) if unknown.

        Terms never decrease along a log, so this is a binary search. Used on both sides
        of a rejection to skip a whole divergent term per round trip, not one entry.
        """
        snap = self.snapshot.meta
        index = min(index, self.offset + len(self.ents))
        if index < snap.index:
            return index, 0
        k = bisect_right(self.ents, term, hi=index - snap.index, key=_entry_term)
        if k > 0:
            return snap.index + k, self.ents[k - 1].term
        if snap.term <= term:
            return snap.index, snap.term
        return max(snap.index - 1, 0), 0

    def find_conflict(self, entries: Sequence[Entry]) -> int:
        """Position in `entries` of the first one this log lacks or holds with another
        term (-1: it holds them all). Entries inside the snapshot are skipped: they are
        committed, hence already ours."""
        base = self.offset
        for k, e in enumerate(entries):
            if e.index <= base:
                continue
            if self.term_at(e.index) != e.term:
                return k
        return -1

    def unstable_entries(self) -> list[Entry]:
        """Entries the host has not made durable yet, in log order."""
        return self.ents[max(self.stable - self.offset, 0) :]

    def has_unstable_entries(self) -> bool:
        return self.stable < self.offset + len(self.ents)

    def unstable_snapshot_index(self) -> int:
        return self.unstable_snapshot.meta.index if self.unstable_snapshot else 0

    # ---------------------------------------------------------------- changing

    def append(self, entries: Sequence[Entry]) -> None:
        """Append after the last entry (the leader's own proposals)."""
        self.ents.extend(entries)

    def truncate_and_append(self, entries: Sequence[Entry]) -> None:
        """Replace everything from `entries[0].index` on by `entries`; the replaced part
        is no longer durable (the host overwrites it with the next Ready)."""
        first = entries[0].index
        del self.ents[first - self.offset - 1 :]
        self.ents.extend(entries)
        self.stable = min(self.stable, first - 1)

    def restore(self, snap: Snapshot) -> None:
        """Replace the whole log by a leader's snapshot, to be persisted by the host."""
        self.snapshot = snap
        self.offset = snap.meta.index
        self.ents = []
        self.stable = snap.meta.index
        self.unstable_snapshot = snap

    def compact(self, index: int, data: bytes) -> Snapshot:
        """Drop entries <= `index` (durable ones only) behind a snapshot taken there."""
        base = self.offset
        if index <= base:
            return self.snapshot
        term = self.term_at(index)
        assert term is not None and index <= self.stable
        self.ents = self.ents[index - base :]
        self.snapshot = Snapshot(SnapshotMeta(index, term), bytes(data))
        self.offset = index
        return self.snapshot

    def stable_to(self, written: Sequence[Entry]) -> None:
        """The host made `written` durable. Entries truncated since they were handed out
        are not stable: only the part of `written` that still matches the log counts."""
        for e in reversed(written):
            if self.term_at(e.index) == e.term:
                self.stable = max(self.stable, e.index)
                break

    def snapshot_persisted(self, snap: Snapshot) -> None:
        """The host persisted `snap`; a newer one received meanwhile stays unstable."""
        if self.unstable_snapshot is snap:
            self.unstable_snapshot = None
