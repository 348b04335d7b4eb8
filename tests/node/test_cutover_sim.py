"""The cutover protocol in the deterministic simulator: the node's own code
(`node.host.NodeHost`: storage on a simulated disk, Raft, KV, the cutover) on seeded
simulated networks (`tests/simkit/scenario.py`). Each test prints its seed."""
from __future__ import annotations

import pytest

from node.envelope import is_wrapped_shape
from node.payload import decode_proposal
from node.types import EntryKind
from node.wal import damage_entry
from tests.simkit.scenario import Scenario as CutoverSim


def _cut_over(sim: CutoverSim, writes: int = 5, rotate_first: bool = False) -> tuple[str, int]:
    lead = sim.wait_leader()
    assert sim.call(lead, {"op": "bootstrap", "key_id": 1, "wrapped": sim.new_dek()})["ok"]
    if rotate_first:  # a rotation before the cutover: the marker must carry the new id
        assert sim.call(lead, {"op": "rotate-dek", "key_id": 3, "wrapped": sim.new_dek()})["ok"]
    for i in range(writes):
        rep = sim.call(lead, {"op": "write", "key": f"k{i % 3}", "value": f"pre-{i}"})
        assert rep and rep["ok"], rep
    rep = sim.call(lead, {"op": "enable-raft-envelope"})
    assert rep and rep["ok"] and rep["value"]["status"] == "ok", rep
    return lead, rep["value"]["cutover"]


def _verdict(sim: CutoverSim, bugged: bool, *invariants: str) -> None:
    """The invariant checker's view: with the switch, each of `invariants` is violated
    (first violation above C for I1); without it, every invariant holds."""
    report = sim.check()
    if bugged:
        for name in invariants:
            res = report.results[name]
            assert not res.valid, f"{name} should be violated: {report.to_dict(include_rows=False)}"
        if "I1" in invariants:
            v = report.results["I1"].first_violation
            assert v["index"] > report.cutover and v["node"] in sim.ids, v
    else:
        assert report.valid, report.first_violation()


def _expect_cleartext_above_c(sim: CutoverSim, bugged: bool, cutover: int) -> None:
    """The common symptom: with the switch, cleartext lands above C and the replicas
    halt on it (the checker says I1 and I3); without it, nothing of the sort."""
    _verdict(sim, bugged, "I1", "I3")
    if bugged:
        assert _above_c_cleartext(sim, cutover) and sim.halts()
    else:
        assert _above_c_cleartext(sim, cutover) == [] and not sim.halts()


def _above_c_cleartext(sim: CutoverSim, cutover: int) -> list[tuple[str, int]]:
    out = []
    for nid in sim.ids:
        for e in sim.durable_entries(nid):
            if e.index > cutover and e.kind is EntryKind.NORMAL and e.data:
                if not is_wrapped_shape(decode_proposal(e.data)[1]):
                    out.append((nid, e.index))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_fault_free_cutover_with_rotations(seed: int) -> None:
    print(f"seed={seed}")
    sim = CutoverSim(seed)
    lead, cutover = _cut_over(sim, rotate_first=True)  # active key 3
    # A key id below the active one is refused (issue 26: the active key never moves
    # back); a newer one takes effect.
    late = sim.call(lead, {"op": "rotate-dek", "key_id": 2, "wrapped": sim.new_dek()})
    assert not late["ok"] and late["code"] == "stale-key", late
    assert sim.call(lead, {"op": "rotate-dek", "key_id": 4, "wrapped": sim.new_dek()})["ok"]
    for i in range(5):
        assert sim.call(lead, {"op": "write", "key": f"k{i % 3}", "value": f"post-{i}"})["ok"]
    assert sim.heal_and_converge(), f"seed={seed}"
    assert len(set(sim.digests().values())) == 1, f"seed={seed}: {sim.digests()}"
    assert not sim.halts(), sim.halts()
    assert {sim.host(n).cut.sidecar.raft_envelope_cutover_index for n in sim.ids} == {cutover}
    assert {sim.host(n).cut.wrap for n in sim.ids} == {4}
    assert _above_c_cleartext(sim, cutover) == []
    report = sim.check()
    assert report.valid and report.cutover == cutover, (seed, report.first_violation())
    # every node restarted in heal_and_converge and reads the same values back
    assert sim.call(sim.wait_leader(), {"op": "read", "key": "k1"})["value"] == "post-4"
    assert sim.linearizable() == "valid", f"seed={seed}"


