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
    for bad in (0, len(POINTS) + 1, True, "all"):
        with pytest.raises(RunError, match="buggify_points"):
            RunConfig(buggify_points=bad).validate()  # type: ignore[arg-type]


def test_a_stored_config_keeps_the_points_it_knew() -> None:
    """A point added later must not change how a stored seed replays: a config stored
    before `buggify_points` existed knew the first 14 points, a new one knows all, and
    the draw over a prefix is the longer draw cut to that prefix."""
    from orchestrator.run.config import BUGGIFY_LEGACY_POINTS

    old = {k: v for k, v in dataclasses.asdict(RunConfig(seed=3, buggify=True)).items()
           if k != "buggify_points"}
    assert RunConfig.from_dict(old).buggify_points == BUGGIFY_LEGACY_POINTS
    fresh = RunConfig(seed=3, buggify=True).resolved()
    assert fresh.buggify_points == len(POINTS)
    assert RunConfig.from_dict(dataclasses.asdict(fresh)).buggify_points == len(POINTS)
    for seed in range(1, 40):
        legacy = draw_points(seed, POINTS[:BUGGIFY_LEGACY_POINTS])
        full = draw_points(seed)
        assert legacy == {p: a for p, a in full.items() if p in POINTS[:BUGGIFY_LEGACY_POINTS]}


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


def _votes_not_synced(monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/defects/vote-not-synced.patch, put in by hand: a Ready whose hard state
    changed only in its vote is not fsynced before the vote is sent."""
    from node.raft_ready import ReadyAssembly

    orig = ReadyAssembly.ready

    def ready(self: ReadyAssembly):  # type: ignore[no-untyped-def]
        phs = self._persisted_hs
        rd = orig(self)
        hs = rd.hard_state
        if (hs is not None and rd.must_sync and not rd.entries and rd.snapshot is None
                and hs.term == phs.term and hs.vote != phs.vote):
            rd.must_sync = False
        return rd

    monkeypatch.setattr(ReadyAssembly, "ready", ready)


@pytest.mark.sim
def test_a_vote_forgotten_at_a_power_loss_is_seen(tmp_path, monkeypatch) -> None:
    """The negative control of I4's vote-durability check and of `host.sent-vote`: with
    votes not synced, seed 22 (BUGGIFY on) grants a vote in a term its voter already
    held, loses power right after it, and comes back voting for nobody; the fixed build
    on the same seed is valid."""
    o = _run(tmp_path / "fixed", 22, time_limit=30)
    assert o.verdict == "valid", (o.failing, o.first)
    _votes_not_synced(monkeypatch)
    o = _run(tmp_path / "defect", 22, time_limit=30)
    assert o.verdict == "invalid" and o.failing == "cutover I4", (o.failing, o.first)
    assert "voting for nobody" in str(o.first)
    assert any(e["kind"] == "buggify" and e["point"] == "host.sent-vote"
               and e["action"] in ("crash", "tear") for e in o.events)


@pytest.mark.sim
def test_nodes_that_cannot_start_during_the_set_up_are_a_finding(tmp_path, monkeypatch) -> None:
    """Seed 164 with `write_atomic`'s fsync dropped (tests/defects/atomic-write-no-fsync
    .patch, by hand): power losses right after the first votes leave three nodes an
    empty node-id file, they refuse to start and the bootstrap never completes. That was
    a harness error (exit 3); it is the nodes' own failure, judged INVALID (crashes).
    The fixed build on the same seed is valid."""
    import node.disk as disk_mod

    assert _run(tmp_path / "fixed", 164).verdict == "valid"

    def no_fsync(disk, path, data, *, temp_suffix=".tmp", mode=0o644):  # type: ignore[no-untyped-def]
        p = disk_mod.Path(path)
        tmp = p.with_name(p.name + temp_suffix)
        bg = getattr(disk, "buggify", OFF)
        f = disk.create_truncate(tmp, mode)
        try:
            f.write(data)
            if bg.on:
                bg.hit("file.written")
            if bg.on:  # the defect: no f.sync() between the two points
                bg.hit("file.synced")
        finally:
            f.close()
        disk.rename(tmp, p)
        if bg.on:
            bg.hit("file.renamed")
        disk.sync_dir(p.parent)
        if bg.on:
            bg.hit("file.dir.synced")

    import orchestrator.sim.disk as sim_disk

    monkeypatch.setattr(sim_disk, "write_atomic", no_fsync)
    o = _run(tmp_path / "defect", 164)
    assert o.verdict == "invalid" and o.failing == "crashes", (o.failing, o.first)
    assert "WrongNodeError" in str(o.first)
