"""The elastickv profile's durable KV store: what stands in for elastickv's Pebble store,
and the only module that knows its byte format.

Why it exists (docs/protocol.md, row 7): elastickv's state machine keeps its own state
across a restart, with a durable applied index (`metaAppliedIndex`) written in the same
synced batch as every data mutation (`store/lsm_store.go` applyMutationsWithOpts
2370-2420, fsmSyncMode "sync" by default, resolveFSMApplyWriteOpts 165-173). At start-up
its engine replays only the entries above max(snapshot index, that index), so an
encryption entry below it is never applied again. The fixed profile rebuilds its map from
the snapshot and the log at every start and never opens this store.

Layout, in ``<data_dir>/fsm/``::

    base                   the image the journal starts from (replaced atomically)
    journal-<gen, 8 digits> the writes since that image, one record per apply

``base`` is ``b"CFSB" | version u16 | reserved u16 | gen u64 | index u64 | image_len
u64 | image | crc32 u32`` (big-endian; the CRC covers every byte before it); ``image``
is `node.kv.KV.snapshot`'s encoding of the map and ``index`` the durable applied index
it holds. A journal record is ``length u32 | crc32 u32 | body``, the CRC over the four
length bytes and the body (as `node.wal`'s records), and ``body`` is msgpack
``[index, [[key, value], ...]]``: the writes of one apply, and the applied index they
move the store to (0: they do not move it, as elastickv's writer-registry rows, written
synced without the meta key, `store/encryption_glue.go` SetRegistryRow 70-77).

Crash safety, step by step (every write goes through `node.disk`, so a power loss in
the simulator, a BUGGIFY point or a crash point sees each step):

* An apply appends one record and fsyncs the journal before the replica goes on. A
  crash leaves the record whole (durable), absent, or torn at the journal's end; a torn
  tail is cut on open, as Pebble's WAL recovery cuts a partial last record: the write
  it held was never reported durable.
* The journal's own name is made durable (directory fsync) when it is created, before
  its first record counts.
* Compaction (at a snapshot, or when an installed snapshot replaces the state) writes a
  new ``base`` with the next generation atomically (temp file, fsync, rename, directory
  fsync), then starts ``journal-<gen+1>``, then removes the old journal. A crash before
  the rename leaves the old base and its journal (the old state, whole); after it, the
  new base, and the old journal is a leftover of an older generation that open ignores
  and removes. A journal of a generation newer than the base cannot be left by a
  crash (it is created after the base's rename is durable): it is damage.
* Damage that no crash leaves (a bad record with valid records after it, a base that
  fails its CRC or its structure, a journal without its base) is refused by name,
  `FsmStoreCorruptError`: the node treats it as storage it cannot trust
  (`node.storage.storage_failure`), and a start on it fails rather than serve a map
  that may have lost acknowledged writes.
"""
from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path
from typing import Any

import msgpack

from node.buggify import OFF, Buggify
from node.disk import REAL, Disk, DiskFile
from node.events import EventKind

__all__ = ["FSM_DIR", "FsmStore", "FsmStoreCorruptError", "FsmStoreError"]

FSM_DIR = "fsm"
BASE_NAME = "base"
FORMAT_VERSION = 1
_BASE_MAGIC = b"CFSB"
_BASE_HEAD = struct.Struct(">4sHHQQQ")
_REC_HEAD = struct.Struct(">II")
_JOURNAL_RE = re.compile(r"^journal-(\d{8,})$")
MAX_RECORD_SIZE = 64 * 1024 * 1024


class FsmStoreError(Exception):
    """Base class of the store's refusals."""


class FsmStoreCorruptError(FsmStoreError):
    """Damage no crash leaves: opening would serve a map that lost acknowledged writes."""

    def __init__(self, file: Path | str, offset: int, reason: str) -> None:
        self.file = Path(file)
        self.offset = offset
        self.reason = reason
        super().__init__(f"corrupt FSM store file {self.file} at byte offset {offset}: "
                         f"{reason}")


def journal_name(gen: int) -> str:
    return f"journal-{gen:08d}"


