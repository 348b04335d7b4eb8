"""The pure and small parts of `cutover run`: grudges, plans, workloads, the recorder,
the checker suite's verdict logic and the JUnit summary."""
from __future__ import annotations

import itertools
import json
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET

import pytest

from checker import suite
from nemesis import grudges
from nemesis.plan import FAMILIES, Plan, PlanError, make_plan, parse_families
from orchestrator import store
from orchestrator.nightly.junit import write_junit
from orchestrator.real.run import RunOutcome
from workloads import make_workload

NODES = ["n1", "n2", "n3", "n4", "n5"]


def _reach(links: set[tuple[str, str]], a: str) -> set[str]:
    return {b for b in NODES if b != a and (a, b) not in links}


@pytest.mark.parametrize("seed", range(5))
def test_grudges_have_their_shapes(seed: int) -> None:
    print(f"seed={seed}")
    rng = random.Random(seed)
    links, groups = grudges.halves(NODES, rng)
    assert sorted(len(g) for g in groups) == [2, 3]
    for g in groups:
        for a in g:
            assert _reach(links, a) == set(g) - {a}
    iso = grudges.isolate(NODES, "n3")
    assert _reach(iso, "n3") == set() and _reach(iso, "n1") == {"n2", "n4", "n5"}
    ring = grudges.majorities_ring(NODES, rng)
    views = [frozenset(_reach(ring, a) | {a}) for a in NODES]
    assert all(len(v) == 3 for v in views)  # everybody sees a majority...
    assert len(set(views)) == len(NODES)  # ...and no two see the same one
    br, mid = grudges.bridge(NODES, rng)
    assert _reach(br, mid) == set(NODES) - {mid}
    star = grudges.star(NODES, "n2", cut_off=["n5"])
    assert _reach(star, "n2") == {"n1", "n3", "n4"}
    assert _reach(star, "n1") == {"n2"} and _reach(star, "n5") == set()
    # Only the center can gather a majority of votes in a star.
    for a in NODES:
        if a != "n2":
            assert len(_reach(star, a) | {a}) < 3


def test_plan_families_and_errors() -> None:
    assert parse_families("none") == ()
    assert parse_families("all") == FAMILIES
    assert parse_families("kill, rotate,kill") == ("kill", "rotate")
    assert parse_families("snapshot-replay") == ("snapshot",)  # an older run's name
    with pytest.raises(PlanError, match="unknown nemesis 'teleport'"):
        parse_families("kill,teleport")
    with pytest.raises(PlanError, match="unknown scenario"):
        make_plan(3, (), time_limit=60, interval=4, cutover_at=20, nodes=5, scenario="x")
    for seed in range(30):
        only_kill = make_plan(seed, ("kill",), time_limit=60, interval=4, cutover_at=20,
                              nodes=5)
        # Only kills, and the operator's EnableRaftEnvelope (the run's purpose, not a fault).
        assert {s.family for s in only_kill.steps} <= {"kill", "enable"}, seed
    quiet = make_plan(3, (), time_limit=60, interval=4, cutover_at=None, nodes=5)
    assert quiet.steps == ()


@pytest.mark.parametrize("scenario", ["swarm", "generative", "sequence", "churn"])
def test_plans_are_data_pure_in_the_seed_and_replayable(scenario: str) -> None:
    kw = {"time_limit": 30, "interval": 5, "cutover_at": 10, "nodes": 5,
          "scenario": scenario}
    a = make_plan(7, FAMILIES, **kw)
    assert a.to_dict() == make_plan(7, FAMILIES, **kw).to_dict()
    assert a.to_dict() != make_plan(8, FAMILIES, **kw).to_dict() or scenario == "sequence"
    doc = json.loads(json.dumps(a.to_dict()))  # stored with the run
    assert Plan.from_dict(doc).to_dict() == a.to_dict()
    main = [s for s in a.steps if s.action == "enable" and s.params.get("main")]
    assert len(main) == 1 and main[0].when.at == 10
    assert all(s.describe() for s in a.steps)
    ids = {s.id for s in a.steps}
    assert all(s.when.step in ids for s in a.steps if s.when.on == "after")
    assert set(a.knobs) == {"snapshot_every", "max_msg_bytes", "max_inflight"}


