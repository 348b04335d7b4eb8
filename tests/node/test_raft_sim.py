"""Tests of the Raft core (node/raft.py): hand-driven scenarios for each mechanism, then
seeded random simulations (tests/simkit/raftsim.py) that check Raft's safety properties.

Every randomized test prints `seed=N` and puts it in its assertion messages; a run is a
pure function of its seed, so `run_random(N, n)` (or the Figure 8 loop body) replays it.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from typing import Any

import msgpack
import pytest

from node.buggify import ACTIONS
from node.raft import (
    BUG_COMMIT_OLD_TERM,
    Config,
    Message,
    MsgType,
    NotLeader,
    RaftNode,
    RaftPanic,
    Role,
    from_wire,
    to_wire,
)
from node.types import Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from tests.simkit.raftsim import (
    Lockstep,
    MemStorage,
    SimCluster,
    SimConfig,
    figure8_faults,
    figure8_sim_config,
    random_faults,
    random_sim_config,
)

IDS = ("n1", "n2", "n3")


def core(node_id: str = "n2", **kw: Any) -> RaftNode:
    return RaftNode(node_id, IDS, rng=random.Random(0), **kw)


def log(*terms: int, start: int = 1) -> list[Entry]:
    """Entries with the given terms at consecutive indexes from `start`."""
    return [
        Entry(start + k, t, EntryKind.NORMAL, b"e%d" % (start + k)) for k, t in enumerate(terms)
    ]


def storage(terms: tuple[int, ...], term: int, commit: int) -> MemStorage:
    return MemStorage(hard_state=HardState(term, None, commit), entries=log(*terms))


# ------------------------------------------------------------------ election


def test_single_node_elects_itself_commits_and_reads() -> None:
    n = RaftNode("n1", ["n1"], rng=random.Random(1))
    for _ in range(20):
        n.tick()
    assert n.role is Role.LEADER and n.term == 1
    idx = n.propose(b"x")
    n.read_index(b"ctx")
    rd = n.ready()
    # The leader's own entries count towards commit only once durable: nothing is
    # committed (or read) before the Ready that persists them has been advanced.
    assert [e.index for e in rd.entries] == [1, 2] and rd.must_sync
    assert rd.committed_entries == [] and rd.read_states == []
    n.advance(rd)
    rd = n.ready()
    assert [e.kind for e in rd.committed_entries] == [EntryKind.NOOP, EntryKind.NORMAL]
    assert rd.hard_state == HardState(1, "n1", 2)
    assert [(r.index, r.ctx) for r in rd.read_states] == [(2, b"ctx")]
    n.advance(rd)
    assert idx == 2 and n.applied == 2 and n.term_start_applied


def test_three_nodes_elect_exactly_one_leader_and_persist_votes() -> None:
    ls = Lockstep(config=Config(pre_vote=False))
    leader = ls.elect("n1")
    assert leader.term == 1
    assert [ls.cores[i].role for i in IDS] == [Role.LEADER, Role.FOLLOWER, Role.FOLLOWER]
    assert all(ls.cores[i].leader == "n1" and ls.cores[i].term == 1 for i in IDS)
    # Voters persisted their vote (it was in the Ready whose messages carried it).
    assert {ls.storage[i].hard_state.vote for i in IDS} == {"n1"}
    # The new leader's first entry is its no-op, committed and applied everywhere.
    assert leader.term_start_index == 1 and leader.term_start_applied
    assert all([e.kind for e in ls.applied[i]] == [EntryKind.NOOP] for i in IDS)


def test_vote_is_in_the_same_ready_as_its_response_and_only_given_once() -> None:
    n2 = core("n2")
    n2.step(Message(MsgType.VOTE, "n1", "n2", term=1))
    n2.step(Message(MsgType.VOTE, "n3", "n2", term=1))
    rd = n2.ready()
    assert rd.hard_state == HardState(1, "n1", 0) and rd.must_sync
    assert rd.messages == []  # a vote may only leave once it is durable
    votes = [(m.dst, m.reject) for m in rd.messages_after_persist if m.type is MsgType.VOTE_RESP]
    assert votes == [("n1", False), ("n3", True)]
    # Restarted from what was persisted, it still refuses a second candidate.
    st = MemStorage()
    st.persist(rd)
    again = core("n2", hard_state=st.hard_state)
    again.step(Message(MsgType.VOTE, "n3", "n2", term=1))
    assert [m.reject for m in again.ready().messages_after_persist] == [True]


def test_candidate_with_stale_log_is_refused() -> None:
    n2 = core("n2", hard_state=HardState(2, None, 1), entries=log(1, 2))
    n2.step(Message(MsgType.VOTE, "n1", "n2", term=3, index=5, log_term=1))  # longer, older
    n2.step(Message(MsgType.VOTE, "n3", "n2", term=3, index=2, log_term=2))  # as good
    resps = [(m.dst, m.reject) for m in n2.ready().messages_after_persist]
    assert resps == [("n1", True), ("n3", False)]
    assert n2.vote == "n3" and n2.term == 3


def test_prevote_keeps_an_isolated_node_from_deposing_the_leader() -> None:
    def terms_after_rejoin(pre_vote: bool) -> tuple[int, int]:
        cl = SimCluster(SimConfig(n=3, raft=Config(pre_vote=pre_vote)), seed=7)
        lead = cl.wait_leader()
        before = cl.core(lead).term
        follower = next(i for i in cl.ids if i != lead)
        cl.isolate(follower)
        cl.run_ticks(200)
        cl.heal()
        cl.run_ticks(50)
        return before, max(cl.core(i).term for i in cl.ids)

    before, after = terms_after_rejoin(pre_vote=True)
    assert after == before
    before, after = terms_after_rejoin(pre_vote=False)
    assert after > before  # the contrast shows the test can fail


# ------------------------------------------------------------------ replication


def test_replication_batches_entries_and_pipelines_messages() -> None:
    ls = Lockstep(config=Config(max_msg_bytes=12, max_inflight=3))
    leader = ls.elect("n1")
    for k in range(20):
        leader.propose(b"v%03d" % k)  # 4 bytes each: 3 per APP
    rd = ls.process("n1")
    apps = [m for m in rd.messages if m.type is MsgType.APP and m.dst == "n2"]
    # One Ready, several APPs in flight to the same follower (pipelining), each with a
    # batch of entries bounded by max_msg_bytes, and no more than max_inflight of them.
    assert [len(m.entries) for m in apps] == [3, 3, 3]
    assert [m.index for m in apps] == [1, 4, 7]
    ls.settle()
    assert all(ls.cores[i].commit == 21 and ls.cores[i].last_index == 21 for i in IDS)
    assert [e.data for e in ls.applied["n3"][1:]] == [b"v%03d" % k for k in range(20)]


def test_follower_truncates_conflicting_uncommitted_entries() -> None:
    st = storage((1, 1, 2, 2), term=2, commit=2)
    n2 = core("n2", hard_state=st.hard_state, entries=st.entries)
    new = Entry(3, 3, EntryKind.NORMAL, b"new")
    n2.step(Message(MsgType.APP, "n1", "n2", term=3, index=2, log_term=1, commit=2, entries=(new,)))
    rd = n2.ready()
    assert rd.entries == [new]  # storage must drop stored entries >= 3 first
    st.persist(rd)
    assert [(e.index, e.term) for e in st.entries] == [(1, 1), (2, 1), (3, 3)]
    acks = [(m.index, m.reject) for m in rd.messages_after_persist]
    assert acks == [(3, False)]
    n2.advance(rd)
    # Once the leader appended 4, a late duplicate of the first APP must not cut it.
    four = Entry(4, 3, EntryKind.NORMAL, b"four")
    n2.step(Message(MsgType.APP, "n1", "n2", term=3, index=3, log_term=3, entries=(four,)))
    n2.step(Message(MsgType.APP, "n1", "n2", term=3, index=2, log_term=1, entries=(new,)))
    assert n2.last_index == 4 and n2.term_at(4) == 3
    # A leader disagreeing with a committed entry is impossible in Raft: fail loudly.
    with pytest.raises(RaftPanic):
        n2.step(Message(MsgType.APP, "n1", "n2", term=3, index=2, log_term=2))


def test_follower_commits_and_acks_only_what_the_append_proved() -> None:
    # n2 holds a stale tail (3, 4 of term 2). An APP that matches up to 2 proves
    # nothing about 3 and 4, whatever the leader's commit index says.
    n2 = core("n2", hard_state=HardState(3, None, 1), entries=log(1, 1, 2, 2))
    n2.step(
        Message(
            MsgType.APP,
            "n1",
            "n2",
            term=3,
            index=1,
            log_term=1,
            commit=4,
            entries=tuple(log(1, start=2)),
        )
    )
    rd = n2.ready()
    assert n2.commit == 2 and [e.index for e in rd.committed_entries] == [1, 2]
    assert [(m.index, m.reject) for m in rd.messages_after_persist] == [(2, False)]
    assert n2.last_index == 4  # not truncated either: only a conflict truncates
    n2.advance(rd)
    # Heartbeats carry min(match, commit) for the same reason.
    n2.step(Message(MsgType.HEARTBEAT, "n1", "n2", term=3, commit=2))
    assert n2.commit == 2


def test_leader_skips_a_divergent_tail_with_the_reject_hint() -> None:
    common = (1, 1)
    stores = {
        "n1": storage(common + (3,) * 8, term=3, commit=2),
        "n2": storage(common + (2,) * 48, term=3, commit=2),  # long stale tail
        "n3": storage(common + (3,) * 8, term=3, commit=2),
    }
    ls = Lockstep(storages=stores, config=Config(max_msg_bytes=1024))
    ls.elect("n1")
    ls.settle()
    rejects = [m for m in ls.log if m.type is MsgType.APP_RESP and m.src == "n2" and m.reject]
    # Without the hint the leader would back off one entry per round trip (48 rounds).
    assert 1 <= len(rejects) <= 2
    n1, n2 = ls.cores["n1"], ls.cores["n2"]
    assert n2.entries(1, n2.last_index + 1) == n1.entries(1, n1.last_index + 1)


@pytest.mark.parametrize("bugs", [frozenset(), frozenset({BUG_COMMIT_OLD_TERM})])
def test_old_term_entries_are_not_committed_by_counting(bugs: frozenset[str]) -> None:
    # Figure 8, step (c): n1 leads term 4 holding an uncommitted entry of term 2.
    stores = {
        "n1": storage((1, 2), term=3, commit=1),
        "n2": storage((1,), term=3, commit=1),
        "n3": storage((1,), term=3, commit=1),
    }
    ls = Lockstep(storages=stores, config=Config(max_msg_bytes=1, max_inflight=1), bugs=bugs)
    # n2 gets entry 2 but its ack of the no-op (3) is lost; n3 hears nothing after voting.
    ls.deliver = lambda m: (
        not (
            (m.src == "n1" and m.dst == "n3" and m.type is MsgType.APP)
            or (m.src == "n2" and m.type is MsgType.APP_RESP and m.index >= 3 and not m.reject)
        )
    )
    n1 = ls.elect("n1")
    assert n1.term == 4 and ls.cores["n2"].last_index == 3
    if bugs:
        assert n1.commit == 2  # the Figure 8 defect: a majority holds it, so "committed"
    else:
        assert n1.commit == 1  # a majority holds entry 2, but it is of an older term
    ls.release()
    ls.tick("n1", 2)  # a heartbeat round re-delivers what was lost
    assert n1.commit == 3  # counting the no-op commits it and, with it, entry 2


def test_compaction_and_install_snapshot_catch_up_a_far_behind_follower() -> None:
    cl = SimCluster(SimConfig(n=3, compact_every=5), seed=3)
    lead = cl.wait_leader()
    lagger = next(i for i in cl.ids if i != lead)
    cl.isolate(lagger)
    for _ in range(40):
        cl.propose(lead)
        cl.run_ticks(1)
    cl.run_ticks(20)
    lc, fc = cl.core(lead), cl.core(lagger)
    assert lc.snapshot_index > fc.last_index + 1  # its next entry is compacted away
    snaps: list[Message] = []

    def watch(m: Message) -> bool:
        if m.type is MsgType.SNAP:
            snaps.append(m)
        return True

    cl.message_filter = watch
    cl.heal()
    assert cl.run_until(lambda: cl.core(lagger).applied == cl.core(lead).applied, 100)
    assert snaps and snaps[0].dst == lagger
    assert cl.stats["snapshots_installed"] >= 1 and fc.snapshot_index > 0
    assert cl.nodes[lagger].fsm.digest() == cl.nodes[lead].fsm.digest()
    assert len(cl.nodes[lagger].fsm.items) == 40
    # The follower persisted the received snapshot and survives a restart from it.
    cl.crash(lagger)
    cl.restart(lagger)
    cl.propose(lead)
    assert cl.run_until(lambda: len(cl.nodes[lagger].fsm.items) == 41, 100)
    assert cl.run_until(cl.converged, 200)
    assert cl.check_final() == []


def test_install_snapshot_replaces_a_conflicting_log_but_keeps_a_matching_one() -> None:
    snap = Snapshot(SnapshotMeta(5, 2), b"image")
    # Matching: n2 holds entry 5 of term 2, so it only learns that 5 is committed.
    n2 = core("n2", hard_state=HardState(2, None, 2), entries=log(1, 1, 2, 2, 2, 2, 2))
    n2.step(Message(MsgType.SNAP, "n1", "n2", term=2, index=5, log_term=2, snapshot=snap))
    rd = n2.ready()
    assert rd.snapshot is None and n2.commit == 5 and n2.last_index == 7
    assert [(m.type, m.index) for m in rd.messages_after_persist] == [(MsgType.APP_RESP, 5)]
    # Conflicting: n3's entry 5 is of term 1, so its whole log goes.
    n3 = core("n3", hard_state=HardState(2, None, 2), entries=log(1, 1, 1, 1, 1, 1, 1, 1))
    n3.step(Message(MsgType.SNAP, "n1", "n3", term=2, index=5, log_term=2, snapshot=snap))
    rd = n3.ready()
    assert rd.snapshot is snap and rd.must_sync and rd.entries == [] and rd.committed_entries == []
    assert (n3.snapshot_index, n3.last_index, n3.commit) == (5, 5, 5)
    st = storage((1,) * 8, term=2, commit=2)
    st.persist(rd)
    assert st.snapshot is snap and st.entries == [] and st.hard_state.commit == 5
    n3.advance(rd)
    assert n3.applied == 5 and not n3.has_ready()


def test_stale_leader_learns_the_newer_term_and_steps_down() -> None:
    ls = Lockstep()
    old = ls.elect("n1")
    ls.deliver = lambda m: "n1" not in (m.src, m.dst)  # n1 cut off
    new = ls.elect("n2")
    n3 = ls.cores["n3"]
    before = n3.entries(1, n3.last_index + 1)
    old.propose(b"stale")
    ls.deliver = None
    ls.settle()
    assert old.role is Role.FOLLOWER and old.term == new.term and old.leader is None
    assert n3.entries(1, 3) == before[:2] and new.role is Role.LEADER
    ls.tick("n2", 2)
    assert old.leader == "n2" and old.entries(1, 3) == new.entries(1, 3)


# ------------------------------------------------------------------ ReadIndex


def test_read_index_waits_for_own_term_commit_and_a_quorum() -> None:
    ls = Lockstep()
    ls.elect("n1")
    for k in range(3):
        ls.cores["n1"].propose(b"a%d" % k)
    ls.settle()
    # A fresh leader (n2, term 2) must not answer before committing its no-op: its
    # commit index could be behind what the previous leader committed.
    ls.deliver = lambda m: m.type not in (MsgType.APP, MsgType.APP_RESP)
    n2 = ls.elect("n2")
    n2.read_index(b"early")
    ls.settle()
    assert ls.read_states["n2"] == [] and n2.commit < n2.term_start_index
    ls.release()
    assert [(r.index, r.ctx) for r in ls.read_states["n2"]] == [(n2.term_start_index, b"early")]
    # A read needs a quorum of heartbeat acks from this term.
    ls.deliver = lambda m: m.type is not MsgType.HEARTBEAT_RESP
    n2.read_index(b"blocked")
    ls.settle()
    assert [r.ctx for r in ls.read_states["n2"]] == [b"early"]
    ls.release()
    assert [r.ctx for r in ls.read_states["n2"]] == [b"early", b"blocked"]
    with pytest.raises(NotLeader) as err:
        ls.cores["n3"].read_index(b"x")
    assert err.value.leader == "n2"


def test_deposed_leader_cannot_serve_reads() -> None:
    cl = SimCluster(seed=11)
    old = cl.wait_leader()
    cl.isolate(old)
    assert cl.run_until(lambda: cl.leader() not in (None, old) and cl.serving_leader() is not None)
    new = cl.serving_leader()
    assert new is not None
    idx = cl.propose(new)
    assert idx is not None
    assert cl.run_until(lambda: cl.core(new).applied >= idx, 50)
    stale = cl.read(old)  # the isolated node still believes it leads
    fresh = cl.read(new)
    assert stale is not None and fresh is not None
    cl.run_ticks(60)
    assert stale in cl.nodes[old].reads  # never released
    assert fresh not in cl.nodes[new].reads and cl.stats["reads"] == 1
    assert cl.violations == []


# ------------------------------------------------------------------ restart, API


def test_restart_of_every_node_from_synced_storage_keeps_acknowledged_writes() -> None:
    cl = SimCluster(seed=5)
    lead = cl.wait_leader()
    for _ in range(10):
        cl.propose(lead)
        cl.run_ticks(2)
    cl.run_ticks(20)
    acked = dict(cl.acked)
    assert len(acked) == 10
    for i in cl.ids:
        cl.crash(i)
    for i in cl.ids:
        cl.restart(i)
    lead = cl.wait_leader()
    assert cl.propose(lead) is not None
    assert cl.heal_and_converge()
    assert cl.check_final() == []
    assert len(cl.acked) == 11 and all(cl.acked[i] == w for i, w in acked.items())


def test_api_misuse_is_rejected() -> None:
    with pytest.raises(ValueError):
        core(bugs=frozenset({"no-such-bug"}))
    with pytest.raises(ValueError):  # a gap between the snapshot and the entries
        core(snapshot=Snapshot(SnapshotMeta(5, 1)), entries=log(1, start=7))
    n = core()
    with pytest.raises(NotLeader):
        n.propose(b"x")
    rd = n.ready()
    with pytest.raises(RuntimeError):  # one Ready at a time
        n.ready()
    n.advance(rd)
    with pytest.raises(RuntimeError):
        n.advance(rd)
    n2 = core(hard_state=HardState(1, None, 2), entries=log(1, 1))
    n2.advance(n2.ready())
    with pytest.raises(ValueError):
        n2.compact(3, b"")
    snap = n2.compact(2, b"fsm")
    assert (snap.meta, n2.snapshot_index, n2.last_index, n2.term_at(1)) == (
        SnapshotMeta(2, 1),
        2,
        2,
        None,
    )


def test_wire_roundtrip_through_msgpack() -> None:
    snap = Snapshot(SnapshotMeta(7, 2), b"\x00state\xff")
    msgs = [
        Message(
            MsgType.APP,
            "n1",
            "n2",
            3,
            index=4,
            log_term=2,
            commit=4,
            entries=(Entry(5, 3, EntryKind.NOOP, b""), Entry(6, 3, EntryKind.NORMAL, b"\x01\x02")),
        ),
        Message(MsgType.APP_RESP, "n2", "n1", 3, index=9, reject=True, reject_hint=6, log_term=2),
        Message(MsgType.PRE_VOTE, "n3", "n1", 4, index=6, log_term=3),
        Message(MsgType.HEARTBEAT, "n1", "n3", 3, commit=5, read_seq=12),
        Message(MsgType.SNAP, "n1", "n2", 3, index=7, log_term=2, snapshot=snap),
    ]
    for m in msgs:
        raw = msgpack.packb(to_wire(m))
        assert from_wire(msgpack.unpackb(raw)) == m
    good = to_wire(msgs[0])
    for bad in (
        {k: v for k, v in good.items() if k != "term"},
        {**good, "type": 99},
        {**good, "term": -1},
        {**good, "entries": [[1, 1, 0, "not bytes"]]},
        {**good, "reject": 1},
        [1, 2, 3],
    ):
        with pytest.raises(ValueError):
            from_wire(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ simulation


def run_random(seed: int, n: int, ticks: int = 400) -> SimCluster:
    print(f"seed={seed}")
    cl = SimCluster(random_sim_config(seed, n), seed=seed)
    cl.run_random(ticks, random_faults(seed))
    cl.check_log_matching()
    converged = cl.heal_and_converge()
    violations = cl.check_final()
    assert violations == [], f"seed={seed} n={n}: {violations[:5]}"
    assert converged, f"seed={seed} n={n}: no convergence after healing"
    return cl


@pytest.mark.parametrize("seed", range(40))
def test_random_faults_3_nodes(seed: int) -> None:
    cl = run_random(seed, 3)
    faults = cl.stats["crashes"] + cl.stats["partitions"]
    assert cl.stats["proposed"] > 0 and faults > 0, f"seed={seed}: {dict(cl.stats)}"


def test_random_faults_runs_are_not_vacuous() -> None:
    """A seed with heavy faults may ack nothing; most must, or the checks prove little."""
    acked = {seed: run_random(seed, 3).stats["acked"] for seed in range(12)}
    assert sum(1 for a in acked.values() if a > 0) >= 10, acked


@pytest.mark.parametrize("seed", range(24))
def test_random_faults_5_nodes(seed: int) -> None:
    cl = run_random(seed, 5)
    faults = cl.stats["crashes"] + cl.stats["partitions"]
    assert cl.stats["acked"] > 0 and faults > 0, f"seed={seed}: {dict(cl.stats)}"


@pytest.mark.parametrize(("n", "seed"), [(3, s) for s in range(16)] + [(5, s) for s in range(8)])
def test_figure8_schedule_is_safe_without_the_bug(n: int, seed: int) -> None:
    print(f"seed={seed}")
    cl = SimCluster(figure8_sim_config(n), seed=seed)
    cl.run_random(200, figure8_faults(), write_every=(3, 15))
    assert cl.heal_and_converge(), f"seed={seed}: no convergence"
    assert cl.check_final() == [], f"seed={seed}: {cl.violations[:5]}"


SAFETY = ("state-machine-safety", "lost-write")


def safety(cl: SimCluster) -> list[str]:
    return [v for v in cl.violations if v.startswith(SAFETY)]


def test_commit_old_term_bug_is_caught() -> None:
    """The `commit-old-term` switch must lose an acknowledged write or diverge replicas
    on some seed; the same seeds with the switch off must stay clean."""
    bug = frozenset({BUG_COMMIT_OLD_TERM})
    deadline = time.monotonic() + 20
    found = None
    tried = []
    for seed in range(200):
        tried.append(seed)
        cl = SimCluster(figure8_sim_config(3, bug), seed=seed)
        cl.run_random(200, figure8_faults(), write_every=(3, 15), stop=lambda c=cl: bool(safety(c)))
        hits = safety(cl)
        if hits:
            found = seed
            print(f"seed={seed}")
            print(hits[0])
            break
        if time.monotonic() > deadline:
            break
    assert found is not None, f"commit-old-term not caught on seeds {tried}"
    for seed in tried:
        cl = SimCluster(figure8_sim_config(3), seed=seed)
        cl.run_random(200, figure8_faults(), write_every=(3, 15))
        assert cl.heal_and_converge() and cl.check_final() == [], (
            f"seed={seed} fails without the bug: {cl.violations[:3]}"
        )


@pytest.mark.slow
@pytest.mark.parametrize("n", [3, 5])
def test_random_faults_many_seeds(n: int) -> None:
    for seed in range(100, 400):
        run_random(seed, n, ticks=800)


@pytest.mark.slow
@pytest.mark.parametrize("n", [3, 5])
def test_figure8_schedule_many_seeds(n: int) -> None:
    for seed in range(100, 300):
        print(f"seed={seed}")
        cl = SimCluster(figure8_sim_config(n), seed=seed)
        cl.run_random(400, figure8_faults(), write_every=(3, 15))
        assert cl.heal_and_converge() and cl.check_final() == [], f"seed={seed} n={n}"


def test_a_wiped_follower_is_brought_back_by_a_snapshot() -> None:
    """A follower whose disk was wiped rejects what the leader believes it holds; the
    leader must start over from what the follower says it has (here: nothing), which
    leads to a snapshot, instead of probing the same index forever."""
    ids = ["n1", "n2", "n3"]
    nodes = {i: RaftNode(i, ids, rng=random.Random(k)) for k, i in enumerate(ids)}
    sent: list[Message] = []

    def pump(rounds: int) -> None:
        for _ in range(rounds):
            msgs: list[Message] = []
            for n in nodes.values():
                while n.has_ready():
                    rd = n.ready()
                    msgs += rd.messages + rd.messages_after_persist
                    n.advance(rd)
            sent.extend(msgs)
            for m in msgs:
                nodes[m.dst].step(m)
            for n in nodes.values():
                n.tick()

    pump(100)
    lead = next(n for n in nodes.values() if n.role is Role.LEADER)
    for i in range(10):
        lead.propose(b"x%d" % i)
    pump(20)
    lead.compact(lead.applied, b"image")
    wiped = next(i for i in ids if i != lead.id)
    nodes[wiped] = RaftNode(wiped, ids, rng=random.Random(9))
    lead.propose(b"after")
    sent.clear()
    pump(60)
    assert any(m.type is MsgType.SNAP and m.dst == wiped for m in sent)
    assert nodes[wiped].commit == lead.commit and nodes[wiped].snapshot_index > 0
    # And it does not flood: a handful of APPs, not one per round forever.
    apps = [m for m in sent[-40:] if m.type is MsgType.APP and m.dst == wiped and m.entries]
    assert len(apps) <= 2


def _deliver(nodes: dict[str, RaftNode], msgs: list[Message]) -> None:
    for m in msgs:
        nodes[m.dst].step(m)


def test_leader_counts_its_own_entry_only_once_durable() -> None:
    """The core lets a leader's APPs leave before its fsync (`Ready.messages`); in return
    the leader must not count its unsynced copy: with one follower ack in a 3-node
    group, the entry is not committed until the leader's Ready is advanced."""
    ls = Lockstep(config=Config(pre_vote=False))
    lead = ls.elect("n1")
    ls.settle()
    idx = lead.propose(b"w")
    rd = lead.ready()  # taken, not yet persisted
    assert [e.index for e in rd.entries] == [idx] and rd.messages_after_persist == []
    apps = [m for m in rd.messages if m.type is MsgType.APP and m.dst == "n2"]
    assert [e.index for m in apps for e in m.entries] == [idx]  # ahead of the fsync
    f = ls.cores["n2"]
    _deliver(ls.cores, apps)
    frd = f.ready()
    f.advance(frd)
    assert frd.messages == []  # the ack promises the entry is on n2's disk: it waits
    acks = [m for m in frd.messages_after_persist if m.type is MsgType.APP_RESP]
    assert acks
    _deliver(ls.cores, acks)
    assert lead.commit < idx, "committed on one durable copy out of three"
    lead.advance(rd)  # now its own copy is durable: two of three
    assert lead.commit == idx


