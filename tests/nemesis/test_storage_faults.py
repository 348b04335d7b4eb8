"""Issue 20: the storage faults and the composite primitives, as records and draws, and
the checkers' expected-refusal rule."""
from __future__ import annotations

import json
import random

from checker.crashes import record, refused_start
from checker.suite import storage_damage
from nemesis.faults import FAMILIES, KINDS, OPT_IN_FAMILIES
from nemesis.plan import make_plan, parse_families
from orchestrator.sim.disk import SimDisk

NEW = ("bitflip", "sector-error", "lost-write", "misdirected-write", "deposed-tail",
       "minority-read", "snapshot-restart", "rotate-race")
SHAPE = {"time_limit": 30.0, "interval": 5.0, "cutover_at": 10.0, "nodes": 5}


def test_the_new_families_are_opt_in_and_drawn_when_named() -> None:
    assert {"storage", "races"} <= set(OPT_IN_FAMILIES)
    assert not {"storage", "races"} & set(FAMILIES)
    assert {KINDS[k].worlds for k in ("lost-write", "misdirected-write")} == {("sim",)}
    assert KINDS["bitflip"].worlds == ("real", "sim")
    drawn: set[str] = set()
    for seed in range(1, 40):
        old = make_plan(seed, FAMILIES, **SHAPE)  # type: ignore[arg-type]
        assert not {s.action for s in old.steps} & set(NEW)
        p = make_plan(seed, parse_families("all,storage,races"), **SHAPE)  # type: ignore[arg-type]
        drawn |= {s.action for s in p.steps} & set(NEW)
        assert type(p).from_dict(json.loads(json.dumps(p.to_dict()))) == p
    print("drawn:", sorted(drawn))
    assert drawn == set(NEW)


def test_a_refused_start_after_damage_is_expected_and_nothing_else_is() -> None:
    nem = [{"f": "start", "fault": "bitflip", "targets": ["n2"], "time_ns": 5,
            "detail": {"damaged_storage": True}},
           {"f": "start", "fault": "kill", "targets": ["n3"], "time_ns": 1, "detail": {}}]
    refusals = storage_damage(nem, t0_ns=100)
    assert refusals == {"n2": 105}

    def rec(kind: str, node: str, t: int, **kw: object) -> dict:
        return json.loads(record(kind, node, t, **kw))

    assert refused_start(rec("failed-start", "n2", 200), refusals)
    assert refused_start(rec("exit", "n2", 200, code=2), refusals)
    assert not refused_start(rec("exit", "n2", 200, code=1), refusals)  # a crash
    assert not refused_start(rec("failed-start", "n2", 50), refusals)  # before damage
    assert not refused_start(rec("failed-start", "n3", 200), refusals)  # not damaged


def test_the_simulated_disk_loses_misplaces_and_fails_reads() -> None:
    d = SimDisk()
    d.makedirs("/n/wal")
    f = d.create("/n/wal/a")
    f.write(b"x" * 100)
    f.sync()
    d.arm_writes("lost", 1.0, random.Random(1))
    f.write(b"y" * 10)
    f.sync()
    assert d.read_bytes("/n/wal/a")[-10:] == b"y" * 10  # the page cache still shows it
    d.arm_writes(None)
    d.crash(power=False)
    assert d.read_bytes("/n/wal/a")[-10:] == bytes(10)  # the media never got it
    d.sector_error("/n/wal/a", 0, 512)
    try:
        d.read_bytes("/n/wal/a")
    except OSError as e:
        assert e.errno == 5
    else:  # pragma: no cover
        raise AssertionError("a latent sector error must fail the read")