@pytest.mark.parametrize("bugged", [False, True])
def test_raw_admin_proposer_switch(bugged: bool) -> None:
    seed = 7
    print(f"seed={seed} bugged={bugged}")
    sim = CutoverSim(seed, bugs=("raw-admin-proposer",) if bugged else ())
    lead, cutover = _cut_over(sim)
    sim.call(lead, {"op": "rotate-dek", "key_id": 2, "wrapped": sim.new_dek()}, max_ticks=60)
    sim.run_ticks(60)
    _verdict(sim, bugged, *("I1", "I3"))
    if bugged:
        assert {h["node"] for h in sim.halts()} == set(sim.ids)
        assert all(h["index"] > cutover for h in sim.halts())
        assert _above_c_cleartext(sim, cutover)
    else:
        assert not sim.halts()
        assert _above_c_cleartext(sim, cutover) == []


@pytest.mark.parametrize("bugged", [False, True])
def test_no_barrier_switch(bugged: bool) -> None:
    """A busy leader during EnableRaftEnvelope: without the barrier, writes proposed
    between the marker and its apply go in cleartext and land above C."""
    seed = 3
    print(f"seed={seed} bugged={bugged}")
    sim = CutoverSim(seed, bugs=("no-barrier",) if bugged else ())
    lead = sim.wait_leader()
    assert sim.call(lead, {"op": "bootstrap", "key_id": 1, "wrapped": sim.new_dek()})["ok"]
    enable = sim.submit(lead, {"op": "enable-raft-envelope"})
    writes = []
    for i in range(400):  # a write every 100 us while EnableRaftEnvelope runs
        if sim.reply(enable) is not None:
            break
        writes.append(sim.submit(lead, {"op": "write", "key": "busy", "value": f"w{i}"}))
        sim.run_for(0.0001)
    sim.run_ticks(80)
    rep = sim.reply(enable)
    _verdict(sim, bugged, *("I1", "I3"))
    if bugged:
        assert sim.halts(), "cleartext above C must halt the replicas"
        cutover = sim.host(lead).cut.sidecar.raft_envelope_cutover_index
        assert cutover and _above_c_cleartext(sim, cutover)
    else:
        assert rep and rep["ok"], rep
        assert not sim.halts()
        assert _above_c_cleartext(sim, rep["value"]["cutover"]) == []
        refused = [sim.reply(w) for w in writes]
        assert any(r and r.get("code") == "cutover-in-progress" for r in refused)


def _replay_setup(bugs: tuple[str, ...], seed: int) -> tuple[CutoverSim, str, int]:
    """Cutover with D1, rotate to D2, one node snapshotted below C: restart it."""
    sim = CutoverSim(seed, bugs=bugs)
    lead = sim.wait_leader()
    assert sim.call(lead, {"op": "bootstrap", "key_id": 1, "wrapped": sim.new_dek()})["ok"]
    for i in range(3):
        assert sim.call(lead, {"op": "write", "key": "k", "value": f"pre-{i}"})["ok"]
    x = next(n for n in sim.ids if n != lead)
    sim.run_ticks(20)
    snap = sim.compact(x)  # a snapshot older than C
    rep = sim.call(lead, {"op": "enable-raft-envelope"})
    cutover = rep["value"]["cutover"]
    assert snap < cutover
    assert sim.call(lead, {"op": "rotate-dek", "key_id": 2, "wrapped": sim.new_dek()})["ok"]
    sim.run_ticks(30)
    sim.crash(x)
    sim.restart(x)  # replays the marker from the log (its snapshot excludes it)
    sim.run_ticks(60)
    return sim, x, cutover


@pytest.mark.parametrize("bugged", [False, True])
def test_stale_check_first_switch(bugged: bool) -> None:
    seed = 11
    print(f"seed={seed} bugged={bugged}")
    sim, x, cutover = _replay_setup(("stale-check-first",) if bugged else (), seed)
    sim.make_leader(x)
    sim.call(x, {"op": "write", "key": "k", "value": "after"}, max_ticks=60)
    sim.run_ticks(60)
    _verdict(sim, bugged, *("I1", "I3"))
    if bugged:
        assert _above_c_cleartext(sim, cutover), "the replayed marker left the wrap off"
        assert sim.halts()
    else:
        assert _above_c_cleartext(sim, cutover) == [] and not sim.halts()