_MAY_LEAVE_BEFORE_PERSIST = {MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP}


def test_ready_holds_back_every_message_that_promises_durability() -> None:
    """The core, not the host, sorts a Ready's messages: only a leader's APP, HEARTBEAT
    and SNAP (they promise nothing about the sender's disk) may leave before the
    persist; every vote, vote request and response must wait for it. Checked on every
    Ready of a churning group: lost messages, an isolated follower caught up by a
    snapshot, an isolated leader replaced by an election."""
    ids = ["n1", "n2", "n3"]
    cfg = Config(election_ticks=5, heartbeat_ticks=1, max_msg_bytes=16, max_inflight=4)
    nodes = {i: RaftNode(i, ids, rng=random.Random(k), config=cfg) for k, i in enumerate(ids)}
    rng = random.Random(3)
    early: Counter[MsgType] = Counter()
    late: Counter[MsgType] = Counter()
    cut_off: set[str] = set()
    for step in range(900):
        msgs: list[Message] = []
        for n in nodes.values():
            while n.has_ready():
                rd = n.ready()
                for m in rd.messages:
                    assert m.type in _MAY_LEAVE_BEFORE_PERSIST, f"step {step}: {m}"
                for m in rd.messages_after_persist:
                    assert m.type not in _MAY_LEAVE_BEFORE_PERSIST, f"step {step}: {m}"
                early.update(m.type for m in rd.messages)
                late.update(m.type for m in rd.messages_after_persist)
                msgs += rd.messages + rd.messages_after_persist
                n.advance(rd)
        for m in msgs:
            if m.src not in cut_off and m.dst not in cut_off and rng.random() > 0.1:
                nodes[m.dst].step(m)
        for n in nodes.values():
            n.tick()
        lead = next((n for n in nodes.values() if n.role is Role.LEADER), None)
        if lead is None:
            continue
        lead.propose(b"w%d" % step)
        if step % 20 == 0 and lead.applied > lead.snapshot_index:
            lead.compact(lead.applied, b"image")
        if step % 300 == 100:  # a follower misses entries the leader compacts away
            cut_off = {next(i for i in ids if i != lead.id)}
        elif step % 300 == 200:  # the leader is cut off: the others elect a new one
            cut_off = {lead.id}
        elif step % 300 == 250:
            cut_off = set()
    # Not vacuous: every kind of message went through, each in its list.
    assert {MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP} <= set(early), early
    assert {MsgType.APP_RESP, MsgType.HEARTBEAT_RESP, MsgType.VOTE_RESP} <= set(late), late
    assert {MsgType.PRE_VOTE, MsgType.PRE_VOTE_RESP, MsgType.VOTE} <= set(late), late


