"""The elastickv profile's durable KV store (`node/fsmstore.py`, docs/protocol.md row 7)
on the simulated disk, whose power loss keeps exactly what was synced: what survives a
process crash and a power loss, a torn tail cut on open, damage refused by name, and a
compaction that a crash at any step leaves whole. Deterministic (no rng but seeded)."""
from __future__ import annotations

import random

import pytest

from node.fsmstore import (
    BASE_NAME,
    FSM_DIR,
    FsmStore,
    FsmStoreCorruptError,
    _record,
    journal_name,
)
from node.storage import storage_failure
from orchestrator.sim.disk import SimDisk

ROOT = "/sim/n1"
D = f"{ROOT}/{FSM_DIR}"


def _disk() -> SimDisk:
    disk = SimDisk()
    disk.makedirs(ROOT)
    return disk


def _filled(disk: SimDisk) -> FsmStore:
    s = FsmStore.open(ROOT, disk)
    s.apply([("a", 1)], 5)
    s.apply([("!encryption|writers|1|0001", "row")], 0)  # not a user command: index stays
    s.apply([("b", "x"), ("a", 2)], 7)
    return s


def test_a_fresh_store_is_empty_at_index_0_and_reopens_as_written() -> None:
    disk = _disk()
    s = _filled(disk)
    assert s.applied_index == 7
    s.close()
    again = FsmStore.open(ROOT, disk)
    assert again.applied_index == 7
    assert again.data == {"a": 2, "b": "x", "!encryption|writers|1|0001": "row"}


def test_a_write_that_does_not_move_the_index_is_durable_all_the_same() -> None:
    disk = _disk()
    s = FsmStore.open(ROOT, disk)
    s.apply([("a", 1)], 3)
    s.apply([("!encryption|writers|1|0001", "row")], 0)
    disk.crash(power=True)
    again = FsmStore.open(ROOT, disk)
    assert again.applied_index == 3 and again.data["!encryption|writers|1|0001"] == "row"


@pytest.mark.parametrize("power", [False, True])
def test_a_crash_keeps_every_synced_apply_and_a_power_loss_only_those(power: bool) -> None:
    """A process crash keeps the page cache (an unsynced record is still read); a power
    loss drops what was written after the last fsync and nothing before it."""
    disk = _disk()
    s = _filled(disk)
    f = disk.open_append(f"{D}/{journal_name(s.gen)}")
    f.write(_record(9, [("c", 3)]))  # written, never synced
    disk.crash(power=power)
    again = FsmStore.open(ROOT, disk)
    if power:
        assert again.applied_index == 7 and "c" not in again.data
    else:
        assert again.applied_index == 9 and again.data["c"] == 3
    assert again.data["a"] == 2 and again.data["b"] == "x"


@pytest.mark.parametrize("seed", range(6))
def test_a_torn_tail_is_cut_on_open(seed: int) -> None:
    """A power loss that keeps a random part of an unsynced record tears it: the part is
    cut (a `torn-tail` event says where), every record before it stays."""
    print(f"seed={seed}")
    disk = _disk()
    s = _filled(disk)
    path = f"{D}/{journal_name(s.gen)}"
    size = len(disk.read_bytes(path))
    rec = _record(9, [("c", "y" * 50)])
    f = disk.open_append(path)
    f.write(rec[: random.Random(seed).randrange(1, len(rec))])
    disk.crash(power=False)
    again = FsmStore.open(ROOT, disk)
    assert again.applied_index == 7 and "c" not in again.data
    assert len(disk.read_bytes(path)) == size
    [ev] = again.recovered_events
    assert ev["kind"] == "torn-tail" and ev["offset"] == size
    again.apply([("d", 4)], 10)  # the journal goes on after the cut
    assert FsmStore.open(ROOT, disk).data["d"] == 4


def test_damage_in_the_middle_of_the_journal_is_refused_by_name() -> None:
    disk = _disk()
    s = _filled(disk)
    path = f"{D}/{journal_name(s.gen)}"
    disk.damage(path, 10, b"\xff")  # inside the first record: valid records follow
    with pytest.raises(FsmStoreCorruptError, match="followed by valid records") as err:
        FsmStore.open(ROOT, disk)
    assert storage_failure(err.value)  # the node treats it as storage it cannot trust