@pytest.mark.parametrize("bugged", [False, True])
def test_nonstrict_dispatch_switch(bugged: bool) -> None:
    seed = 5
    print(f"seed={seed} bugged={bugged}")
    sim, x, cutover = _replay_setup(("nonstrict-dispatch",) if bugged else (), seed)
    halts = [h for h in sim.halts() if h["node"] == x]
    _verdict(sim, bugged, *("I3",))
    if bugged:
        assert halts and halts[0]["index"] == cutover  # the cleartext marker "unwrapped"
    else:
        assert not sim.halts()


@pytest.mark.parametrize("bugged", [False, True])
def test_no_startup_wrap_switch(bugged: bool) -> None:
    seed = 9
    print(f"seed={seed} bugged={bugged}")
    sim = CutoverSim(seed, bugs=("no-startup-wrap",) if bugged else ())
    lead, cutover = _cut_over(sim)
    x = next(n for n in sim.ids if n != lead)
    sim.run_ticks(20)
    sim.compact(x)  # its snapshot covers C: no marker replay will install anything
    sim.crash(x)
    sim.restart(x)
    sim.make_leader(x)
    sim.call(x, {"op": "write", "key": "k", "value": "after-restart"}, max_ticks=60)
    sim.run_ticks(60)
    _expect_cleartext_above_c(sim, bugged, cutover)


@pytest.mark.parametrize("bugged", [False, True])
def test_snapshot_install_no_cutover_switch(bugged: bool) -> None:
    """A follower partitioned across the cutover catches up by InstallSnapshot."""
    seed = 13
    print(f"seed={seed} bugged={bugged}")
    sim = CutoverSim(seed, bugs=("snapshot-install-no-cutover",) if bugged else ())
    lead = sim.wait_leader()
    y = next(n for n in sim.ids if n != lead)
    sim.isolate(y)
    assert sim.call(lead, {"op": "bootstrap", "key_id": 1, "wrapped": sim.new_dek()})["ok"]
    rep = sim.call(lead, {"op": "enable-raft-envelope"})
    cutover = rep["value"]["cutover"]
    for i in range(4):
        assert sim.call(lead, {"op": "write", "key": "k", "value": f"post-{i}"})["ok"]
    sim.run_ticks(20)
    assert sim.compact(lead) > cutover  # y's next entry is gone: it needs the snapshot
    sim.heal()
    sim.call(lead, {"op": "write", "key": "k", "value": "after-heal"})
    sim.run_ticks(100)
    y_halts = [h for h in sim.halts() if h["node"] == y]
    _verdict(sim, bugged, *("I3",))
    if bugged:
        assert y_halts, "the follower cannot open what follows the snapshot"
    else:
        assert not sim.halts()
        assert sim.host(y).cut.cell == cutover and sim.host(y).kv.read("k") == "after-heal"


@pytest.mark.parametrize("bugged", [False, True])
def test_no_apply_installer_switch(bugged: bool) -> None:
    """Only the old leader's handler installed the wrap: after a failover, the new
    leader proposes cleartext above C."""
    seed = 17
    print(f"seed={seed} bugged={bugged}")
    sim = CutoverSim(seed, bugs=("no-apply-installer",) if bugged else ())
    lead, cutover = _cut_over(sim)
    sim.run_ticks(20)
    sim.crash(lead)
    new = sim.wait_leader()
    assert new != lead
    sim.call(new, {"op": "write", "key": "k", "value": "after-failover"}, max_ticks=60)
    sim.run_ticks(60)
    _expect_cleartext_above_c(sim, bugged, cutover)