def test_swarm_seeds_differ_in_what_they_enable() -> None:
    """Swarm testing: each seed its own subset of primitives and its own density; some
    plans are quiet around the cutover, some put faults right on it, some chain faults
    to node events."""
    plans = [make_plan(s, FAMILIES, time_limit=30, interval=5, cutover_at=10, nodes=5)
             for s in range(60)]
    subsets = {tuple(p.features.get("actions", ())) for p in plans}
    assert len(subsets) > 40
    densities = {d for p in plans for d in p.features.get("density", ())}
    assert densities >= {"quiet", "sparse", "dense"}
    assert len({tuple(p.features.get("density", ())) for p in plans}) > 20

    def near_cutover(p: Plan) -> bool:
        return any(s.when.on == "time" and 8 <= s.when.at <= 14 and s.origin == "timed"
                   or s.when.on == "event" and s.when.event.startswith(("marker", "barrier"))
                   for s in p.steps)

    assert any(near_cutover(p) for p in plans) and not all(near_cutover(p) for p in plans)
    events = {s.when.event for p in plans for s in p.steps if s.when.on == "event"}
    assert events >= {"marker-proposed", "leader-elected", "barrier-up", "restarted"}
    actions = {s.action for p in plans for s in p.steps}
    assert actions >= {"kill-power", "lead", "split", "cut-in", "rotate", "compact"}
    assert any(p.features.get("sequence") for p in plans)
    assert {p.knobs["max_msg_bytes"] for p in plans} >= {1, 64 * 1024}
    assert any(s.origin == "race-marker" for p in plans for s in p.steps)


def test_the_sequence_scenario_is_the_scripted_cutover_sequence() -> None:
    p = make_plan(4, FAMILIES, time_limit=30, interval=5, cutover_at=10, nodes=5,
                  scenario="sequence")
    binds = {s.target.bind for s in p.steps if s.target.bind}
    assert binds >= {"X", "Y", "L", "Z"}
    assert any(s.when.event == "marker-proposed" and s.action == "cut-in" for s in p.steps)
    assert sum(1 for s in p.steps if s.action == "lead") == 2
    lo, hi = 10 - 2.0, 10 + 16.0  # timed faults stay out of the cutover window
    assert not [s for s in p.steps if s.origin == "timed"
                and s.when.at < hi and s.when.at + s.duration > lo]


def test_workload_values_are_unique_tokens_and_deterministic() -> None:
    a = make_workload("kv", 4, seed=9, run_tag="abc")
    b = make_workload("kv", 4, seed=9, run_tag="abc")
    ops_a = [a.next_op() for _ in range(2000)]
    assert ops_a == [b.next_op() for _ in range(2000)]
    written = [o.value if o.f == "write" else o.value[1] for o in ops_a if o.f != "read"]
    assert len(written) == len(set(written)) > 500
    assert all(w.startswith("tok-abc-") and len(w) >= 6 for w in written)
    assert {o.f for o in ops_a} == {"read", "write", "cas"}
    assert {o.key for o in ops_a} == {"k0", "k1", "k2", "k3"}
    # A cas compares with the value last written to its key, so it can succeed.
    last: dict[str, str] = {}
    for o in ops_a:
        if o.f == "cas":
            assert o.value[0] == last[o.key]
        if o.f != "read":
            last[o.key] = o.value if o.f == "write" else o.value[1]
    reg = make_workload("register", 8, seed=1)
    assert {reg.next_op().key for _ in range(100)} == {"k0"}
    assert [s.key for s in a.final_reads()] == ["k0", "k1", "k2", "k3"]
    with pytest.raises(ValueError, match="unknown workload"):
        make_workload("bank", 1, 1)


def test_recorder_commits_while_the_run_goes_and_survives_a_crash(tmp_path) -> None:
    """A child records ops and is SIGKILLed without closing: what was committed stays."""
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from orchestrator.store import Recorder
        rec = Recorder({str(tmp_path)!r}, "r1", time.monotonic_ns(), flush_every=0.05)
        rec.run_row(started="2026-01-01T00:00:00", seed=1, status="running", config={{}})
        for i in range(300):
            rec.op(time.monotonic_ns(), i % 3, "invoke", "write", "k", f"v{{i}}")
        time.sleep(0.5)
        print("recorded", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=30)
    assert "recorded" in p.stdout, p.stderr
    db = store.open_db(str(tmp_path))
    assert db.execute("select count(*) from ops where run='r1'").fetchone()[0] == 300
    assert store.resolve_run(db, "latest")["status"] == "running"
    assert [r["value"] for r in itertools.islice(store.iter_ops(db, "r1"), 2)] == ["v0", "v1"]


def test_store_refuses_foreign_and_corrupt_databases(tmp_path) -> None:
    with pytest.raises(store.StoreError, match="no results database"):
        store.open_db(str(tmp_path))
    foreign = tmp_path / "f"
    foreign.mkdir()
    with sqlite3.connect(foreign / "cutover.db") as c:
        c.execute("create table t (x)")
    with pytest.raises(store.StoreError, match="not a cutover results database"):
        store.open_db(str(foreign))
    bad = tmp_path / "b"
    bad.mkdir()
    (bad / "cutover.db").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(store.StoreError, match="not a readable SQLite database"):
        store.open_db(str(bad))
    assert (bad / "cutover.db").read_bytes() == b"this is not sqlite at all" * 100