def encode_base(gen: int, index: int, image: bytes) -> bytes:
    out = bytearray(_BASE_HEAD.pack(_BASE_MAGIC, FORMAT_VERSION, 0, gen, index, len(image)))
    out += image
    out += zlib.crc32(out).to_bytes(4, "big")
    return bytes(out)


def decode_base(path: Path, data: bytes) -> tuple[int, int, bytes]:
    """(gen, index, image) of a base file; FsmStoreCorruptError on anything else (it is
    replaced atomically, so no crash leaves it partial)."""
    if len(data) < _BASE_HEAD.size + 4:
        raise FsmStoreCorruptError(path, 0, f"base file of {len(data)} bytes is too short")
    if zlib.crc32(data[:-4]) != int.from_bytes(data[-4:], "big"):
        raise FsmStoreCorruptError(path, len(data) - 4, "base checksum does not match")
    magic, version, reserved, gen, index, n = _BASE_HEAD.unpack_from(data, 0)
    if magic != _BASE_MAGIC or version != FORMAT_VERSION or reserved != 0:
        raise FsmStoreCorruptError(path, 0, f"bad base header {data[:8]!r}")
    if _BASE_HEAD.size + n + 4 != len(data):
        raise FsmStoreCorruptError(path, 0, "base image length does not match the file")
    return gen, index, bytes(data[_BASE_HEAD.size:_BASE_HEAD.size + n])


def _record(index: int, writes: list[tuple[str, Any]]) -> bytes:
    body = msgpack.packb([index, [[k, v] for k, v in writes]], use_bin_type=True)
    lb = len(body).to_bytes(4, "big")
    return lb + zlib.crc32(body, zlib.crc32(lb)).to_bytes(4, "big") + body


def _frame(buf: bytes, off: int) -> int | None:
    """Body length if a CRC-valid record starts at `off`, else None."""
    if len(buf) - off < _REC_HEAD.size:
        return None
    n, crc = _REC_HEAD.unpack_from(buf, off)
    start = off + _REC_HEAD.size
    if n == 0 or n > MAX_RECORD_SIZE or start + n > len(buf):
        return None
    if zlib.crc32(buf[start:start + n], zlib.crc32(buf[off:off + 4])) != crc:
        return None
    return n


def _decode_body(path: Path, off: int, body: bytes) -> tuple[int, list[tuple[str, Any]]]:
    """A CRC-valid body that does not parse was never written by us: damage."""
    try:
        index, writes = msgpack.unpackb(body, raw=False)
        out = [(str(k), v) for k, v in writes]
        if not isinstance(index, int) or index < 0:
            raise ValueError(f"bad index {index!r}")
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise FsmStoreCorruptError(path, off, f"malformed record body: {e}") from None
    return index, out


def scan_journal(path: Path, data: bytes) -> tuple[list[tuple[int, list[tuple[str, Any]]]],
                                                    int | None]:
    """The records of a journal and where a torn tail starts (None: no torn tail). A bad
    record with a valid one after it is damage in place, not a tail a crash tore."""
    records = []
    off = 0
    while off < len(data):
        n = _frame(data, off)
        if n is None:
            if any(_frame(data, o) is not None for o in range(off + 1, len(data))):
                raise FsmStoreCorruptError(path, off, "bad record followed by valid records")
            return records, off
        start = off + _REC_HEAD.size
        records.append(_decode_body(path, off, data[start:start + n]))
        off = start + n
    return records, None