def _leader_dies_as_marker_commits(sim: CutoverSim) -> tuple[str, int]:
    """The leader dies as soon as the marker commits, before any follower hears of it.
    Returns (the new leader, the marker's index)."""
    lead = sim.wait_leader()
    assert sim.call(lead, {"op": "bootstrap", "key_id": 1, "wrapped": sim.new_dek()})["ok"]
    sim.run_ticks(10)
    sim.submit(lead, {"op": "enable-raft-envelope"})
    fsm = sim.host(lead)

    def hide_commit(m) -> bool:
        """Drop what would tell the followers that the marker committed."""
        flow = fsm.enable[0] if fsm.enable else None
        mi = flow.marker_index if flow else 0
        return not (m.src == lead and mi and m.commit >= mi)

    sim.message_filter = hide_commit

    proposed: list[int] = []

    def marker_proposed() -> bool:
        flow = fsm.enable[0] if fsm.enable else None
        if flow and flow.marker_index:
            proposed.append(flow.marker_index)
        return bool(proposed)

    assert sim.run_until(marker_proposed, 200)
    marker = proposed[0]
    assert sim.run_until(lambda: sim.host(lead).raft.commit >= marker, 200)
    sim.crash(lead)
    # What it had in flight dies with it (the filter is applied at delivery), and slow
    # links keep the next leader's first entry uncommitted for a few ticks.
    sim.message_filter = lambda m: m.src != lead
    sim.slow(60, 10)
    assert all(sim.host(n).raft.commit < marker for n in sim.ids if n != lead)

    def new_leader() -> str | None:
        for n in sim.ids:
            if n != lead and sim.is_leader(n):
                return n
        return None

    # Stop at the very event that elects it: its own no-op is not committed yet.
    assert sim.run_until(lambda: new_leader() is not None, 600)
    new = new_leader()
    assert new is not None and sim.host(new).applied < marker
    return new, marker


@pytest.mark.parametrize("bugged", [False, True])
def test_leader_unapplied_marker_switch(bugged: bool) -> None:
    """The new leader must apply its log (the marker) before serving anything."""
    seed = 19
    print(f"seed={seed} bugged={bugged}")
    sim = CutoverSim(seed, bugs=("leader-unapplied-marker",) if bugged else ())
    new, marker = _leader_dies_as_marker_commits(sim)
    sim.run_ticks(80)
    cutover = sim.host(new).cut.sidecar.raft_envelope_cutover_index
    assert cutover == marker
    _expect_cleartext_above_c(sim, bugged, cutover)


@pytest.mark.parametrize("bugged", [False, True])
def test_duplicate_marker_switch(bugged: bool) -> None:
    """EnableRaftEnvelope retried on the new leader, whose log holds the committed but
    unapplied marker: the pre-check must wait for it, or a second raw marker lands
    above C."""
    seed = 19
    print(f"seed={seed} bugged={bugged}")
    sim = CutoverSim(seed, bugs=("duplicate-marker",) if bugged else ())
    new, marker = _leader_dies_as_marker_commits(sim)
    retry = sim.submit(new, {"op": "enable-raft-envelope"})
    sim.run_ticks(120)
    cutover = sim.host(new).cut.sidecar.raft_envelope_cutover_index
    assert cutover == marker
    _verdict(sim, bugged, *("I1", "I3"))
    if bugged:
        assert _above_c_cleartext(sim, cutover) and sim.halts()
    else:
        rep = sim.reply(retry)
        assert rep and rep["ok"] and rep["value"] == {"status": "already-active",
                                                        "cutover": marker}, rep
        assert not sim.halts()


def _enable_times_out(sim: CutoverSim) -> tuple[str, dict]:
    """Bootstrap, then lose the followers' acks to the leader until EnableRaftEnvelope's
    apply wait times out; the filter stays on (callers lift it). Returns the leader and
    the `failed` reply."""
    from node.raft import MsgType

    lead = sim.wait_leader()
    assert sim.call(lead, {"op": "bootstrap", "key_id": 1, "wrapped": sim.new_dek()})["ok"]
    sim.run_ticks(10)
    sim.message_filter = lambda m: not (m.dst == lead and m.type is MsgType.APP_RESP)
    enable = sim.submit(lead, {"op": "enable-raft-envelope"})
    assert sim.run_until(lambda: sim.reply(enable) is not None, 400)
    reply = sim.reply(enable)
    assert reply["code"] == "failed"
    return lead, reply


@pytest.mark.parametrize("bugged", [False, True])
def test_barrier_release_on_timeout_switch(bugged: bool) -> None:
    """The marker cannot commit for a while (the followers' acks are lost), so the
    handler's apply wait times out. The barrier must stay up: the marker may still
    commit, and anything proposed meanwhile would land above C in cleartext."""
    seed = 23
    print(f"seed={seed} bugged={bugged}")
    sim = CutoverSim(seed, bugs=("barrier-release-on-timeout",) if bugged else ())
    lead, _ = _enable_times_out(sim)
    writes = [sim.submit(lead, {"op": "write", "key": "k", "value": f"w{i}"})
              for i in range(3)]
    sim.message_filter = None
    sim.run_ticks(100)
    cutover = sim.host(lead).cut.sidecar.raft_envelope_cutover_index
    assert cutover, "the marker did commit in the end"
    _verdict(sim, bugged, *("I1", "I3"))
    if bugged:
        assert _above_c_cleartext(sim, cutover) and sim.halts()
    else:
        assert all(sim.reply(w)["code"] == "cutover-in-progress" for w in writes)
        assert _above_c_cleartext(sim, cutover) == [] and not sim.halts()


