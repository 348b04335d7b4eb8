"""A VALID means something was tested (issue 22): a run asked for a cutover that never
happened, for faults that never ran, or whose workload completed no operation is
`unknown` (exit 2), with the checker `vacuity` saying which."""
from __future__ import annotations

import json
import os
import sqlite3

import pytest

from checker import suite
from orchestrator.real.run import RunConfig, execute

OK = {"process": "0", "type": "ok", "f": "write", "key": "k", "value": 1}
FRESH = {"node": "n1", "kind": "encryption-applied", "what": "marker-fresh"}
KILL = {"f": "start", "fault": "kill"}
ASKED = {"cutover_at": 10.0, "plan": {"families": ["kill"]}}


def test_a_run_that_did_what_it_was_asked_is_not_vacuous() -> None:
    r = suite.vacuity(ASKED, [OK], [KILL], [FRESH])
    assert r["valid"] == "valid" and (r["cutovers"], r["faults_ran"], r["workload_ok"]) == (
        1, 1, 1)
    # Nothing asked, nothing needed (but an operation, always).
    assert suite.vacuity({"cutover_at": None, "plan": {"families": []}}, [OK], [],
                         [])["valid"] == "valid"


def test_each_thing_asked_for_and_missing_is_named() -> None:
    no_cut = suite.vacuity(ASKED, [OK], [KILL], [])
    assert no_cut["valid"] == "unknown"
    assert no_cut["first_violation"].startswith("vacuous: it was asked for a cutover")
    # The operator's own request and the milestones are not faults.
    ops_only = [{"f": "start", "fault": "enable-raft-envelope"},
                {"f": "event", "fault": "cutover-settled"}, {"f": "event", "fault": "heal-all"}]
    no_fault = suite.vacuity(ASKED, [OK], ops_only, [FRESH])
    assert no_fault["valid"] == "unknown" and "none ran" in no_fault["first_violation"]
    # Nor is a fault that was skipped, or a step that broke in the harness.
    skipped = [{"f": "event", "fault": "corrupt-entry", "detail": {"skipped": "no leader"}},
               {"f": "event", "fault": "nemesis-error", "detail": {"error": "boom"}}]
    assert suite.vacuity(ASKED, [OK], skipped, [FRESH])["valid"] == "unknown"
    # Final reads and failed operations are not the workload having run.
    idle = suite.vacuity(ASKED, [{**OK, "process": "final-0"}, {**OK, "type": "fail"}],
                         [KILL], [FRESH])
    assert idle["valid"] == "unknown" and idle["missing"] == [
        "its workload phase completed no operation"]
    # The stored event rows (detail apart) count like the simulator's flat ones.
    stored = {"node": "n1", "kind": "encryption-applied", "detail": {"what": "marker-fresh"}}
    assert suite.vacuity(ASKED, [OK], [KILL], [stored])["valid"] == "valid"
    # A run whose verdict is the worst of its checkers is unknown, exit 2, by vacuity.
    results = {"linearizability": {"valid": "valid"}, "vacuity": no_cut}
    assert suite.worst(r["valid"] for r in results.values()) == "unknown"
    assert suite.first_violation(results)[0] == "vacuity"


def test_a_crash_point_that_never_fired_is_named() -> None:
    """A crash-consistency re-run (docs/sim.md) whose crash never happened tested nothing
    new; on real processes it never can (crash points are the simulator's)."""
    asked = {**ASKED, "crash_point": {"node": "n2", "k": 40, "action": "tear", "again": 0}}
    none = suite.vacuity(asked, [OK], [KILL], [FRESH])
    assert none["valid"] == "unknown" and none["missing"] == [
        "it was asked for a crash at n2's durability boundary 40 and none happened (crash "
        "points are the simulator's)"]
    # A BUGGIFY death of the swarm's is not the crash point's.
    swarm = {"node": "n2", "kind": "buggify", "point": "wal.synced", "action": "crash"}
    assert suite.vacuity(asked, [OK], [KILL], [FRESH, swarm])["valid"] == "unknown"
    fired = {"node": "n2", "kind": "buggify",
             "detail": {"point": "wal.synced", "action": "tear", "crash_point": 40}}
    assert suite.vacuity(asked, [OK], [KILL], [FRESH, fired])["valid"] == "valid"


@pytest.mark.real
def test_a_real_run_whose_faults_never_fired_is_not_valid(tmp_path) -> None:
    """Real processes: a plan whose only fault waits for an event that never comes (a
    snapshot installed, in a run that takes none) runs no fault. It used to be VALID."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"format": "cutover-plan", "plan": {
        "seed": 3, "families": ["kill"], "scenario": "swarm",
        "steps": [{"id": 1, "action": "kill", "target": {"role": "event"},
                   "when": {"on": "event", "event": "snapshot-installed"},
                   "duration": 0.5}]}}))
    cfg = RunConfig(nodes=3, time_limit=3, rate=50, cutover_at=None, seed=3,
                    plan_file=str(plan), results=str(tmp_path / "results"))
    print("cutover run --plan plan.json --nodes 3 --time-limit 3 --cutover-at none --seed 3")
    o = execute(cfg, out=None, progress=None)
    assert o.verdict == "unknown" and o.exit_code == 2, o.summary
    assert o.summary.startswith("UNKNOWN: vacuity: vacuous: it was asked for faults (kill) "
                                "and none ran"), o.summary
    db = sqlite3.connect(os.path.join(str(tmp_path / "results"), "cutover.db"))
    row = db.execute("select valid, detail from checks where checker = 'vacuity'").fetchone()
    assert row[0] == "unknown" and json.loads(row[1])["workload_ok"] > 0
