"""The durable state of one node: the facade the node process uses over WAL and snapshots.

Data directory layout::

    <data_dir>/node-id          the owning node's id (one line); guards against mix-ups
    <data_dir>/LOCK             flock'ed while open: two processes must never share a WAL
    <data_dir>/wal/*.wal        the write-ahead log (format owned by node.wal)
    <data_dir>/snap/*.snap      snapshots (format owned by node.snapshot)
    <data_dir>/fsm/             elastickv profile only: the durable KV store (node.fsmstore)

Write order makes every crash point recoverable: a snapshot file is durable before the
WAL records its marker, and the marker is durable before segments are deleted. So on
start-up the newest snapshot file is never older than the WAL's marker, and when it is
newer (a crash between the two steps) recovery applies Raft's rule for an installed
snapshot: keep the entries after it only if the log agrees with it at its index.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from node.disk import REAL, Disk
from node.events import EventKind
from node.fsmstore import FsmStoreError
from node.raft_types import RaftPanic
from node.sidecar import SidecarError
from node.snapshot import SnapshotError, SnapshotHeader, SnapshotStore
from node.types import Entry, HardState, Snapshot, SnapshotMeta
from node.wal import DEFAULT_SEGMENT_SIZE, WAL, TornTail, WalError

__all__ = [
    "LOCK_FILE",
    "NODE_ID_FILE",
    "SNAP_DIR",
    "WAL_DIR",
    "DataDirLockedError",
    "InconsistentStorageError",
    "Storage",
    "StorageError",
    "WrongNodeError",
]

NODE_ID_FILE = "node-id"
LOCK_FILE = "LOCK"
WAL_DIR = "wal"
SNAP_DIR = "snap"


def storage_failure(e: BaseException) -> bool:
    """Whether a node died of its storage (a file that failed its checksum or its
    structure, a read the disk refused) rather than of a bug: the one answer both the
    node process and the simulator give, so each exits the same way
    (`node.events.EXIT_STORAGE`).

    A `RaftPanic` counts: the node's durable log contradicts the log the cluster
    committed, which correct Raft never reaches unless the node's storage lost a write
    it had reported durable (a lost write at a WAL's tail reads back as a torn tail, and
    a per-record checksum cannot tell them apart). The node stops instead of diverging:
    fail-closed on storage it cannot trust. The `crashes` checker excuses that only on a
    node a storage fault damaged; anywhere else it is still a finding."""
    if isinstance(e, SidecarError | SnapshotError | WalError | StorageError | RaftPanic
                  | FsmStoreError):
        return True
    return isinstance(e, OSError) and e.errno == errno.EIO


class StorageError(Exception):
    """Base class of the facade's own refusals (WAL and snapshot errors pass through)."""


class WrongNodeError(StorageError):
    """The data dir belongs to another node: starting would impersonate it in the cluster."""

    def __init__(self, data_dir: Path, expected: str, found: str) -> None:
        self.data_dir = data_dir
        self.expected = expected
        self.found = found
        super().__init__(
            f"data dir {data_dir} belongs to node {found!r}, refusing to open it as node {expected!r}"
        )


class DataDirLockedError(StorageError):
    """Another open Storage (likely a not-yet-dead process) holds the data dir."""


class InconsistentStorageError(StorageError):
    """WAL and snapshots disagree in a way no crash can produce: files were lost or mixed."""


