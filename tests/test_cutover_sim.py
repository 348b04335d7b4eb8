"""The cutover protocol in the deterministic simulator: the node's own protocol code
(`node.replica`) on seeded in-memory networks. Each test prints its seed."""
from __future__ import annotations

import pytest

from node.envelope import is_wrapped_shape
from node.payload import decode_proposal
from node.types import EntryKind
from tests.cutover_sim import CutoverSim


def _cut_over(sim: CutoverSim, writes: int = 5) -> tuple[str, int]:
    cl = sim.cl
    lead = cl.wait_leader()
    assert sim.call(lead, {"op": "bootstrap", "key_id": 1, "wrapped": sim.new_dek()})["ok"]
    for i in range(writes):
        rep = sim.call(lead, {"op": "write", "key": f"k{i % 3}", "value": f"pre-{i}"})
        assert rep and rep["ok"], rep
    rep = sim.call(lead, {"op": "enable-raft-envelope"})
    assert rep and rep["ok"] and rep["value"]["status"] == "ok", rep
    return lead, rep["value"]["cutover"]


def _above_c_cleartext(sim: CutoverSim, cutover: int) -> list[tuple[str, int]]:
    out = []
    for nid in sim.cl.ids:
        for e in sim.durable_entries(nid):
            if e.index > cutover and e.kind is EntryKind.NORMAL and e.data:
                if not is_wrapped_shape(decode_proposal(e.data)[1]):
                    out.append((nid, e.index))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_fault_free_cutover_with_rotations(seed: int) -> None:
    print(f"seed={seed}")
    sim = CutoverSim(seed)
    lead, cutover = _cut_over(sim)
    assert sim.call(lead, {"op": "rotate-dek", "key_id": 2, "wrapped": sim.new_dek()})["ok"]
    for i in range(5):
        assert sim.call(lead, {"op": "write", "key": f"k{i % 3}", "value": f"post-{i}"})["ok"]
    assert sim.cl.heal_and_converge(), f"seed={seed}"
    assert sim.cl.check_final() == [], f"seed={seed}"
    assert not sim.halts(), sim.halts()
    assert {sim.fsm(n).cut.sidecar.raft_envelope_cutover_index for n in sim.cl.ids} == {cutover}
    assert {sim.fsm(n).cut.wrap for n in sim.cl.ids} == {2}
    assert _above_c_cleartext(sim, cutover) == []
    # every node restarted in heal_and_converge and reads the same values back
    assert sim.call(sim.cl.wait_leader(), {"op": "read", "key": "k1"})["value"] == "post-4"


@pytest.mark.parametrize("bugged", [False, True])
def test_raw_admin_proposer_switch(bugged: bool) -> None:
    seed = 7
    print(f"seed={seed} bugged={bugged}")
    sim = CutoverSim(seed, bugs=("raw-admin-proposer",) if bugged else ())
    lead, cutover = _cut_over(sim)
    sim.call(lead, {"op": "rotate-dek", "key_id": 2, "wrapped": sim.new_dek()}, max_ticks=60)
    sim.cl.run_ticks(60)
    if bugged:
        assert {h["node"] for h in sim.halts()} == set(sim.cl.ids)
        assert all(h["index"] > cutover for h in sim.halts())
        assert _above_c_cleartext(sim, cutover)
    else:
        assert not sim.halts()
        assert _above_c_cleartext(sim, cutover) == []
