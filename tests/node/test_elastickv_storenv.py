"""Row 11 of the elastickv profile (docs/protocol.md): the storage envelope. elastickv
seals its Pebble values under a storage DEK (carried by the bootstrap, turned on by the
separate EnableStorageEnvelope entry), its snapshots are the raw store (sealed values
stay sealed), and a value a node cannot open is a read error. The fixed profile has no
storage envelope. Each test runs simulated nodes (no process is started) and prints its
seed."""
from __future__ import annotations

import json

import msgpack
import pytest

from node.fsmstore import FSM_DIR
from node.kv import STORED_EXT, Unopened
from node.sidecar import SIDECAR_NAME
from tests.simkit.scenario import Scenario

TOKEN = "storenv-token-7f3a9c"


def _files(sim: Scenario, node: str, sub: str = "") -> dict[str, bytes]:
    """Every file under a node's simulated data dir (or its `sub` dir): path -> bytes."""
    disk = sim.cl.nodes[node].disk
    out: dict[str, bytes] = {}
    todo = [f"/sim/{node}" + (f"/{sub}" if sub else "")]
    while todo:
        d = todo.pop()
        if not disk.exists(d):
            continue
        for name in disk.listdir(d):
            p = f"{d}/{name}"
            if disk.is_dir(p):
                todo.append(p)
            elif disk.is_file(p):
                out[p] = bytes(disk.read_bytes(p))
    return out


def _holding(files: dict[str, bytes], token: str) -> list[str]:
    return sorted(p for p, b in files.items() if token.encode() in b)


def _snapshot_files(sim: Scenario, node: str) -> dict[str, bytes]:
    return {p: b for p, b in _files(sim, node).items() if "snap" in p.rsplit("/", 1)[-1]
            and not p.endswith(".tmp")}


def _bootstrap(sim: Scenario, lead: str, profile: str) -> None:
    assert sim.call(lead, {"op": "bootstrap", "key_id": 1, "wrapped": sim.new_dek()})["ok"]
    if profile == "elastickv":  # Phase 1 of elastickv's rollout (the harness does it too)
        rep = sim.call(lead, {"op": "enable-storage-envelope"})
        assert rep and rep["ok"], rep


@pytest.mark.parametrize("profile", ["fixed", "elastickv"])
def test_values_rest_sealed_in_the_store_and_in_snapshots(profile: str) -> None:
    """A value written after the storage envelope is on: elastickv's store and snapshot
    files hold it only as ciphertext on every node; the fixed profile (no storage
    envelope, no raft cutover here) keeps its snapshot image in cleartext."""
    seed = 51
    print(f"seed={seed} profile={profile}")
    sim = Scenario(seed, profile=profile)
    lead = sim.wait_leader()
    _bootstrap(sim, lead, profile)
    w = sim.call(lead, {"op": "write", "key": "k", "value": TOKEN})
    assert w and w["ok"], w
    sim.run_until(lambda: all(sim.host(n).applied >= w["index"] for n in sim.ids))
    sim.run_ticks(10)
    for n in sim.ids:
        assert sim.compact(n) >= w["index"]
    sim.run_ticks(10)
    for n in sim.ids:
        snaps = _snapshot_files(sim, n)
        assert snaps, n
        if profile == "fixed":
            assert _holding(snaps, TOKEN), "the fixed profile's image is cleartext below C"
            assert not _files(sim, n, FSM_DIR)
            continue
        # (The raft log holds it in cleartext: no raft cutover here.)
        assert not _holding(snaps, TOKEN), n
        assert not _holding(_files(sim, n, FSM_DIR), TOKEN), n
        stored = sim.host(n).fsm.data["k"]
        assert isinstance(stored, msgpack.ExtType) and stored.code == STORED_EXT
        assert sim.host(n).kv.read("k") == TOKEN  # the map in memory is cleartext
    rep = sim.call(lead, {"op": "read", "key": "k"})
    assert rep and rep["ok"] and rep["value"] == TOKEN, rep


