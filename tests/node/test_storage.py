"""Durable storage: WAL, snapshots and the Storage facade, on real files with real fsync."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from node.snapshot import (
    HEADER_SIZE,
    SnapshotCorruptError,
    SnapshotStore,
    decode_snapshot,
    encode_snapshot,
    read_snapshot_file,
    snapshot_name,
)
from node.storage import (
    SNAP_DIR,
    WAL_DIR,
    DataDirLockedError,
    InconsistentStorageError,
    Storage,
    WrongNodeError,
)
from node.types import Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from node.wal import (
    WAL,
    RecordKind,
    TornTail,
    WalCorruptError,
    iter_entries,
    iter_records,
    segment_name,
)

REPO = Path(__file__).resolve().parents[2]


def entry(index: int, term: int = 1, size: int = 0) -> Entry:
    """A proposal-envelope-shaped entry whose data is unique per (index, term)."""
    payload = f"value-{index}-t{term}".encode() + b"x" * size
    return Entry(index, term, EntryKind.NORMAL, b"\x01" + index.to_bytes(8, "big") + payload)


def entries(lo: int, hi: int, term: int = 1, size: int = 0) -> list[Entry]:
    return [entry(i, term, size) for i in range(lo, hi + 1)]


def state_of(s: Storage) -> tuple:
    return (s.hard_state, s.snapshot, s.snapshot_header, list(s.entries))


def only_segment(wal_dir: Path) -> Path:
    segs = sorted(wal_dir.glob("*.wal"))
    assert len(segs) == 1
    return segs[0]


# --------------------------------------------------------------------------- WAL


def test_wal_roundtrip_and_reader_reports_verbatim_data(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    hs = HardState(term=3, vote="n2", commit=4)
    with WAL.open(d) as wal:
        wal.append(entries(1, 5))
        wal.set_hard_state(hs)
        wal.append([Entry(6, 3, EntryKind.NOOP)])
        wal.sync()
    wal = WAL.open(d)
    assert wal.recovered.entries == [*entries(1, 5), Entry(6, 3, EntryKind.NOOP)]
    assert wal.recovered.hard_state == hs
    assert wal.recovered.torn_tail is None
    wal.close()

    seg = only_segment(d)
    raw = seg.read_bytes()
    recs = list(iter_entries(d))
    assert [r.value.index for r in recs] == [1, 2, 3, 4, 5, 6]
    for r in recs:
        assert r.file == seg and r.kind is RecordKind.ENTRY
        data = r.value.data
        assert raw[r.data_offset : r.data_offset + len(data)] == data  # verbatim on disk
    assert [r.offset for r in recs] == sorted(r.offset for r in recs)
    # the reader sees the hard state too, and never writes
    kinds = [r.kind for r in iter_records(d)]
    assert kinds.count(RecordKind.HARD_STATE) == 1
    assert seg.read_bytes() == raw


def test_one_write_per_synced_batch(tmp_path: Path) -> None:
    """Group commit: many appends and a hard state cost one write syscall at sync."""
    wal = WAL.open(tmp_path / "wal")
    real = wal._file
    writes: list[int] = []

    class Counting:
        def write(self, b: memoryview) -> int:
            writes.append(len(b))
            return real.write(b)

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

    wal._file = Counting()  # type: ignore[assignment]
    for i in range(1, 101):
        wal.append([entry(i)])
    wal.set_hard_state(HardState(1, "n1", 50))
    assert writes == []  # buffered, nothing written yet
    wal.sync()
    assert len(writes) == 1
    wal._file = real
    wal.close()
    assert len(WAL.open(tmp_path / "wal").recovered.entries) == 100


@pytest.mark.parametrize("last_kind", ["entry", "hard_state"])
def test_torn_tail_cut_at_every_byte_of_last_record(tmp_path: Path, last_kind: str) -> None:
    src = tmp_path / "src"
    hs1 = HardState(2, "n1", 3)
    with WAL.open(src) as wal:
        wal.append(entries(1, 5, size=20))
        wal.set_hard_state(hs1)
        if last_kind == "entry":
            wal.append([entry(6, 2, size=20)])
        else:
            wal.set_hard_state(HardState(3, None, 5))
        wal.sync()
    seg = only_segment(src)
    raw = seg.read_bytes()
    last = list(iter_records(src))[-1]
    assert last.offset + last.length == len(raw)

    for cut in range(last.offset + 1, len(raw)):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / seg.name).write_bytes(raw[:cut])
        seen: list[TornTail] = []
        wal = WAL.open(d, on_torn_tail=seen.append)
        rec = wal.recovered
        assert rec.entries == entries(1, 5, size=20), cut
        assert rec.hard_state == hs1, cut
        assert rec.torn_tail == TornTail(d / seg.name, last.offset, cut - last.offset)
        assert seen == [rec.torn_tail]
        assert (d / seg.name).stat().st_size == last.offset  # the tail is cut on disk
        wal.append([entry(6, 9)])  # and the log continues where the good data ended
        wal.close()
        again = WAL.open(d)
        assert again.recovered.torn_tail is None
        assert again.recovered.entries == [*entries(1, 5, size=20), entry(6, 9)]
        again.close()


def test_zero_filled_tail_is_torn_not_corrupt(tmp_path: Path) -> None:
    """A crash can leave a file extended with zeros after its last record."""
    d = tmp_path / "wal"
    with WAL.open(d) as wal:
        wal.append(entries(1, 3))
    seg = only_segment(d)
    good = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(b"\0" * 4096)
    wal = WAL.open(d)
    assert wal.recovered.entries == entries(1, 3)
    assert wal.recovered.torn_tail is not None and wal.recovered.torn_tail.offset == good
    wal.close()


def test_storage_reports_torn_tail_event(tmp_path: Path) -> None:
    with Storage.open(tmp_path, "n1") as s:
        s.save_entries(entries(1, 4))
        s.sync()
    seg = only_segment(tmp_path / WAL_DIR)
    size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(b"\x00\x00\x00\x30garbage")  # a record header promising more than exists
    with Storage.open(tmp_path, "n1") as s:
        assert s.entries == entries(1, 4)
        torn = [e for e in s.recovered_events if e["kind"] == "torn-tail"]
        assert torn == [
            {"kind": "torn-tail", "file": str(seg), "offset": size, "discarded_bytes": 11}
        ]
        rec = [e for e in s.recovered_events if e["kind"] == "recovery"]
        assert rec and rec[0]["entries"] == 4 and rec[0]["torn_tail"] is True


def test_corrupt_middle_record_refuses_at_every_byte(tmp_path: Path) -> None:
    src = tmp_path / "src"
    with WAL.open(src) as wal:
        wal.append(entries(1, 6, size=10))
        wal.set_hard_state(HardState(1, "n1", 2))
    seg = only_segment(src)
    raw = seg.read_bytes()
    mid = [r for r in iter_records(src) if r.kind is RecordKind.ENTRY][2]

    for pos in range(mid.offset, mid.offset + mid.length):
        d = tmp_path / f"flip{pos}"
        d.mkdir()
        bad = bytearray(raw)
        bad[pos] ^= 0xFF
        path = d / seg.name
        path.write_bytes(bytes(bad))
        with pytest.raises(WalCorruptError) as info:
            WAL.open(d)
        assert info.value.file == path and info.value.offset == mid.offset, pos
        assert str(path) in str(info.value) and f"offset {mid.offset}" in str(info.value)
        assert path.read_bytes() == bytes(bad)  # refusing must not "repair" anything
        with pytest.raises(WalCorruptError):
            list(iter_records(d))  # the offline reader refuses the same way


def test_damage_in_sealed_segment_refused_and_missing_segment_detected(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    with WAL.open(d, segment_size=256) as wal:
        for i in range(1, 40):
            wal.append([entry(i, size=30)])
            wal.sync()
        segs = wal.segments
    assert len(segs) >= 3
    # a cut record at the end of a sealed segment is corruption, not a torn tail
    first = segs[0]
    raw = first.read_bytes()
    first.write_bytes(raw[:-3])
    with pytest.raises(WalCorruptError) as info:
        WAL.open(d)
    assert info.value.file == first and str(first) in str(info.value)
    first.write_bytes(raw)
    # a lost segment in the middle
    segs[1].unlink()
    with pytest.raises(WalCorruptError, match="missing"):
        WAL.open(d)


# --------------------------------------------------------------------------- truncation


def test_conflicting_suffix_is_truncated_and_survives_restart(tmp_path: Path) -> None:
    with Storage.open(tmp_path, "n1", segment_size=300) as s:
        s.save_entries(entries(1, 10))
        s.sync()
        s.save_entries(entries(6, 7, term=2))  # leader of term 2 overwrites 6..10
        assert s.entries == entries(1, 5) + entries(6, 7, term=2)
        assert s.last_index() == 7 and s.term(7) == 2 and s.term(8) is None
        s.save_entries(entries(8, 12, term=2))
        s.save_entries(entries(3, 4, term=3))  # a second conflict, spanning segments
        with pytest.raises(ValueError, match="gap"):
            s.save_entries([entry(9, 3)])
        with pytest.raises(ValueError, match="contiguous"):
            s.save_entries([entry(5, 3), entry(7, 3)])
        s.sync()
        expected = entries(1, 2) + entries(3, 4, term=3)
        assert s.entries == expected
    with Storage.open(tmp_path, "n1") as s:
        assert s.entries == expected


def test_wal_rejects_non_contiguous_append(tmp_path: Path) -> None:
    with WAL.open(tmp_path / "wal") as wal:
        wal.append(entries(1, 5))
        wal.truncate_from(3)
        with pytest.raises(ValueError):
            wal.append([entry(4)])
        wal.append([entry(3, 2)])
    assert WAL.open(tmp_path / "wal").recovered.entries == [*entries(1, 2), entry(3, 2)]


# --------------------------------------------------------------------------- segments


def test_segments_roll_and_are_deleted_after_compaction(tmp_path: Path) -> None:
    hs = HardState(4, "n3", 120)
    with Storage.open(tmp_path, "n1", segment_size=1024) as s:
        s.set_hard_state(hs)  # lives only in the first segment until it is restated
        for lo in range(1, 200, 10):
            s.save_entries(entries(lo, lo + 9, size=40))
            s.sync()
        before = list(s.wal.segments)
        assert len(before) > 5
        s.compact(Snapshot(SnapshotMeta(150, 1), b"fsm@150"))
        after = s.wal.segments
        assert s.entries == entries(151, 200, size=40)
    kept = [p for p in before if p.exists()]
    assert before[0] not in after and not before[0].exists()
    assert kept == before[len(before) - len(kept) :]  # a prefix went, nothing else
    assert after[: len(kept)] == kept
    # every remaining sealed segment still holds an entry the snapshot does not cover
    per_file: dict[Path, int] = {}
    for r in iter_entries(tmp_path / WAL_DIR):
        per_file[r.file] = max(per_file.get(r.file, 0), r.value.index)
    assert per_file[after[0]] > 150 or len(after) == 1
    # and the deleted ones held nothing above it
    assert all(p.name < after[0].name for p in before if not p.exists())

    with Storage.open(tmp_path, "n1", segment_size=1024) as s:
        assert s.hard_state == hs
        assert s.snapshot == Snapshot(SnapshotMeta(150, 1), b"fsm@150")
        assert s.entries == entries(151, 200, size=40)
        assert s.first_index() == 151 and s.term(150) == 1 and s.term(149) is None


# --------------------------------------------------------------------------- crash replay


def test_snapshot_plus_wal_replay_equals_state_before_crash(tmp_path: Path) -> None:
    s = Storage.open(tmp_path, "n1", segment_size=2048)
    s.save_ready(hard_state=HardState(1, "n1", 0), entries=entries(1, 50, size=25))
    s.set_hard_state(HardState(2, "n2", 40))
    s.compact(Snapshot(SnapshotMeta(30, 1), b"fsm-30"), cutover=0, encryption=b"keys")
    s.save_entries(entries(51, 80, term=2, size=25))
    s.save_entries(entries(75, 78, term=3))  # a conflict after the snapshot
    s.set_hard_state(HardState(3, None, 60))
    s.sync()
    synced = state_of(s)
    s.save_entries([entry(79, 3)])  # never synced: may or may not survive
    del s  # a crash: no close, no final sync
    gc.collect()

    s2 = Storage.open(tmp_path, "n1", segment_size=2048)
    hs, snap, header, log = state_of(s2)
    assert (hs, snap, header) == synced[:3]
    assert log in (synced[3], [*synced[3], entry(79, 3)])
    assert header is not None and header.encryption == b"keys" and header.cutover == 0
    s2.close()


def test_sigkill_after_sync_loses_nothing_synced(tmp_path: Path) -> None:
    """A real kill -9 of a writer process: synced state is exactly what comes back."""
    child = textwrap.dedent(
        f"""
        import sys
        from node.storage import Storage
        from node.types import Entry, HardState, Snapshot, SnapshotMeta
        s = Storage.open({str(tmp_path)!r}, "n1", segment_size=4096)
        for i in range(1, 301):
            s.save_entries([Entry(i, 1, data=b"v%d" % i)])
            if i % 25 == 0:
                s.sync()
        s.compact(Snapshot(SnapshotMeta(200, 1), b"fsm"))
        s.set_hard_state(HardState(1, "n1", 250))
        s.sync()
        s.save_entries([Entry(301, 1, data=b"unsynced")])
        print("synced", flush=True)
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"synced\n"
    finally:
        proc.kill()
        proc.wait()
    with Storage.open(tmp_path, "n1") as s:  # the kernel released the lock
        assert s.snapshot == Snapshot(SnapshotMeta(200, 1), b"fsm")
        assert s.hard_state == HardState(1, "n1", 250)
        assert [e.index for e in s.entries][:100] == list(range(201, 301))
        assert s.entries[:100] == [Entry(i, 1, data=b"v%d" % i) for i in range(201, 301)]


