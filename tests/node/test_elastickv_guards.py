"""The rows of the elastickv profile that issue 21 added (docs/protocol.md, "The
elastickv profile"): the sidecar-behind-log start-up guard (row 8b) and the nonce's
node16 field (row 10), one deterministic test each, beside what the fixed profile does.
Why here: they are start-up behaviour, so each test restarts a simulated node (no
process is started)."""
from __future__ import annotations

import pytest

from node import payload as pl
from node.cutover import sidecar_behind_log
from node.envelope import split_nonce
from node.host import node16
from node.types import Entry, EntryKind
from tests.node.test_cutover_sim import _cut_over
from tests.simkit.scenario import Scenario


def _entry(index: int, payload: bytes) -> Entry:
    return Entry(term=1, index=index, kind=EntryKind.NORMAL,
                 data=pl.encode_proposal(index, payload))


def test_the_sidecar_behind_log_guard_refuses_what_elastickv_refuses() -> None:
    """Row 8b, the pure rule (`GuardSidecarBehindRaftLog` with the engine's
    scanner): each branch, with the reason a refusal gives."""
    rotation = _entry(412, pl.rotate_payload(2, b"w" * 61))
    user = _entry(411, pl.user_payload({"op": "write", "key": "k", "value": 1}))
    wrapped = _entry(413, bytes([0x01, 0x00]) + b"\x00" * 40)  # an envelope reads as 0x01
    # A legacy or absent sidecar (index 0) skips the guard; caught up passes.
    assert sidecar_behind_log(0, 500, 400, []) == ""
    assert sidecar_behind_log(500, 500, 400, []) == ""
    # A gap that starts at or below the snapshot cannot be scanned: ErrCompacted.
    why = sidecar_behind_log(322, 500, 500, [])
    assert "compacted below the snapshot at 500" in why and "ErrCompacted" in why
    assert sidecar_behind_log(399, 500, 400, [])  # 400 itself is compacted
    # A gap above the snapshot: only a cleartext encryption entry in it refuses.
    assert sidecar_behind_log(400, 420, 400, [user, wrapped]) == ""
    why = sidecar_behind_log(400, 420, 400, [user, rotation, wrapped])
    assert "entry 412" in why and "ErrSidecarBehindRaftLog" in why
    assert sidecar_behind_log(400, 411, 400, [user, rotation]) == ""  # 412: past the gap


@pytest.mark.parametrize("profile", ["fixed", "elastickv"])
def test_a_restart_after_a_snapshot_past_the_last_encryption_entry(profile: str) -> None:
    """Row 8b on a node: a healthy follower that applied the marker, then took a
    snapshot past it, is restarted. elastickv refuses the start (the gap from the
    sidecar's index, the marker, to the engine's applied index is compacted); the fixed
    profile has no such guard and starts."""
    seed = 31
    print(f"seed={seed} profile={profile}")
    sim = Scenario(seed, profile=profile)
    lead, cutover = _cut_over(sim)
    for i in range(6):
        assert sim.call(lead, {"op": "write", "key": f"k{i % 3}", "value": f"post-{i}"})["ok"]
    sim.run_ticks(20)
    x = next(n for n in sim.ids if n != lead)
    assert sim.host(x).cut.sidecar.raft_applied_index == cutover
    snap = sim.compact(x)
    assert snap > cutover
    sim.crash(x)
    sim.restart(x)
    refused = [e for e in sim.events if e["node"] == x and e["kind"] == "start-failed"]
    if profile == "fixed":
        assert sim.cl.nodes[x].host is not None and not refused
        return
    assert sim.cl.nodes[x].host is None, "elastickv refuses this start"
    assert len(refused) == 1 and "sidecar-behind-log" in refused[0]["error"], refused
    assert f"({cutover}, {snap}]" in refused[0]["error"]


def test_node16_is_the_low_bits_of_fnv64a() -> None:
    """Row 10: FNV-64a test vectors ("a" -> 0xaf63dc4c8601ec8c, "foobar" ->
    0x85944171f73967e8), so the hash is FNV-64a and not something that happens to be
    unique for n1..n9."""
    assert node16("a") == 0xEC8C
    assert node16("foobar") == 0x67E8
    assert len({node16(f"n{i}") for i in range(1, 10)}) == 9


@pytest.mark.parametrize("profile", ["fixed", "elastickv"])
def test_the_nonce_node_field_follows_the_profile(profile: str) -> None:
    """Row 10 on a node: a wrapped entry's nonce starts with node16(raft id) in the
    elastickv profile and with the sorted-peer index in the fixed one."""
    seed = 32
    print(f"seed={seed} profile={profile}")
    sim = Scenario(seed, profile=profile)
    lead, cutover = _cut_over(sim)
    rep = sim.call(lead, {"op": "write", "key": "k", "value": "above-c"})
    assert rep and rep["ok"], rep
    e = next(e for e in sim.durable_entries(lead) if e.index == rep["index"])
    _pid, body = pl.decode_proposal(e.data)
    num, _epoch, _ctr = split_nonce(body[6:18])
    want = node16(lead) if profile == "elastickv" else sorted(sim.ids).index(lead) + 1
    assert num == want
    start = [ev for ev in sim.events if ev["node"] == lead and ev["kind"] == "start"][-1]
    assert start["nonce_node"] == want


@pytest.mark.parametrize("profile", ["fixed", "elastickv"])
def test_a_node_that_never_applied_an_encryption_entry_passes_both_guards(
        profile: str) -> None:
    """Row 8b's 0 gate, and why R3 can outlive every start-up guard
    (docs/findings/r3-install-across-cutover.md): a follower cut off from before the
    bootstrap catches up by InstallSnapshot past the marker, so its sidecar index is 0;
    once its own snapshot (header 0: its cell is 0) is the newest, a restart passes the
    divergence guard and the sidecar-behind-log guard, and it runs on with C = 0. The
    fixed profile adopts C from the snapshot."""
    seed = 33
    print(f"seed={seed} profile={profile}")
    sim = Scenario(seed, profile=profile)
    first = sim.wait_leader()
    x = next(n for n in sim.ids if n != first)
    sim.isolate(x)
    lead, cutover = _cut_over(sim)
    for i in range(6):
        assert sim.call(lead, {"op": "write", "key": f"k{i % 3}", "value": f"post-{i}"})["ok"]
    for n in sim.ids:
        if n != x:
            sim.compact(n)
    sim.heal()
    assert sim.run_until(lambda: sim.host(x).applied >= sim.host(lead).raft.commit, 400)
    sim.run_ticks(10)  # an event after a sync is published once the simulated sync is done
    assert any(e["node"] == x and e["kind"] == "snapshot-installed" for e in sim.events)
    assert sim.call(lead, {"op": "write", "key": "k", "value": "after"})["ok"]
    sim.run_ticks(20)
    sim.compact(x)
    sim.crash(x)
    sim.restart(x)
    assert sim.cl.nodes[x].host is not None, "both guards pass"
    sc = sim.host(x).cut.sidecar
    if profile == "fixed":
        assert sc.raft_envelope_cutover_index == cutover
        return
    assert sc.raft_applied_index == 0 and sc.raft_envelope_cutover_index == 0
    assert not sim.check()["I2"].valid