def test_a_damaged_base_is_refused_by_name() -> None:
    disk = _disk()
    s = _filled(disk)
    s.compact()
    data = disk.read_bytes(f"{D}/{BASE_NAME}")
    disk.damage(f"{D}/{BASE_NAME}", len(data) // 2, bytes([data[len(data) // 2] ^ 1]))
    with pytest.raises(FsmStoreCorruptError, match="checksum"):
        FsmStore.open(ROOT, disk)


def test_a_lost_write_in_the_middle_is_refused_and_at_the_end_is_a_torn_tail() -> None:
    """The storage nemesis's `lost-write` leaves zeros where a write should have landed:
    a record before valid ones is damage; the last one reads as a torn tail (the limit
    every per-record checksum shares: `node.storage.storage_failure`)."""
    disk = _disk()
    s = _filled(disk)
    path = f"{D}/{journal_name(s.gen)}"
    first = len(_record(5, [("a", 1)]))
    disk.damage(path, 0, bytes(first))
    with pytest.raises(FsmStoreCorruptError):
        FsmStore.open(ROOT, disk)
    disk2 = _disk()
    s2 = _filled(disk2)
    path2 = f"{D}/{journal_name(s2.gen)}"
    data = disk2.read_bytes(path2)
    last = len(_record(7, [("b", "x"), ("a", 2)]))
    disk2.damage(path2, len(data) - last, bytes(last))
    again = FsmStore.open(ROOT, disk2)
    assert again.applied_index == 5 and again.recovered_events


class _Died(BaseException):
    pass


class _DyingDisk(SimDisk):
    """A simulated disk whose process dies at its `die_at`-th step (a file write, an
    fsync, a rename, a directory fsync or an unlink)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0
        self.die_at: int | None = None

    def _step(self) -> None:
        self.steps += 1
        if self.die_at is not None and self.steps >= self.die_at:
            raise _Died

    def rename(self, src, dst) -> None:  # type: ignore[no-untyped-def]
        self._step()
        super().rename(src, dst)

    def sync_dir(self, path) -> None:  # type: ignore[no-untyped-def]
        self._step()
        super().sync_dir(path)

    def unlink(self, path) -> None:  # type: ignore[no-untyped-def]
        self._step()
        super().unlink(path)

    def create_truncate(self, path, mode: int = 0o644):  # type: ignore[no-untyped-def]
        self._step()
        f = super().create_truncate(path, mode)
        orig_sync = f.sync

        def sync() -> None:
            self._step()
            orig_sync()
        f.sync = sync  # type: ignore[method-assign]
        return f


OLD = {"a": 2, "b": "x", "!encryption|writers|1|0001": "row"}


@pytest.mark.parametrize("power", [False, True])
def test_a_compaction_is_whole_whatever_step_a_crash_strikes(power: bool) -> None:
    """`reset` (a snapshot's compaction, an installed snapshot) writes a new base
    atomically, then drops the old journal. A crash (or a power loss) at any of its steps
    leaves the old state or the new one, never a mix; an older generation's journal left
    behind is ignored and removed on open."""
    step = 0
    while True:
        step += 1
        disk = _DyingDisk()
        disk.makedirs(ROOT)
        s = _filled(disk)
        old_journal = f"{D}/{journal_name(s.gen)}"
        disk.steps, disk.die_at = 0, step
        try:
            s.reset(b"\x91\x92\xa1z\x05", 20)  # msgpack [["z", 5]]
            done = True
        except _Died:
            done = False
        disk.die_at = None
        disk.crash(power=power)
        again = FsmStore.open(ROOT, disk)
        state = (again.applied_index, again.data)
        assert state in [(7, OLD), (20, {"z": 5})], (step, state)
        if state[0] == 20:
            assert not disk.exists(old_journal), step
        if done:
            assert state[0] == 20
            break
    assert step >= 4  # temp sync, rename, directory sync, unlink (and its sync)


def test_a_journal_newer_than_its_base_is_damage() -> None:
    disk = _disk()
    s = _filled(disk)
    f = disk.create(f"{D}/{journal_name(s.gen + 1)}")
    f.write(_record(30, [("q", 1)]))
    f.sync()
    with pytest.raises(FsmStoreCorruptError, match="generation"):
        FsmStore.open(ROOT, disk)


def test_the_durable_index_only_moves_forward_when_pinned() -> None:
    disk = _disk()
    s = _filled(disk)
    s.set_durable_applied_index(4)
    assert s.applied_index == 7
    s.set_durable_applied_index(12)
    assert FsmStore.open(ROOT, disk).applied_index == 12