def test_received_snapshot_replaces_log(tmp_path: Path) -> None:
    with Storage.open(tmp_path, "n1") as s:
        s.save_entries(entries(1, 10))
        s.apply_snapshot(Snapshot(SnapshotMeta(8, 2), b"leader-fsm"), cutover=5, encryption=b"e")
        assert s.entries == [] and s.last_index() == 8 and s.term(8) == 2
        s.save_entries(entries(9, 12, term=2))
        with pytest.raises(ValueError, match="not newer"):
            s.apply_snapshot(Snapshot(SnapshotMeta(8, 2), b""))
        s.sync()
    with Storage.open(tmp_path, "n1") as s:
        assert s.snapshot == Snapshot(SnapshotMeta(8, 2), b"leader-fsm")
        assert s.snapshot_header is not None and s.snapshot_header.cutover == 5
        assert s.entries == entries(9, 12, term=2)


@pytest.mark.parametrize("snap_term, kept", [(1, True), (2, False)])
def test_snapshot_file_newer_than_wal_marker(tmp_path: Path, snap_term: int, kept: bool) -> None:
    """Crash after the snapshot file was written but before its WAL marker was synced."""
    with Storage.open(tmp_path, "n1") as s:
        s.save_entries(entries(1, 10))
    SnapshotStore(tmp_path / SNAP_DIR).save(Snapshot(SnapshotMeta(8, snap_term), b"img"))
    with Storage.open(tmp_path, "n1") as s:
        assert s.last_index() == (10 if kept else 8)
        assert s.entries == (entries(9, 10) if kept else [])
        discarded = [e for e in s.recovered_events if e["kind"] == "log-discarded"]
        assert bool(discarded) is not kept
        s.save_entries(entries(9, 9, term=snap_term))  # the log continues after the snapshot
    with Storage.open(tmp_path, "n1") as s:
        assert s.entries == entries(9, 9, term=snap_term)


