"""Row 7 of the elastickv profile (docs/protocol.md): the replay window. elastickv's
state machine is durable on its own, with its own applied index, so a restarted node
replays only the entries above max(snapshot, durable applied index); the fixed profile
rebuilds its map from the snapshot and the log. Each test restarts a simulated node (no
process is started) and prints its seed."""
from __future__ import annotations

import pytest

from node.fsmstore import FSM_DIR, FsmStore, journal_name
from node.sidecar import SIDECAR_NAME
from tests.node.test_cutover_sim import _cut_over
from tests.simkit.scenario import Scenario


def _starts(sim: Scenario, node: str) -> list[dict]:
    return [e for e in sim.events if e["node"] == node and e["kind"] == "start"]


def _applied_since(sim: Scenario, node: str, since: int) -> list[dict]:
    return [e for e in sim.events[since:]
            if e["node"] == node and e["kind"] == "encryption-applied"]


@pytest.mark.parametrize("profile", ["fixed", "elastickv"])
def test_a_restart_does_not_replay_a_rotation_the_durable_store_is_past(profile: str) -> None:
    """A follower applies a rotation and then a user write (which moves its durable
    applied index past the rotation), and is restarted. elastickv starts from its store
    at the write's index and never applies the rotation (nor the marker) again: row 6's
    replay window is closed here. The fixed profile replays both from its snapshot."""
    seed = 41
    print(f"seed={seed} profile={profile}")
    sim = Scenario(seed, profile=profile)
    lead, cutover = _cut_over(sim)
    rot = sim.call(lead, {"op": "rotate-dek", "key_id": 2, "wrapped": sim.new_dek()})
    assert rot and rot["ok"], rot
    assert sim.until_writable(lead)  # row 9: the leader's gate holds writes under key 2
    w = sim.call(lead, {"op": "write", "key": "k", "value": "after-rotation"})
    assert w and w["ok"], w
    x = next(n for n in sim.ids if n != lead)
    assert sim.run_until(lambda: sim.host(x).applied >= w["index"])
    sim.run_ticks(10)
    since = len(sim.events)
    sim.crash(x)
    sim.restart(x)
    sim.run_ticks(40)
    replayed = {e["index"] for e in _applied_since(sim, x, since)}
    start = _starts(sim, x)[-1]
    if profile == "fixed":
        assert {cutover, rot["index"]} <= replayed
        assert "state_from" not in start  # the fixed profile's evidence is unchanged
        return
    assert not replayed, replayed
    assert start["state_from"] == "store" and start["applied"] >= w["index"]
    # The core's start is capped at the durable commit (a commit-only hard state is not
    # synced), the entries between arrive as duplicates and are dropped.
    assert start["durable_applied"] >= w["index"] >= start["raft_applied"] >= rot["index"]
    assert sim.host(x).kv.read("k") == "after-rotation"
    assert sim.host(x).cut.sidecar.active_raft_dek == 2


@pytest.mark.parametrize("profile", ["fixed", "elastickv"])
def test_the_sidecar_behind_log_guard_refuses_a_rotation_the_store_is_past(
        profile: str) -> None:
    """Row 8b's second branch, now reachable: a follower's sidecar write of a cleartext
    rotation (before the cutover) is lost, and a user write after it moved its durable
    store past the rotation. At the restart the engine's applied index (the store's) is
    past the sidecar's, the gap is above the snapshot, and it holds the cleartext
    rotation: elastickv refuses (`ErrSidecarBehindRaftLog`). The fixed profile has no
    such guard and replays the rotation."""
    seed = 42
    print(f"seed={seed} profile={profile}")
    sim = Scenario(seed, profile=profile)
    lead = sim.wait_leader()
    boot = sim.call(lead, {"op": "bootstrap", "key_id": 1, "wrapped": sim.new_dek()})
    assert boot and boot["ok"], boot
    x = next(n for n in sim.ids if n != lead)
    assert sim.run_until(lambda: sim.host(x).applied >= boot["index"])
    sim.run_ticks(10)
    disk, side = sim.cl.nodes[x].disk, f"/sim/{x}/{SIDECAR_NAME}"
    before = disk.read_bytes(side)  # what the sidecar holds before the rotation
    rot = sim.call(lead, {"op": "rotate-dek", "key_id": 2, "wrapped": sim.new_dek()})
    assert rot and rot["ok"], rot
    w = sim.call(lead, {"op": "write", "key": "k", "value": "v"})
    assert w and w["ok"], w
    assert sim.run_until(lambda: sim.host(x).applied >= w["index"])
    sim.run_ticks(10)
    assert sim.host(x).raft.snapshot_index <= boot["index"]
    sim.crash(x)
    disk.write_atomic(side, before)  # the rotation's sidecar write never landed
    sim.restart(x)
    refused = [e for e in sim.events if e["node"] == x and e["kind"] == "start-failed"]
    if profile == "fixed":
        assert sim.cl.nodes[x].host is not None and not refused
        return
    assert sim.cl.nodes[x].host is None, "elastickv refuses this start"
    assert len(refused) == 1, refused
    err = refused[0]["error"]
    assert f"entry {rot['index']} in ({boot['index']}, " in err
    assert "ErrSidecarBehindRaftLog" in err and "compacted" not in err


