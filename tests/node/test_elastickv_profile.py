"""The `elastickv` profile: elastickv's behaviour as it stands (docs/protocol.md, "The
elastickv profile"), row by row, on the node's own code in the deterministic simulator,
each next to what the fixed profile does in the same schedule. These are the hazards of
docs/findings.md in their smallest form. Each test prints its seed."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from checker.crashes import EXITS_FILE, check_crashes, record
from node.cutover import Cutover, Halt, MemoryStore
from node.envelope import is_wrapped_shape
from node.events import EXIT_HALTED
from node.keystore import Kek
from node.kv import snapshot_kv
from node.payload import rotate_payload
from node.snapshot import SnapshotStore
from node.wal import damage_entry
from orchestrator.sim.cli import load_plan_file
from orchestrator.sim.run import simulate, write_exits
from tests.node.test_cutover_sim import (
    _above_c_cleartext,
    _cut_over,
    _enable_times_out,
    _leader_dies_as_marker_commits,
)
from tests.simkit.scenario import Scenario

PROFILES = ["fixed", "elastickv"]


def _kinds(sim: Scenario, node: str, *kinds: str) -> list[str]:
    return [e["kind"] for e in sim.events if e["node"] == node and e["kind"] in kinds]


@pytest.mark.parametrize("profile", PROFILES)
def test_a_halt_ends_the_process_and_a_restart_halts_again(tmp_path, profile: str) -> None:
    """Row 1a: one replica's copy of a wrapped entry is damaged. Both profiles halt
    there; elastickv's process exits (and halts again when restarted), the fixed node
    stays up refusing writes. The `crashes` checker lists the exits, it does not count
    them: I3 is the finding."""
    seed = 29
    print(f"seed={seed} profile={profile}")
    sim = Scenario(seed, profile=profile)
    lead, cutover = _cut_over(sim)
    assert sim.call(lead, {"op": "write", "key": "k", "value": "above-c"})["ok"]
    sim.run_ticks(20)
    x = next(n for n in sim.ids if n != lead)
    e = next(e for e in sim.durable_entries(x) if e.index > cutover and e.data[9:])
    sim.crash(x)
    damage_entry(f"/sim/{x}/wal", e.index, disk=sim.cl.nodes[x].disk)
    sim.restart(x)
    sim.run_ticks(40)
    if profile == "fixed":
        assert sim.cl.nodes[x].host is not None and sim.host(x).halted
        assert _kinds(sim, x, "halt", "exit") == ["halt"]
        return
    assert sim.cl.nodes[x].host is None, "the halted process must be gone"
    assert _kinds(sim, x, "halt", "exit") == ["halt", "exit"]
    sim.restart(x)
    sim.run_ticks(40)
    assert sim.cl.nodes[x].host is None
    assert _kinds(sim, x, "halt", "exit") == ["halt", "exit", "halt", "exit"]
    halts = [ev for ev in sim.events if ev["node"] == x and ev["kind"] == "halt"]
    assert {h["index"] for h in halts} == {e.index}, halts
    write_exits(sim.events, str(tmp_path / EXITS_FILE))
    verdict = check_crashes(str(tmp_path), halted={x})
    assert verdict["valid"] == "valid" and len(verdict["halt_exits"]) == 2, verdict
    assert not sim.check()["I3"].valid


def test_an_exit_without_a_halt_is_a_crash(tmp_path) -> None:
    """The exemption is for a halt's exit only: an `EXIT_HALTED` exit of a node that
    logged no halt, another exit code, or a refused start still fails the checker."""
    halt_exit = record("exit", "n1", 1, code=EXIT_HALTED, log=["exiting: halt"])
    (tmp_path / EXITS_FILE).write_text(halt_exit)
    assert check_crashes(str(tmp_path))["valid"] == "invalid"
    assert check_crashes(str(tmp_path), halted={"n2"})["valid"] == "invalid"  # not n1
    ok = check_crashes(str(tmp_path), halted={"n1"})
    assert ok["valid"] == "valid" and [r["node"] for r in ok["halt_exits"]] == ["n1"], ok
    (tmp_path / EXITS_FILE).write_text(halt_exit + record("exit", "n1", 2, code=1, log=["x"]))
    assert check_crashes(str(tmp_path), halted={"n1"})["valid"] == "invalid"


@pytest.mark.parametrize("profile", PROFILES)
def test_snapshots_carry_no_keys_no_sealed_image_and_the_latched_cell(profile: str) -> None:
    """Row 2: after the cutover, the fixed node's snapshot above C carries the keys and
    a sealed image; elastickv's carries neither, its header says C (the cell)."""
    seed = 41
    print(f"seed={seed} profile={profile}")
    sim = Scenario(seed, profile=profile)
    lead, cutover = _cut_over(sim)
    for i in range(3):
        assert sim.call(lead, {"op": "write", "key": "k", "value": f"post-{i}"})["ok"]
    sim.run_ticks(20)
    s = sim.compact(lead)
    assert s > cutover
    snap = SnapshotStore(f"/sim/{lead}/snap", disk=sim.cl.nodes[lead].disk).load_latest()
    assert snap is not None and snap.header.index == s
    assert snap.header.cutover == cutover
    sealed = is_wrapped_shape(snapshot_kv(snap.data))
    if profile == "fixed":
        assert snap.header.encryption and sealed
    else:
        assert snap.header.encryption == b"" and not sealed