def test_a_read_rides_on_the_append_round() -> None:
    """A read started together with a write needs no heartbeat round of its own: the
    answers to the APP (sent after the read began) confirm leadership."""
    ls = Lockstep(config=Config(pre_vote=False))
    lead = ls.elect("n1")
    ls.settle()
    lead.propose(b"w")
    lead.read_index(b"r")
    rd = lead.ready()
    kinds = {m.type for m in rd.messages}
    assert MsgType.APP in kinds and MsgType.HEARTBEAT not in kinds
    assert all(m.read_seq > 0 for m in rd.messages if m.type is MsgType.APP)
    lead.advance(rd)
    replies = []
    for fid in ("n2", "n3"):
        _deliver(ls.cores, [m for m in rd.messages if m.dst == fid])
        frd = ls.cores[fid].ready()
        ls.cores[fid].advance(frd)
        replies += frd.messages_after_persist
    _deliver(ls.cores, replies)
    rd2 = lead.ready()
    assert [s.ctx for s in rd2.read_states] == [b"r"]


# ------------------------------------------------------------------ BUGGIFY in the core


def run_buggified(seed: int, n: int, p: float, ticks: int = 400) -> SimCluster:
    """`run_random` with every `raft.*` BUGGIFY point firing with probability `p`."""
    print(f"seed={seed} buggify={p}")
    cl = SimCluster(dataclasses.replace(random_sim_config(seed, n), buggify=p), seed=seed)
    cl.run_random(ticks, random_faults(seed))
    cl.check_log_matching()
    converged = cl.heal_and_converge()
    assert cl.check_final() == [], f"seed={seed} n={n}: {cl.violations[:5]}"
    assert converged, f"seed={seed} n={n}: no convergence after healing"
    return cl