def test_wal_marker_without_snapshot_file_refused(tmp_path: Path) -> None:
    with Storage.open(tmp_path, "n1") as s:
        s.save_entries(entries(1, 10))
        s.compact(Snapshot(SnapshotMeta(5, 1), b""))
    for p in (tmp_path / SNAP_DIR).iterdir():
        p.unlink()
    with pytest.raises(InconsistentStorageError, match="snapshot files are missing"):
        Storage.open(tmp_path, "n1")


# --------------------------------------------------------------------------- snapshots


def test_snapshot_header_roundtrip_and_every_byte_checked() -> None:
    snap = Snapshot(SnapshotMeta(42, 7), b"state-bytes")
    raw = encode_snapshot(snap, cutover=40, encryption=b"wrapped-deks")
    f = decode_snapshot(raw)
    assert f.snapshot == snap
    assert (f.header.cutover, f.header.encryption, f.header.version) == (40, b"wrapped-deks", 1)
    assert raw[f.data_offset : f.data_offset + len(snap.data)] == snap.data
    assert raw[f.encryption_offset : f.data_offset] == b"wrapped-deks"
    assert decode_snapshot(encode_snapshot(snap)).header.encryption == b""  # default empty
    for pos in range(len(raw)):
        bad = bytearray(raw)
        bad[pos] ^= 0x01
        with pytest.raises(SnapshotCorruptError):
            decode_snapshot(bytes(bad))
    assert HEADER_SIZE == 44