def test_the_elastickv_header_latches_the_cell_below_c() -> None:
    """Row 2: the header is the cell at snapshot time, latched once non-zero, so a node
    restarted with C in its sidecar labels a snapshot below C with C; the fixed node
    labels it 0 (the snapshot does not contain the marker)."""
    kek = Kek.generate()
    for profile, want in (("fixed", 0), ("elastickv", 10)):
        store = MemoryStore()
        c = Cutover(1, store, kek, profile=profile)
        c.apply(3, _bootstrap(kek, 1))
        c.apply(10, _marker(1))
        restarted = Cutover(1, store, kek, profile=profile, snapshot_index=5)
        assert restarted.snapshot_fields(7)[0] == want, profile
        assert restarted.snapshot_fields(12)[0] == 10


@pytest.mark.parametrize("profile", PROFILES)
def test_a_follower_partitioned_across_the_cutover_catches_up_by_snapshot(profile: str) -> None:
    """Row 3, R3: the follower installs a snapshot past the marker. The fixed node adopts
    C, keys and wrap from it. elastickv's Restore sets only restoredCutover: cell 0,
    sidecar C = 0, so every wrapped entry after it is answered with an error response
    and skipped. I2 (applied past C with C = 0) and I4 by replay see the silent
    divergence, with no halt and before any corrupt-entry fault."""
    seed = 13
    print(f"seed={seed} profile={profile}")
    sim = Scenario(seed, profile=profile)
    lead = sim.wait_leader()
    y = next(n for n in sim.ids if n != lead)
    sim.isolate(y)
    assert sim.call(lead, {"op": "bootstrap", "key_id": 1, "wrapped": sim.new_dek()})["ok"]
    cutover = sim.call(lead, {"op": "enable-raft-envelope"})["value"]["cutover"]
    for i in range(4):
        assert sim.call(lead, {"op": "write", "key": "k", "value": f"post-{i}"})["ok"]
    sim.run_ticks(20)
    assert sim.compact(lead) > cutover
    sim.heal()
    sim.run_ticks(60)
    assert any(e["node"] == y and e["kind"] == "snapshot-installed" for e in sim.events)
    for i in range(3):
        assert sim.call(lead, {"op": "write", "key": "k", "value": f"after-heal-{i}"})["ok"]
    sim.run_ticks(60)
    hy = sim.host(y)
    report = sim.check()
    if profile == "fixed":
        assert hy.cut.cell == cutover and hy.kv.read("k") == "after-heal-2"
        assert report.valid, report.first_violation()
        return
    assert hy.cut.cell == 0 and hy.cut.sidecar.raft_envelope_cutover_index == 0
    assert hy.cut.restored_cutover == cutover
    assert hy.kv.read("k") == "post-3", "the writes after the snapshot were skipped"
    assert _kinds(sim, y, "apply-error") and not sim.halts()
    assert not report["I2"].valid and not report["I4"].valid
    assert report["I3"].valid, "silent: nothing halted"
    evidence = {v.get("evidence") for v in report["I4"].violations}
    assert "reported-digest" in evidence, report["I4"].violations[:3]