def test_sealed_values_open_again_after_a_restart_and_an_install() -> None:
    """A follower restarted from its store reads the sealed values back: the storage DEK
    comes back from its sidecar (prepareStorageNonceEpoch hydrates the keystore), the
    storage nonce epoch moves on (0 -> 1), and its new writes are sealed. A follower that
    holds the storage DEK and catches up by InstallSnapshot opens the sealed image.
    (A restart from a snapshot past the node's last encryption entry is refused by row
    8b: `docs/findings/restart-refused-after-snapshot.md`.)"""
    seed = 52
    print(f"seed={seed}")
    sim = Scenario(seed, profile="elastickv")
    lead = sim.wait_leader()
    _bootstrap(sim, lead, "elastickv")
    x, y = (n for n in sim.ids if n != lead)
    sim.run_until(lambda: sim.host(y).cut.storage.enabled)
    sim.run_ticks(10)
    sim.isolate(y)
    for i in range(4):
        assert sim.call(lead, {"op": "write", "key": f"k{i}", "value": f"{TOKEN}-{i}"})["ok"]
    sim.run_until(lambda: sim.host(x).applied >= sim.host(lead).raft.commit)
    sim.run_ticks(10)
    assert sim.host(x).cut.storage.nonces.local_epoch == 0
    sim.compact(lead)  # (not x: its restart below must start from its store)
    sim.heal()
    assert sim.run_until(lambda: sim.host(y).applied >= sim.host(lead).raft.commit, 400)
    sim.run_ticks(10)
    assert any(e["node"] == y and e["kind"] == "snapshot-installed" for e in sim.events)
    assert not _holding(_files(sim, y, FSM_DIR), TOKEN)
    for i in range(4):
        assert sim.host(y).kv.read(f"k{i}") == f"{TOKEN}-{i}", (y, i)
    w = sim.call(lead, {"op": "write", "key": "k8", "value": f"{TOKEN}-8"})
    assert w and w["ok"], w
    assert sim.run_until(lambda: sim.host(x).applied >= w["index"])
    sim.run_ticks(10)
    sim.crash(x)
    sim.restart(x)
    h = sim.host(x)
    assert h.cut.storage.nonces.local_epoch == 1 and h.cut.storage.enabled
    assert [e for e in sim.events if e["node"] == x and e["kind"] == "start"][-1][
        "state_from"] == "store"
    for i in (0, 1, 2, 3, 8):
        assert h.kv.read(f"k{i}") == f"{TOKEN}-{i}", (x, i)
    w = sim.call(lead, {"op": "write", "key": "k9", "value": f"{TOKEN}-9"})
    assert w and w["ok"], w
    assert sim.run_until(lambda: sim.host(x).applied >= w["index"])
    assert sim.host(x).kv.read("k9") == f"{TOKEN}-9"
    assert isinstance(sim.host(x).fsm.data["k9"], msgpack.ExtType)
    assert not _holding(_files(sim, x, FSM_DIR), TOKEN)


def test_the_fixed_profile_has_no_storage_envelope() -> None:
    """The fixed profile's bootstrap carries no storage DEK, its sidecar has no storage
    fields (its bytes are what they were), and enable-storage-envelope is an unknown op."""
    seed = 53
    print(f"seed={seed}")
    sim = Scenario(seed, profile="fixed")
    lead = sim.wait_leader()
    _bootstrap(sim, lead, "fixed")
    rep = sim.call(lead, {"op": "enable-storage-envelope"})
    assert rep and not rep["ok"] and rep["code"] == "bad-request", rep
    assert sim.host(lead).cut.storage is None
    doc = json.loads(sim.cl.nodes[lead].disk.read_bytes(f"/sim/{lead}/{SIDECAR_NAME}"))
    assert "storage" not in doc and list(doc["keys"]) == ["1"]