def test_enable_retried_on_a_leader_whose_barrier_is_stuck() -> None:
    """Found by `cutover run` (seed 1): the apply wait timed out with the marker still
    able to commit, and the operator asked the same leader again. "applied >= commit"
    holds (the marker is not committed), C is still 0: the old pre-check proposed a
    second raw marker, which landed above C once the first committed, and every replica
    halted. The stuck barrier now refuses the retry until a restart."""
    seed = 31
    print(f"seed={seed}")
    sim = CutoverSim(seed)
    lead, _ = _enable_times_out(sim)
    again = sim.submit(lead, {"op": "enable-raft-envelope"})
    assert sim.run_until(lambda: sim.reply(again) is not None, 400)
    assert sim.reply(again)["code"] == "failed"
    assert "restart" in sim.reply(again)["text"]
    sim.message_filter = None
    sim.run_ticks(100)
    assert sim.host(lead).cut.sidecar.raft_envelope_cutover_index
    _verdict(sim, False)
    assert not sim.halts()


def test_rotation_on_a_leader_whose_barrier_is_stuck_is_refused() -> None:
    """Found by `cutover sim` (seed 20 of the first fixed-build batch): the apply wait
    timed out with the marker still able to commit, the operator rotated the DEK on the
    same leader, and the rotate entry went out in cleartext (no barrier for admin
    proposals, no wrap installed yet) right behind the marker: once both committed it
    sat above C and every replica halted. The admin proposer now fails closed while a
    failed EnableRaftEnvelope's barrier is up (elastickv latches the same refusal)."""
    seed = 37
    print(f"seed={seed}")
    sim = CutoverSim(seed)
    lead, _ = _enable_times_out(sim)
    rot = sim.submit(lead, {"op": "rotate-dek", "key_id": 2, "wrapped": sim.new_dek()})
    assert sim.run_until(lambda: sim.reply(rot) is not None, 400)
    assert sim.reply(rot)["code"] == "cutover-in-progress", sim.reply(rot)
    sim.message_filter = None
    sim.run_ticks(100)
    cutover = sim.host(lead).cut.sidecar.raft_envelope_cutover_index
    assert cutover, "the marker did commit in the end"
    assert _above_c_cleartext(sim, cutover) == [] and not sim.halts()
    _verdict(sim, False)


@pytest.mark.parametrize("bugged", [False, True])
def test_silent_unwrap_skip_switch(bugged: bool) -> None:
    """One replica's copy of a wrapped entry is damaged on disk (a flipped bit). The
    fixed build halts that replica, loudly; with the switch it skips the entry and
    silently diverges from the others."""
    seed = 29
    print(f"seed={seed} bugged={bugged}")
    sim = CutoverSim(seed, bugs=("silent-unwrap-skip",) if bugged else ())
    lead, cutover = _cut_over(sim)
    assert sim.call(lead, {"op": "write", "key": "k", "value": "above-c"})["ok"]
    sim.run_ticks(20)
    x = next(n for n in sim.ids if n != lead)
    e = next(e for e in sim.durable_entries(x)
             if e.index > cutover and e.data[9:] and e.kind.name == "NORMAL"
             and sim.host(lead).cut.open_entry(e.index, e.data[9:])[:1] == b"\x00")
    sim.crash(x)
    # One bit of its copy, under the WAL's checksum (the corrupt-entry nemesis's damage).
    damage_entry(f"/sim/{x}/wal", e.index, disk=sim.cl.nodes[x].disk)
    sim.restart(x)
    sim.run_ticks(80)
    x_halts = [h for h in sim.halts() if h["node"] == x]
    digests = {n: sim.host(n).kv.digest() for n in sim.ids}
    report = sim.check()
    # The damaged copy itself is flagged (I1) either way; what the switch changes is
    # whether the replica stops (I3, loud) or goes on with a different state (I4).
    assert not report.results["I1"].valid
    assert report.results["I3"].valid is bugged
    assert report.results["I4"].valid is not bugged
    if bugged:
        assert not x_halts
        assert sim.host(x).applied == sim.host(lead).applied
        assert digests[x] != digests[lead], "the skipped write went unnoticed"
    else:
        assert x_halts and x_halts[0]["index"] == e.index
        assert digests[lead] == digests[next(n for n in sim.ids if n not in (x, lead))]


