"""The elastickv profile's row 9: writer registration (opcode 0x03), its watcher and the
wrap's gate (docs/protocol.md, "The elastickv profile"). Each test prints its seed."""
from __future__ import annotations

from typing import Any

import pytest

from node import payload as pl
from node import registry
from node.kv import KV
from node.raft import MsgType
from node.sidecar import Sidecar
from tests.node.test_cutover_sim import _cut_over
from tests.simkit.scenario import Scenario

FULL = registry.full_node_id


# ---------------------------------------------------------------- the digest


def test_registry_rows_are_not_in_the_convergence_digest() -> None:
    """I4 compares replicas by the digest at an applied index. elastickv writes registry
    rows without moving its store's applied index (row 7), so a node restarted from its
    store holds rows from past the index it reports (seed 1036 of the elastickv profile
    gave a false I4 "replicas at applied index 1 disagree" that way): the digest is of
    the user map only, while user data still counts."""
    plain, with_rows = KV(), KV()
    for kv in (plain, with_rows):
        kv.apply({"op": "write", "key": "k", "value": "v"})
    registry.apply_registration(with_rows, 1, FULL("n1"), 0)
    assert with_rows.digest() == plain.digest()
    with_rows.apply({"op": "write", "key": "k", "value": "w"})
    assert with_rows.digest() != plain.digest()


# ---------------------------------------------------------------- the apply


def test_apply_registration_insert_replay_advance_rollback_collision() -> None:
    """ApplyRegistration's cases (applier.go 581-640) on the rows in the KV map."""
    kv = KV()
    n1 = FULL("n1")
    key = registry.registry_key(7, n1 & 0xFFFF)
    assert registry.apply_registration(kv, 7, n1, 2) == ("insert", None)
    assert kv.read(key) == [n1, 2, 2]
    what, prev = registry.apply_registration(kv, 7, n1, 2)  # a Raft replay
    assert what == "replay" and prev == registry.Row(n1, 2, 2) and kv.read(key) == [n1, 2, 2]
    assert registry.apply_registration(kv, 7, n1, 5)[0] == "advance"
    assert kv.read(key) == [n1, 2, 5]  # first-seen stays
    with pytest.raises(registry.RegistryRefused) as r:
        registry.apply_registration(kv, 7, n1, 4)
    assert r.value.what == "rollback" and kv.read(key) == [n1, 2, 5]
    other = n1 ^ (1 << 40)  # another full id with the same node16
    with pytest.raises(registry.RegistryRefused) as r:
        registry.apply_registration(kv, 7, other, 9)
    assert r.value.what == "collision" and kv.read(key) == [n1, 2, 5]
    assert registry.apply_registration(kv, 8, other, 1)[0] == "insert"  # another DEK
    assert registry.last_seen(kv, 7, other) == 5  # registryLastSeen: whoever holds it
    assert not registry.committed_at_epoch(kv, 7, other, 5)
    assert registry.committed_at_epoch(kv, 7, n1, 5)


def test_the_registration_payload_round_trips_and_is_named() -> None:
    p = pl.registration_payload(3, 2**64 - 1, 65535)
    assert p[0] == pl.OP_REGISTRATION == 0x03 and pl.OPCODE_NAMES[0x03] == "registration"
    assert pl.decode_registration(p) == (3, 2**64 - 1, 65535)
    assert pl.registry_rows(p) == [(3, 2**64 - 1, 65535)]
    with pytest.raises(pl.PayloadError):
        pl.decode_registration(bytes([0x03]) + b"\xc1")
    rows = pl.registry_rows(pl.bootstrap_payload(4, b"w", [(11, 0), (12, 0)]))
    assert rows == [(4, 11, 0), (4, 12, 0)]
    assert pl.registry_rows(pl.bootstrap_payload(4, b"w")) == []


