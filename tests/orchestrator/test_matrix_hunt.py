"""`cutover matrix` with a hunt task per build: on Dask, merged whole, resumed, trended.

Kept short: 3 nodes, 6 s schedules, hunts of one or two simulated seeds (seeds 5 and 6
of `no-barrier` fail in simulation, those of the fixed build pass), at most one real
confirmation. Every assertion is about what is stored or printed.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from orchestrator import store
from orchestrator.nightly.config_check import DamagedRecord
from orchestrator.nightly.matrix import (
    MatrixAborted,
    MatrixSpec,
    base_config,
    exit_code,
    matrix_rows,
    pending,
    run_local,
    start_matrix,
    task_row,
)
from orchestrator.nightly.merge import MergeError, merge_task
from orchestrator.nightly.tasks import HuntParams, ShippedHunt, Task, TaskResult, run_task
from orchestrator.real.run import RunOutcome
from tests.conftest import CLI

TINY = ["--time-limit", "6", "--nodes", "3"]


def _db(results: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(results / "cutover.db"))


def _hunts(results: Path) -> dict[str, dict[str, Any]]:
    db = store.open_db(str(results))
    try:
        return {h["id"]: h for h in store.hunts(db)}
    finally:
        db.conn.close()


# ------------------------------------------------------------------ on a Dask cluster


@pytest.mark.dask
@pytest.mark.real
@pytest.mark.sim
def test_a_dask_matrix_hunts_each_build_and_merges_each_hunt_whole(tmp_path: Path) -> None:
    results = tmp_path / "results"
    junit = tmp_path / "junit.xml"
    r = subprocess.run(CLI + ["matrix", "--engine", "dask", "--workers", "2", "--bugs",
                              "no-barrier", "--seeds", "0", "--first-seed", "5",
                              "--hunt-seeds", "2", "--hunt-budget", "4", "--hunt-confirm", "1",
                              "--hunt-rare", "0", *TINY, "--results", str(results),
                              "--junit", str(junit)],
                       capture_output=True, text=True, timeout=300)
    # The fixed build's hunt finds nothing; no-barrier's finds its bug: both as expected.
    assert r.returncode == 0, r.stdout + r.stderr
    mid = r.stderr.split()[1].rstrip(":")
    assert "2 of 2 tasks to run (dask)" in r.stderr
    table = {ln.split()[0] + " " + ln.split()[1]: ln for ln in r.stdout.splitlines()[2:]}
    assert set(table) == {"fixed (hunt)", "no-barrier (hunt)"}
    assert "1/1 valid" in table["fixed (hunt)"] and " 1/1 " in table["no-barrier (hunt)"]
    assert junit.read_text().count("<testcase") == 2 and 'failures="0"' in junit.read_text()

    # Each hunt arrived whole: its record, its findings, its real runs, its coverage.
    hunts = _hunts(results)
    assert len(hunts) == 2
    by_task = {h["config"]["task"]: h for h in hunts.values()}
    assert set(by_task) == {"hunt/fixed/-/swarm/5", "hunt/no-barrier/-/swarm/5"}
    for h in hunts.values():
        assert h["status"] == "done" and h["config"]["matrix"] == mid
        assert h["config"]["run"]["results"] == str(results)
    assert by_task["hunt/fixed/-/swarm/5"]["exit_code"] == 0
    nb = by_task["hunt/no-barrier/-/swarm/5"]
    assert nb["exit_code"] == 1
    db = _db(results)
    batches = db.execute("select id, kind, seeds from sim_batches").fetchall()
    # Its search's coverage (a loaded machine may stop it at half the budget, one seed).
    assert sorted((b, k) for b, k, _n in batches) == sorted((hid, "hunt") for hid in hunts)
    assert all(n in (1, 2) for _b, _k, n in batches)
    findings = db.execute("select sim_run, plan_file from hunt_findings where hunt = ?",
                          [nb["id"]]).fetchall()
    assert findings
    real = db.execute("select real_run, finding, role from hunt_runs where hunt = ?",
                      [nb["id"]]).fetchall()
    assert [(f, role) for _r, f, role in real] == [(1, "confirm")]
    runs = {row[0]: row for row in db.execute(
        "select id, source, matrix, config, run_dir from runs")}
    for sim_run, plan_file in findings:
        assert runs[sim_run][1] == "sim" and runs[sim_run][2] == mid
        assert plan_file == f"{sim_run}/shrunk-plan.json"
        assert (results / plan_file).is_file()
    real_run = real[0][0]
    cfg = json.loads(runs[real_run][3])
    assert cfg["plan_file"] == str(results / findings[0][1])  # moved with its sim run
    assert json.loads((results / real_run / "config.json").read_text())["plan_file"] == \
        cfg["plan_file"]
    for _rid, _src, matrix, _cfg, run_dir in runs.values():
        assert matrix == mid
        assert (os.stat(results / run_dir / "kek").st_mode & 0o777) == 0o600
        assert json.loads((results / run_dir / "config.json").read_text())["results"] == \
            str(results)
    recs = {t: (s, json.loads(rs), json.loads(d)) for t, s, rs, d in db.execute(
        "select task, status, runs, detail from matrix_tasks where matrix = ?", [mid])}
    assert {t: (s, d["hunt"]) for t, (s, _r, d) in recs.items()} == {
        t: ("done", h["id"]) for t, h in by_task.items()}
    assert sorted(r for _s, rs, _d in recs.values() for r in rs) == sorted(runs)
    assert not [p for p in os.listdir(results) if p.startswith(".merge-")]

    # Resume: a finished hunt task is not run again.
    again = subprocess.run(CLI + ["matrix", "--resume", mid, "--results", str(results)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "0 of 2 tasks to run" in again.stderr
    assert len(_hunts(results)) == 2

    # Trend: the hunts' rows under the matrix, and the hunts themselves.
    trend = subprocess.run(CLI + ["trend", "--results", str(results)], capture_output=True,
                           text=True, timeout=60)
    assert trend.returncode == 0, trend.stderr
    rows = [ln for ln in trend.stdout.splitlines() if mid in ln]
    assert [" ".join(ln.split()[:2]) for ln in rows] == ["fixed (hunt)", "no-barrier (hunt)"]
    assert "hunts: 2" in trend.stdout
    assert all(hid in trend.stdout for hid in hunts)


# ------------------------------------------------------------------ resume, locally


@pytest.mark.sim
def test_resume_runs_an_interrupted_hunt_again_and_not_a_finished_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "results"
    spec = MatrixSpec(builds=["fixed"], seeds=0, first_seed=5, modes=["swarm", "generative"],
                      base=base_config(nodes=3, time_limit=6),
                      hunt={"seeds": 1, "budget": 5, "confirm": 0, "rare": 0})
    mid = start_matrix(str(results), spec, "local")
    tasks = spec.tasks()
    assert [t.key for t in tasks] == ["hunt/fixed/-/swarm/5", "hunt/fixed/-/generative/5"]
    run_local(str(results), mid, spec, tasks[:1])
    first = set(_hunts(results))

    def interrupted(*_a: Any, **_k: Any) -> None:
        raise KeyboardInterrupt  # Ctrl-C during the second hunt, after its search

    monkeypatch.setattr("orchestrator.search.hunt.record_coverage", interrupted)
    with pytest.raises(MatrixAborted, match="during fixed \\[generative\\] \\(hunt\\) its hunt"):
        run_local(str(results), mid, spec, tasks[1:])
    monkeypatch.undo()
    aborted = {h["id"]: h["status"] for h in _hunts(results).values() if h["id"] not in first}
    assert list(aborted.values()) == ["aborted"]  # recorded as such, its task left pending

    _mid, _spec, todo, _rev = pending(str(results), mid)
    assert [t.key for t in todo] == ["hunt/fixed/-/generative/5"]
    run_local(str(results), mid, spec, todo)
    hunts = _hunts(results)
    assert len(hunts) == 3 and first <= set(hunts)  # the finished one was not run again
    rows = dict(matrix_rows(str(results), mid))
    assert set(rows) == {"fixed [swarm] (hunt)", "fixed [generative] (hunt)"}
    assert all(len(os_) == 1 and os_[0].run_id in hunts and os_[0].run_id not in aborted
               for os_ in rows.values())


# ------------------------------------------------------------------ the merge


@pytest.fixture(scope="module")
def shipped_hunt(tmp_path_factory: pytest.TempPathFactory) -> TaskResult:
    """A hunt of no-barrier (seed 5 fails in simulation), run and shipped as a worker
    would: its finding's simulated run, with its shrunk plan, and its record."""
    scratch = tmp_path_factory.mktemp("scratch")
    task = Task("hunt", "no-barrier", "swarm", seed=5,
                hunt=HuntParams(budget=3, seeds=1, confirm=0, rare=0))
    res = run_task(task.to_dict(), base_config(nodes=3, time_limit=6), str(scratch))
    assert res.hunt is not None and res.hunt.exit_code == 1 and len(res.runs) == 1
    assert not os.listdir(scratch)
    return res


