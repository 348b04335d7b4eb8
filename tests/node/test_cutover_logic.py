"""Units of the pure cutover logic (protocol §3-§6): applier branches and their order,
the strict hook, the proposers, restarts between the sidecar write and the installer,
and the snapshot rules. Real AES-GCM, an in-memory sidecar (the simulator's store) or
the real sidecar file where durability is the point."""
from __future__ import annotations

import pytest

from node import payload as pl
from node.cutover import Busy, Cutover, FileStore, Halt, MemoryStore
from node.envelope import is_wrapped_shape, parse_header
from node.keystore import Kek, generate_dek


@pytest.fixture
def kek() -> Kek:
    return Kek.generate()


def boot(kek: Kek, store=None, bugs=(), node=1) -> Cutover:
    return Cutover(node, store or MemoryStore(), kek, frozenset(bugs))


def bootstrap(c: Cutover, kek: Kek, index: int, key_id: int = 1) -> bytes:
    wrapped = kek.wrap_dek(generate_dek())
    c.apply(index, pl.bootstrap_payload(key_id, wrapped))
    return wrapped


def test_fresh_marker_sets_c_and_installs(kek: Kek) -> None:
    c = boot(kek)
    bootstrap(c, kek, 3)
    a = c.apply(10, pl.marker_payload(1))
    assert a.kind == "marker-fresh" and c.sidecar.raft_envelope_cutover_index == 10
    assert c.cell == 10 and c.wrap == 1
    sealed = c.seal(pl.user_payload({"op": "write", "key": "k", "value": "v"}))
    assert is_wrapped_shape(sealed) and parse_header(sealed)[0] == 1
    assert c.open_entry(11, sealed)[0] == pl.OP_USER


def test_stale_marker_does_not_cut_over(kek: Kek) -> None:
    c = boot(kek)
    bootstrap(c, kek, 3)
    c.apply(5, pl.rotate_payload(2, kek.wrap_dek(generate_dek())))  # raced the marker
    a = c.apply(10, pl.marker_payload(1))
    assert a.kind == "marker-stale"
    assert c.sidecar.raft_envelope_cutover_index == 0 and c.cell == 0 and c.wrap is None
    assert c.sidecar.raft_applied_index == 10


def test_replayed_marker_after_rotation_stays_installed(kek: Kek) -> None:
    """cutover with D1, rotate to D2, restart from a snapshot older than C: the marker
    replays through 'already active', never 'stale'."""
    store = MemoryStore()
    c = boot(kek, store)
    bootstrap(c, kek, 3)
    c.apply(10, pl.marker_payload(1))
    c.apply(12, pl.rotate_payload(2, kek.wrap_dek(generate_dek())))
    c2 = boot(kek, store)  # restart: start-up install from the sidecar
    assert (c2.cell, c2.wrap) == (10, 2)
    a = c2.apply(10, pl.marker_payload(1))  # replay (snapshot older than C)
    assert a.kind == "marker-already-active" and (c2.cell, c2.wrap) == (10, 2)


def test_stale_check_first_bug_never_installs_on_replay(kek: Kek) -> None:
    """The switch as reported (elastickv PR944): a restarted node whose snapshot is older
    than C got its wrap from the replayed marker alone, and the replayed marker, taken as
    stale under a newer DEK, installs nothing. The stale branch itself clears nothing
    (it used to, a line elastickv never had). With a snapshot that covers C there is no
    replay, and the start-up install keys the wrap as in the fixed build."""
    store = MemoryStore()
    c = boot(kek, store, bugs=["stale-check-first"])
    bootstrap(c, kek, 3)
    c.apply(10, pl.marker_payload(1))
    c.apply(12, pl.rotate_payload(2, kek.wrap_dek(generate_dek())))
    c2 = Cutover(1, store, kek, frozenset(["stale-check-first"]), snapshot_index=5)
    assert (c2.cell, c2.wrap) == (10, None)
    a = c2.apply(10, pl.marker_payload(1))
    assert a.kind == "marker-stale" and c2.wrap is None  # proposes cleartext above C
    assert c2.seal(b"\x00x") == b"\x00x"
    c3 = Cutover(1, store, kek, frozenset(["stale-check-first"]), snapshot_index=12)
    assert (c3.cell, c3.wrap) == (10, 2)


def test_strict_hook_at_the_marker_and_the_nonstrict_bug(kek: Kek) -> None:
    for bugs, halts in (((), False), (("nonstrict-dispatch",), True)):
        store = MemoryStore()
        c = boot(kek, store, bugs)
        bootstrap(c, kek, 3)
        c.apply(10, pl.marker_payload(1))
        c2 = boot(kek, store, bugs)  # restart: cell = C before the marker replays
        marker = pl.marker_payload(1)
        if halts:
            with pytest.raises(Halt) as e:
                c2.open_entry(10, marker)
            assert e.value.index == 10
        else:
            assert c2.open_entry(10, marker) == marker