def test_a_start_with_an_epoch_not_past_the_registry_is_refused() -> None:
    """validateRaftRegistrationStartupEpoch (main_encryption_registration.go 185-211):
    ErrLocalEpochRollback when this load's raft epoch is not past last-seen."""
    kv = KV()
    n1 = FULL("n1")
    registry.apply_registration(kv, 1, n1, 4)
    sc = Sidecar(raft_envelope_cutover_index=10, active_raft_dek=1)
    assert registry.startup_epoch_refusal(kv, sc, n1, 5) == ""
    assert "ErrLocalEpochRollback" in registry.startup_epoch_refusal(kv, sc, n1, 4)
    assert registry.startup_epoch_refusal(kv, Sidecar(active_raft_dek=1), n1, 0) == ""


# --------------------------------------------------------- in the simulator


def _reg_events(sim: Scenario, kind: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in sim.events if e["kind"] == kind
            and all(e.get(k) == v for k, v in match.items())]


def _halts_at(sim: Scenario, index: int, text: str) -> set[str]:
    """Run until a majority halted at `index` for `text`; nobody applied past it. (An
    elastickv majority that halts exits, so the last node may never learn the commit.)"""
    def halted() -> set[str]:
        return {h["node"] for h in sim.halts()
                if text in h["reason"] and h["index"] == index}
    sim.run_until(lambda: len(halted()) == len(sim.ids), 400)
    assert len(halted()) * 2 > len(sim.ids), sim.halts()
    for n in sim.ids:
        if sim.cl.nodes[n].host is not None:
            assert sim.host(n).applied < index, n
    return halted()


@pytest.mark.sim
@pytest.mark.parametrize("what", ["rollback", "collision"])
def test_a_refused_registration_halts_every_elastickv_replica(what: str) -> None:
    """Cases 3 and 4 of ApplyRegistration halt apply on every replica (ErrEncryptionApply
    out of kv/fsm_encryption.go applyRegistration), and the process exits (row 1a)."""
    seed = 5
    print(f"seed={seed} what={what}")
    sim = Scenario(seed, profile="elastickv")
    lead, _c = _cut_over(sim)
    assert sim.until_writable(lead)
    other = next(n for n in sim.ids if n != lead)
    # the bootstrap batch registered every member at epoch 0 under key 1
    assert registry.read_row(sim.host(lead).kv, 1, FULL(other) & 0xFFFF) \
        == registry.Row(FULL(other), 0, 0)
    h = sim.host(lead)
    if what == "rollback":  # a registered load, then an older epoch of the same node
        h.propose_raw(h.cut.seal(pl.registration_payload(1, FULL(other), 3)))
        sim.run_ticks(40)
        assert not sim.halts()
        bad = pl.registration_payload(1, FULL(other), 2)
    else:  # another full id that narrows to the same node16
        bad = pl.registration_payload(1, FULL(other) ^ (1 << 48), 1)
    index = h.propose_raw(h.cut.seal(bad))
    halted = _halts_at(sim, index, "rollback" if what == "rollback" else "collision")
    assert {e["node"] for e in _reg_events(sim, "writer-registration", what=what)} == halted
    assert {e["node"] for e in sim.events if e["kind"] == "exit"} == halted


@pytest.mark.sim
def test_the_fixed_profile_halts_on_0x03_and_never_proposes_it() -> None:
    seed = 5
    print(f"seed={seed}")
    sim = Scenario(seed, profile="fixed")
    regs: list[Any] = []
    sim.message_filter = lambda m: not (m.type in (MsgType.REG, MsgType.REG_RESP)
                                        and regs.append(m) is None)
    lead, _c = _cut_over(sim)
    assert sim.call(lead, {"op": "rotate-dek", "key_id": 2, "wrapped": sim.new_dek()})["ok"]
    other = next(n for n in sim.ids if n != lead)
    sim.crash(other)
    sim.restart(other)
    sim.run_for(5)
    assert sim.call(lead, {"op": "write", "key": "k", "value": "v"})["ok"]
    assert not regs and not [e for e in sim.events if e["kind"].startswith("writer-regist")]
    assert not any(k.startswith(registry.PREFIX) for k in sim.host(lead).kv.data)
    h = sim.host(lead)
    index = h.propose_raw(h.cut.seal(pl.registration_payload(2, FULL(lead), 1)))
    assert _halts_at(sim, index, "unknown opcode 0x03") == set(sim.ids)