@pytest.mark.parametrize("profile", PROFILES)
def test_keys_from_compacted_rotations_are_not_in_elastickv_snapshots(profile: str) -> None:
    """A follower that applied the marker is partitioned across a rotation and catches
    up by snapshot: the fixed snapshot carries the new key; elastickv's does not, so the
    follower halts on an unknown key at the first entry sealed under it."""
    seed = 43
    print(f"seed={seed} profile={profile}")
    sim = Scenario(seed, profile=profile)
    lead, cutover = _cut_over(sim)
    sim.run_ticks(20)
    y = next(n for n in sim.ids if n != lead)
    sim.isolate(y)
    assert sim.call(lead, {"op": "rotate-dek", "key_id": 2, "wrapped": sim.new_dek()})["ok"]
    # elastickv (row 9): the leader's wrap seals nothing under key 2 until its watcher
    # has registered (key 2, its epoch); the writes wait for that, then go through.
    assert sim.until_writable(lead)
    for i in range(4):
        assert sim.call(lead, {"op": "write", "key": "k", "value": f"post-{i}"})["ok"]
    sim.run_ticks(20)
    sim.compact(lead)
    sim.heal()
    sim.run_ticks(40)
    sim.call(lead, {"op": "write", "key": "k", "value": "after-heal"})
    sim.run_ticks(60)
    halts = [h for h in sim.halts() if h["node"] == y]
    if profile == "fixed":
        assert not halts and sim.host(y).kv.read("k") == "after-heal"
        return
    assert halts and "unknown key id 2" in halts[0]["reason"], halts
    assert not sim.check()["I3"].valid


@pytest.mark.parametrize("profile", PROFILES)
def test_a_new_leader_serves_its_lease_before_it_applied_the_marker(profile: str) -> None:
    """Row 5, R1: the leader dies as the marker commits; the new leader's HLC renewal
    timer fires before it applied its log. The fixed leader waits for its term's first
    entry; elastickv's proposes the lease in cleartext above C and every replica halts."""
    seed = 22
    print(f"seed={seed} profile={profile}")
    sim = Scenario(seed, profile=profile)
    new, marker = _leader_dies_as_marker_commits(sim)
    sim.run_ticks(80)
    report = sim.check()
    if profile == "fixed":
        assert report.valid, report.first_violation()
        return
    v = report["I1"].first_violation
    assert v and v["index"] > marker and v["opcode_name"] == "lease", v
    assert not report["I3"].valid and _above_c_cleartext(sim, marker)


@pytest.mark.parametrize("profile", PROFILES)
def test_enable_retried_on_the_leader_whose_marker_is_uncommitted(profile: str) -> None:
    """Row 4, R2: the apply wait timed out with marker 1 uncommitted and the operator
    asks the same leader again. The fixed node refuses (its barrier is stuck);
    elastickv's pre-check passes (C is still 0, applied >= commit), Begin is idempotent
    and a second raw marker lands above C: every replica halts."""
    seed = 31
    print(f"seed={seed} profile={profile}")
    sim = Scenario(seed, profile=profile)
    lead, _ = _enable_times_out(sim)
    again = sim.submit(lead, {"op": "enable-raft-envelope"})
    sim.run_ticks(20)
    sim.message_filter = None
    sim.run_ticks(100)
    report = sim.check()
    markers = [e["index"] for e in sim.events if e["kind"] == "marker-proposed"]
    if profile == "fixed":
        assert sim.reply(again)["code"] == "failed" and len(markers) == 1
        assert report.valid, report.first_violation()
        return
    assert len(markers) == 2, markers
    v = report["I1"].first_violation
    assert v["index"] == markers[1] > report.cutover == markers[0], v
    assert v["opcode_name"] == "enable-raft-envelope"
    assert not report["I3"].valid


