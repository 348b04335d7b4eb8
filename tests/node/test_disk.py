"""`node.disk`: every node write goes through it, and `power_loss` cuts the files back to
what they durably held (unsynced appends gone, unsynced directory operations undone)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from node import sidecar
from node.disk import JOURNAL_NAME, KEEP_MARK, Disk, power_loss
from node.storage import Storage
from node.types import Entry, EntryKind, HardState


def _disk(root: Path) -> Disk:
    root.mkdir(parents=True, exist_ok=True)
    return Disk(root / JOURNAL_NAME)


def test_unsynced_appends_are_lost_synced_ones_stay(tmp_path: Path) -> None:
    d = _disk(tmp_path)
    f = d.create(tmp_path / "log")
    d.sync_dir(tmp_path)
    f.write(b"durable")
    f.sync()
    f.write(b"-not-yet")
    f.close()
    assert (tmp_path / "log").read_bytes() == b"durable-not-yet"  # what SIGKILL keeps
    rep = power_loss(tmp_path)
    assert (tmp_path / "log").read_bytes() == b"durable"
    assert rep["truncated"] == {"log": len(b"-not-yet")}


def test_a_file_whose_directory_was_never_synced_vanishes(tmp_path: Path) -> None:
    d = _disk(tmp_path)
    f = d.create(tmp_path / "new")
    f.write(b"data")
    f.sync()  # its bytes are durable, its name is not
    f.close()
    power_loss(tmp_path)
    assert not (tmp_path / "new").exists()


def test_a_rename_without_a_directory_sync_is_undone(tmp_path: Path) -> None:
    d = _disk(tmp_path)
    d.write_atomic(tmp_path / "state", b"old")
    # The first half of write_atomic, without its directory fsync: killed right there.
    tmp = tmp_path / "state.tmp"
    f = d.create(tmp)
    f.write(b"new")
    f.sync()
    f.close()
    d.rename(tmp, tmp_path / "state")
    assert (tmp_path / "state").read_bytes() == b"new"
    rep = power_loss(tmp_path)
    assert (tmp_path / "state").read_bytes() == b"old"
    assert not tmp.exists()
    assert "rename state.tmp -> state" in rep["undone"]
    assert not [n for n in os.listdir(tmp_path) if KEEP_MARK in n]


def test_a_completed_atomic_write_survives(tmp_path: Path) -> None:
    d = _disk(tmp_path)
    d.write_atomic(tmp_path / "state", b"old")
    d.write_atomic(tmp_path / "state", b"new")
    assert power_loss(tmp_path)["undone"] == []
    assert (tmp_path / "state").read_bytes() == b"new"
    assert not [n for n in os.listdir(tmp_path) if KEEP_MARK in n]


def test_an_unlink_without_a_directory_sync_comes_back(tmp_path: Path) -> None:
    d = _disk(tmp_path)
    d.write_atomic(tmp_path / "seg", b"entries")
    d.unlink(tmp_path / "seg")
    assert not (tmp_path / "seg").exists()
    assert d.listdir(tmp_path) == [JOURNAL_NAME]  # the keep link is not listed
    power_loss(tmp_path)
    assert (tmp_path / "seg").read_bytes() == b"entries"


def test_a_new_journal_forgets_the_old_incarnation(tmp_path: Path) -> None:
    d = _disk(tmp_path)
    d.write_atomic(tmp_path / "state", b"old")
    d.rename(tmp_path / "state", tmp_path / "moved")  # a keep link would be left...
    d.close()
    Disk(tmp_path / JOURNAL_NAME)  # ...a restart (not a power loss) drops it
    assert sorted(os.listdir(tmp_path)) == [JOURNAL_NAME, "moved"]
    assert (tmp_path / JOURNAL_NAME).read_bytes() == b""


def test_without_a_journal_nothing_is_recorded(tmp_path: Path) -> None:
    d = Disk()
    d.write_atomic(tmp_path / "state", b"x")
    d.unlink(tmp_path / "state")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("sync_last", [False, True])
def test_storage_after_power_loss_holds_exactly_what_was_synced(tmp_path: Path,
                                                               sync_last: bool) -> None:
    root = tmp_path / "n1"
    d = _disk(root)
    with Storage.open(root, "n1", disk=d, segment_size=300) as st:
        for i in range(1, 21):
            st.save_entries([Entry(i, 1, EntryKind.NORMAL, b"x%d" % i)])
            st.set_hard_state(HardState(1, "n1", max(0, i - 1)))
            if i < 15 or sync_last:
                st.sync()
            else:  # written out (in the page cache: a SIGKILL keeps it), never synced
                st.wal._write_out()  # noqa: SLF001
        # Storage.close syncs; a power failure does not ask first, so skip it.
        st._wal._closed = True  # noqa: SLF001 - simulate the process dying here
        st._lock.close()  # type: ignore[union-attr]  # noqa: SLF001
    # A SIGKILL alone keeps all 20 (the page cache survives); the restarted node journals
    # again, and what it had when it started counts as durable (a limit of the model).
    d2 = _disk(root)
    with Storage.open(root, "n1", disk=d2) as st:
        assert st.last_index() == 20
        for i in range(21, 25):
            st.save_entries([Entry(i, 1, EntryKind.NORMAL, b"y%d" % i)])
            if sync_last:
                st.sync()
            else:
                st.wal._write_out()  # noqa: SLF001
        st._wal._closed = True  # noqa: SLF001
        st._lock.close()  # type: ignore[union-attr]  # noqa: SLF001
    power_loss(root)
    with Storage.open(root, "n1") as st:
        assert st.last_index() == (24 if sync_last else 20)
        assert [e.index for e in st.entries] == list(range(1, st.last_index() + 1))


def test_sidecar_writes_go_through_the_journal(tmp_path: Path) -> None:
    d = _disk(tmp_path)
    sc = sidecar.load(tmp_path, d)
    sc.local_epoch = 7
    sidecar.save(tmp_path, sc, d)
    journal = (tmp_path / JOURNAL_NAME).read_text()
    assert '"rename":"sidecar.json.tmp","dst":"sidecar.json"' in journal
    assert '"dirsync":"."' in journal
    power_loss(tmp_path)
    assert sidecar.load(tmp_path).local_epoch == 7
