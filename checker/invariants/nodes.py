"""A node's evidence as the invariants see it, read from its data dir or handed over in
memory (the simulator's nodes have no files).

Reading is separate from judging so that every invariant works on one `Node` shape
whichever way it came in, and so that a file that does not parse becomes an entry of
`errors` (the report is then invalid) rather than an exception halfway through a check.
The durable log is rebuilt here the way the node's own start-up would rebuild it (see
the package docstring: last record per index, minus truncations, minus a stale suffix a
snapshot marker replaced).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.encstate import decode_encryption_state
from node.events import read_events
from node.kv import snapshot_enc
from node.sidecar import Sidecar, SidecarError
from node.sidecar import load as load_sidecar
from node.snapshot import (
    SnapshotError,
    SnapshotFile,
    SnapshotHeader,
    SnapshotStore,
    read_snapshot_file,
)
from node.storage import SNAP_DIR, WAL_DIR
from node.types import Entry
from node.wal import RecordKind, TornTail, WalError, WalRecord, iter_records


@dataclass
class Node:
    """One node's evidence, whichever way it came in (`read_node`, `node_from_state`)."""

    name: str
    path: Path
    records: list[WalRecord] = field(default_factory=list)  # every entry record on disk
    log: dict[int, WalRecord] = field(default_factory=dict)  # the durable log
    torn: list[TornTail] = field(default_factory=list)
    commit: int = 0  # highest commit index of any hard-state record
    stale_dropped: int = 0
    sidecar: Sidecar | None = None
    snapshots: list[SnapshotFile] = field(default_factory=list)  # oldest first
    enc: dict[int, dict[str, Any] | None] = field(default_factory=dict)  # by snapshot index
    enc_errors: dict[int, str] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def rel(self, p: Path) -> str:
        try:
            return str(Path(p).relative_to(self.path))
        except ValueError:
            return str(p)


@dataclass
class NodeState:
    """What a node holds, handed over in memory (the simulator's nodes have no files):
    its durable log, its sidecar, its events and its latest snapshot's encryption blob."""

    entries: list[Entry]
    sidecar: Sidecar | None
    events: list[dict[str, Any]] = field(default_factory=list)
    snapshot_index: int = 0
    snapshot_encryption: bytes = b""
    snapshot_term: int = 0
    snapshot_data: bytes = b""  # the snapshot's data (image + encryption state), if any
    commit: int = 0


def read_node(name: str, path: Path) -> Node:
    """One node's data dir. A file that does not parse is an entry of `errors`, not an
    exception: the other nodes' evidence is still read and reported."""
    node = Node(name, path)
    try:
        for rec in iter_records(path / WAL_DIR, on_torn_tail=node.torn.append):
            _replay_record(node, rec)
    except WalError as e:
        node.errors.append(f"{name}: unreadable WAL: {e}")
    try:
        node.sidecar = load_sidecar(path)
    except SidecarError as e:
        node.errors.append(f"{name}: {e}")
    _read_snapshots(node, path)
    node.events = read_events(str(path))
    return node


def _replay_record(node: Node, rec: WalRecord) -> None:
    """Apply one WAL record to the durable log, as the node's start-up would."""
    log = node.log
    v = rec.value
    if rec.kind is RecordKind.ENTRY:
        assert isinstance(v, Entry)
        node.records.append(rec)
        log[v.index] = rec
    elif rec.kind is RecordKind.TRUNCATE:
        assert isinstance(v, int)
        for i in [i for i in log if i >= v]:
            del log[i]
    elif rec.kind is RecordKind.HARD_STATE:
        node.commit = max(node.commit, v.commit)  # type: ignore[union-attr]
    else:  # snapshot marker
        s, t = v.index, v.term  # type: ignore[union-attr]
        own = log.get(s)
        if own is None or own.value.term != t:  # type: ignore[union-attr]
            stale = [i for i in log if node.commit < i <= s]
            for i in stale:
                del log[i]
            node.stale_dropped += len(stale)


def _read_snapshots(node: Node, path: Path) -> None:
    for index, p in SnapshotStore(path / SNAP_DIR).files():
        try:
            snap = read_snapshot_file(p)
        except (SnapshotError, OSError) as e:
            node.errors.append(f"{node.name}: unreadable snapshot: {e}")
            continue
        node.snapshots.append(snap)
        try:
            node.enc[index] = decode_encryption_state(snap.header.encryption)
        except ValueError as e:
            node.enc[index] = None
            node.enc_errors[index] = str(e)


def node_from_state(name: str, st: NodeState) -> Node:
    """A node handed over in memory, in the shape `read_node` gives (no torn tails, no
    files: the byte scan has nothing of it to read)."""
    n = Node(name, Path(f"<memory:{name}>"))
    for e in st.entries:
        rec = WalRecord(n.path, 0, 0, RecordKind.ENTRY, e, 0)
        n.records.append(rec)
        n.log[e.index] = rec
    n.sidecar = st.sidecar
    n.events = list(st.events)
    n.commit = st.commit
    if st.snapshot_encryption:
        n.enc[st.snapshot_index] = decode_encryption_state(st.snapshot_encryption)
    if st.snapshot_index and st.snapshot_data:
        header = SnapshotHeader(st.snapshot_index, st.snapshot_term,
                                snapshot_enc(st.snapshot_data)[0], st.snapshot_encryption)
        n.snapshots.append(SnapshotFile(None, header, st.snapshot_data, 0, 0))
    return n