def test_leftover_temp_file_ignored_and_cleaned(tmp_path: Path) -> None:
    with Storage.open(tmp_path, "n1") as s:
        s.save_entries(entries(1, 10))
        s.compact(Snapshot(SnapshotMeta(5, 1), b"five"))
    # a crash mid-write of a newer snapshot leaves a partial temp file behind
    tmp = tmp_path / SNAP_DIR / (snapshot_name(9) + ".tmp")
    tmp.write_bytes(encode_snapshot(Snapshot(SnapshotMeta(9, 1), b"nine"))[:30])
    assert SnapshotStore(tmp_path / SNAP_DIR).load_latest().snapshot.data == b"five"
    with Storage.open(tmp_path, "n1") as s:
        assert s.snapshot == Snapshot(SnapshotMeta(5, 1), b"five")
        assert s.entries == entries(6, 10)
    assert not tmp.exists()


def test_keeps_two_snapshots_and_refuses_corrupt_newest(tmp_path: Path) -> None:
    with Storage.open(tmp_path, "n1") as s:
        s.save_entries(entries(1, 20))
        for idx in (5, 10, 15):
            s.compact(Snapshot(SnapshotMeta(idx, 1), b"at%d" % idx))
    names = sorted(p.name for p in (tmp_path / SNAP_DIR).iterdir())
    assert names == [snapshot_name(10), snapshot_name(15)]
    newest = tmp_path / SNAP_DIR / snapshot_name(15)
    assert read_snapshot_file(newest).header.index == 15
    raw = bytearray(newest.read_bytes())
    raw[HEADER_SIZE] ^= 0xFF
    newest.write_bytes(bytes(raw))
    with pytest.raises(SnapshotCorruptError) as info:
        Storage.open(tmp_path, "n1")
    assert str(newest) in str(info.value)
    assert newest.exists()  # the evidence is not pruned