def test_run_ids_resolve_by_latest_and_prefix(tmp_path) -> None:
    rec = store.Recorder(str(tmp_path), "20260101T000000-s1", time.monotonic_ns())
    rec.run_row(started="2026-01-01T00:00:00", seed=1, status="done")
    rec.flush()
    rec.close()
    rec = store.Recorder(str(tmp_path), "20260102T000000-s2", time.monotonic_ns())
    rec.run_row(started="2026-01-02T00:00:00", seed=2, status="done")
    rec.close()
    db = store.open_db(str(tmp_path))
    assert store.resolve_run(db, "latest")["seed"] == 2
    assert store.resolve_run(db, "20260101")["seed"] == 1
    with pytest.raises(store.StoreError, match="ambiguous"):
        store.resolve_run(db, "2026")
    with pytest.raises(store.StoreError, match="no run 'nope'"):
        store.resolve_run(db, "nope")


def _row(i: int, t: int, proc: int, typ: str, f: str, key: str, value) -> dict:
    return {"idx": i, "time_ns": t, "process": str(proc), "type": typ, "f": f, "key": key,
            "value": value, "error": None, "node": "n1"}


def test_suite_finds_a_stale_read_and_says_when() -> None:
    rows = [_row(0, 10, 0, "invoke", "write", "k", "a"), _row(1, 20, 0, "ok", "write", "k", "a"),
            _row(2, 30, 0, "invoke", "write", "k", "b"), _row(3, 40, 0, "ok", "write", "k", "b"),
            _row(4, 50, 1, "invoke", "read", "k", None), _row(5, 60, 1, "ok", "read", "k", "a")]
    r = suite.check_linearizability(rows, "kv")
    assert r["valid"] == "invalid"
    assert r["first_violation_ns"] == 50 and "'k'" in r["first_violation"]
    assert suite.check_linearizability(rows[:4], "kv")["valid"] == "valid"
    assert suite.worst(["valid", "unknown"]) == "unknown"
    assert suite.worst(["unknown", "invalid", "valid"]) == "invalid"
    st = suite.stats(rows)
    assert st["by_f"] == {"read": {"ok": 1}, "write": {"ok": 2}}
    s = 1_000_000_000
    timed = [_row(0, 0, 0, "invoke", "read", "k", None), _row(1, s // 2, 0, "ok", "read", "k", 1),
             _row(2, s + 1, 1, "invoke", "read", "k", None),
             _row(3, s + s // 2, 1, "info", "read", "k", None),
             _row(4, 2 * s + 1, 2, "invoke", "read", "k", None),
             _row(5, 2 * s + 2, 2, "fail", "read", "k", None)]
    av = suite.availability(timed, [(s, 2 * s - 1, "kill", ["n1"])], 3 * s)
    assert av["valid"] == "valid" and av["ok_share_outside_faults"] == 0.5
    assert [x["fault"] for x in av["seconds"]] == [False, True, False]
    fv = suite.first_violation({"stats": st, "linearizability": r})
    assert fv is not None and fv[0] == "linearizability"


def test_junit_summary(tmp_path) -> None:
    def outcome(verdict: str, seed: int) -> RunOutcome:
        first = ("cutover", "I1 violated at node n2, index 9", 3_000_000_000) \
            if verdict == "invalid" else None
        return RunOutcome(f"run-{seed}", "", verdict, suite.EXIT_CODES.get(verdict, 3),
                          f"{verdict.upper()}: ...", first=first, seed=seed, seconds=1.5)

    path = tmp_path / "junit.xml"
    write_junit(str(path), "cutover matrix", [
        ("fixed", outcome("valid", 1)), ("fixed", outcome("invalid", 2)),
        ("no-barrier", outcome("invalid", 1)), ("no-barrier", outcome("valid", 2)),
        ("no-barrier", outcome("aborted", 3))])
    root = ET.parse(path).getroot()
    assert root.get("tests") == "5" and root.get("failures") == "2" and root.get("errors") == "1"
    cases = root.findall("testcase")
    assert cases[0].find("failure") is None
    assert "index 9" in cases[1].find("failure").get("message")
    assert cases[2].find("failure") is None  # a bug build that is caught passes
    assert cases[3].find("failure").get("type") == "escaped"
    assert json.dumps([c.get("name") for c in cases]).count("seed=") == 5


def test_run_config_round_trips_for_replay() -> None:
    from dataclasses import asdict

    from orchestrator.real.run import RunConfig, RunError

    cfg = RunConfig(seed=5, bugs=["no-barrier"], time_limit=12).resolved()
    doc = json.loads(json.dumps({**asdict(cfg), "plan": {"seed": 5}}))
    assert RunConfig.from_dict(doc) == cfg
    assert cfg.cutover_at == 4.0 and cfg.concurrency == 10
    with pytest.raises(RunError, match="unknown field"):
        RunConfig.from_dict({"nodes": 3, "warp": 9})


@pytest.mark.parametrize("args,needle", [
    (["run", "--bug", "nope"], "valid names:"),
    (["run", "--nemesis", "kill,teleport"], "unknown nemesis 'teleport'"),
    (["run", "--cutover-at", "soon"], "expected SECONDS or none"),
    (["run", "--time-limit", "10", "--cutover-at", "12"], "is not before --time-limit"),
    (["run", "--replay", "no-such-file.json", "--results", "/nonexistent-dir"],
     "cannot replay"),
    (["matrix", "--bugs", "nope"], "unknown bug switch 'nope'"),
    (["run", "--profile", "etcd"], "'etcd' is not one of"),
    (["sim", "--seeds", "1", "--profile", "etcd"], "'etcd' is not one of"),
    (["matrix", "--profile", "etcd"], "unknown profile 'etcd'"),
])
def test_run_and_matrix_bad_flags(args: list[str], needle: str) -> None:
    p = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 3, (p.returncode, p.stderr)
    assert needle in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_matrix_shows_catches_by_another_invariant_apart() -> None:
    """Each switch names the invariant it is expected to violate; a run caught only by
    something else is shown as such, and the expected one counts wherever it failed."""
    from orchestrator.nightly.matrix import caught_column, table, violated
    from orchestrator.real.run import RunOutcome

    def run(first: str, *invs: str, lin: bool = False) -> RunOutcome:
        checks = {"cutover": {"valid": "invalid", "failing": first,
                              "invariants": {k: {"valid": k not in invs}
                                             for k in ("I1", "I2", "I3", "I4")}},
                  "linearizability": {"valid": "invalid" if lin else "valid"}}
        return RunOutcome("r", "", "invalid", 1, "", checks,
                          ("cutover", "sentence", 1_000_000_000), 1, 1.0, {})

    hit = run("I1", "I1", "I3")
    late = run("I2", "I2", "I1")  # I1 failed too, though not first
    miss = run("I3", "I3")
    assert violated(hit) == {"I1", "I3"}
    assert violated(run("I3", "I3", lin=True)) == {"I3", "linearizability"}
    assert caught_column("no-barrier", [hit, late, miss]) == "I1 (2), other: cutover I3 (1)"
    assert caught_column("no-barrier", [miss]) == "other: cutover I3 (1)"
    assert caught_column("elastickv", [hit, miss]) == "cutover I1 (1), cutover I3 (1)"
    lines = table([("no-barrier", [hit, miss]), ("fixed", [])], 2).splitlines()
    assert "expects" in lines[0]
    assert "I1 (1), other: cutover I3 (1)" in lines[2] and " I1 " in lines[2]



def test_an_operator_follows_a_failed_enable_with_a_rotation_on_that_node(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The follow-up is drawn last, from a stream of its own: the rest of each plan is
    what the seed draws without it, and a plan without the rotate family or without a
    cutover never has one."""
    kw = {"time_limit": 30, "interval": 5, "cutover_at": 10, "nodes": 5}

    def follow_ups(p: Plan) -> list:
        return [s for s in p.steps if s.action == "rotate" and s.when.on == "event"
                and s.when.event == "apply-wait-timeout"]

    plans = [make_plan(s, FAMILIES, **kw) for s in range(60)]
    with_one = [p for p in plans if follow_ups(p)]
    assert 10 <= len(with_one) <= 35, len(with_one)
    for p in with_one:
        (f,) = follow_ups(p)
        assert f.target.role == "event" and f.id == max(s.id for s in p.steps)
    assert not any(follow_ups(make_plan(s, tuple(x for x in FAMILIES if x != "rotate"), **kw))
                   for s in range(60))
    assert not any(follow_ups(make_plan(s, FAMILIES, **{**kw, "cutover_at": None}))
                   for s in range(60))
    from nemesis import plan as plan_mod
    monkeypatch.setattr(plan_mod._Builder, "follow_up", lambda self, r: None)
    for s, p in enumerate(plans):
        rest = [x for x in p.steps if x not in follow_ups(p)]
        assert tuple(rest) == make_plan(s, FAMILIES, **kw).steps, s