def _merge(results: Path, res: TaskResult, key: str, hunt: ShippedHunt | None = None) -> Any:
    h = hunt or res.hunt
    assert h is not None
    row = task_row(Task("hunt", "no-barrier", "swarm", seed=5), "done",
                   [r.run_id for r in res.runs], h.detail())
    return merge_task(str(results), res.runs, {**row, "task": key}, None,
                      extra=h.merger(str(results), None, key))


@pytest.mark.sim
def test_a_hunt_is_merged_once_and_a_different_one_of_the_same_id_apart(
        tmp_path: Path, shipped_hunt: TaskResult) -> None:
    results = tmp_path / "results"
    store.check_writable(str(results))
    h = shipped_hunt.hunt
    assert h is not None
    _merge(results, shipped_hunt, "a")
    again = _merge(results, shipped_hunt, "b")  # the same result again: nothing twice
    assert not again.stored and list(again.skipped.values()) == [shipped_hunt.runs[0].run_id]
    assert list(_hunts(results)) == [h.hunt_id]
    # Another worker's hunt that started in the same second, with a run of the same id.
    run = shipped_hunt.runs[0]
    cols, data = run.rows["runs"]
    i = cols.index("summary")
    twin_run = type(run)(run.run_id, {**run.rows, "runs": (cols, [
        tuple("another run" if k == i else v for k, v in enumerate(data[0]))])},
        run.archive, run.outcome)
    hc, hd = h.rows["hunts"]
    j = hc.index("started")
    twin_hunt = ShippedHunt(h.hunt_id, {**h.rows, "hunts": (hc, [
        tuple("2000-01-01T00:00:00" if k == j else v for k, v in enumerate(hd[0]))])},
        h.scratch, h.exit_code, h.summary)
    m = merge_task(str(results), [twin_run], {"task": "c"}, None,
                   extra=twin_hunt.merger(str(results), None, "c"))
    new_run = f"{run.run_id}-2"
    assert m.stored == {run.run_id: new_run}
    new_hunt = f"{h.hunt_id}-2"
    assert set(_hunts(results)) == {h.hunt_id, new_hunt}
    db = _db(results)
    assert db.execute("select sim_run, plan_file from hunt_findings where hunt = ?",
                      [new_hunt]).fetchall() == [(new_run, f"{new_run}/shrunk-plan.json")]
    assert (results / new_run / "shrunk-plan.json").is_file()
    assert db.execute("select sim_run from hunt_findings where hunt = ?",
                      [h.hunt_id]).fetchall() == [(run.run_id,)]
    assert sorted(r[0] for r in db.execute("select id from sim_batches")) == sorted(
        [h.hunt_id, new_hunt])
    # A real run's plan file, in the worker's scratch directory, lands in its sim run's.
    assert twin_hunt._moved(os.path.join(h.scratch, run.run_id, "shrunk-plan.json"),
                            {run.run_id: new_run}, str(results)) == str(
        results / new_run / "shrunk-plan.json")
    assert twin_hunt._moved("/elsewhere/plan.json", {}, str(results)) == "/elsewhere/plan.json"