def test_compact_argument_checks(tmp_path: Path) -> None:
    with Storage.open(tmp_path, "n1") as s:
        s.save_entries(entries(1, 10))
        with pytest.raises(ValueError, match="log ends"):
            s.compact(Snapshot(SnapshotMeta(11, 1), b""))
        with pytest.raises(ValueError, match="does not match"):
            s.compact(Snapshot(SnapshotMeta(5, 2), b""))
        s.compact(Snapshot(SnapshotMeta(5, 1), b""))
        s.save_entries(entries(3, 7, term=1))  # covered part skipped; 6.. replaces the suffix
        assert s.entries == entries(6, 7)
        s.sync()
    logged = [r.value.index for r in iter_entries(tmp_path / WAL_DIR)]
    assert logged.count(3) == 1 and logged[-2:] == [6, 7]


# --------------------------------------------------------------------------- identity


def test_wrong_node_id_refused(tmp_path: Path) -> None:
    with Storage.open(tmp_path, "n1") as s:
        s.save_entries(entries(1, 3))
    with pytest.raises(WrongNodeError) as info:
        Storage.open(tmp_path, "n2")
    assert "'n1'" in str(info.value) and "'n2'" in str(info.value)
    with Storage.open(tmp_path, "n1") as s:
        assert s.node_id == "n1" and s.entries == entries(1, 3)


def test_second_open_of_same_dir_refused(tmp_path: Path) -> None:
    s = Storage.open(tmp_path, "n1")
    with pytest.raises(DataDirLockedError):
        Storage.open(tmp_path, "n1")
    s.close()
    Storage.open(tmp_path, "n1").close()


def test_segment_name_orders_like_replay() -> None:
    assert segment_name(1) == "00000001.wal"
    assert sorted([segment_name(10), segment_name(9)]) == [segment_name(9), segment_name(10)]


def test_segment_with_torn_header_is_dropped(tmp_path: Path) -> None:
    """A crash right after creating a segment leaves a file shorter than its header."""
    d = tmp_path / "wal"
    with WAL.open(d) as wal:
        wal.append(entries(1, 3))
    partial = d / segment_name(2)
    partial.write_bytes(b"CWA")
    wal = WAL.open(d)
    assert wal.recovered.torn_tail == TornTail(partial, 0, 3)
    assert not partial.exists()
    wal.append(entries(4, 4))
    wal.close()
    assert WAL.open(d).recovered.entries == entries(1, 4)
    partial.write_bytes(b"XXXXXXXXXXXX")  # a full header that is not ours: corruption
    with pytest.raises(WalCorruptError, match="magic"):
        WAL.open(d)
