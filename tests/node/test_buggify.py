"""BUGGIFY points (node/buggify.py): the registry, the env spec of real processes, and
that storage and the host reach their points through the injected hook."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from node.buggify import (
    ACTIONS,
    ENV,
    ENV_SEED,
    OFF,
    POINTS,
    Buggify,
    BuggifyCrash,
    BuggifyError,
    EnvBuggify,
    from_env,
    parse_spec,
)
from node.disk import Disk
from node.storage import Storage
from node.types import Entry, EntryKind, HardState
from orchestrator.sim.disk import SimDisk

NODE = Path(__file__).resolve().parents[2] / "node"


class Recorder(Buggify):
    """Arms nothing; remembers every point reached, in order. With `die_at`, the
    process dies at that point's first pass."""

    def __init__(self, die_at: str | None = None) -> None:
        self.on = True
        self.seen: list[str] = []
        self.die_at = die_at

    def hit(self, point: str) -> str | None:
        self.seen.append(point)
        if point == self.die_at:
            self.die_at = None
            raise BuggifyCrash(point, "crash")
        return None


def _call_sites() -> set[str]:
    found: set[str] = set()
    for path in NODE.glob("*.py"):
        found |= set(re.findall(r'\.hit\("([a-z.\-]+)"\)', path.read_text()))
    return found


def test_registry_matches_the_call_sites() -> None:
    assert len(set(POINTS)) == len(POINTS)
    assert set(ACTIONS) == set(POINTS)
    assert _call_sites() == set(POINTS)  # every point has a call site, and no stray one


def test_off_is_a_no_op() -> None:
    assert OFF.on is False and OFF.hit("wal.written") is None
    assert Disk.buggify is OFF


def test_parse_spec_is_strict() -> None:
    assert parse_spec("wal.written=crash:0.5, host.tick=early") == {
        "wal.written": ("crash", 0.5), "host.tick": ("early", 1.0)}
    for bad in ("nope=crash:1", "host.tick=crash:1", "wal.written=crash:2",
                "wal.written=crash:x"):
        with pytest.raises(BuggifyError):
            parse_spec(bad)


def test_from_env_arms_only_when_asked() -> None:
    events: list[tuple[str, dict]] = []

    def emit(kind: str, **d: object) -> None:
        events.append((kind, d))

    assert from_env({}, emit) is OFF
    assert from_env({ENV: "  "}, emit) is OFF
    bg = from_env({ENV: "host.tick=early:1", ENV_SEED: "3"}, emit)
    assert isinstance(bg, EnvBuggify) and bg.on
    assert bg.hit("host.tick") == "early"
    assert bg.hit("wal.written") is None
    assert events == [("buggify", {"point": "host.tick", "action": "reached"}),
                      ("buggify", {"point": "host.tick", "action": "early"}),
                      ("buggify", {"point": "wal.written", "action": "reached"})]
    with pytest.raises(BuggifyError):
        from_env({ENV: "host.tick=early", ENV_SEED: "x"}, emit)


@pytest.mark.parametrize("real", [True, False], ids=["real", "sim"])
def test_storage_reaches_its_points(tmp_path, real: bool) -> None:
    disk = Disk() if real else SimDisk()
    rec = Recorder()
    disk.buggify = rec
    root = tmp_path / "d" if real else "/sim/n1"
    st = Storage.open(root, "n1", disk=disk)
    st.save_ready(hard_state=HardState(1, "n1", 0),
                  entries=[Entry(1, 1, EntryKind.NORMAL, b"x")])
    st.close()
    assert {"file.written", "file.synced", "file.renamed", "file.dir.synced",
            "wal.written", "wal.synced", "wal.dir.before", "wal.dir.after"} <= set(rec.seen)
    i = rec.seen.index("wal.written")
    assert rec.seen[i + 1] == "wal.synced"  # the write, then its fsync


def test_a_death_between_write_and_sync_loses_only_the_unsynced() -> None:
    """What the simulator does at `wal.written`: the entry was written, never synced;
    a power loss there must leave the node recoverable, without that entry."""
    disk = SimDisk()
    st = Storage.open("/sim/n1", "n1", disk=disk)
    st.save_ready(hard_state=HardState(1, None, 0),
                  entries=[Entry(1, 1, EntryKind.NORMAL, b"a")])
    disk.buggify = Recorder(die_at="wal.written")
    st._wal._bg = disk.buggify  # the WAL read its hook when it was opened
    with pytest.raises(BuggifyCrash):
        st.save_ready(entries=[Entry(2, 1, EntryKind.NORMAL, b"b")])
    disk.crash(power=True)
    disk.buggify = OFF
    back = Storage.open("/sim/n1", "n1", disk=disk)
    assert [e.index for e in back.entries] == [1]
    assert back.hard_state == HardState(1, None, 0)
    back.close()


@pytest.mark.parametrize("point", ["wal.dir.before", "wal.written"])
def test_what_recovery_read_is_durable_before_it_is_used(point: str) -> None:
    """A process killed at `point` (the page cache keeps the segment, its name or its
    bytes not yet durable), restarted, then a power loss: what the restarted node read
    and built on must survive. BUGGIFY found the first: a whole segment lost."""
    disk = SimDisk()
    st = None
    if point == "wal.written":
        st = Storage.open("/sim/n1", "n1", disk=disk)
        disk.buggify = st._wal._bg = Recorder(die_at=point)
        with pytest.raises(BuggifyCrash):
            st.save_ready(hard_state=HardState(2, "n1", 0),
                          entries=[Entry(1, 2, EntryKind.NORMAL, b"a")])
    else:
        disk.buggify = Recorder(die_at=point)
        with pytest.raises(BuggifyCrash):
            Storage.open("/sim/n1", "n1", disk=disk)  # dies creating its first segment
    disk.crash(power=False)  # a process crash: the page cache survives
    disk.buggify = OFF
    st = Storage.open("/sim/n1", "n1", disk=disk)
    had = st.last_index()
    if point == "wal.written":
        # It has entry 1 (read from the page cache) and may match a leader's append on
        # it at once, with nothing new to write: it must be durable already.
        assert had == 1
        disk.crash(power=True)
        assert Storage.open("/sim/n1", "n1", disk=disk).last_index() == 1
        return
    st.save_ready(hard_state=HardState(3, "n2", 0),
                  entries=[Entry(had + 1, 3, EntryKind.NORMAL, b"b")])  # synced: promised
    disk.crash(power=True)
    back = Storage.open("/sim/n1", "n1", disk=disk)
    assert back.hard_state.term == 3 and back.hard_state.vote == "n2"
    assert back.last_index() == had + 1
    back.close()
