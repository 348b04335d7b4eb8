"""BUGGIFY in the simulator (orchestrator/sim/buggify.py, SimCluster): every point is
reached, fired points are coverage, runs stay valid and deterministic, and with BUGGIFY
off nothing changes."""
from __future__ import annotations

import dataclasses

import pytest

import orchestrator.sim.run as sim_run
from checker.coverage import buggify_fired
from node.buggify import OFF, POINTS
from orchestrator.run.config import RunConfig, RunError
from orchestrator.sim.buggify import draw_points
from orchestrator.sim.cluster import SimCluster, SimSettings


@dataclasses.dataclass
class _On(SimSettings):
    def __post_init__(self) -> None:
        self.buggify = True


@pytest.fixture
def buggify_on(monkeypatch):
    """`SimWorld` builds its settings from the run config; until it passes
    `RunConfig.buggify` on, force it here (harmless once it does)."""
    monkeypatch.setattr(sim_run, "SimSettings", _On)


def _run(tmp_path, seed: int, **kw):
    cfg = RunConfig(seed=seed, time_limit=kw.pop("time_limit", 30), rate=100,
                    buggify=True, **kw)
    o = sim_run.simulate(cfg, tmp_path / f"s{seed}")
    print(f"seed {seed}: {o.verdict} {o.failing or ''}")
    return o


def test_draw_is_its_own_stream() -> None:
    assert draw_points(7) == draw_points(7)
    assert {p for s in range(1, 30) for p in draw_points(s)} == set(POINTS)
    cl = SimCluster(5, SimSettings(nodes=3))
    assert all(n.bug is OFF for n in cl.nodes.values())


def test_config_knob_is_checked() -> None:
    assert RunConfig().buggify is False
    with pytest.raises(RunError, match="buggify"):
        RunConfig(buggify="yes").validate()  # type: ignore[arg-type]


@pytest.mark.sim
def test_every_point_is_reached_and_fired_points_are_coverage(tmp_path, buggify_on) -> None:
    reached: set[str] = set()
    fired: set[str] = set()
    for seed in (1, 2):
        o = _run(tmp_path, seed)
        assert o.verdict == "valid", (seed, o.failing)
        evs = [e for e in o.events if e["kind"] == "buggify"]
        reached |= {e["point"] for e in evs if e["action"] == "reached"}
        here = {e["point"] for e in evs if e["action"] != "reached"}
        fired |= here
        assert set(buggify_fired(o.coverage)) == {f"buggify:{p}" for p in here}
    # The durable KV store's points (`fsm.*`) are the elastickv profile's only.
    assert reached == set(POINTS) - EKV_ONLY, sorted(set(POINTS) - EKV_ONLY - reached)
    assert fired  # the seeds were chosen to fire (deaths among them)


EKV_ONLY = {p for p in POINTS if p.startswith("fsm.")}


@pytest.mark.sim
def test_the_elastickv_profile_reaches_its_durable_store_points(tmp_path, buggify_on) -> None:
    o = _run(tmp_path, 1, time_limit=12, profile="elastickv")
    reached = {e["point"] for e in o.events
               if e["kind"] == "buggify" and e["action"] == "reached"}
    assert reached >= EKV_ONLY, sorted(EKV_ONLY - reached)


@pytest.mark.sim
def test_buggify_runs_replay(tmp_path, buggify_on) -> None:
    a, b = _run(tmp_path / "a", 1), _run(tmp_path / "b", 1)
    assert a.events == b.events and a.ops == b.ops and a.nemesis == b.nemesis


@pytest.mark.sim
def test_off_runs_have_no_trace(tmp_path) -> None:
    off = sim_run.simulate(RunConfig(seed=1, time_limit=12, rate=100), tmp_path / "off")
    assert not [e for e in off.events if e["kind"] == "buggify"]
    assert not buggify_fired(off.coverage)