def test_unwrap_failure_halts_unless_silently_skipped(kek: Kek) -> None:
    for bugs in ((), ("silent-unwrap-skip",)):
        c = boot(kek, bugs=bugs)
        bootstrap(c, kek, 3)
        c.apply(10, pl.marker_payload(1))
        cleartext = pl.user_payload({"op": "write", "key": "k", "value": 1})
        if bugs:
            assert c.open_entry(11, cleartext) is None
        else:
            with pytest.raises(Halt, match="unwrap failed"):
                c.open_entry(11, cleartext)


def test_unknown_opcode_or_subtag_halts(kek: Kek) -> None:
    c = boot(kek)
    with pytest.raises(Halt):
        c.apply(4, bytes([0x07]))
    with pytest.raises(Halt):
        c.apply(4, bytes([pl.OP_ROTATION, 0x09]) + b"\x80")


def test_crash_between_sidecar_write_and_installer_converges(kek: Kek, tmp_path) -> None:
    """The sidecar write precedes the installer; a crash in between loses only the
    in-memory install, which the start-up install puts back from the sidecar."""
    store = FileStore(str(tmp_path))
    c = boot(kek, store)
    bootstrap(c, kek, 3)
    c.apply(10, pl.marker_payload(1))
    del c  # crash: in-memory cell/wrap gone, the sidecar (fsynced) stays
    c2 = boot(kek, store)
    assert (c2.cell, c2.wrap) == (10, 1)
    # and the replayed marker (if the log is replayed) changes nothing
    assert c2.apply(10, pl.marker_payload(1)).kind == "marker-already-active"


def test_no_startup_wrap_bug_leaves_the_proposer_raw(kek: Kek) -> None:
    store = MemoryStore()
    c = boot(kek, store, bugs=["no-startup-wrap"])
    bootstrap(c, kek, 3)
    c.apply(10, pl.marker_payload(1))
    c2 = boot(kek, store, bugs=["no-startup-wrap"])
    assert c2.cell == 10 and c2.wrap is None


def test_no_apply_installer_bug_sets_the_hook_but_not_the_wrap(kek: Kek) -> None:
    c = boot(kek, bugs=["no-apply-installer"])
    bootstrap(c, kek, 3)
    c.apply(10, pl.marker_payload(1))
    assert c.cell == 10 and c.wrap is None


def test_proposers(kek: Kek) -> None:
    c = boot(kek)
    bootstrap(c, kek, 3)
    with pytest.raises(Busy) as e:
        c.user_proposal(b"\x00x", barrier_up=True)
    assert e.value.code == "cutover-in-progress"
    assert boot(kek, bugs=["no-barrier"]).user_proposal(b"\x00x", barrier_up=True) == b"\x00x"
    assert c.marker_proposal(1) == pl.marker_payload(1)
    c.apply(10, pl.marker_payload(1))
    rot = pl.rotate_payload(2, kek.wrap_dek(generate_dek()))
    assert is_wrapped_shape(c.admin_proposal(rot))
    raw = boot(kek, bugs=["raw-admin-proposer"])
    assert raw.admin_proposal(rot) == rot
    # the marker is never wrapped, even after the cutover
    assert not is_wrapped_shape(c.marker_proposal(1))


def test_rotation_after_cutover_switches_the_key_old_entries_still_open(kek: Kek) -> None:
    c = boot(kek)
    bootstrap(c, kek, 3)
    c.apply(10, pl.marker_payload(1))
    old = c.seal(b"\x00old")
    c.apply(11, c.open_entry(11, c.admin_proposal(
        pl.rotate_payload(2, kek.wrap_dek(generate_dek())))))
    assert c.wrap == 2
    new = c.seal(b"\x00new")
    assert parse_header(old)[0] == 1 and parse_header(new)[0] == 2
    assert c.open_entry(12, old) == b"\x00old" and c.open_entry(13, new) == b"\x00new"


