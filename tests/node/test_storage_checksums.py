"""A flipped bit anywhere in a node's durable files is caught by a checksum at start-up,
and the node refuses to start with a named error (or, for a torn WAL tail, repairs):
WAL segments, snapshot files, the sidecar. Real files through node/disk.py and the
simulator's SimDisk both, since the node's code runs on each."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from node.disk import Disk
from node.keystore import Kek, WrappedKey
from node.sidecar import Sidecar, SidecarCorruptError, load, save
from node.snapshot import SnapshotCorruptError
from node.storage import Storage
from node.types import Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from node.wal import SEGMENT_HEADER_SIZE, WAL, WalCorruptError, iter_records
from orchestrator.sim.cluster import SimCluster, SimSettings
from orchestrator.sim.disk import SimDisk

KEK = Kek(bytes(range(32)))


def _flip(disk, path, pos: int, bit: int) -> None:
    raw = bytearray(disk.read_bytes(path))
    raw[pos] ^= 1 << bit
    disk.overwrite(path, 0, bytes(raw))


def _where(tmp_path: Path, real: bool):
    return (Disk(), tmp_path / "n1") if real else (SimDisk(), "/sim/n1")


def _entries(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [Entry(i, term, EntryKind.NORMAL, f"v{i}".encode() * 3) for i in range(lo, hi)]


def _wal_dir(disk, root) -> tuple[Path, Path]:
    st = Storage.open(root, "n1", disk=disk)
    st.save_ready(hard_state=HardState(2, "n1", 3), entries=_entries(1, 6))
    st.close()
    seg = st.wal.segments[-1]
    return Path(root) / "wal", seg


@pytest.mark.parametrize("real", [True, False], ids=["real", "sim"])
def test_wal_flip_anywhere_but_the_last_record_is_refused(tmp_path, real: bool) -> None:
    """Every byte of a segment but its last record: WalCorruptError, never a torn tail.
    In the last record the damage looks exactly like a torn write, and only there is
    it cut (what was lost was the last thing written)."""
    disk, root = _where(tmp_path, real)
    wal_dir, seg = _wal_dir(disk, root)
    last = list(iter_records(wal_dir, disk=disk))[-1]
    size = len(disk.read_bytes(seg))
    assert last.offset + last.length == size
    pristine = disk.read_bytes(seg)
    seed = random.Random(5)
    for pos in range(size):
        bit = seed.randrange(8)
        _flip(disk, seg, pos, bit)
        try:
            if pos < last.offset:
                with pytest.raises(WalCorruptError):
                    WAL.open(wal_dir, disk=disk)
                assert disk.read_bytes(seg)[pos] != pristine[pos]  # refused, not repaired
            else:
                torn = []
                WAL.open(wal_dir, disk=disk, on_torn_tail=torn.append).close()
                assert torn and torn[0].offset == last.offset, pos
        finally:
            disk.overwrite(seg, 0, pristine)  # a cut tail grows back: never longer


@pytest.mark.parametrize("real", [True, False], ids=["real", "sim"])
def test_a_node_refuses_a_damaged_wal_by_name(tmp_path, real: bool) -> None:
    disk, root = _where(tmp_path, real)
    _wal_dir(disk, root)
    seg = sorted(Path(root, "wal").glob("*.wal"))[0] if real else \
        Path(root, "wal", disk.listdir(Path(root, "wal"))[0])
    _flip(disk, seg, SEGMENT_HEADER_SIZE + 12, 3)  # inside the first record
    with pytest.raises(WalCorruptError, match="bad record followed by valid records"):
        Storage.open(root, "n1", disk=disk)
    _flip(disk, seg, SEGMENT_HEADER_SIZE + 12, 3)
    _flip(disk, seg, 6, 0)  # the header's reserved field
    with pytest.raises(WalCorruptError, match="reserved"):
        Storage.open(root, "n1", disk=disk)


def test_torn_tail_is_cut_before_appending_so_a_second_loss_recovers() -> None:
    """Power loss with a torn tail, restart, append, power loss again: the second restart
    must still recover everything the first one synced (had the torn bytes stayed, the
    new records would sit behind garbage: mid-file corruption)."""
    for seed in range(40):
        rng = random.Random(seed)
        disk = SimDisk()
        st = Storage.open("/sim/n1", "n1", disk=disk)
        st.save_ready(hard_state=HardState(1, "n1", 0), entries=_entries(1, 4))
        st.save_ready(entries=_entries(4, 9), sync=False)
        st._wal._write_out()  # in the file, not synced
        disk.crash(power=True, rng=rng)
        st = Storage.open("/sim/n1", "n1", disk=disk)
        have = st.last_index()
        assert 3 <= have <= 8
        st.save_ready(hard_state=HardState(2, "n1", 0), entries=_entries(have + 1, have + 4, 2))
        st._wal._write_out()
        st.sync()
        st.save_ready(entries=_entries(have + 4, have + 6, 2), sync=False)
        st._wal._write_out()
        disk.crash(power=True, rng=rng)
        back = Storage.open("/sim/n1", "n1", disk=disk)
        assert back.last_index() >= have + 3, seed
        assert [e.index for e in back.entries] == list(range(1, back.last_index() + 1))
        back.close()


@pytest.mark.parametrize("real", [True, False], ids=["real", "sim"])
def test_snapshot_flip_anywhere_is_refused(tmp_path, real: bool) -> None:
    disk, root = _where(tmp_path, real)
    st = Storage.open(root, "n1", disk=disk)
    st.save_ready(hard_state=HardState(1, "n1", 3), entries=_entries(1, 6))
    st.compact(Snapshot(SnapshotMeta(4, 1), b"image" * 10), cutover=2, encryption=b"enc")
    st.close()
    snap_dir = Path(root, "snap")
    path = snap_dir / [n for n in disk.listdir(snap_dir) if n.endswith(".snap")][-1]
    pristine = disk.read_bytes(path)
    rng = random.Random(2)
    for pos in range(len(pristine)):
        _flip(disk, path, pos, rng.randrange(8))
        with pytest.raises(SnapshotCorruptError):
            Storage.open(root, "n1", disk=disk)
        disk.overwrite(path, 0, pristine)


def _sidecar() -> Sidecar:
    w1 = KEK.wrap_dek(bytes(32), (1).to_bytes(12, "big"))
    return Sidecar(raft_applied_index=1234, raft_envelope_cutover_index=17,
                   active_raft_dek=1, keys={1: WrappedKey(w1, "raft", 17)}, local_epoch=9)


@pytest.mark.parametrize("real", [True, False], ids=["real", "sim"])
def test_sidecar_flip_anywhere_is_refused(tmp_path, real: bool) -> None:
    """Every bit of the file: a digit flipped in the applied index, C or the epoch
    still parses and validates, which is what the checksum is for."""
    disk, root = _where(tmp_path, real)
    disk.makedirs(root)
    save(root, _sidecar(), disk)
    path = Path(root, "sidecar.json")
    pristine = disk.read_bytes(path)
    assert b'"checksum"' in pristine
    rng = random.Random(4)
    for pos in range(len(pristine)):  # every bit in memory; one per byte on real files
        for bit in (rng.randrange(8),) if real else range(8):
            _flip(disk, path, pos, bit)
            with pytest.raises(SidecarCorruptError):
                load(root, disk)
            disk.overwrite(path, 0, pristine)
    assert load(root, disk) == _sidecar()


def test_old_sidecar_without_checksum_still_reads(tmp_path) -> None:
    save(tmp_path, _sidecar())
    doc = json.loads((tmp_path / "sidecar.json").read_text())
    del doc["checksum"]
    (tmp_path / "sidecar.json").write_text(json.dumps(doc, indent=2, sort_keys=True))
    assert load(tmp_path) == _sidecar()
    save(tmp_path, _sidecar())  # the next save adds it
    assert "checksum" in json.loads((tmp_path / "sidecar.json").read_text())


def test_a_simulated_node_fails_to_start_naming_the_damage() -> None:
    """The start-failed event's error names the class (checker/crashes.py reads it)."""
    cl = SimCluster(3, SimSettings(nodes=3))
    cl.run_until(300_000)
    cl.kill("n2")
    path = "/sim/n2/sidecar.json"
    raw = bytearray(cl.nodes["n2"].disk.read_bytes(path))
    i = raw.index(b'"local_epoch": ') + len(b'"local_epoch": ')
    raw[i] ^= 1  # one digit of the epoch: still a valid file, but not what was written
    cl.nodes["n2"].disk.damage(path, 0, bytes(raw))
    cl.start("n2")
    cl.run_until(1_000_000)
    failed = [e for e in cl.events if e["node"] == "n2" and e["kind"] == "start-failed"]
    assert failed and failed[0]["error"].startswith("SidecarCorruptError:"), failed
    assert "checksum mismatch" in failed[0]["error"]