def test_the_store_survives_a_power_loss_and_the_node_starts_from_it() -> None:
    """Every apply's record is synced: a power loss takes nothing the store reported
    durable, so the restarted node starts from the store at (at least) the last write it
    applied, and converges with the others."""
    seed = 43
    print(f"seed={seed}")
    sim = Scenario(seed, profile="elastickv")
    lead = sim.wait_leader()
    last = 0
    for i in range(8):
        rep = sim.call(lead, {"op": "write", "key": f"k{i % 3}", "value": i})
        assert rep and rep["ok"], rep
        last = rep["index"]
    x = next(n for n in sim.ids if n != lead)
    assert sim.run_until(lambda: sim.host(x).applied >= last)
    sim.run_ticks(5)
    sim.crash(x, power=True)
    sim.restart(x)
    start = _starts(sim, x)[-1]
    assert start["state_from"] == "store" and start["durable_applied"] >= last
    assert sim.host(x).kv.read("k1") == 7
    assert sim.heal_and_converge()


def test_a_snapshot_pins_the_store_and_a_restart_skips_the_snapshot_body() -> None:
    """elastickv's SetDurableAppliedIndex before SaveSnap: after a snapshot past the last
    user write (the leases go on), the store's index is the snapshot's, so a restart
    takes the map from the store (the skip path), not from the snapshot's body. (No
    cutover here: with one, row 8b refuses this restart,
    docs/findings/restart-refused-after-snapshot.md.)"""
    seed = 44
    print(f"seed={seed}")
    sim = Scenario(seed, profile="elastickv")
    lead = sim.wait_leader()
    last = max(sim.call(lead, {"op": "write", "key": f"k{i}", "value": i})["index"]
               for i in range(3))
    x = next(n for n in sim.ids if n != lead)
    assert sim.run_until(lambda: sim.host(x).applied > last + 1, 400)  # leases
    store = sim.host(x).fsm
    assert store is not None and store.applied_index == last
    snap = sim.compact(x)
    assert snap > last and store.applied_index == snap
    sim.crash(x)
    sim.restart(x)
    start = _starts(sim, x)[-1]
    assert start["state_from"] == "store" and start["applied"] >= snap


def test_an_installed_snapshot_resets_the_store() -> None:
    """A follower cut off while the others wrote and compacted catches up by
    InstallSnapshot: its store then holds the snapshot's image at the snapshot's index
    (a new base; the old journal gone), and a restart starts from it."""
    seed = 45
    print(f"seed={seed}")
    sim = Scenario(seed, profile="elastickv")
    lead = sim.wait_leader()
    x = next(n for n in sim.ids if n != lead)
    assert sim.call(lead, {"op": "write", "key": "early", "value": 1})["ok"]
    assert sim.run_until(lambda: sim.host(x).kv.read("early") == 1)
    old_gen = sim.host(x).fsm.gen
    sim.isolate(x)
    for i in range(6):
        assert sim.call(lead, {"op": "write", "key": f"k{i}", "value": i})["ok"]
    snaps = {n: sim.compact(n) for n in sim.ids if n != x}
    sim.heal()
    assert sim.run_until(lambda: sim.host(x).applied >= sim.host(lead).raft.commit, 400)
    sim.run_ticks(10)
    installed = [e for e in sim.events if e["node"] == x and e["kind"] == "snapshot-installed"]
    assert installed, "the follower must catch up by a snapshot"
    index = installed[-1]["index"]
    assert index in snaps.values()
    disk = sim.cl.nodes[x].disk
    assert not disk.exists(f"/sim/{x}/{FSM_DIR}/{journal_name(old_gen)}")
    store = FsmStore.open(f"/sim/{x}", disk)  # what a restart reads
    assert store.applied_index >= index and store.data["k5"] == 5
    sim.crash(x)
    sim.restart(x)
    start = _starts(sim, x)[-1]
    assert start["state_from"] == "store" and start["applied"] >= index
    assert sim.host(x).kv.read("k5") == 5


def test_damage_to_the_store_refuses_the_start_by_name() -> None:
    """A flipped bit inside the store's journal, with valid records after it, is damage
    no crash leaves: the restart is refused, named by the error's class."""
    seed = 46
    print(f"seed={seed}")
    sim = Scenario(seed, profile="elastickv")
    lead = sim.wait_leader()
    for i in range(4):
        assert sim.call(lead, {"op": "write", "key": f"k{i}", "value": i})["ok"]
    x = next(n for n in sim.ids if n != lead)
    assert sim.run_until(lambda: sim.host(x).kv.read("k3") == 3)
    gen = sim.host(x).fsm.gen
    sim.crash(x)
    disk = sim.cl.nodes[x].disk
    disk.damage(f"/sim/{x}/{FSM_DIR}/{journal_name(gen)}", 12, b"\xee")
    sim.restart(x)
    refused = [e for e in sim.events if e["node"] == x and e["kind"] == "start-failed"]
    assert sim.cl.nodes[x].host is None
    assert len(refused) == 1 and refused[0]["error"].startswith("FsmStoreCorruptError"), refused


def test_the_fixed_profile_keeps_no_store() -> None:
    seed = 47
    print(f"seed={seed}")
    sim = Scenario(seed, profile="fixed")
    lead = sim.wait_leader()
    assert sim.call(lead, {"op": "write", "key": "k", "value": 1})["ok"]
    for n in sim.ids:
        assert not sim.cl.nodes[n].disk.exists(f"/sim/{n}/{FSM_DIR}")
        assert sim.host(n).fsm is None