def _finish_and_check(sim: CutoverSim, seed: int) -> int:
    """Heal, restart everyone, converge; then the fixed build must show no violation."""
    assert sim.heal_and_converge(), f"seed={seed}: no convergence"
    assert len(set(sim.digests().values())) == 1, f"seed={seed}: {sim.digests()}"
    assert not sim.halts(), f"seed={seed}: {sim.halts()[:3]}"
    cs = {sim.host(n).cut.sidecar.raft_envelope_cutover_index for n in sim.ids}
    assert len(cs) == 1, f"seed={seed}: nodes disagree on C: {cs}"
    cutover = cs.pop()
    assert _above_c_cleartext(sim, cutover) == [], f"seed={seed}"
    report = sim.check()
    assert report.valid and report.cutover == cutover, (seed, report.first_violation())
    assert sim.linearizable() == "valid", f"seed={seed}"
    return cutover


@pytest.mark.parametrize("point", ["barrier-up", "marker-proposed", "marker-applied",
                                   "after-rotation"])
@pytest.mark.parametrize("seed", range(2))
def test_restarts_at_interesting_points(point: str, seed: int) -> None:
    """A follower and then the leader crash and restart at each interesting point of
    the cutover; afterwards every invariant holds."""
    print(f"seed={seed} point={point}")
    sim = CutoverSim(100 + seed)
    lead = sim.wait_leader()
    assert sim.call(lead, {"op": "bootstrap", "key_id": 1, "wrapped": sim.new_dek()})["ok"]
    follower = next(n for n in sim.ids if n != lead)
    enable = sim.submit(lead, {"op": "enable-raft-envelope"})
    fsm = sim.host(lead)
    reached = {
        "barrier-up": lambda: fsm.cut.barrier,
        "marker-proposed": lambda: bool(fsm.enable and fsm.enable[0].marker_index),
        "marker-applied": lambda: fsm.cut.cell != 0,
        "after-rotation": lambda: sim.reply(enable) is not None,
    }[point]
    assert sim.run_until(reached, 300)
    if point == "after-rotation":
        assert sim.call(lead, {"op": "rotate-dek", "key_id": 2, "wrapped": sim.new_dek()})["ok"]
    sim.crash(follower)
    sim.run_ticks(5)
    sim.restart(follower)
    sim.crash(lead)
    sim.run_ticks(30)
    sim.restart(lead)
    new = sim.wait_leader()
    # The operator retries until the cutover is on (a restart clears a stuck barrier).
    for _ in range(5):
        rep = sim.call(new, {"op": "enable-raft-envelope"})
        if rep and rep["ok"]:
            break
        new = sim.wait_leader()
    assert rep and rep["ok"] and rep["value"]["status"] in ("ok", "already-active"), rep
    assert sim.call(new, {"op": "write", "key": "k", "value": "after"})["ok"]
    _finish_and_check(sim, seed)
    assert sim.call(sim.wait_leader(), {"op": "read", "key": "k"})["value"] == "after"
    assert sim.linearizable() == "valid"


@pytest.mark.parametrize("bugged", [False, True])
def test_stale_read_switch(bugged: bool) -> None:
    """An old leader cut off from the others answers a read from its own state: the
    linearizability checker sees the stale value."""
    seed = 31
    print(f"seed={seed} bugged={bugged}")
    sim = CutoverSim(seed, bugs=("stale-read",) if bugged else ())
    lead = sim.wait_leader()
    assert sim.call(lead, {"op": "write", "key": "x", "value": "old"})["ok"]
    sim.run_ticks(10)
    sim.isolate(lead)
    others = [n for n in sim.ids if n != lead]
    assert sim.run_until(lambda: any(sim.is_leader(n) for n in others), 600)
    new = next(n for n in others if sim.is_leader(n))
    sim.run_ticks(20)
    assert sim.call(new, {"op": "write", "key": "x", "value": "new"})["ok"]
    sim.call(lead, {"op": "read", "key": "x"}, max_ticks=50)
    assert sim.linearizable() == ("invalid" if bugged else "valid")


