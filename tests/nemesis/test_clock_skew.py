"""The clock-skew fault in both worlds: a node's timers run fast or slow (its tick period
scaled), recorded as a window like any other fault, undone at the window's end and by the
heal. In the simulator the victim's ticks are counted against an unskewed twin run; on
real processes the node answers the tick-factor request itself, outside Raft."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from nemesis.plan import Plan
from nemesis.primitives import Step, Target, When
from orchestrator.run.config import RunConfig
from orchestrator.run.program import Run


def _sim(tmp: Path, plan: Plan) -> tuple[Any, Any]:
    """A simulated run of `plan` (3 nodes, 6 s, no cutover); its world and verdict."""
    from orchestrator.sim.run import SimWorld

    cfg = RunConfig(seed=5, nodes=3, time_limit=6.0, rate=50, cutover_at=None,
                    nemesis=",".join(plan.families) or "none").resolved()
    cfg = cfg.with_knobs(plan)
    world = SimWorld(cfg, tmp, {**asdict(cfg), "plan": plan.to_dict()})
    return world, Run(world, cfg, plan).go()


@pytest.mark.sim
def test_a_fast_follower_ticks_faster_than_in_its_unskewed_twin(tmp_path: Path) -> None:
    fast = Step(1, "clock-skew", Target("follower", bind="F"), When(at=1.0), duration=3.0,
                params={"factor": 4.0})
    slow = Step(2, "clock-skew", Target("bound", ref="F"), When(at=4.5), duration=30.0,
                params={"factor": 0.5})  # held past the time limit: the heal undoes it
    skewed, judged = _sim(tmp_path / "skewed", Plan(5, ("clock",), "swarm", (fast, slow)))
    twin, twin_judged = _sim(tmp_path / "twin", Plan(5, (), "swarm", ()))
    assert judged.verdict == twin_judged.verdict == "valid", (judged.first, twin_judged.first)
    [start] = [r for r in skewed.nemesis if r["fault"] == "clock-skew" and r["f"] == "start"
               and r["detail"]["step"] == 1]
    [victim] = start["targets"]
    assert start["detail"]["factor"] == 4.0
    stops = [r for r in skewed.nemesis if r["fault"] == "clock-skew" and r["f"] == "stop"]
    assert [r["detail"]["step"] for r in stops] == [1]  # step 2 is still held at the heal
    assert stops[0]["time_ns"] - start["time_ns"] == 3_000_000_000
    [heal] = [r for r in skewed.nemesis if r["fault"] == "heal-all"]
    assert heal["detail"]["clock_reset"] == [victim]
    assert skewed.cl.nodes[victim].tick_factor == 1.0
    # 3 s at 4x, then 1.5 s at 1/2 until the heal: about 40 * (3 * 3 - 1.5 / 2) = 330
    # ticks more than in the twin. The other nodes tick as there (the same seed: the same
    # boot phases).
    ticks = {n: skewed.cl.nodes[n].ticks for n in skewed.ids}
    base = {n: twin.cl.nodes[n].ticks for n in twin.ids}
    print("ticks skewed", ticks, "twin", base)
    assert ticks[victim] > base[victim] + 250
    for n in skewed.ids:
        if n != victim:
            assert abs(ticks[n] - base[n]) <= 2, (n, ticks, base)


@pytest.mark.real
def test_a_real_node_changes_its_tick_factor_at_run_time(tmp_path: Path) -> None:
    """Faster and slower on a live process; told when resumed if paused meanwhile;
    kept across a restart; a nonsense factor refused."""
    from node.server import TICK_FACTOR_OP
    from orchestrator.real.client import Client
    from orchestrator.real.cluster import Cluster

    def ask(c: Client, **fields: Any) -> dict[str, Any]:
        return c.admin("n1", TICK_FACTOR_OP, timeout=2.0, **fields)

    def rate(c: Client, seconds: float = 0.6) -> float:
        t0, a = time.monotonic(), ask(c)["value"]["ticks"]
        time.sleep(seconds)
        return (ask(c)["value"]["ticks"] - a) / (time.monotonic() - t0)

    with Cluster(str(tmp_path / "nodes"), 1, tick_ms=25.0) as cl:
        cl.start()
        with Client(cl.endpoints(), timeout=2.0) as c:
            assert ask(c)["value"]["factor"] == 1.0
            normal = rate(c)
            assert cl.set_tick_factor("n1", 4.0)
            fast = rate(c)
            assert fast > 2.5 * normal, (normal, fast)
            cl.pause("n1")
            assert not cl.set_tick_factor("n1", 0.25, timeout=0.3)  # stopped: told later
            cl.resume("n1")
            assert ask(c)["value"]["factor"] == 0.25
            assert rate(c) < 0.5 * normal
            cl.kill("n1")
            cl.start_node("n1")
        with Client(cl.endpoints(), timeout=2.0) as c:
            assert ask(c)["value"]["factor"] == 0.25  # a restarted node keeps its skew
            stale = ask(c, factor=3.0, seq=1)["value"]  # older than the one in force
            assert stale["stale"] and stale["factor"] == 0.25
            bad = ask(c, factor=float("nan"))
            assert not bad["ok"] and bad["code"] == "bad-request"
            assert cl.set_tick_factor("n1", 1.0) and ask(c)["value"]["factor"] == 1.0


@pytest.mark.real
def test_a_real_run_records_the_skew_window_and_the_node_obeys(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator import store
    from orchestrator.real.cluster import Cluster
    from orchestrator.real.run import execute

    told: list[tuple[str, float, bool]] = []
    original = Cluster.set_tick_factor

    def spy(self: Cluster, nid: str, factor: float, timeout: float = 2.0) -> bool:
        ok = original(self, nid, factor, timeout)
        told.append((nid, factor, ok))
        return ok

    monkeypatch.setattr(Cluster, "set_tick_factor", spy)
    plan = Plan(seed=11, families=("clock",), scenario="swarm", steps=(
        Step(1, "clock-skew", Target("follower"), When(at=0.5), duration=1.5,
             params={"factor": 3.0}),))
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan.to_dict()))
    cfg = RunConfig(seed=11, nodes=3, time_limit=3.0, rate=30, cutover_at=None,
                    quiet_period=0.5, results=str(tmp_path / "results"),
                    plan_file=str(plan_file), nemesis="clock")
    out = execute(cfg, out=None, progress=None, handle_signals=False)
    assert out.verdict == "valid", out.first
    with store.opened(cfg.results) as db:
        rows = [r for r in store.nemesis_rows(db, out.run_id) if r["fault"] == "clock-skew"]
    assert [r["f"] for r in rows] == ["start", "stop"]
    [victim] = rows[0]["targets"]
    assert rows[0]["detail"]["factor"] == 3.0 and rows[1]["targets"] == [victim]
    assert 1.3e9 < rows[1]["time_ns"] - rows[0]["time_ns"] < 3e9
    assert told == [(victim, 3.0, True), (victim, 1.0, True)]
