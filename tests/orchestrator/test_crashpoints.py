"""Crash-consistency exploration (orchestrator/sim/crashpoints.py): a base run's boundary
count has no effect of its own, a re-run dies exactly at the boundary it picked (and
again, when asked), the node recovers, a crash point that never fires is no pass, and
`cutover sim --crash-points` runs and reports the re-runs."""
from __future__ import annotations

import dataclasses
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.run.config import CRASH_BOUNDARIES, RunConfig, RunError, check_crash_point
from orchestrator.sim.crashpoints import CONTEXTS, pick_crash_points, point_of
from orchestrator.sim.run import simulate

ROOT = Path(__file__).resolve().parents[2]


def _key(o):  # a history, compared across runs
    return [(x["idx"], x["process"], x["type"], x["f"], x["key"], x["value"]) for x in o.ops]


@pytest.mark.parametrize("cp, match", [
    ([], "must be an object"),
    ({"node": "n9", "k": 1, "action": "crash"}, "node must be one of n1..n5"),
    ({"node": "n1", "k": 0, "action": "crash"}, "k must be a whole number from 1"),
    ({"node": "n1", "k": True, "action": "crash"}, "k must be"),
    ({"node": "n1", "k": 3, "action": "explode"}, "action must be one of crash, tear, kill"),
    ({"node": "n1", "k": 3, "action": "tear", "again": -1}, "again must be"),
    ({"node": "n1", "k": 3, "action": "tear", "point": "host.tick"}, "point must be one of"),
    ({"node": "n1", "k": 3, "action": "tear", "when": 2}, "unknown field"),
])
def test_a_crash_point_that_is_not_one_is_one_line(cp, match) -> None:
    with pytest.raises(RunError, match=match):
        RunConfig(crash_point=cp).validate()  # type: ignore[arg-type]
    ok = check_crash_point({"node": "n2", "k": 4, "action": "kill"}, 3)
    assert ok == {"node": "n2", "k": 4, "action": "kill", "again": 0}


def test_picks_weigh_a_rare_kind_of_boundary_like_a_common_one() -> None:
    """Stratified by kind: a boundary crossed once among thousands of WAL syncs is picked
    about as often as the WAL's (uniform picks would find it once in 3,000)."""
    wal, rare = CRASH_BOUNDARIES.index("wal.synced"), CRASH_BOUNDARIES.index("file.renamed")
    trace = bytearray([wal] * 3000)
    trace[1234] = rare
    seen: Counter[str] = Counter()
    for seed in range(200):
        picks = pick_crash_points(seed, {"n1": bytes(trace), "n2": b""}, 2)
        assert picks == pick_crash_points(seed, {"n1": bytes(trace), "n2": b""}, 2)
        for p in picks:
            assert p["node"] == "n1" and 1 <= p["k"] <= len(trace)
            assert point_of(trace[p["k"] - 1]) == p["point"]  # k counts from 1
            check_crash_point(p, 2)
            seen[p["point"]] += 1
    print(seen)
    assert seen["file.renamed"] >= 100, seen
    assert pick_crash_points(1, {"n1": b""}, 3) == []


@pytest.mark.sim
def test_a_rerun_dies_at_the_boundary_it_picked_and_the_node_recovers(tmp_path) -> None:
    seed = 5
    cfg = RunConfig(seed=seed, time_limit=10, cutover_at=3, rate=100)
    plain = simulate(cfg, tmp_path / "plain")
    base = simulate(cfg, tmp_path / "base", probe=True)
    print(f"seed {seed}: base {base.verdict}, boundaries "
          f"{ {n: len(t) for n, t in base.boundaries.items()} }")
    assert _key(plain) == _key(base), "counting boundaries changed the run"
    assert base.verdict == "valid" and all(base.boundaries.values())
    rng = random.Random(seed)
    n = rng.choice(sorted(base.boundaries))
    trace = base.boundaries[n]
    # A power loss right after a temp file was renamed, before its directory sync, and a
    # torn one 3 boundaries after the restart: the second recovery reads the first's work.
    k = next(i for i, p in enumerate(trace, 1) if point_of(p) == "file.renamed"
             and i > len(trace) // 3)
    cp = {"node": n, "k": k, "action": "tear", "again": 3, "point": point_of(trace[k - 1])}
    # Every kind of moment shows up: a start-up's writes, an election's, steady work.
    seen = {CONTEXTS[b // 16] for t in base.boundaries.values() for b in t}
    assert seen == set(CONTEXTS), seen
    o = simulate(dataclasses.replace(cfg, crash_point=cp), tmp_path / "cp")
    fired = [e for e in o.events if e["kind"] == "buggify" and "crash_point" in e]
    print(cp, o.verdict, o.failing, fired)
    assert [(e["node"], e["crash_point"], e["action"]) for e in fired] == [
        (n, k, "tear"), (n, k + 3, "tear")]
    assert fired[0]["point"] == fired[0]["expected"] == "file.renamed"
    assert _key(o)[:10] == _key(base)[:10]
    # (The second may strike while it recovers: its start-up writes its sidecar.)
    assert any(e["node"] == n and e["kind"] == "start" and e["t"] > fired[-1]["t"]
               for e in o.events), "the node did not come back after the power losses"
    assert o.config["crash_point"] == cp  # stored with the run: `sim --replay` has it
    assert o.verdict == "valid", (o.failing, o.first)


@pytest.mark.sim
def test_a_crash_point_that_never_fires_is_not_a_pass(tmp_path) -> None:
    cfg = RunConfig(seed=3, time_limit=6, cutover_at=2, rate=100,
                    crash_point={"node": "n1", "k": 10**9, "action": "crash"})
    o = simulate(cfg, tmp_path / "x")
    print(o.verdict, o.first)
    assert o.verdict == "unknown"
    assert "durability boundary 1000000000 and none happened" in o.first[1]


@pytest.mark.sim
def test_sim_crash_points_reports_the_reruns(tmp_path) -> None:
    cmd = [sys.executable, "-m", "orchestrator.cli", "sim", "--seeds", "2", "--crash-points",
           "2", "--time-limit", "8", "--nodes", "3", "--results", str(tmp_path / "r")]
    print(" ".join(cmd[2:]))
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"sim: (\d+) seeds .*of them (\d+) crash re-runs, (\d+) failed", r.stdout)
    assert m, r.stdout
    seeds, reruns, failed = map(int, m.groups())
    assert reruns >= 2 and seeds == 2 + reruns and failed == 0, r.stdout
    # It ends with what to type next (nothing failed: the batch's coverage).
    assert r.stdout.splitlines()[-3:] == [
        "next:", f"  cutover coverage --results {tmp_path / 'r'}",
        f"  cutover serve --results {tmp_path / 'r'}"], r.stdout