class FsmStore:
    """The durable map and its applied index (module docstring). Use `FsmStore.open`."""

    def __init__(self, root: Path, disk: Disk) -> None:
        self.dir = root
        self._disk = disk
        self._bg: Buggify = getattr(disk, "buggify", OFF)
        self.gen = 0
        self.applied_index = 0
        self.data: dict[str, Any] = {}
        self._journal: DiskFile | None = None
        self.recovered_events: list[dict[str, Any]] = []

    @classmethod
    def open(cls, data_dir: str | Path, disk: Disk = REAL) -> FsmStore:
        """Recover the store: the base, then its journal (a torn tail cut); a fresh dir
        gets an empty base at index 0. Raises FsmStoreCorruptError on damage."""
        store = cls(Path(data_dir) / FSM_DIR, disk)
        store._recover()
        return store

    def _recover(self) -> None:
        disk, d = self._disk, self.dir
        disk.makedirs(d)
        base = d / BASE_NAME
        journals = {}
        for name in disk.listdir(d):
            m = _JOURNAL_RE.match(name)
            if m and disk.is_file(d / name):
                journals[int(m.group(1))] = d / name
        if not disk.exists(base):
            if journals:
                raise FsmStoreCorruptError(base, 0, "journals without their base file")
            self._write_base(1, 0, msgpack.packb([], use_bin_type=True))
            return
        self.gen, self.applied_index, image = decode_base(base, disk.read_bytes(base))
        self.data = dict(msgpack.unpackb(image, raw=False)) if image else {}
        newer = [g for g in journals if g > self.gen]
        if newer:
            raise FsmStoreCorruptError(journals[min(newer)], 0,
                                       f"journal of generation {min(newer)} after a base of "
                                       f"generation {self.gen}")
        stale = [journals[g] for g in journals if g < self.gen]
        for p in stale:  # a compaction's leftovers: the base has their writes
            disk.unlink(p)
        if stale:
            disk.sync_dir(d)
        path = journals.get(self.gen)
        if path is None:
            return
        data = disk.read_bytes(path)
        records, torn = scan_journal(path, data)
        for index, writes in records:
            self.data.update(writes)
            self.applied_index = max(self.applied_index, index)
        if torn is not None:
            disk.truncate(path, torn)
            self.recovered_events.append({"kind": EventKind.TORN_TAIL, "file": str(path),
                                          "offset": torn,
                                          "discarded_bytes": len(data) - torn})
        self._journal = disk.open_append(path)
        # What was read may be only in the page cache (a process killed before its
        # fsync): make it durable before anything is served from it.
        self._journal.sync()
        disk.sync_dir(d)

    # ------------------------------------------------------------------ reading

    def image(self) -> bytes:
        """The map in `node.kv.KV.snapshot`'s encoding."""
        return msgpack.packb(sorted(self.data.items()), use_bin_type=True)

    # ------------------------------------------------------------------ writing

    def apply(self, writes: list[tuple[str, Any]], index: int = 0) -> None:
        """Persist one apply's writes, synced; `index` > 0 moves the durable applied index
        there in the same record (elastickv bundles metaAppliedIndex into the data
        mutation's batch), 0 leaves it (a registry row)."""
        if not writes and index <= self.applied_index:
            return
        self._append(_record(index, writes))
        self.data.update(writes)
        self.applied_index = max(self.applied_index, index)

    def set_durable_applied_index(self, index: int) -> None:
        """elastickv's SetDurableAppliedIndex (`store/lsm_store.go` 843-867): forward
        only, synced."""
        if index > self.applied_index:
            self.apply([], index)

    def reset(self, image: bytes, index: int) -> None:
        """Replace the whole state with `image` at `index` (an installed snapshot, or a
        compaction of the journal into a new base): crash-safe as the module docstring
        says."""
        old = self._journal
        old_path = self.dir / journal_name(self.gen)
        self._write_base(self.gen + 1, index, image)
        self.data = dict(msgpack.unpackb(image, raw=False)) if image else {}
        self.applied_index = index
        if old is not None:
            old.close()
            self._journal = None
        if self._disk.exists(old_path):
            self._disk.unlink(old_path)
            self._disk.sync_dir(self.dir)

    def compact(self) -> None:
        """Fold the journal into a new base (after a snapshot: the log behind it is gone,
        and so is any reason to keep replaying the journal from an older base)."""
        self.reset(self.image(), self.applied_index)

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def _write_base(self, gen: int, index: int, image: bytes) -> None:
        self._disk.write_atomic(self.dir / BASE_NAME, encode_base(gen, index, image))
        self.gen = gen

    def _append(self, rec: bytes) -> None:
        disk, bg = self._disk, self._bg
        if self._journal is None:
            self._journal = disk.create(self.dir / journal_name(self.gen))
            disk.sync_dir(self.dir)  # its name is durable before a record counts
        self._journal.write(rec)
        if bg.on:
            bg.hit("fsm.written")
        self._journal.sync()
        if bg.on:
            bg.hit("fsm.synced")
