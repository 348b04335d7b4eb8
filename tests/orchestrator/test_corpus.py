"""The coverage-guided search's corpus (`orchestrator/sim/corpus.py`): what counts as new,
what is kept, that every mutant is a valid plan that leaves the run's own steps alone,
and that the schedule depends on the first seed alone, not on the pool's timing. The
last test (`sim`) runs a short guided search: a mutant runs, is stored as a plan file
and replays alone. Every test prints its seeds."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from nemesis.plan import FAMILIES, Plan, make_plan
from orchestrator.sim.corpus import LAG, WARMUP, Corpus, Guide, features, mutate


def _plan(seed: int) -> Plan:
    return make_plan(seed, FAMILIES, time_limit=30, interval=5.0, cutover_at=10.0, nodes=5)


def _ev(t: int, node: str, kind: str, **d: object) -> dict[str, object]:
    return {"time_ns": t, "node": node, "kind": kind, **d}


def test_features_pair_role_and_restart_with_the_cutover_state() -> None:
    print("no seed: synthetic events")
    evs = [
        _ev(1, "n1", "role", role="leader", last_index=5, applied=5),
        _ev(2, "n1", "marker-proposed", index=10),
        _ev(3, "n2", "role", role="leader", last_index=10, applied=9),  # logged, unapplied
        _ev(4, "n3", "role", role="follower", last_index=8, applied=8),  # marker missing
        _ev(5, "n1", "encryption-applied", what="marker-fresh", index=10, cutover=10),
        _ev(6, "n1", "role", role="follower", last_index=12, applied=12),
        _ev(7, "n4", "start", cutover=10, snapshot_index=7),
    ]
    nem = [{"time_ns": 3, "f": "start", "fault": "kill"},
           {"time_ns": 9, "f": "stop", "fault": "kill"}]
    fs = set(features(evs, nem, {"install-snapshot": {"count": 5}, "not-a-point": {}}))
    assert {"role:leader:none", "role:leader:logged", "role:follower:missing",
            "role:follower:applied", "start:active:below:post", "fault:kill:flight",
            "apply:marker-fresh:post", "point:install-snapshot",
            "count:install-snapshot:4"} <= fs
    assert not any("not-a-point" in f for f in fs)
    assert not any(f.startswith("fault:kill:post") for f in fs)  # a stop is no fault


def test_the_corpus_keeps_only_news_and_favours_the_rare() -> None:
    print("no seed: synthetic features")
    c = Corpus()
    assert c.see(1, {"steps": []}, ["a", "b"])
    assert not c.see(2, {"steps": []}, ["a"])
    assert c.see(3, {"steps": []}, ["a", "c"])
    assert not c.see(4, None, ["d"])  # nothing to keep: counted all the same
    assert [e.seed for e in c.entries] == [1, 3] and c.counts["d"] == 1
    c.see(5, None, ["b", "b2"])
    c.see(6, None, ["b"])
    # seed 3's "c" was reached once, seed 1's "b" three times
    assert c.energy(c.entries[1]) > c.energy(c.entries[0])


@pytest.mark.parametrize("seed", [1, 7, 42])
def test_every_mutant_is_a_valid_plan_that_keeps_the_runs_own_steps(seed: int) -> None:
    print(f"plan seeds {seed}, {seed + 100}; mutation rng corpus-test:{seed}")
    rng = random.Random(f"corpus-test:{seed}")
    plan, donor = _plan(seed), _plan(seed + 100)
    main = [s for s in plan.steps if s.action == "enable" and s.params.get("main")]
    ops_seen: set[str] = set()
    for _ in range(25):
        try:
            m, ops = mutate(plan, rng, time_limit=30, donors=[donor])
        except ValueError:
            continue
        ops_seen.update(o.split()[0] for o in ops)
        assert Plan.from_dict(json.loads(json.dumps(m.to_dict()))) == m
        assert [s for s in m.steps if s.action == "enable" and s.params.get("main")] == main
        assert all(0 <= s.when.at <= 30 for s in m.steps if s.when.on == "time")
        assert m.families == plan.families and m != plan or not ops
    assert len(ops_seen) >= 6, ops_seen


def _drive(order: list[int], n: int) -> list[tuple[int, str]]:
    """A guide fed the results of `n` jobs in a shuffled completion order (`order`
    says which finished job is reported next, among those in flight)."""
    g = Guide(5, time_limit=30)
    inflight: list[int] = []
    jobs: list[tuple[int, str]] = []
    seed, picks = 5, iter(order)
    while len(jobs) < n or inflight:
        while len(jobs) < n and len(inflight) < 3 and g.can_plan():
            j = g.plan(seed)
            jobs.append((j.seed, j.lineage))
            inflight.append(seed)
            seed += 1
        done = inflight.pop(next(picks) % len(inflight))
        plan = _plan(done).to_dict()
        g.done(done, plan, [f"f{done % 7}", f"g{done % 3}", "common"])
    return jobs


def test_the_schedule_depends_on_the_first_seed_not_on_timing() -> None:
    print("guide first seed 5, jobs 5..28, three completion orders")
    a = _drive([0] * 100, 24)
    b = _drive([2, 1, 0] * 40, 24)
    c = _drive([1] * 100, 24)
    assert a == b == c
    assert [s for s, _ in a] == list(range(5, 29))
    assert all(not lin for _, lin in a[:WARMUP])
    assert any(lin for _, lin in a), "no mutant was scheduled"
    g = Guide(5, time_limit=30)
    for s in range(LAG + 1):
        assert g.can_plan()
        g.plan(100 + s)
    assert not g.can_plan()  # job LAG+1 must see job 0, still running
    g.done(100, None, ["x"])
    assert g.can_plan()


@pytest.mark.sim
def test_a_guided_search_runs_a_mutant_that_replays_from_its_plan_file(
        tmp_path: Path) -> None:
    from orchestrator.run.config import RunConfig
    from orchestrator.sim.cli import load_plan_file, search
    from orchestrator.sim.run import simulate

    cfg = RunConfig(nodes=3, time_limit=6, rate=40, seed=1)
    print("guided search, seeds 1..14 (nodes 3, time limit 6)")
    s = search(cfg, seeds=list(range(1, 15)), budget=None, first_seed=1, workers=2,
               guided=True)
    assert s.guide is not None and s.mutants, s.guide.summary()
    print(s.guide.summary())
    r = s.mutants[0]
    print(f"mutant seed {r.seed}: {r.lineage}: {r.verdict}")
    assert r.plan is not None
    path = tmp_path / "plan.json"
    doc = {"format": "cutover-plan", "mutant": r.lineage,
           "config": {**{k: v for k, v in cfg.__dict__.items() if k != "plan_file"},
                      "seed": r.seed},
           "plan": r.plan}
    path.write_text(json.dumps(doc, default=str))
    rcfg, plan, _ = load_plan_file(str(path))
    assert plan.to_dict()["features"]["mutant_of"] == int(r.lineage.split()[3].rstrip(":"))
    o = simulate(rcfg, tmp_path / "replay", plan)
    assert (o.verdict, sorted(o.coverage)) == (r.verdict, r.coverage)
    # the same search again: the same mutants (the corpus's choices replay)
    again = search(cfg, seeds=list(range(1, 15)), budget=None, first_seed=1, workers=1,
                   guided=True)
    assert [(x.seed, x.lineage) for x in again.results] == [
        (x.seed, x.lineage) for x in s.results]
