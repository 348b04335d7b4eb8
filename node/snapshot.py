"""Snapshot files: the only module that knows the snapshot byte format.

A snapshot file ``snap/<index, 20 digits>.snap`` is::

    magic b"CSNP" | version u16 | flags u16 | index u64 | term u64 | cutover u64
    | encryption_len u32 | data_len u64            (44-byte fixed header, big-endian)
    | encryption (encryption_len bytes)           opaque: KEK-wrapped DEKs etc. (§6)
    | data (data_len bytes)                       the FSM image, opaque here
    | crc32 u32 over every byte before it

`cutover` and `encryption` exist from version 1 on so that adding the encryption state
later changes what the node puts there, not the format. Files are replaced atomically
(temp file, fsync, rename, fsync directory), so a crash leaves either the old set of
snapshots or the new one, plus at worst a ``*.tmp`` file that readers ignore.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from node.disk import REAL, Disk
from node.types import Snapshot, SnapshotMeta

__all__ = [
    "FORMAT_VERSION",
    "SnapshotCorruptError",
    "SnapshotError",
    "SnapshotFile",
    "SnapshotHeader",
    "SnapshotStore",
    "decode_snapshot",
    "encode_snapshot",
    "read_snapshot_file",
    "snapshot_name",
]

FORMAT_VERSION = 1
MAGIC = b"CSNP"
_HEADER = struct.Struct(">4sHHQQQIQ")
HEADER_SIZE = _HEADER.size
_CRC = struct.Struct(">I")
_NAME_RE = re.compile(r"^(\d{20})\.snap$")
TEMP_SUFFIX = ".tmp"


class SnapshotError(Exception):
    """Base class of snapshot failures."""


class SnapshotCorruptError(SnapshotError):
    """A committed snapshot file does not check; it names the file so an operator can act."""

    def __init__(self, file: Path | str, reason: str) -> None:
        self.file = Path(file)
        self.reason = reason
        super().__init__(f"corrupt snapshot file {self.file}: {reason}")


@dataclass(frozen=True, slots=True)
class SnapshotHeader:
    """Everything but the FSM data: what restore and the cutover checker look at first."""

    index: int
    term: int
    cutover: int = 0
    encryption: bytes = b""
    version: int = FORMAT_VERSION

    @property
    def meta(self) -> SnapshotMeta:
        return SnapshotMeta(self.index, self.term)


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    """A decoded snapshot with where its regions sit in the file (for byte-level scans)."""

    path: Path | None
    header: SnapshotHeader
    data: bytes
    encryption_offset: int
    data_offset: int

    @property
    def snapshot(self) -> Snapshot:
        return Snapshot(self.header.meta, self.data)


def snapshot_name(index: int) -> str:
    """Zero-padded so that name order is index order for humans and `ls`."""
    return f"{index:020d}.snap"


def encode_snapshot(snapshot: Snapshot, *, cutover: int = 0, encryption: bytes = b"") -> bytes:
    """Serialize; the CRC covers the header too, so a flipped index or cutover is caught."""
    head = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        0,
        snapshot.meta.index,
        snapshot.meta.term,
        cutover,
        len(encryption),
        len(snapshot.data),
    )
    crc = zlib.crc32(snapshot.data, zlib.crc32(encryption, zlib.crc32(head)))
    return b"".join((head, encryption, snapshot.data, _CRC.pack(crc)))


def decode_snapshot(raw: bytes, path: Path | None = None) -> SnapshotFile:
    """Parse and verify; every failure is a SnapshotCorruptError naming `path`."""
    where = path if path is not None else Path("<bytes>")
    if len(raw) < HEADER_SIZE + _CRC.size:
        raise SnapshotCorruptError(where, f"file too short ({len(raw)} bytes)")
    magic, version, _flags, index, term, cutover, enc_len, data_len = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise SnapshotCorruptError(where, f"bad magic {magic!r}")
    if version != FORMAT_VERSION:
        raise SnapshotCorruptError(where, f"unsupported snapshot format version {version}")
    expected = HEADER_SIZE + enc_len + data_len + _CRC.size
    if expected != len(raw):
        raise SnapshotCorruptError(
            where, f"length mismatch: header says {expected} bytes, file has {len(raw)}"
        )
    body = memoryview(raw)[: len(raw) - _CRC.size]
    (crc,) = _CRC.unpack_from(raw, len(raw) - _CRC.size)
    if zlib.crc32(body) != crc:
        raise SnapshotCorruptError(where, "CRC mismatch")
    enc_off = HEADER_SIZE
    data_off = enc_off + enc_len
    header = SnapshotHeader(index, term, cutover, bytes(raw[enc_off:data_off]), version)
    return SnapshotFile(path, header, bytes(raw[data_off : data_off + data_len]), enc_off, data_off)


def read_snapshot_file(path: str | os.PathLike[str], disk: Disk = REAL) -> SnapshotFile:
    """Read-only decode of one file, for restore and for the offline checker."""
    p = Path(path)
    snap = decode_snapshot(disk.read_bytes(p), p)
    m = _NAME_RE.match(p.name)
    if m and int(m.group(1)) != snap.header.index:
        raise SnapshotCorruptError(
            p, f"file name says index {int(m.group(1))}, header says {snap.header.index}"
        )
    return snap


class SnapshotStore:
    """The snapshot directory of one node: save atomically, load newest, keep a few."""

    def __init__(self, directory: str | os.PathLike[str], *, keep: int = 2,
                 disk: Disk = REAL) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.dir = Path(directory)
        self.keep = keep
        self.disk = disk

    def ensure_dir(self) -> None:
        """Create the directory durably (the parent entry must survive a crash too)."""
        self.disk.makedirs(self.dir)

    def files(self) -> list[tuple[int, Path]]:
        """Committed snapshot files as (index, path), oldest first; temp files excluded."""
        if not self.disk.is_dir(self.dir):
            return []
        out = []
        for name in self.disk.listdir(self.dir):
            m = _NAME_RE.match(name)
            if m and self.disk.is_file(self.dir / name):
                out.append((int(m.group(1)), self.dir / name))
        out.sort()
        return out

    def load_latest(self) -> SnapshotFile | None:
        """The newest snapshot, or None.

        A corrupt newest file raises instead of falling back to an older one: the WAL
        segments between the two may already be deleted, so a fallback would silently
        forget committed entries.
        """
        files = self.files()
        if not files:
            return None
        return read_snapshot_file(files[-1][1], self.disk)

    def save(self, snapshot: Snapshot, *, cutover: int = 0, encryption: bytes = b"") -> Path:
        """Write durably; when this returns the file survives a crash. Then prune."""
        self.ensure_dir()
        path = self.dir / snapshot_name(snapshot.meta.index)
        self.disk.write_atomic(path, encode_snapshot(snapshot, cutover=cutover,
                                                     encryption=encryption),
                               temp_suffix=TEMP_SUFFIX)
        self.prune()
        return path

    def prune(self) -> list[Path]:
        """Delete all but the newest `keep` snapshots and any leftover temp files.

        Keeping more than one leaves an operator (and the checker) something to compare
        against if the newest turns out damaged.
        """
        deleted: list[Path] = []
        if not self.disk.is_dir(self.dir):
            return deleted
        for name in self.disk.listdir(self.dir):
            if name.endswith(TEMP_SUFFIX):
                self.disk.unlink(self.dir / name)
                deleted.append(self.dir / name)
        files = self.files()
        for _, p in files[: max(0, len(files) - self.keep)]:
            self.disk.unlink(p)
            deleted.append(p)
        if deleted:
            self.disk.sync_dir(self.dir)
        return deleted