class Storage:
    """Recovered durable state plus the methods that persist a Raft Ready batch.

    Writes are buffered until `sync()`; the node must call it before sending anything
    that depends on them (append acks, votes). `compact` and `apply_snapshot` write
    their snapshot file durably at once.
    """

    def __init__(
        self,
        data_dir: Path,
        node_id: str | None,
        wal: WAL,
        snapshots: SnapshotStore,
        lock: IO[bytes],
    ) -> None:
        # Use Storage.open, which recovers; this only wires the parts together.
        self.data_dir = data_dir
        self.node_id = node_id
        self._wal = wal
        self._snapshots = snapshots
        self._lock: IO[bytes] | None = lock
        self.hard_state = HardState()
        self.snapshot: Snapshot | None = None
        self.snapshot_header: SnapshotHeader | None = None
        self._entries: list[Entry] = []
        self.recovered_events: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        data_dir: str | os.PathLike[str],
        node_id: str | None = None,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        keep_snapshots: int = 2,
        disk: Disk = REAL,
    ) -> Storage:
        """Lock, check identity, and recover: newest snapshot, WAL entries after it, hard state.

        With `node_id` given, a fresh dir is stamped with it and a dir stamped with
        another id raises WrongNodeError; None skips the check (tools, not nodes).
        Raises WalCorruptError / SnapshotCorruptError / InconsistentStorageError rather
        than start on state that may have lost acknowledged writes or votes.
        """
        root = Path(data_dir)
        disk.makedirs(root)
        lock = _acquire_lock(root, disk)
        wal: WAL | None = None
        try:
            stamped = _check_identity(root, node_id, disk)
            snapshots = SnapshotStore(root / SNAP_DIR, keep=keep_snapshots, disk=disk)
            newest = snapshots.load_latest()
            # The names found may not be durable yet (a process killed after a rename,
            # before its directory sync): recovery relies on them, so make them so.
            if newest is not None:
                disk.sync_dir(root / SNAP_DIR)
            disk.sync_dir(root)
            torn: list[TornTail] = []
            wal = WAL.open(root / WAL_DIR, segment_size=segment_size, on_torn_tail=torn.append,
                           disk=disk)
            storage = cls(root, stamped, wal, snapshots, lock)
            storage._recover(
                newest.header if newest else None, newest.snapshot if newest else None, torn
            )
            snapshots.prune()  # leftover temp files and surplus snapshots
        except BaseException:
            if wal is not None:
                with contextlib.suppress(Exception):
                    wal.close()
            lock.close()
            raise
        return storage

    def _recover(
        self, header: SnapshotHeader | None, snap: Snapshot | None, torn: list[TornTail]
    ) -> None:
        state = self._wal.recovered
        for t in torn:
            self.recovered_events.append(t.as_event())
        s_index = header.index if header else 0
        s_term = header.term if header else 0
        marker = state.snapshot
        if marker is not None and marker.index > s_index:
            raise InconsistentStorageError(
                f"{self.data_dir}: the WAL records a snapshot at index {marker.index} "
                f"but the newest snapshot file is at index {s_index}: snapshot files are missing"
            )
        if marker is not None and marker.index == s_index and marker.term != s_term:
            raise InconsistentStorageError(
                f"{self.data_dir}: snapshot at index {s_index} has term {s_term}, "
                f"the WAL marker says term {marker.term}"
            )
        entries = state.entries
        conflict = False
        if entries:
            first, last = entries[0].index, entries[-1].index
            if first > s_index + 1:
                raise InconsistentStorageError(
                    f"{self.data_dir}: the WAL starts at entry {first} but the snapshot only "
                    f"covers up to {s_index}: entries {s_index + 1}..{first - 1} are lost"
                )
            if last < s_index:
                entries = []
            elif first <= s_index:
                # Only reachable when the snapshot file outran its WAL marker (crash).
                if entries[s_index - first].term != s_term:
                    conflict = True
                    self.recovered_events.append(
                        {
                            "kind": EventKind.LOG_DISCARDED,
                            "reason": "log disagrees with the newer snapshot",
                            "snapshot_index": s_index,
                            "entries": len(entries),
                        }
                    )
                    entries = []
                else:
                    entries = entries[s_index - first + 1 :]
        if s_index > 0 and (marker is None or marker.index < s_index):
            # Bring the WAL in line so its own replay matches ours next time.
            self._wal.mark_snapshot(SnapshotMeta(s_index, s_term))
            if conflict:
                self._wal.truncate_from(s_index + 1)
            self._wal.sync()
        self.snapshot = snap
        self.snapshot_header = header
        self._entries = entries
        self.hard_state = state.hard_state or HardState()
        hs = self.hard_state
        self.recovered_events.append(
            {
                "kind": EventKind.RECOVERY,
                "snapshot_index": s_index,
                "snapshot_term": s_term,
                "entries": len(entries),
                "first_index": self.first_index(),
                "last_index": self.last_index(),
                "term": hs.term,
                "vote": hs.vote,
                "commit": hs.commit,
                "segments": len(self._wal.segments),
                "torn_tail": bool(torn),
            }
        )

    # ------------------------------------------------------------------ reading

    @property
    def entries(self) -> list[Entry]:
        """Log entries after the snapshot, in order. Do not mutate: it is the live list."""
        return self._entries

    @property
    def wal(self) -> WAL:
        """The underlying WAL, for tests and diagnostics."""
        return self._wal

    def first_index(self) -> int:
        """Index of the first entry that is (or will be) in `entries`."""
        return self._snap_index() + 1

    def last_index(self) -> int:
        """Index of the last entry, or the snapshot's index when the log is empty."""
        return self._entries[-1].index if self._entries else self._snap_index()

    def term(self, index: int) -> int | None:
        """Term at `index`, or None when it is compacted away or beyond the log."""
        s = self._snap_index()
        if index == s:
            return self.snapshot.meta.term if self.snapshot else 0
        if index < s:
            return None
        i = index - s - 1
        return self._entries[i].term if i < len(self._entries) else None

    def _snap_index(self) -> int:
        return self.snapshot.meta.index if self.snapshot else 0

    # ------------------------------------------------------------------ writing

    def save_entries(self, entries: Sequence[Entry]) -> int:
        """Append, first cutting the conflicting suffix when the batch starts inside the log;
        returns how many entries were cut.

        Entries already covered by the snapshot are skipped (a leader may resend them).
        A batch that would leave a gap raises ValueError: that is a core bug, not I/O.
        """
        if not entries:
            return 0
        for a, b in zip(entries, entries[1:], strict=False):
            if b.index != a.index + 1:
                raise ValueError(f"entries not contiguous: {a.index} then {b.index}")
        s = self._snap_index()
        if entries[-1].index <= s:
            return 0
        if entries[0].index <= s:
            entries = entries[s - entries[0].index + 1 :]
        first = entries[0].index
        last = self.last_index()
        if first > last + 1:
            raise ValueError(f"gap: first new entry {first} after last index {last}")
        cut = 0
        if first <= last:
            cut = last - first + 1
            self._wal.truncate_from(first)
            del self._entries[first - s - 1 :]
        self._wal.append(entries)
        self._entries.extend(entries)
        return cut

    def set_hard_state(self, hs: HardState) -> None:
        """Buffer the hard state; durable (and safe to vote on) after `sync()`."""
        self._wal.set_hard_state(hs)
        self.hard_state = hs

    def apply_snapshot(
        self, snapshot: Snapshot, *, cutover: int = 0, encryption: bytes = b""
    ) -> None:
        """Install a snapshot received from the leader: it replaces the whole log.

        The file is durable on return; the WAL marker is durable after `sync()`. A crash
        in between is handled by recovery (the snapshot wins, the log is checked
        against it).
        """
        s = snapshot.meta.index
        if s <= self._snap_index():
            raise ValueError(
                f"snapshot at {s} is not newer than the current one at {self._snap_index()}"
            )
        self._snapshots.save(snapshot, cutover=cutover, encryption=encryption)
        had_suffix = self.last_index() > s
        self._wal.mark_snapshot(snapshot.meta)
        if had_suffix:
            self._wal.truncate_from(s + 1)
        self._set_snapshot(snapshot, cutover, encryption)
        self._entries = []

    def compact(self, snapshot: Snapshot, *, cutover: int = 0, encryption: bytes = b"") -> None:
        """Take a snapshot of our own log at snapshot.meta.index and drop what it covers.

        Syncs the WAL (a marker must be durable before segments go), so pending writes
        become durable too.
        """
        s = snapshot.meta.index
        if s <= self._snap_index():
            raise ValueError(
                f"snapshot at {s} is not newer than the current one at {self._snap_index()}"
            )
        if s > self.last_index():
            raise ValueError(f"cannot compact at {s}: the log ends at {self.last_index()}")
        if self.term(s) != snapshot.meta.term:
            raise ValueError(
                f"snapshot term {snapshot.meta.term} does not match the log's term {self.term(s)} at {s}"
            )
        self._snapshots.save(snapshot, cutover=cutover, encryption=encryption)
        self._wal.mark_snapshot(snapshot.meta)
        self._wal.purge(s)
        del self._entries[: s - self._snap_index()]
        self._set_snapshot(snapshot, cutover, encryption)

    def save_ready(
        self,
        *,
        hard_state: HardState | None = None,
        entries: Sequence[Entry] = (),
        snapshot: Snapshot | None = None,
        cutover: int = 0,
        encryption: bytes = b"",
        sync: bool = True,
    ) -> int:
        """Persist one Ready in the safe order (snapshot, entries, hard state), then sync;
        returns how many entries of a divergent suffix were cut."""
        if snapshot is not None:
            self.apply_snapshot(snapshot, cutover=cutover, encryption=encryption)
        cut = self.save_entries(entries)
        if hard_state is not None:
            self.set_hard_state(hard_state)
        if sync:
            self.sync()
        return cut

    def sync(self) -> None:
        """Everything saved so far is durable when this returns."""
        self._wal.sync()

    def close(self) -> None:
        """Sync, close the WAL and release the lock."""
        try:
            self._wal.close()
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _set_snapshot(self, snapshot: Snapshot, cutover: int, encryption: bytes) -> None:
        self.snapshot = snapshot
        self.snapshot_header = SnapshotHeader(
            snapshot.meta.index, snapshot.meta.term, cutover, encryption
        )


def _acquire_lock(root: Path, disk: Disk) -> IO[bytes]:
    """flock dies with the process, so a SIGKILLed node never leaves a stale lock behind."""
    try:
        return disk.lock(root / LOCK_FILE)
    except BlockingIOError:
        raise DataDirLockedError(f"data dir {root} is in use by another open Storage") from None


def _check_identity(root: Path, node_id: str | None, disk: Disk) -> str | None:
    path = root / NODE_ID_FILE
    if disk.exists(path):
        found = disk.read_bytes(path).decode("utf-8", "replace").strip()
        if node_id is not None and found != node_id:
            raise WrongNodeError(root, node_id, found)
        return found
    if node_id is None:
        return None
    if not node_id or "\n" in node_id:
        raise ValueError(f"invalid node id {node_id!r}")
    disk.write_atomic(path, f"{node_id}\n".encode())
    return node_id