def test_a_replayed_older_rotation_activates_its_key_again() -> None:
    """Row 6: rotations to 2 then 3 after the cutover; a restart whose snapshot is older
    replays both. The fixed applier keeps key 3 (the replay is below its applied index);
    elastickv's makes key 2 active (and re-keys the wrap) until rotation 3 replays."""
    kek = Kek.generate()
    for profile, want in (("fixed", 3), ("elastickv", 2)):
        store = MemoryStore()
        c = Cutover(1, store, kek, profile=profile)
        c.apply(3, _bootstrap(kek, 1))
        c.apply(5, _marker(1))
        w2, w3 = kek.wrap_dek(bytes(32)), kek.wrap_dek(bytes(range(32)))
        c.apply(8, rotate_payload(2, w2))
        c.apply(9, rotate_payload(3, w3))
        restarted = Cutover(1, store, kek, profile=profile, snapshot_index=4)
        assert restarted.wrap == 3
        restarted.apply(5, _marker(1))
        restarted.apply(8, rotate_payload(2, w2))
        assert restarted.wrap == want and restarted.sidecar.active_raft_dek == want, profile
        restarted.apply(9, rotate_payload(3, w3))
        assert restarted.wrap == 3


def test_start_up_order_guard_before_epoch_and_elastickv_epoch_zero_before_cutover() -> None:
    """Row 8: the divergence guard runs before the epoch bump in both profiles (a
    refused start burns no epoch); elastickv bumps the raft epoch only once C != 0."""
    kek = Kek.generate()
    for profile in ("fixed", "elastickv"):
        store = MemoryStore()
        c = Cutover(1, store, kek, profile=profile)
        assert c.nonces.local_epoch == (1 if profile == "fixed" else 0)
        c.apply(3, _bootstrap(kek, 1))
        c.apply(10, _marker(1))
        before = store.load().local_epoch
        with pytest.raises(Halt, match="cutover-divergence"):
            Cutover(1, store, kek, profile=profile, snapshot_cutover=12)
        assert store.load().local_epoch == before, profile
        again = Cutover(1, store, kek, profile=profile, snapshot_cutover=10, snapshot_index=11)
        assert again.nonces.local_epoch == before + 1


def _bootstrap(kek: Kek, key_id: int) -> bytes:
    from node.payload import bootstrap_payload

    return bootstrap_payload(key_id, kek.wrap_dek(bytes([key_id]) * 32))


def _marker(dek: int) -> bytes:
    from node.payload import marker_payload

    return marker_payload(dek)


FINDINGS = sorted((Path(__file__).resolve().parents[2] / "docs" / "findings").glob("*.json"))


@pytest.mark.sim
@pytest.mark.parametrize("path", FINDINGS, ids=[p.stem for p in FINDINGS])
def test_each_finding_reproduces_on_elastickv_and_not_on_the_fixed_profile(
        tmp_path, path: Path) -> None:
    """docs/findings.md's schedules, replayed in the simulator: each still fails the way
    the finding says on the elastickv profile, and the fixed profile (the same schedule,
    seed and config) stays valid: the fix the finding names is the one that holds."""
    cfg, plan, doc = load_plan_file(str(path))
    print(f"cutover sim --replay {path.name} (seed {cfg.seed})")
    assert cfg.profile == "elastickv"
    o = simulate(cfg, tmp_path / "ekv", plan)
    assert o.verdict == "invalid" and o.failing == doc["failing"], (o.failing, o.first)
    for name in doc.get("also_failing", []):  # what ends it: a refused restart, say
        assert o.checks[name]["valid"] == "invalid", (name, o.checks[name])
    fixed = simulate(replace(cfg, profile="fixed"), tmp_path / "fixed", plan)
    assert fixed.verdict == "valid", (fixed.failing, fixed.first)


def test_the_findings_are_there() -> None:
    assert {p.stem for p in FINDINGS} >= {"r2-second-marker", "r3-install-across-cutover",
                                         "keys-not-in-snapshots",
                                         "marker-stale-after-snapshot-across-rotation",
                                         "rotation-retry-moves-key-back",
                                         "restart-refused-after-snapshot",
                                         "r3-install-across-cutover-then-restart",
                                         "marker-stale-after-snapshot-across-rotation-then-restart",
                                         "registration-replay-halts-restart"}
    # Each schedule has its write-up (issue 21), and the index links it.
    index = (FINDINGS[0].parent.parent / "findings.md").read_text()
    for p in FINDINGS:
        stem = p.stem.removesuffix("-then-restart")
        assert (p.parent / f"{stem}.md").exists(), stem
        assert f"findings/{stem}.md" in index, stem