def _caught_up_by_snapshot(seed: int) -> tuple[Scenario, str, str]:
    """A follower cut off through the bootstrap, the enable-storage-envelope entry and a
    sealed write, that catches up by InstallSnapshot past all three."""
    sim = Scenario(seed, profile="elastickv")
    first = sim.wait_leader()
    x = next(n for n in sim.ids if n != first)
    sim.isolate(x)
    lead = sim.wait_leader()
    _bootstrap(sim, lead, "elastickv")
    assert sim.call(lead, {"op": "write", "key": "old", "value": TOKEN})["ok"]
    sim.run_ticks(20)
    for n in sim.ids:
        if n != x:
            sim.compact(n)
    sim.heal()
    assert sim.run_until(lambda: sim.host(x).applied >= sim.host(lead).raft.commit, 400)
    sim.run_ticks(10)
    assert any(e["node"] == x and e["kind"] == "snapshot-installed" for e in sim.events)
    return sim, lead, x


def test_a_node_without_the_storage_dek_starts_fails_reads_and_stores_cleartext() -> None:
    """A follower that caught up by InstallSnapshot past the bootstrap never gets the
    storage DEK (row 3: the install leaves its sidecar and keystore as they were) and
    never turns the envelope on (the 0x05 0x04 entry is below the snapshot; had it
    applied it, its DEK id would not be the node's Active.Storage, 0: a no-op). What
    elastickv then does: the installed sealed values stay sealed (a raw restore), a read
    of one is an error (unknown key id) while the process runs on, a restart is not
    refused (nothing opens values at start-up), and the node's own later writes are
    stored in cleartext, in its store and in its snapshots."""
    seed = 54
    print(f"seed={seed}")
    sim, lead, x = _caught_up_by_snapshot(seed)
    h = sim.host(x)
    sc = h.cut.sidecar
    assert sc.active_storage_dek == 0 and not sc.storage_envelope_active
    held = h.kv.read("old")
    assert isinstance(held, Unopened) and held.code == "unknown-key"
    assert not _holding(_files(sim, x, FSM_DIR), TOKEN)  # installed raw: still sealed
    new = "storenv-cleartext-5d1e"
    w = sim.call(lead, {"op": "write", "key": "new", "value": new})
    assert w and w["ok"], w
    assert sim.run_until(lambda: sim.host(x).applied >= w["index"])
    sim.run_ticks(10)
    assert _holding(_files(sim, x, FSM_DIR), new), "stored without the envelope"
    assert not any(_holding(_files(sim, n, FSM_DIR), new) for n in sim.ids if n != x)
    sim.compact(x)
    sim.run_ticks(10)
    assert _holding(_snapshot_files(sim, x), new)
    sim.crash(x)
    sim.restart(x)
    assert sim.cl.nodes[x].host is not None, "the start is not refused"
    assert isinstance(sim.host(x).kv.read("old"), Unopened)
    sim.make_leader(x)
    rep = sim.call(x, {"op": "read", "key": "old"})
    assert rep and not rep["ok"] and rep["code"] == "read-error", rep
    rep = sim.call(x, {"op": "read", "key": "new"})
    assert rep and rep["ok"] and rep["value"] == new, rep
    assert not sim.halts()