@pytest.mark.sim
def test_a_hunt_record_of_a_table_this_database_lacks_stores_nothing(
        tmp_path: Path, shipped_hunt: TaskResult) -> None:
    results = tmp_path / "results"
    store.check_writable(str(results))
    h = shipped_hunt.hunt
    assert h is not None
    bad = ShippedHunt(h.hunt_id, {**h.rows, "runs; drop table runs": (["id"], [("x",)])},
                      h.scratch, h.exit_code, h.summary)
    with pytest.raises(MergeError, match="nothing was stored"):
        _merge(results, shipped_hunt, "a", bad)
    db = _db(results)
    assert db.execute("select count(*) from runs").fetchone() == (0,)
    assert db.execute("select count(*) from hunts").fetchone() == (0,)
    assert not [p for p in os.listdir(results) if not p.startswith("cutover.db")]


# ------------------------------------------------------------------ tasks, verdicts, flags


def test_hunt_tasks_are_named_ordered_and_stored_with_the_matrix() -> None:
    spec = MatrixSpec(builds=["fixed", "no-barrier"], seeds=1, sim_seeds=2, sim_batch=2,
                      hunt={"budget": 60})
    tasks = spec.tasks()
    assert [t.key for t in tasks] == [
        "run/fixed/-/swarm/1", "sim/fixed/-/swarm/1-2", "hunt/fixed/-/swarm/1",
        "run/no-barrier/-/swarm/1", "sim/no-barrier/-/swarm/1-2", "hunt/no-barrier/-/swarm/1"]
    assert [spec.label(t) for t in tasks if t.kind == "hunt"] == ["fixed (hunt)",
                                                                   "no-barrier (hunt)"]
    assert tasks[2].hunt == HuntParams(budget=60.0, seeds=None, confirm=3, rare=1, workers=1)
    assert Task.from_dict(tasks[-1].to_dict()) == tasks[-1]
    assert MatrixSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).tasks() == tasks
    assert MatrixSpec(builds=["fixed"], seeds=1).tasks()[-1].kind == "run"  # no hunt asked
    for damaged, needle in [({"budget": "x"}, "hunt.budget must be a number"),
                            ({"confirm": 1}, "needs a budget or a number of seeds"),
                            ({"seeds": 2, "bogus": 1}, "unknown field"),
                            ([1], "hunt must be an object")]:
        with pytest.raises(DamagedRecord, match=needle):
            MatrixSpec.from_dict({**spec.to_dict(), "hunt": damaged})