@pytest.mark.parametrize("seed", [1601, 1602, 1603])
def test_automatic_snapshots_hold_exactly_their_index_across_restarts(seed: int) -> None:
    """Issue: automatic snapshots labelled below the state they hold. Snapshots are taken
    by the replica's own rule every 2 applied entries; cas pairs are proposed together so
    that they share a Ready and apply in reverse order (a later cas fails, an earlier one
    succeeds: applying both again gives another state); followers and the leader restart
    from those snapshots. Every snapshot image must be the committed log's state at its
    index (I4 by replay), and the replicas must end equal."""
    print(f"seed={seed}")
    sim = CutoverSim(seed, n=3, snapshot_every=2)
    lead = sim.wait_leader()
    value = 0
    assert sim.call(lead, {"op": "write", "key": "k", "value": value})["ok"]
    for step in range(10):
        lead = sim.wait_leader()
        later = sim.submit(lead, {"op": "cas", "key": "k", "from": value + 1, "to": value + 2})
        first = sim.submit(lead, {"op": "cas", "key": "k", "from": value, "to": value + 1})
        pair = (later, first)
        sim.run_until(lambda pair=pair: all(sim.reply(h) is not None for h in pair))
        if (sim.reply(first) or {}).get("ok"):
            value += 1
        victim = lead if step % 3 == 2 else sorted(n for n in sim.ids if n != lead)[step % 2]
        sim.crash(victim)
        sim.run_ticks(5)
        sim.restart(victim)
        rep = sim.call(sim.wait_leader(), {"op": "read", "key": "k"})
        assert rep and rep["ok"], rep
        value = rep["value"]
    assert sim.heal_and_converge(), f"seed={seed}: no convergence"
    digests = sim.digests()
    assert len(set(digests.values())) == 1, (seed, digests)
    report = sim.check()
    assert report["I4"].valid, (seed, report["I4"].violations[:3])
    assert report["I4"].summary["replay"]["compared"] > 0
    assert any(e["kind"] == "snapshot-taken" for e in sim.events)
    assert sim.linearizable() == "valid"


@pytest.mark.parametrize("seed", [894, 3])
def test_a_proposal_a_snapshot_skipped_over_is_indeterminate_not_failed(seed: int) -> None:
    """Found by `cutover sim --first-seed 301 --seeds 2000` (seed 894, a linearizability
    violation on the fixed build): an old leader's write committed under the next leader,
    which compacted past it; the old leader caught up by InstallSnapshot, never applied
    the entry one by one, and answered the write `dropped` as a *definite* failure (the
    slot "was replaced") when the next entry applied. The client recorded `fail` for a
    write that took effect, and a later read saw it. The snapshot cannot say whose entry
    held the slot: the answer must be indeterminate."""
    from node.raft import MsgType

    print(f"seed={seed}")
    sim = CutoverSim(seed)
    old = sim.wait_leader()
    assert sim.call(old, {"op": "write", "key": "k", "value": "v0"})["ok"]
    # The followers append the write, but their acks never reach the leader: it cannot
    # commit it, and the client waits.
    sim.message_filter = lambda m: not (m.dst == old and m.type is MsgType.APP_RESP)
    w = sim.submit(old, {"op": "write", "key": "k", "value": "v1"})
    sim.run_ticks(5)
    sim.message_filter = None
    sim.isolate(old)
    others = [n for n in sim.ids if n != old]
    assert sim.run_until(lambda: sim.serving_leader() in others, 400)
    new = sim.serving_leader()
    assert sim.call(new, {"op": "write", "key": "other", "value": "x"})["ok"]
    assert sim.call(new, {"op": "read", "key": "k"})["value"] == "v1"  # it committed
    for n in others:
        sim.compact(n)  # past the write: the old leader can only catch up by snapshot
    assert sim.call(new, {"op": "write", "key": "other", "value": "y"})["ok"]
    sim.heal()
    assert sim.run_until(lambda: sim.reply(w) is not None, 400)
    assert any(e["kind"] == "snapshot-installed" and e["node"] == old for e in sim.events)
    rep = sim.reply(w)
    assert rep["ok"] or not rep.get("definite", True), rep
    assert sim.linearizable() == "valid"