RAFT_POINTS = {p for p in ACTIONS if p.startswith("raft.")}


@pytest.mark.parametrize("seed", range(12))
def test_the_cores_buggify_paths_keep_raft_safe(seed: int) -> None:
    """Short APPs, back-offs past the hint and votes asked twice are what other correct
    Raft implementations do; the core must stay safe and converge under all of them."""
    cl = run_buggified(seed, 3 if seed % 2 else 5, 0.3)
    assert cl.stats["proposed"] > 0 and sum(cl.fired.values()) > 0, dict(cl.fired)


def test_every_raft_buggify_point_fires() -> None:
    fired: Counter[str] = Counter()
    for seed in range(8):
        fired += run_buggified(seed, 3, 0.3).fired
    assert set(fired) == RAFT_POINTS, dict(fired)


def _acks_its_whole_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/defects/ack-beyond-match.patch, put in by hand: a follower acknowledges its
    whole log instead of what the APP proved to match."""
    orig = RaftNode._handle_append

    def handle(self: RaftNode, m: Message) -> None:
        before = len(self._msgs)
        orig(self, m)
        r = self._msgs[-1] if len(self._msgs) == before + 1 else None
        if (r is not None and r.type is MsgType.APP_RESP and not r.reject
                and r.index == m.index + len(m.entries)):
            self._msgs[-1] = dataclasses.replace(r, index=self.last_index)

    monkeypatch.setattr(RaftNode, "_handle_append", handle)


def test_buggify_exposes_an_ack_beyond_what_the_append_proved(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The negative control: with that defect put back, the buggified search breaks
    Raft's safety on some seed (a short APP leaves a deposed leader's tail behind the
    acknowledged prefix, and the leader counts it as its own)."""
    _acks_its_whole_log(monkeypatch)
    found = []
    for seed in range(60):
        cfg = dataclasses.replace(random_sim_config(seed, 3), buggify=0.3)
        cl = SimCluster(cfg, seed=seed)
        try:
            cl.run_random(400, random_faults(seed), stop=lambda c=cl: bool(c.violations))
            if not cl.violations:
                cl.check_log_matching()
                cl.heal_and_converge()
                cl.check_final()
        except (AssertionError, RaftPanic) as e:  # the leader's own invariant, tripped
            cl.violations.append(f"assert: {e!r}")
        if cl.violations:
            found.append(seed)
            print(f"seed={seed}: {cl.violations[0]}")
            break
    assert found, "ack-beyond-match not exposed in 60 buggified seeds"