def _o(verdict: str) -> RunOutcome:
    return RunOutcome("hunt-x", "", verdict, {"valid": 0, "invalid": 1}.get(verdict, 2), "", seed=1)


def test_a_hunt_finding_fails_the_fixed_build_and_is_the_detection_of_a_bug_build() -> None:
    assert exit_code([("fixed (hunt)", [_o("valid")]),
                      ("no-barrier (hunt)", [_o("invalid")])]) == 0
    assert exit_code([("fixed (hunt)", [_o("invalid")])]) == 1  # found on the fixed build
    assert exit_code([("no-barrier (hunt)", [_o("valid")])]) == 1  # the bug escaped the hunt
    assert exit_code([("fixed (hunt)", [_o("valid")]),
                      ("no-barrier (hunt)", [_o("error")])]) == 3


@pytest.mark.parametrize("args, needle", [
    (["--hunt-budget", "0"], "--hunt-budget"),
    (["--hunt-budget", "nan"], "not a finite number"),
    (["--hunt-confirm", "2"], "--hunt-confirm needs --hunt-budget or --hunt-seeds"),
    (["--hunt-budget", "1e9"], "hunt.budget must be a finite number from 0 to 604800"),
    (["--resume", "latest", "--hunt-budget", "5"], "drop --hunt-budget"),
])
def test_hunt_flags_that_cannot_work_are_one_line_errors(tmp_path: Path, args: list[str],
                                                         needle: str) -> None:
    store.check_writable(str(tmp_path))
    start_matrix(str(tmp_path), MatrixSpec(builds=["fixed"], seeds=1), "local")
    r = subprocess.run(CLI + ["matrix", "--results", str(tmp_path), *args],
                       capture_output=True, text=True, timeout=60)
    # A usage error exits 3, with one line (`cli.Group`: 2 is the verdict `unknown`).
    assert r.returncode == 3 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