def test_a_rotation_the_active_key_went_past_is_a_no_op(kek: Kek) -> None:
    """Issue 26 (cutover sim seeds 82, 258): rotate to 3, rotate to 4, then a second copy
    of the rotation to 3 at a fresh index (an operator's retry of a RotateDEK that timed
    out although it had committed). It changes nothing: the active key, the wrap and the
    sidecar's keys stay on 4; only the applied index moves. So does a late rotation to a
    key id below the active one that was never held."""
    c = boot(kek)
    bootstrap(c, kek, 3)
    c.apply(10, pl.marker_payload(1))
    w3, w4 = kek.wrap_dek(generate_dek()), kek.wrap_dek(generate_dek())
    assert c.apply(20, pl.rotate_payload(3, w3)).kind == "rotate"
    assert c.apply(22, pl.rotate_payload(4, w4)).kind == "rotate"
    keys = dict(c.sidecar.keys)
    a = c.apply(30, pl.rotate_payload(3, w3))
    assert a.kind == "rotate-stale" and a.active == 4 and a.dek == 3
    assert "already held" in a.note
    assert (c.sidecar.active_raft_dek, c.wrap, c.sidecar.raft_applied_index) == (4, 4, 30)
    assert c.sidecar.keys == keys
    assert parse_header(c.seal(b"\x00x"))[0] == 4
    late = c.apply(31, pl.rotate_payload(2, kek.wrap_dek(generate_dek())))
    assert late.kind == "rotate-stale" and "not newer" in late.note
    assert (c.sidecar.active_raft_dek, c.wrap) == (4, 4) and 2 not in c.sidecar.keys
    # A restart keeps it: the sidecar was never moved back.
    assert boot(kek, c.store).wrap == 4


def test_the_admin_request_answers_a_rotation_already_done(kek: Kek) -> None:
    """The early answer (no second entry): the same key, active, is done; a key the
    active one went past is refused definitely; a newer key is worth proposing."""
    c = boot(kek)
    bootstrap(c, kek, 3)
    w2 = kek.wrap_dek(generate_dek())
    c.apply(5, pl.rotate_payload(2, w2))
    assert c.rotation_done(2, w2) == {"cutover": 0, "active": 2, "already": True}
    with pytest.raises(Busy) as e:
        c.rotation_done(2, kek.wrap_dek(generate_dek()))  # the id, with other bytes
    assert e.value.code == "stale-key"
    with pytest.raises(Busy):
        c.rotation_done(1, b"x")
    assert c.rotation_done(3, kek.wrap_dek(generate_dek())) is None


def test_elastickv_moves_the_active_key_back_on_a_second_copy(kek: Kek) -> None:
    """elastickv as it stands (applier.go applyRotateDEK 954-984, writeRotationSidecar
    1391-1392: Active set unconditionally): the second copy re-activates key 3."""
    c = Cutover(1, MemoryStore(), kek, profile="elastickv")
    bootstrap(c, kek, 3)
    w3 = kek.wrap_dek(generate_dek())
    c.apply(20, pl.rotate_payload(3, w3))
    c.apply(22, pl.rotate_payload(4, kek.wrap_dek(generate_dek())))
    assert c.apply(30, pl.rotate_payload(3, w3)).kind == "rotate"
    assert c.sidecar.active_raft_dek == 3


def test_nonces_unique_across_restarts(kek: Kek, tmp_path) -> None:
    store = FileStore(str(tmp_path))
    c = boot(kek, store)
    bootstrap(c, kek, 3)
    c.apply(10, pl.marker_payload(1))
    seen = set()
    for _ in range(5):
        c = boot(kek, store)
        for _ in range(50):
            seen.add(parse_header(c.seal(b"\x00x")))
    assert len(seen) == 250


def test_divergence_guard(kek: Kek) -> None:
    c = boot(kek)
    bootstrap(c, kek, 3)
    c.apply(10, pl.marker_payload(1))
    c.check_startup_snapshot(10)
    c.check_startup_snapshot(0)  # a snapshot older than C carries no cutover
    with pytest.raises(Halt, match="cutover-divergence"):
        c.check_startup_snapshot(12)


def test_snapshot_carries_and_installs_the_encryption_state(kek: Kek) -> None:
    leader = boot(kek)
    bootstrap(leader, kek, 3)
    leader.apply(10, pl.marker_payload(1))
    cut, blob = leader.snapshot_fields(20)
    assert cut == 10 and leader.snapshot_fields(5)[0] == 0
    entry = leader.seal(b"\x00after")
    for bugs, adopts in (((), True), (("snapshot-install-no-cutover",), False)):
        f = boot(kek, bugs=bugs)
        f.adopt_snapshot(cut, blob, 20)
        if adopts:
            assert (f.cell, f.wrap) == (10, 1) and f.open_entry(21, entry) == b"\x00after"
        else:
            assert f.cell == 0 and f.open_entry(21, entry) == entry  # wrapped bytes leak


