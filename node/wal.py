"""The write-ahead log: the only module that knows the WAL byte format.

Layout of a WAL directory::

    wal/00000001.wal, wal/00000002.wal, ...   (segments, replayed in sequence order)

Every segment starts with an 8-byte header ``b"CWAL" | version u16 BE | reserved u16``,
followed by records. A record is::

    length u32 BE | crc32 u32 BE | body (length bytes)

where ``crc32`` covers the four length bytes and the body, so a damaged length field is
caught as surely as damaged contents. ``body[0]`` is the record kind:

=============  ==========================================================================
kind           payload (after the kind byte; all integers big-endian)
=============  ==========================================================================
1 HARD_STATE   term u64 | commit u64 | vote_len u16 (0xFFFF = no vote) | vote utf-8
2 ENTRY        index u64 | term u64 | entry kind u8 | data (the rest, stored verbatim)
3 TRUNCATE     index u64: every entry at or above index is gone
4 SNAPSHOT     index u64 | term u64: a snapshot covers everything up to index
=============  ==========================================================================

One entry per ENTRY record, so the offline checker gets a byte offset for every entry and
can find each entry's data verbatim at ``WalRecord.data_offset``. A new segment restates
the hard state and the snapshot marker first, which is what lets old segments be deleted
after a snapshot without losing the vote.

Durability contract: ``append``/``set_hard_state``/``truncate_from``/``mark_snapshot``
only buffer; nothing is durable until ``sync()`` returns. The node must call ``sync()``
before acknowledging an append or granting a vote, and may batch many calls per sync
(group commit): one ``write`` and one ``fdatasync`` per batch.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from node.buggify import OFF, Buggify
from node.disk import REAL, Disk, DiskFile
from node.events import EventKind
from node.types import Entry, EntryKind, HardState, SnapshotMeta

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "FORMAT_VERSION",
    "MAX_RECORD_SIZE",
    "WAL",
    "RecordKind",
    "TornTail",
    "WalCorruptError",
    "WalError",
    "WalRecord",
    "WalState",
    "iter_entries",
    "iter_records",
    "segment_name",
]

FORMAT_VERSION = 1
SEGMENT_MAGIC = b"CWAL"
DEFAULT_SEGMENT_SIZE = 8 * 1024 * 1024
# A length above this cannot have been written by us; it also bounds the forward scan
# that tells a torn tail from mid-file corruption.
MAX_RECORD_SIZE = 64 * 1024 * 1024
# Buffered bytes beyond this are written out (not synced) early, to bound memory when a
# caller appends a lot between syncs.
_FLUSH_THRESHOLD = 1024 * 1024

_SEG_HEADER = struct.Struct(">4sHH")
SEGMENT_HEADER_SIZE = _SEG_HEADER.size
_SEG_HEADER_BYTES = _SEG_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0)
_REC_HEADER = struct.Struct(">II")
RECORD_HEADER_SIZE = _REC_HEADER.size
_ENTRY = struct.Struct(">BQQB")
_HARD_STATE = struct.Struct(">BQQH")
_TRUNCATE = struct.Struct(">BQ")
_SNAPSHOT = struct.Struct(">BQQ")
_NO_VOTE = 0xFFFF
_SEGMENT_RE = re.compile(r"^(\d{8,})\.wal$")


class RecordKind(IntEnum):
    """Record kinds; the values are part of the on-disk format and never change."""

    HARD_STATE = 1
    ENTRY = 2
    TRUNCATE = 3
    SNAPSHOT = 4


class WalError(Exception):
    """Base class of WAL failures, so callers can refuse to start on any of them."""


class WalCorruptError(WalError):
    """Damage that is not a torn tail: starting would silently lose acknowledged data."""

    def __init__(self, file: Path | str, offset: int, reason: str) -> None:
        self.file = Path(file)
        self.offset = offset
        self.reason = reason
        super().__init__(f"corrupt WAL record in {self.file} at byte offset {offset}: {reason}")


@dataclass(frozen=True, slots=True)
class TornTail:
    """An incomplete last record, left by a crash mid-write; it was never acknowledged."""

    file: Path
    offset: int  # where the bad record starts: the file is (or would be) cut here
    discarded: int  # how many bytes follow that offset

    def as_event(self) -> dict[str, object]:
        """The node logs this as its `torn-tail` event."""
        return {
            "kind": EventKind.TORN_TAIL,
            "file": str(self.file),
            "offset": self.offset,
            "discarded_bytes": self.discarded,
        }


@dataclass(frozen=True, slots=True)
class WalRecord:
    """One parsed record with its position, for recovery and for the offline checker.

    `value` is an Entry, HardState, SnapshotMeta (marker) or int (truncation index).
    `data_offset` is where an entry's data starts in `file` (None for other kinds), so a
    checker can relate byte-level findings to entries.
    """

    file: Path
    offset: int
    length: int  # whole record, header included
    kind: RecordKind
    value: Entry | HardState | SnapshotMeta | int
    data_offset: int | None = None


@dataclass(slots=True)
class WalState:
    """What replaying a WAL yields; the Storage facade reconciles it with snapshots."""

    hard_state: HardState | None = None
    snapshot: SnapshotMeta | None = None  # newest snapshot marker
    entries: list[Entry] = field(default_factory=list)  # after the marker, truncations applied
    torn_tail: TornTail | None = None
    segments: int = 0


def segment_name(seq: int) -> str:
    """Fixed-width names make lexical order equal replay order for humans and tools."""
    return f"{seq:08d}.wal"


# --------------------------------------------------------------------------- encoding


def _append_record(buf: bytearray, head: bytes, data: bytes = b"") -> int:
    """Frame into `buf` without concatenating `data` first; large payloads are copied once."""
    n = len(head) + len(data)
    if n > MAX_RECORD_SIZE:
        raise ValueError(f"WAL record of {n} bytes exceeds MAX_RECORD_SIZE")
    lb = n.to_bytes(4, "big")
    crc = zlib.crc32(data, zlib.crc32(head, zlib.crc32(lb)))
    buf += lb
    buf += crc.to_bytes(4, "big")
    buf += head
    buf += data
    return RECORD_HEADER_SIZE + n


def _encode_entry(buf: bytearray, e: Entry) -> int:
    return _append_record(buf, _ENTRY.pack(RecordKind.ENTRY, e.index, e.term, e.kind), e.data)


def _encode_hard_state(buf: bytearray, hs: HardState) -> int:
    if hs.vote is None:
        vote, vlen = b"", _NO_VOTE
    else:
        vote = hs.vote.encode()
        vlen = len(vote)
        if vlen >= _NO_VOTE:
            raise ValueError("vote id too long")
    return _append_record(
        buf, _HARD_STATE.pack(RecordKind.HARD_STATE, hs.term, hs.commit, vlen), vote
    )


def _encode_truncate(buf: bytearray, index: int) -> int:
    return _append_record(buf, _TRUNCATE.pack(RecordKind.TRUNCATE, index))


def _encode_snapshot(buf: bytearray, meta: SnapshotMeta) -> int:
    return _append_record(buf, _SNAPSHOT.pack(RecordKind.SNAPSHOT, meta.index, meta.term))


# --------------------------------------------------------------------------- decoding


class _BadRecord(Exception):
    """Internal: the record at an offset does not frame or check; caller decides torn vs corrupt."""


def _frame_ok(buf: memoryview, off: int, end: int) -> int | None:
    """Body length if a CRC-valid record starts at `off`, else None."""
    if end - off < RECORD_HEADER_SIZE:
        return None
    n, crc = _REC_HEADER.unpack_from(buf, off)
    if n == 0 or n > MAX_RECORD_SIZE or off + RECORD_HEADER_SIZE + n > end:
        return None
    start = off + RECORD_HEADER_SIZE
    if buf[start] not in _KINDS:
        return None
    if zlib.crc32(buf[start : start + n], zlib.crc32(buf[off : off + 4])) != crc:
        return None
    return n


_KINDS = frozenset(int(k) for k in RecordKind)


def _decode_body(
    path: Path, buf: memoryview, off: int, n: int
) -> tuple[RecordKind, Entry | HardState | SnapshotMeta | int, int | None]:
    """Parse a CRC-valid body; a malformed one is corruption (we never write such records)."""
    start = off + RECORD_HEADER_SIZE
    kind = buf[start]
    try:
        if kind == RecordKind.ENTRY:
            _, index, term, ekind = _ENTRY.unpack_from(buf, start)
            dstart = start + _ENTRY.size
            entry = Entry(index, term, EntryKind(ekind), bytes(buf[dstart : start + n]))
            return RecordKind.ENTRY, entry, dstart
        if kind == RecordKind.HARD_STATE:
            _, term, commit, vlen = _HARD_STATE.unpack_from(buf, start)
            vstart = start + _HARD_STATE.size
            if vlen == _NO_VOTE:
                vote = None
                if n != _HARD_STATE.size:
                    raise ValueError("trailing bytes after hard state")
            else:
                if n != _HARD_STATE.size + vlen:
                    raise ValueError("vote length does not match record length")
                vote = bytes(buf[vstart : vstart + vlen]).decode()
            return RecordKind.HARD_STATE, HardState(term, vote, commit), None
        if kind == RecordKind.TRUNCATE:
            if n != _TRUNCATE.size:
                raise ValueError("bad truncate record length")
            return RecordKind.TRUNCATE, _TRUNCATE.unpack_from(buf, start)[1], None
        if kind == RecordKind.SNAPSHOT:
            if n != _SNAPSHOT.size:
                raise ValueError("bad snapshot record length")
            _, index, term = _SNAPSHOT.unpack_from(buf, start)
            return RecordKind.SNAPSHOT, SnapshotMeta(index, term), None
    except (struct.error, ValueError, UnicodeDecodeError) as exc:
        raise WalCorruptError(path, off, f"malformed record body: {exc}") from exc
    raise WalCorruptError(path, off, f"unknown record kind {kind}")  # pragma: no cover


def _valid_record_after(buf: memoryview, start: int, end: int) -> bool:
    """Whether any CRC-valid record starts after a bad one.

    A crash can only leave garbage at the very end of what was being written, so valid
    data after a bad record means the bad record was damaged in place: corruption, not a
    torn tail. Only runs on the failure path, and most offsets are rejected by the length
    bound before any CRC is computed.
    """
    for off in range(start, end - RECORD_HEADER_SIZE):
        if _frame_ok(buf, off, end) is not None:
            return True
    return False


def _scan_segment(
    path: Path, data: bytes, is_last: bool
) -> tuple[list[WalRecord], TornTail | None]:
    """Parse one segment; raise on corruption, report (not fix) a torn tail."""
    size = len(data)
    if size < SEGMENT_HEADER_SIZE:
        if is_last and _SEG_HEADER_BYTES.startswith(data):
            return [], TornTail(path, 0, size)
        raise WalCorruptError(path, 0, f"segment shorter than its header ({size} bytes)")
    magic, version, reserved = _SEG_HEADER.unpack_from(data, 0)
    if magic != SEGMENT_MAGIC:
        raise WalCorruptError(path, 0, f"bad segment magic {magic!r}")
    if version != FORMAT_VERSION:
        raise WalCorruptError(path, 0, f"unsupported WAL format version {version}")
    if reserved != 0:  # we always write 0: any other value is a flipped bit
        raise WalCorruptError(path, 0, f"reserved header field is {reserved:#06x}, not 0")
    buf = memoryview(data)
    records: list[WalRecord] = []
    off = SEGMENT_HEADER_SIZE
    while off < size:
        n = _frame_ok(buf, off, size)
        if n is None:
            if not is_last:
                raise WalCorruptError(path, off, "bad record in a sealed (non-last) segment")
            if _valid_record_after(buf, off + 1, size):
                raise WalCorruptError(path, off, "bad record followed by valid records")
            return records, TornTail(path, off, size - off)
        kind, value, doff = _decode_body(path, buf, off, n)
        length = RECORD_HEADER_SIZE + n
        records.append(WalRecord(path, off, length, kind, value, doff))
        off += length
    return records, None


def _list_segments(wal_dir: Path, disk: Disk = REAL) -> list[tuple[int, Path]]:
    """Segments in replay order; a missing number in the middle is a lost file, not a gap."""
    if not disk.is_dir(wal_dir):
        return []
    segs = []
    for name in disk.listdir(wal_dir):
        m = _SEGMENT_RE.match(name)
        if m and disk.is_file(wal_dir / name):
            segs.append((int(m.group(1)), wal_dir / name))
    segs.sort()
    for (a, _), (b, pb) in zip(segs, segs[1:], strict=False):
        if b != a + 1:
            raise WalCorruptError(pb, 0, f"segment {segment_name(a + 1)} is missing")
    return segs


def iter_records(
    wal_dir: str | os.PathLike[str],
    *,
    on_torn_tail: Callable[[TornTail], None] | None = None,
    disk: Disk = REAL,
) -> Iterator[WalRecord]:
    """Read-only walk over every record of a WAL directory, in replay order.

    Never modifies files, so the offline checker can scan a node's WAL (even one that a
    live node is appending to). A torn tail ends the walk and is passed to
    `on_torn_tail`; anything worse raises WalCorruptError.
    """
    segs = _list_segments(Path(wal_dir), disk)
    for i, (_, path) in enumerate(segs):
        data = disk.read_bytes(path)
        records, torn = _scan_segment(path, data, is_last=i == len(segs) - 1)
        yield from records
        if torn is not None and on_torn_tail is not None:
            on_torn_tail(torn)


def iter_entries(
    wal_dir: str | os.PathLike[str],
    *,
    on_torn_tail: Callable[[TornTail], None] | None = None,
    disk: Disk = REAL,
) -> Iterator[WalRecord]:
    """Only the entry records (with file, offset and data_offset): what the checker scans.

    Yields every entry as written, including ones later truncated or compacted: the
    checker's question is about bytes on disk, not about the current log.
    """
    for rec in iter_records(wal_dir, on_torn_tail=on_torn_tail, disk=disk):
        if rec.kind is RecordKind.ENTRY:
            yield rec


# --------------------------------------------------------------------------- replay


class _Replay:
    """The log state machine shared by recovery and the writer's own argument checks.

    Keeping one implementation guarantees that whatever the writer accepts, replay
    accepts too, and vice versa.
    """

    __slots__ = ("hard_state", "marker", "entries", "last", "seen_entry", "keep_entries")

    def __init__(self) -> None:
        # The writer only needs positions; keeping entries is for recovery alone.
        self.keep_entries = True
        self.hard_state: HardState | None = None
        self.marker: SnapshotMeta | None = None
        self.entries: list[Entry] = []
        self.last: int | None = None  # index of the last entry, or of the marker
        self.seen_entry = False

    @property
    def base(self) -> int:
        return self.marker.index if self.marker else 0

    def check_entry(self, index: int) -> str | None:
        # The first entry of a replay may start anywhere: earlier segments may have been
        # deleted after a snapshot. Storage checks that it joins the snapshot.
        if self.seen_entry and self.last is not None and index != self.last + 1:
            return f"entry {index} does not follow {self.last}"
        return None

    def entry(self, e: Entry) -> None:
        if self.keep_entries and e.index > self.base:
            self.entries.append(e)
        self.last = e.index
        self.seen_entry = True

    def truncate(self, index: int) -> None:
        self._cut(index)
        if self.last is None or self.last >= index:
            self.last = index - 1

    def snapshot(self, meta: SnapshotMeta) -> None:
        if self.marker is None or meta.index >= self.marker.index:
            self.marker = meta
        if self.entries and self.entries[0].index <= meta.index:
            self.entries = [e for e in self.entries if e.index > meta.index]
        if self.last is None or self.last < meta.index:
            self.last = meta.index

    def _cut(self, index: int) -> None:
        if self.entries and self.entries[-1].index >= index:
            first = self.entries[0].index
            del self.entries[max(0, index - first) :]


# --------------------------------------------------------------------------- writer


@dataclass(slots=True)
class _Segment:
    seq: int
    path: Path
    max_index: int = 0  # highest entry index written into it; 0 = none


class WAL:
    """An open, writable WAL; create it with `WAL.open` (which recovers first)."""

    def __init__(self, wal_dir: Path, segment_size: int, disk: Disk = REAL) -> None:
        # Use WAL.open: construction alone leaves the WAL without a segment.
        self.dir = wal_dir
        self._disk = disk
        self._bg: Buggify = getattr(disk, "buggify", OFF)
        self.segment_size = segment_size
        self.recovered = WalState()
        self._segments: list[_Segment] = []
        self._file: DiskFile | None = None  # the last segment, open for appending
        self._size = 0
        self._buf = bytearray()
        self._buf_max_index = 0
        self._state = _Replay()  # including buffered records
        # As of the bytes already written to files: what a new segment must restate.
        self._file_hs: HardState | None = None
        self._file_marker: SnapshotMeta | None = None
        self._pending_hs: HardState | None = None
        self._pending_marker: SnapshotMeta | None = None
        self._dirty: list[DiskFile] = []  # files written since the last sync
        self._dir_dirty = False
        self._closed = False

    # ---- lifecycle

    @classmethod
    def open(
        cls,
        wal_dir: str | os.PathLike[str],
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        on_torn_tail: Callable[[TornTail], None] | None = None,
        disk: Disk = REAL,
    ) -> WAL:
        """Recover the directory (cutting a torn tail) and make it ready for appends.

        Raises WalCorruptError for damage anywhere but the tail, because starting on a
        log with a hole would silently forget acknowledged entries or votes.
        """
        wal = cls(Path(wal_dir), segment_size, disk)
        wal._recover(on_torn_tail)
        return wal

    def _recover(self, on_torn_tail: Callable[[TornTail], None] | None) -> None:
        disk = self._disk
        disk.makedirs(self.dir)
        segs = _list_segments(self.dir, disk)
        state = self._state
        torn: TornTail | None = None
        for i, (seq, path) in enumerate(segs):
            data = disk.read_bytes(path)
            records, torn = _scan_segment(path, data, is_last=i == len(segs) - 1)
            seg = _Segment(seq, path)
            for rec in records:
                if rec.kind is RecordKind.ENTRY:
                    e = rec.value
                    assert isinstance(e, Entry)
                    problem = state.check_entry(e.index)
                    if problem:
                        raise WalCorruptError(path, rec.offset, problem)
                    state.entry(e)
                    seg.max_index = max(seg.max_index, e.index)
                elif rec.kind is RecordKind.HARD_STATE:
                    assert isinstance(rec.value, HardState)
                    state.hard_state = rec.value
                elif rec.kind is RecordKind.TRUNCATE:
                    assert isinstance(rec.value, int)
                    state.truncate(rec.value)
                else:
                    assert isinstance(rec.value, SnapshotMeta)
                    state.snapshot(rec.value)
            self._segments.append(seg)
        self._file_hs = state.hard_state
        self._file_marker = state.marker
        self.recovered = WalState(
            hard_state=state.hard_state,
            snapshot=state.marker,
            entries=list(state.entries),
            torn_tail=torn,
            segments=len(segs),
        )
        state.entries = []
        state.keep_entries = False
        if torn is not None:
            self._cut_torn_tail(torn)
            if on_torn_tail is not None:
                on_torn_tail(torn)
        if self._segments:
            last = self._segments[-1]
            self._file = disk.open_append(last.path)
            self._size = self._file.size
            # What we just read may be only in the page cache: a process killed after a
            # write and before its fsync (or after creating a segment and before the
            # directory sync) leaves it readable, not durable. Make it durable before the
            # node answers anything from it, or a later power loss takes back votes and
            # entries it already promised (found by BUGGIFY: `wal.synced` kill, then a
            # power loss, lost a whole segment).
            self._file.sync()
            disk.sync_dir(self.dir)
        else:
            prev = segs[-1][0] if segs else 0
            self._create_segment(prev + 1)
            self.sync()

    def _cut_torn_tail(self, torn: TornTail) -> None:
        if torn.offset < SEGMENT_HEADER_SIZE:
            # Nothing but a partial header: the segment never held a record.
            self._disk.unlink(torn.file)
            self._disk.sync_dir(self.dir)
            self._segments.pop()
            return
        self._disk.truncate(torn.file, torn.offset)

    def close(self) -> None:
        """Sync and release the file; a WAL closed without this loses only unsynced data."""
        if self._closed:
            return
        self.sync()
        if self._file is not None:
            self._file.close()
            self._file = None
        self._closed = True

    def __enter__(self) -> WAL:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- buffered writes

    def append(self, entries: Iterable[Entry]) -> None:
        """Buffer entries; they must continue the log (use truncate_from for conflicts)."""
        self._check_open()
        state = self._state
        buf = self._buf
        for e in entries:
            problem = state.check_entry(e.index)
            if problem:
                raise ValueError(f"cannot append: {problem}")
            _encode_entry(buf, e)
            state.entry(e)
            if e.index > self._buf_max_index:
                self._buf_max_index = e.index
        self._maybe_flush()

    def set_hard_state(self, hs: HardState) -> None:
        """Buffer a new hard state; an unchanged one costs nothing (the core repeats it)."""
        self._check_open()
        if hs == self._state.hard_state:
            return
        _encode_hard_state(self._buf, hs)
        self._state.hard_state = hs
        self._pending_hs = hs
        self._maybe_flush()

    def truncate_from(self, index: int) -> None:
        """Buffer the removal of every entry at or above `index` (a conflicting suffix)."""
        self._check_open()
        if index <= self._state.base:
            raise ValueError(f"cannot truncate at {index}: covered by the snapshot marker")
        _encode_truncate(self._buf, index)
        self._state.truncate(index)
        self._maybe_flush()

    def mark_snapshot(self, meta: SnapshotMeta) -> None:
        """Buffer a snapshot marker; only after it is synced may `purge` drop segments."""
        self._check_open()
        if self._state.marker is not None and meta.index < self._state.marker.index:
            raise ValueError(
                f"snapshot marker {meta.index} is older than {self._state.marker.index}"
            )
        _encode_snapshot(self._buf, meta)
        self._state.snapshot(meta)
        self._pending_marker = meta
        self._maybe_flush()

    # ---- durability

    def sync(self) -> None:
        """Make everything appended so far durable; only then may the node acknowledge."""
        self._check_open()
        self._write_out()
        bg = self._bg
        for f in self._dirty:
            if bg.on:
                bg.hit("wal.written")
            f.sync()
            if bg.on:
                bg.hit("wal.synced")
        self._dirty.clear()
        if self._dir_dirty:
            self._sync_dir()
            self._dir_dirty = False

    def _sync_dir(self) -> None:
        bg = self._bg
        if bg.on:
            bg.hit("wal.dir.before")
        self._disk.sync_dir(self.dir)
        if bg.on:
            bg.hit("wal.dir.after")

    def purge(self, index: int) -> list[Path]:
        """Delete leading segments whose entries are all <= index; return the deleted paths.

        Syncs first, because the marker that makes the deletion safe must be durable
        before the entries disappear. The last segment is never deleted: it restates the
        hard state and marker that replay needs.
        """
        self._check_open()
        marker = self._state.marker
        if marker is None or index > marker.index:
            raise ValueError(f"cannot purge through {index}: no snapshot marker covers it")
        self.sync()
        deleted = []
        while len(self._segments) > 1 and self._segments[0].max_index <= index:
            seg = self._segments.pop(0)
            self._disk.unlink(seg.path)
            deleted.append(seg.path)
        if deleted:
            self._sync_dir()
        return deleted

    # ---- introspection

    @property
    def segments(self) -> list[Path]:
        """Current segment files, oldest first."""
        return [s.path for s in self._segments]

    @property
    def hard_state(self) -> HardState | None:
        """Latest hard state, buffered or not."""
        return self._state.hard_state

    @property
    def snapshot_marker(self) -> SnapshotMeta | None:
        """Latest snapshot marker, buffered or not."""
        return self._state.marker

    # ---- internals

    def _check_open(self) -> None:
        if self._closed:
            raise WalError("WAL is closed")

    def _maybe_flush(self) -> None:
        if len(self._buf) >= _FLUSH_THRESHOLD:
            self._write_out()

    def _write_out(self) -> None:
        if not self._buf:
            return
        if self._size >= self.segment_size:
            self._roll()
        assert self._file is not None
        self._file.write(self._buf)
        self._size += len(self._buf)
        if self._file not in self._dirty:
            self._dirty.append(self._file)
        seg = self._segments[-1]
        seg.max_index = max(seg.max_index, self._buf_max_index)
        if self._pending_hs is not None:
            self._file_hs = self._pending_hs
        if self._pending_marker is not None:
            self._file_marker = self._pending_marker
        self._buf = bytearray()
        self._buf_max_index = 0
        self._pending_hs = None
        self._pending_marker = None

    def _roll(self) -> None:
        # Seal the old segment durably first: replay treats damage in a non-last segment
        # as corruption, which is only sound if sealed segments are complete on disk.
        assert self._file is not None
        if self._bg.on:
            self._bg.hit("wal.written")
        self._file.sync()
        if self._bg.on:
            self._bg.hit("wal.synced")
        if self._file in self._dirty:
            self._dirty.remove(self._file)
        self._file.close()
        self._file = None
        self._create_segment(self._segments[-1].seq + 1)

    def _create_segment(self, seq: int) -> None:
        path = self.dir / segment_name(seq)
        head = bytearray(_SEG_HEADER_BYTES)
        if self._file_hs is not None:
            _encode_hard_state(head, self._file_hs)
        if self._file_marker is not None:
            _encode_snapshot(head, self._file_marker)
        f = self._disk.create(path)
        f.write(head)
        self._file = f
        self._size = len(head)
        self._segments.append(_Segment(seq, path))
        self._dirty.append(f)
        self._dir_dirty = True


def damage_entry(wal_dir: str | os.PathLike[str], index: int, bit: int = 0,
                 disk: Disk = REAL) -> WalRecord:
    """Flip one bit of the newest copy of entry `index`'s data and re-seal its record.

    A fault for the nemesis (the node must be stopped): the damage sits *under* the WAL's
    CRC, as a bad copy received from a peer or a flip in memory before the write would,
    so the WAL layer accepts the record and only the layer above (the envelope's
    authentication tag) can notice. `bit` counts from the end of the data (0 = the lowest
    bit of the last byte, inside an envelope's authentication tag), modulo its size.
    """
    found: WalRecord | None = None
    for rec in iter_entries(wal_dir, disk=disk):
        e = rec.value
        if isinstance(e, Entry) and e.index == index and e.data:
            found = rec
    if found is None or found.data_offset is None:
        raise WalError(f"no entry {index} with data in {wal_dir}")
    e = found.value
    assert isinstance(e, Entry)
    data = bytearray(e.data)
    pos = len(data) - 1 - (bit // 8) % len(data)
    data[pos] ^= 1 << (bit % 8)
    buf = bytearray()
    _append_record(buf, _ENTRY.pack(RecordKind.ENTRY, e.index, e.term, e.kind), bytes(data))
    if len(buf) != found.length:  # pragma: no cover - same sizes by construction
        raise WalError("re-sealed record changed size")
    disk.overwrite(found.file, found.offset, bytes(buf))
    return found
