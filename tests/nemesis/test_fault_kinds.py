"""A fault kind is one record (`nemesis/faults.py: KINDS`), and every other table is
derived from the records: the tables a step is checked against, the generator's, the
step driver's and the heal's. The derived tables must say what the hand-written ones
said before the records (their old values are written out below), and the generator
must draw the same plans for the same seeds (a digest of each plan, made by the code
before the records: `tests/data/plans_golden.json`)."""
from __future__ import annotations

import ast
import hashlib
import json
import random
from pathlib import Path

import pytest

from nemesis import plan as plan_mod
from nemesis.faults import (
    FAMILIES,
    HANDLERS,
    HEAL,
    KINDS,
    NOTHING,
    OPT_IN_FAMILIES,
    final_undos,
)
from nemesis.plan import SCENARIOS, PlanError, make_plan, parse_families
from nemesis.primitives import ACTIONS, PARAMS, Step
from orchestrator.run import program

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parents[1] / "data" / "plans_golden.json"

# The tables as they were written by hand before the records (issue 24).
OLD_ACTIONS = {
    "kill": ("kill", True), "restart": ("kill", False), "kill-power": ("power", True),
    "pause": ("pause", True), "snapshot": ("snapshot", False),
    "compact": ("snapshot", False), "isolate": ("partition", True),
    "split": ("partition", True), "lead": ("partition", True),
    "halves": ("partition", True), "ring": ("partition", True),
    "bridge": ("partition", True), "cut-in": ("partition", True),
    "cut-out": ("partition", True), "slow-in": ("net", True), "slow-out": ("net", True),
    "loss": ("net", True), "delay": ("net", True), "duplicate": ("net", True),
    "reorder": ("net", True), "rotate": ("rotate", False), "enable": ("enable", False),
    "corrupt-entry": ("corrupt", False)}
OLD_ROLES = {
    "kill": ("one", "leader", "follower", "minority", "lagging", "marker-holder", "restarted"),
    "restart": ("one", "leader", "follower", "restarted", "lagging"),
    "kill-power": ("one", "leader", "follower", "minority", "marker-holder", "majority",
                   "all"),
    "pause": ("one", "leader", "follower", "minority", "marker-holder"),
    "snapshot": ("one", "follower", "leader", "all", "lagging"),
    "compact": ("one", "lagging", "follower"),
    "isolate": ("one", "leader", "follower", "marker-holder", "lagging"),
    "split": ("leader-pair", "minority", "leader-pair"),
    "lead": ("one", "follower", "restarted", "lagging", "marker-holder"),
    "halves": ("none",), "ring": ("none",), "bridge": ("one", "leader"),
    "cut-in": ("leader", "one", "follower"), "cut-out": ("leader", "one", "follower"),
    "slow-in": ("leader", "one", "follower"), "slow-out": ("leader", "one"),
    "loss": ("all", "all", "one"), "delay": ("all",), "duplicate": ("all", "all", "one"),
    "reorder": ("all",)}
OLD_DISRUPTIVE = {"kill", "kill-power", "restart", "pause", "isolate", "split", "cut-in",
                  "cut-out", "slow-in"}
OLD_WINDOWED = {"kill", "kill-power", "restart", "pause", "isolate", "split", "lead",
                "halves", "ring", "bridge", "cut-in", "cut-out", "slow-in", "slow-out",
                "loss", "delay", "duplicate", "reorder"}
OLD_NOT_AT_EVENT = {"compact", "loss", "delay", "duplicate", "reorder"}
OLD_FAMILIES = ("kill", "power", "pause", "partition", "net", "snapshot", "rotate", "enable",
                "corrupt")
NEW = {"clock-skew"}  # kinds added with the records
# issue 20: the storage faults and the composite primitives, in opt-in families
NEW |= {"bitflip", "sector-error", "lost-write", "misdirected-write", "deposed-tail",
        "minority-read", "snapshot-restart", "rotate-race"}


def test_the_derived_tables_are_the_records() -> None:
    actions = {k.name for k in KINDS.values() if k.family}
    assert ACTIONS == {a: (KINDS[a].family, KINDS[a].timed) for a in actions}
    assert set(HANDLERS) == actions
    assert plan_mod._ROLES == {k.name: k.roles for k in KINDS.values() if k.roles}
    assert list(plan_mod._ROLES) == [k.name for k in KINDS.values() if k.roles]  # pool order
    assert plan_mod._DISRUPTIVE == {k.name for k in KINDS.values() if k.disruptive}
    assert program.WINDOWED == {k.name for k in KINDS.values() if k.windowed}
    # The heal runs each final undo once: those the kinds name, and no other.
    assert set(final_undos()) == {k.final for k in KINDS.values()}
    assert [u.stage for u in final_undos()] == sorted(u.stage for u in final_undos())


def test_the_records_say_what_the_old_tables_said() -> None:
    assert {a: v for a, v in ACTIONS.items() if a not in NEW} == OLD_ACTIONS
    assert list(OLD_ACTIONS) == [a for a in ACTIONS if a not in NEW]
    assert {a: r for a, r in plan_mod._ROLES.items() if a not in NEW} == OLD_ROLES
    assert list(OLD_ROLES) == [a for a in plan_mod._ROLES if a not in NEW]
    assert plan_mod._DISRUPTIVE - NEW == OLD_DISRUPTIVE
    assert program.WINDOWED - NEW == OLD_WINDOWED
    assert FAMILIES == OLD_FAMILIES == parse_families("all")
    not_at_event = {a for a in plan_mod._ROLES if not KINDS[a].at_event_node
                    and plan_mod._ROLES[a][0] != "none"}
    assert not_at_event - NEW == OLD_NOT_AT_EVENT
    assert {a for a in ACTIONS if KINDS[a].focus_roles != ("leader", "event")} == {
        "split", "deposed-tail"}