def test_the_checker_finds_cleartext_in_the_store_of_a_node_without_the_envelope() -> None:
    """The new hazard, end to end: the follower of the test above gets a raft DEK later
    (a rotation it applies) and cuts over with everyone, so after T it seals its raft
    entries but still stores every value it applies in cleartext, for good (nothing in
    elastickv gives it the storage DEK or turns its envelope on). The byte scan, now
    reading the elastickv store and its snapshots, finds the post-T tokens there (I1),
    on that node only."""
    seed = 54
    print(f"seed={seed}")
    sim, lead, x = _caught_up_by_snapshot(seed)
    rot = sim.call(lead, {"op": "rotate-dek", "key_id": 2, "wrapped": sim.new_dek()})
    assert rot and rot["ok"], rot
    assert sim.until_writable(lead)
    rep = sim.call(lead, {"op": "enable-raft-envelope"})
    assert rep and rep["ok"] and rep["value"]["status"] == "ok", rep
    assert sim.until_writable(lead)
    after = "storenv-after-T-0b7e"
    written_ns = sim.cl.now * 1000  # the events' clock (simulated us -> ns)
    w = sim.call(lead, {"op": "write", "key": "late", "value": after})
    assert w and w["ok"], w
    assert sim.run_until(lambda: sim.host(x).applied >= w["index"])
    sim.run_ticks(20)
    assert sim.host(x).cut.cell == rep["value"]["cutover"], "x cut over (key 2)"
    assert _holding(_files(sim, x, FSM_DIR), after)
    report = sim.check([(after.encode(), written_ns)])
    i1 = report.results["I1"]
    assert not i1.valid
    store_hits = [v for v in i1.violations if "durable KV store" in v["reason"]]
    assert store_hits and {v["node"] for v in store_hits} == {x}, i1.violations[:3]


def test_a_sealed_value_is_bound_to_its_key_and_its_purpose() -> None:
    """The storage envelope's AAD (row 11) names its purpose and the value's key, as
    elastickv's buildStorageAAD binds the Pebble key: a value pasted under another key,
    or fed to the raft envelope's reader, fails authentication."""
    from node.envelope import UnwrapError, unwrap
    from node.keystore import Kek, Keystore, generate_dek
    from node.sidecar import Sidecar
    from node.storenv import StorageEnvelope

    kek = Kek.generate()
    keys = Keystore(kek)
    keys.install(7, generate_dek(), "storage", 1)
    box = [Sidecar(active_storage_dek=7, storage_envelope_active=True,
                   keys={7: keys.record(7)})]
    env = StorageEnvelope(lambda: box[0], lambda sc: box.__setitem__(0, sc), keys, 3)
    assert env.nonces.local_epoch == 1  # a storage DEK was active at the start: bumped
    sealed = env.seal("a", TOKEN)
    assert TOKEN.encode() not in bytes(sealed.data)
    assert env.open("a", sealed) == TOKEN
    moved = env.open("b", sealed)
    assert isinstance(moved, Unopened) and moved.code == "auth-failed"
    with pytest.raises(UnwrapError):
        unwrap(keys.get, bytes(sealed.data), check_flag=False)  # the raft purpose
    assert env.seal("!encryption|writers|1|2", b"row") == b"row"  # registry rows: raw


def test_the_sidecar_writes_storage_fields_only_when_a_storage_dek_is_active(
        tmp_path) -> None:
    """A fixed-profile sidecar is byte for byte what it was (no `storage` object); an
    elastickv one round-trips its storage fields and refuses to turn the envelope off."""
    from node import sidecar as sidecar_file
    from node.keystore import Kek, WrappedKey, generate_dek

    kek = Kek.generate()
    wk = WrappedKey(kek.wrap_dek(generate_dek()), "raft", 2)
    plain = sidecar_file.Sidecar(raft_applied_index=2, active_raft_dek=1, keys={1: wk})
    sidecar_file.save(tmp_path, plain)
    assert "storage" not in json.loads((tmp_path / SIDECAR_NAME).read_bytes())
    sk = WrappedKey(kek.wrap_dek(generate_dek()), "storage", 2)
    on = sidecar_file.Sidecar(raft_applied_index=3, active_raft_dek=1,
                              keys={1: wk, 65537: sk}, active_storage_dek=65537,
                              storage_envelope_active=True, storage_cutover_index=3,
                              storage_epoch=2)
    sidecar_file.save(tmp_path, on)
    assert sidecar_file.load(tmp_path) == on
    off = sidecar_file.Sidecar(**{**{f: getattr(on, f) for f in on.__slots__},
                                  "storage_envelope_active": False})
    with pytest.raises(sidecar_file.SidecarError, match="storage envelope off"):
        sidecar_file.save(tmp_path, off)