class _Host:
    """A leader as the EnableRaftEnvelope flow sees it: entries it proposes are applied
    through the same Cutover when the test says so."""

    def __init__(self, cut: Cutover, commit: int, applied: int) -> None:
        self.cut, self.commit, self.applied = cut, commit, applied
        self.leader, self.inflight, self.log = True, 0, []

    def is_leader(self) -> bool:
        return self.leader

    def ready_to_serve(self) -> bool:
        return self.leader

    def commit_index(self) -> int:
        return self.commit

    def applied_index(self) -> int:
        return self.applied

    def inflight_user(self) -> int:
        return self.inflight

    def propose_raw(self, payload: bytes) -> int:
        self.log.append(payload)
        return self.commit + len(self.log)

    def apply_all(self) -> None:
        for i, p in enumerate(self.log, self.commit + 1):
            self.cut.apply(i, p)
            self.applied = i


def test_enable_flow_happy_path(kek: Kek) -> None:
    from node.cutover import EnableFlow

    c = boot(kek)
    bootstrap(c, kek, 3)
    host = _Host(c, commit=5, applied=4)
    flow = EnableFlow(c, timeout_ticks=10)
    assert flow.poll(host) is None and not c.barrier  # waits for applied >= commit
    host.applied = 5
    host.inflight = 2
    assert flow.poll(host) is None and c.barrier  # barrier up, draining
    with pytest.raises(Busy):
        c.user_proposal(b"\x00x", barrier_up=c.barrier)
    host.inflight = 0
    assert flow.poll(host) is None and host.log == [pl.marker_payload(1)]
    assert flow.poll(host) is None  # marker not applied yet
    host.apply_all()
    res = flow.poll(host)
    assert res.status == "ok" and res.cutover == 6 and not c.barrier and c.wrap == 1


def test_enable_flow_answers(kek: Kek) -> None:
    from node.cutover import EnableFlow

    c = boot(kek)
    host = _Host(c, 1, 1)
    assert EnableFlow(c, 10).poll(host).status == "not-bootstrapped"
    bootstrap(c, kek, 1)
    host.leader = False
    assert EnableFlow(c, 10).poll(host).status == "not-leader"
    host.leader = True
    c.apply(2, pl.marker_payload(1))
    host.commit = host.applied = 2
    res = EnableFlow(c, 10).poll(host)
    assert (res.status, res.cutover) == ("already-active", 2)


def test_enable_flow_timeout_keeps_the_barrier_up_unless_the_bug(kek: Kek) -> None:
    from node.cutover import EnableFlow

    for bugs, stays_up in (((), True), (("barrier-release-on-timeout",), False)):
        c = boot(kek, bugs=bugs)
        bootstrap(c, kek, 3)
        host = _Host(c, 3, 3)
        flow = EnableFlow(c, timeout_ticks=2)
        flow.poll(host)
        flow.poll(host)  # marker proposed, never applied
        res = None
        while res is None:
            flow.tick()
            res = flow.poll(host)
        assert res.status == "failed" and c.barrier is stays_up


def test_enable_flow_stale_when_a_rotation_races(kek: Kek) -> None:
    from node.cutover import EnableFlow

    c = boot(kek)
    bootstrap(c, kek, 3)
    host = _Host(c, 3, 3)
    flow = EnableFlow(c, 10)
    flow.poll(host)
    flow.poll(host)
    host.log.insert(0, pl.rotate_payload(2, kek.wrap_dek(generate_dek())))  # lands first
    host.apply_all()
    flow.marker_index = host.applied
    res = flow.poll(host)
    assert res.status == "stale" and not c.barrier and c.cell == 0


def test_duplicate_marker_bug_skips_the_applied_wait(kek: Kek) -> None:
    from node.cutover import EnableFlow

    c = boot(kek, bugs=["duplicate-marker"])
    bootstrap(c, kek, 3)
    host = _Host(c, commit=9, applied=3)  # a committed marker may sit unapplied
    flow = EnableFlow(c, 10)
    flow.poll(host)
    assert c.barrier and flow.poll(host) is None and host.log  # proposes regardless


def test_bugs_lists_every_switch_of_the_protocol() -> None:
    """`cutover bugs` lists the 13 switches of protocol §8, one line each."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "orchestrator.cli", "bugs"],
                         capture_output=True, text=True, check=True).stdout
    names = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert names == {
        "nonstrict-dispatch", "silent-unwrap-skip", "no-barrier", "raw-admin-proposer",
        "no-apply-installer", "stale-check-first", "no-startup-wrap",
        "barrier-release-on-timeout", "leader-unapplied-marker", "duplicate-marker",
        "snapshot-install-no-cutover", "stale-read", "commit-old-term"}