def test_every_kind_is_whole() -> None:
    """A handler, a final undo (NOTHING said out loud), a known family; arguments drawn
    within the argument table's ranges; and every family has a kind."""
    for k in KINDS.values():
        assert callable(k.handler) and k.final is not None, k.name
        assert k.family in FAMILIES + OPT_IN_FAMILIES or (k is HEAL and not k.family)
        assert not k.windowed or k.family, k.name
        for seed in range(50):
            args = k.draw(random.Random(seed))
            assert set(args) <= set(PARAMS)
            if k.family:
                Step(1, k.name, params=args)  # ValueError if a draw is out of its range
    assert {k.family for k in KINDS.values() if k.family} == set(FAMILIES + OPT_IN_FAMILIES)
    assert HEAL.runs_at == "heal" and KINDS["corrupt-entry"].runs_at == "final"
    assert {k.name for k in KINDS.values() if k.runs_at} == {"heal-all", "corrupt-entry"}
    assert KINDS["snapshot"].final is NOTHING
    assert KINDS["clock-skew"].final.name == "clocks" and KINDS["clock-skew"].windowed


def test_fault_kinds_import_only_nemesis_and_the_standard_library() -> None:
    import sys

    for name in ("faults.py", "world.py", "storage_faults.py"):
        tree = ast.parse((ROOT / "nemesis" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                top = (node.module or "").split(".")[0]
            elif isinstance(node, ast.Import):
                top = node.names[0].name.split(".")[0]
            else:
                continue
            assert top in ("nemesis", "__future__") or top in sys.stdlib_module_names, \
                (name, top)


def _digest(fam: str, scenario: str, seed: int, shape: dict[str, float]) -> str:
    d = make_plan(seed, parse_families(fam), scenario=scenario, **shape).to_dict()  # type: ignore[arg-type]
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def test_plans_for_fixed_seeds_are_what_the_code_before_the_records_drew() -> None:
    doc = json.loads(GOLDEN.read_text())
    lo, hi = doc["seeds"]
    assert doc["scenarios"] == list(SCENARIOS)
    got = {f"{fam}|{scen}|{s}": _digest(fam, scen, s, doc["shape"])
           for fam in doc["families"] for scen in doc["scenarios"] for s in range(lo, hi + 1)}
    changed = sorted(k for k in got if got[k] != doc["digests"][k])
    assert len(got) == len(doc["digests"]) == 600 and not changed, changed[:10]


def test_the_clock_family_is_drawn_only_when_named() -> None:
    shape = {"time_limit": 30.0, "interval": 5.0, "cutover_at": 10.0, "nodes": 5}
    assert parse_families("all,clock") == FAMILIES + ("clock",)
    assert parse_families("clock,kill") == ("clock", "kill")
    with pytest.raises(PlanError, match="unknown nemesis 'clocks'"):
        parse_families("all,clocks")
    drawn = 0
    for seed in range(1, 41):
        old = make_plan(seed, FAMILIES, **shape)  # type: ignore[arg-type]
        assert all(s.action != "clock-skew" for s in old.steps)
        new = make_plan(seed, parse_families("all,clock"), **shape)  # type: ignore[arg-type]
        skews = [s for s in new.steps if s.action == "clock-skew"]
        drawn += len(skews)
        for s in skews:
            assert 0.25 <= s.params["factor"] <= 4.0 and s.duration > 0 or s.until
            assert s.target.role in KINDS["clock-skew"].roles + ("event", "bound", "leader")
        only = make_plan(seed, ("clock",), **shape)  # type: ignore[arg-type]
        assert {s.action for s in only.steps} <= {"clock-skew", "enable"}  # the cutover
    assert drawn > 10
    # A plan holding it is a plan like any other: stored and read back.
    p = make_plan(3, parse_families("all,clock"), **shape)  # type: ignore[arg-type]
    assert type(p).from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_the_simulated_cluster_ticks_a_skewed_node_faster_and_slower() -> None:
    """The simulator's clock skew stepped by hand (milliseconds): a factor scales the
    node's tick period from its next tick on, and a restart keeps it."""
    from orchestrator.sim.cluster import US, SimCluster

    cl = SimCluster(3)
    cl.set_tick_factor("n2", 4.0)
    cl.set_tick_factor("n3", 0.25)
    cl.run_until(2 * US)
    ticks = {n: cl.nodes[n].ticks for n in cl.ids}
    assert ticks["n2"] > 3.5 * ticks["n1"] and ticks["n3"] < 0.3 * ticks["n1"], ticks
    cl.kill("n2")
    cl.start("n2")
    cl.run_until(3 * US)
    before = cl.nodes["n2"].ticks
    cl.run_until(4 * US)
    assert cl.nodes["n2"].ticks - before > 3.5 * 40  # 25 ms ticks: 40 a second, x4