@pytest.mark.sim
@pytest.mark.parametrize("profile", ["fixed", "elastickv"])
def test_a_restarted_node_writes_only_after_its_own_registration_commits(
        profile: str) -> None:
    """A restarted elastickv process has a new raft epoch: its wrap refuses every write
    (`writer-not-registered`, definite: nothing was proposed) until its own 0x03 for
    (active DEK, its full id, that epoch) has committed; then writes go through. Its
    forwarded registration is held back here (the RPC's messages are dropped), so it
    registers as leader, by proposing its own entry, which the gate lets through."""
    seed = 9
    print(f"seed={seed} profile={profile}")
    sim = Scenario(seed, profile=profile)
    lead, _c = _cut_over(sim)
    x = next(n for n in sim.ids if n != lead)
    assert sim.run_until(lambda: sim.host(x).cut.cell != 0, 200)  # x applied the marker
    sim.run_ticks(10)  # and its sidecar write is durable
    sim.message_filter = lambda m: m.type not in (MsgType.REG, MsgType.REG_RESP)
    sim.crash(x)
    sim.restart(x)
    sim.run_for(3)
    epoch = sim.host(x).cut.raft_epoch
    assert epoch >= 1
    sim.make_leader(x)
    rep = sim.call(x, {"op": "write", "key": "k", "value": "held"})
    if profile == "fixed":
        assert rep["ok"]
        return
    assert not rep["ok"] and rep["code"] == "writer-not-registered" and rep["definite"], rep
    assert sim.until_writable(x)
    rep = sim.call(x, {"op": "write", "key": "k", "value": "after"})
    assert rep["ok"], rep
    [reg] = _reg_events(sim, "writer-registration", node=x, epoch=epoch,
                        dek=sim.host(x).cut.wrap, what="advance")
    assert reg["node16"] == FULL(x) & 0xFFFF and reg["index"] < rep["index"]
    assert _reg_events(sim, "writer-registered", node=x, why="proposed")
    assert sim.check().valid


@pytest.mark.sim
def test_the_watcher_registers_every_node_after_a_rotation() -> None:
    """After the cutover every member is registered by the bootstrap's batch (epoch 0):
    nothing is held. A rotation re-keys every wrap to key 2, which nobody registered:
    the leader's next write is refused until its watcher registers; each follower's
    watcher forwards its registration to the leader (RegisterEncryptionWriter), and
    every member ends with a row for key 2 at its own epoch."""
    seed = 11
    print(f"seed={seed}")
    sim = Scenario(seed, profile="elastickv")
    lead, _c = _cut_over(sim)
    sim.run_ticks(10)
    assert all(sim.writable(n) for n in sim.ids)
    assert sim.call(lead, {"op": "rotate-dek", "key_id": 2, "wrapped": sim.new_dek()})["ok"]
    rep = sim.call(lead, {"op": "write", "key": "k", "value": "v"})
    assert not rep["ok"] and rep["code"] == "writer-not-registered", rep
    assert sim.run_until(lambda: all(sim.writable(n) for n in sim.ids), 600)
    kv = sim.host(lead).kv
    for n in sim.ids:
        row = registry.read_row(kv, 2, FULL(n) & 0xFFFF)
        assert row == registry.Row(FULL(n), 0, 0), (n, row)  # the first load: epoch 0
        whys = {e["why"] for e in _reg_events(sim, "writer-registered", node=n, dek=2)}
        assert whys == ({"proposed"} if n == lead else {"forwarded"}) or \
            (n != lead and whys == {"applied"}), (n, whys)
    # each follower's row went through the leader: forwarded, never proposed by itself
    assert not [e for e in _reg_events(sim, "writer-registered", why="proposed")
                if e["node"] != lead]
    assert sim.call(lead, {"op": "write", "key": "k", "value": "v2"})["ok"]
    assert sim.check().valid
