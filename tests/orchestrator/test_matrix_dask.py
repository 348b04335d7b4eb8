"""`cutover matrix` on Dask, the merge of shipped runs, resume, `cutover trend`.

The real-run tests use a tiny matrix (3 nodes, 5 s workloads, one seed) on a local Dask
cluster; the rest use `cutover sim` batches (a second each) or a database written here.
Every assertion is about what is stored or printed, never about how long it took.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from orchestrator import store
from orchestrator.nightly.dask_engine import _work, run_dask
from orchestrator.nightly.matrix import (
    MatrixSpec,
    base_config,
    exit_code,
    matrix_rows,
    pending,
    start_matrix,
    table,
    task_row,
)
from orchestrator.nightly.merge import MergeError, merge_task
from orchestrator.nightly.tasks import Task, TaskResult, run_task
from orchestrator.nightly.trend import trend_data, trend_lines
from orchestrator.ui.web import serving
from tests.conftest import CLI, wait_for

TINY = ["--seeds", "1", "--time-limit", "5", "--nodes", "3"]


def _db(results: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(results / "cutover.db"))


def _node_children(pid: int) -> list[psutil.Process]:
    """The processes a worker started for a run (switchboard and nodes), not the
    stdlib's resource tracker."""
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for k in kids:
        try:
            if "resource_tracker" not in " ".join(k.cmdline()):
                out.append(k)
        except psutil.NoSuchProcess:
            pass
    return out


def _running_nodes(pid: int) -> list[psutil.Process]:
    """The worker's run processes once its nodes are past start-up (each has its files
    under `nodes/` open): killing the worker before would test the nodes' start-up
    instead, where a node cannot yet ask to die with its parent."""
    kids = _node_children(pid)
    up = 0
    for k in kids:
        try:
            up += any("/nodes/" in f.path for f in k.open_files())
        except psutil.Error:
            pass
    return kids if up >= 3 else []


def _assert_merged_cleanly(results: Path, mid: str, tasks: int) -> list[tuple[Any, ...]]:
    """Every task of the matrix is done with exactly one run, stored once, its run dir in
    place with its KEK (0600) and nothing half-merged left behind."""
    db = _db(results)
    runs = db.execute("select id, bugs, status, run_dir from runs where matrix = ? "
                      "order by id", [mid]).fetchall()
    recs = db.execute("select task, status, runs from matrix_tasks where matrix = ?",
                      [mid]).fetchall()
    assert len(recs) == tasks and all(s == "done" for _t, s, _r in recs), recs
    task_runs = [r for _t, _s, rs in recs for r in json.loads(rs)]
    assert sorted(task_runs) == sorted(r[0] for r in runs)  # one run per task, no stray run
    assert len(set(task_runs)) == len(task_runs)
    for _rid, _bugs, status, run_dir in runs:
        assert status == "done"
        d = results / run_dir
        assert (d / "config.json").is_file() and (d / "nodes").is_dir()
        assert (os.stat(d / "kek").st_mode & 0o777) == 0o600
        assert json.loads((d / "config.json").read_text())["results"] == str(results)
    assert not [p for p in os.listdir(results) if p.startswith(".merge-")]
    return runs


# ------------------------------------------------------------------ on a Dask cluster


@pytest.mark.dask
@pytest.mark.real
def test_dask_matrix_of_two_workers_merges_its_runs(tmp_path: Path) -> None:
    results = tmp_path / "results"
    junit = tmp_path / "junit.xml"
    r = subprocess.run(CLI + ["matrix", "--engine", "dask", "--workers", "2", "--bugs",
                              "no-barrier", *TINY, "--results", str(results), "--junit",
                              str(junit)], capture_output=True, text=True, timeout=600)
    assert r.returncode in (0, 1), r.stderr  # 1: the switch escaped a 5 s run
    assert r.stdout.splitlines()[0].startswith("build")
    assert [ln.split()[0] for ln in r.stdout.splitlines()[2:]] == ["fixed", "no-barrier"]
    mid = r.stderr.split()[1].rstrip(":")
    assert mid.startswith("mx-")
    runs = _assert_merged_cleanly(results, mid, 2)
    assert sorted(b or "" for _i, b, _s, _d in runs) == ["", "no-barrier"]
    assert junit.read_text().count("<testcase") == 2
    # The KEK is test material, but never printed.
    for _rid, _b, _s, run_dir in runs:
        kek = (results / run_dir / "kek").read_bytes()
        for form in (kek.hex(), base64.b64encode(kek).decode()):
            assert form not in r.stdout + r.stderr
    listed = subprocess.run(CLI + ["list", "--results", str(results)], capture_output=True,
                            text=True, timeout=60)
    assert listed.returncode == 0
    assert {ln.split()[0] for ln in listed.stdout.splitlines()[1:]} == {r[0] for r in runs}
    trend = subprocess.run(CLI + ["trend", "--results", str(results)], capture_output=True,
                           text=True, timeout=60)
    assert trend.returncode == 0, trend.stderr
    rows = [ln for ln in trend.stdout.splitlines() if mid in ln]
    assert [ln.split()[0] for ln in rows] == ["fixed", "no-barrier"]
    assert "flakes: none in 1 matrices" in trend.stdout


@pytest.mark.dask
@pytest.mark.real
def test_a_worker_killed_mid_task_loses_no_run_and_stores_nothing_twice(tmp_path: Path) -> None:
    results = tmp_path / "results"
    spec = MatrixSpec(builds=["fixed", "no-barrier"], seeds=1,
                      base=base_config(nodes=3, time_limit=5))
    mid = start_matrix(str(results), spec, "dask")
    box: dict[str, Any] = {}
    ready = threading.Event()
    victims: list[psutil.Process] = []

    def on_client(_client: Any, cluster: Any) -> None:
        box["cluster"] = cluster
        ready.set()

    def kill_one_mid_task() -> None:
        ready.wait(120)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for nanny in list(box["cluster"].workers.values()):
                pid = getattr(getattr(nanny, "process", None), "pid", None)
                kids = _running_nodes(pid) if pid else []
                if kids:
                    victims.extend(kids)
                    os.kill(pid, signal.SIGKILL)
                    box["killed"] = pid
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one_mid_task, daemon=True)
    killer.start()
    stats = run_dask(str(results), mid, spec, spec.tasks(), workers=2, on_client=on_client)
    killer.join(10)
    assert "killed" in box, "no worker was caught running a task"
    assert not stats.aborted and stats.errors == 0
    assert stats.merged_runs == 2
    _assert_merged_cleanly(results, mid, 2)
    # The killed worker's nodes and switchboard died with it.
    wait_for(lambda: not [p for p in victims if p.is_running()
                          and p.status() != psutil.STATUS_ZOMBIE],
             timeout=30, what="the killed worker's nodes to die")


def _boom(task_doc: dict[str, Any], base: dict[str, Any]) -> TaskResult:
    """A task that dies on its worker for one build (and works for the others)."""
    if task_doc["build"] == "no-barrier":
        raise RuntimeError("disk full on the worker")
    return _work(task_doc, base)


@pytest.mark.dask
def test_a_task_that_dies_is_a_harness_error_and_resume_runs_it_again(tmp_path: Path) -> None:
    results = tmp_path / "results"
    spec = MatrixSpec(builds=["fixed", "no-barrier"], seeds=0, sim_seeds=2, sim_batch=2,
                      base=base_config(nodes=3, time_limit=6))
    mid = start_matrix(str(results), spec, "dask")
    stats = run_dask(str(results), mid, spec, spec.tasks(), workers=2, work=_boom)
    assert stats.errors == 1
    tasks = store.matrix_tasks(store.open_db(str(results)), mid)
    bad = tasks["sim/no-barrier/-/swarm/1-2"]
    assert bad["status"] == "error" and "disk full on the worker" in bad["detail"]["error"]
    assert tasks["sim/fixed/-/swarm/1-2"]["status"] == "done"
    rows = matrix_rows(str(results), mid)
    assert dict(rows)["no-barrier (sim)"][0].verdict == "error"
    assert exit_code(rows) == 3  # no verdict: neither caught nor escaped
    assert "1 unknown/error" in table(rows, 2)
    # --resume: only what never finished with a verdict.
    _mid, _spec, todo, _rev = pending(str(results), mid)
    assert [t.key for t in todo] == ["sim/no-barrier/-/swarm/1-2"]


@pytest.mark.dask
@pytest.mark.real
def test_ctrl_c_keeps_what_finished_and_resume_finishes_it(tmp_path: Path) -> None:
    results = tmp_path / "results"
    p = subprocess.Popen(CLI + ["matrix", "--engine", "dask", "--workers", "1", "--bugs",
                                "none", "--seeds", "2", "--time-limit", "5", "--nodes", "3",
                                "--results", str(results)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def one_done() -> bool:
            try:
                return _db(results).execute(
                    "select count(*) from matrix_tasks").fetchone()[0] >= 1
            except sqlite3.Error:
                return False
        wait_for(one_done, timeout=240, what="the first task to be merged")
        kids = psutil.Process(p.pid).children(recursive=True)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert "resume with: cutover matrix --resume mx-" in err
    mid = err.split()[1].rstrip(":")
    db = _db(results)
    assert db.execute("select finished from matrices where id = ?", [mid]).fetchone() == (None,)
    assert db.execute("select count(*) from matrix_tasks where matrix = ?", [mid]).fetchone()[0] == 1
    wait_for(lambda: not [k for k in kids if k.is_running()
                          and k.status() != psutil.STATUS_ZOMBIE],
             timeout=30, what="the workers and their nodes to stop")
    r = subprocess.run(CLI + ["matrix", "--resume", mid, "--results", str(results)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "1 of 2 tasks to run (local)" in r.stderr
    assert "2/2 valid" in r.stdout
    _assert_merged_cleanly(results, mid, 2)
    assert _db(results).execute("select finished from matrices where id = ?",
                                [mid]).fetchone()[0]


# ------------------------------------------------------------------ merging


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> TaskResult:
    """Two failing simulated seeds of a bug build, run and shipped as a worker would."""
    scratch = tmp_path_factory.mktemp("scratch")
    res = run_task(Task("sim", "no-barrier", "swarm", seeds=(5, 6)).to_dict(),
                   base_config(nodes=3, time_limit=6), str(scratch))
    assert len(res.runs) == 2, "seeds 5 and 6 of no-barrier should both fail: pick two that do"
    assert not os.listdir(scratch)
    return res


def _row(res: TaskResult, task: Task) -> dict[str, Any]:
    return task_row(task, "done", [r.run_id for r in res.runs], {"seeds": res.sim or []})


def _count(results: Path) -> dict[str, int]:
    db = _db(results)
    return {t: db.execute(f"select count(*) from [{t}]").fetchone()[0]
            for t in ("runs", "ops", "nemesis", "node_events", "checks", "matrix_tasks")}


@pytest.mark.sim
def test_merge_is_idempotent_per_task_and_per_run(tmp_path: Path, shipped: TaskResult) -> None:
    results = tmp_path / "results"
    task = Task("sim", "no-barrier", "swarm", seeds=(2, 3))
    spec = MatrixSpec(builds=["no-barrier"], seeds=0, first_seed=2, sim_seeds=2, sim_batch=2)
    mid = start_matrix(str(results), spec, "dask")
    m = merge_task(str(results), shipped.runs, _row(shipped, task), mid)
    assert set(m.stored) == {r.run_id for r in shipped.runs} and m.task_recorded
    before = _count(results)
    assert before["runs"] == 2 and before["ops"] > 0
    again = merge_task(str(results), shipped.runs, _row(shipped, task), mid)
    assert not again.task_recorded and not again.stored
    assert "nothing stored" in again.notes()[0]
    # The same runs for another task (say a second coordinator): the runs are not
    # stored twice, the task is recorded with the ids they have.
    other = merge_task(str(results), shipped.runs,
                       _row(shipped, Task("sim", "no-barrier", "swarm", seeds=(4, 5))), mid)
    assert not other.stored and set(other.skipped) == set(m.stored)
    assert _count(results)["runs"] == 2
    assert sorted(store.matrix_tasks(store.open_db(str(results)), mid)
                  ["sim/no-barrier/-/swarm/4-5"]["runs"]) == sorted(m.stored.values())
    rows = matrix_rows(str(results), mid)
    assert [o.run_id for o in dict(rows)["no-barrier (sim)"]] == sorted(m.stored.values())


@pytest.mark.sim
def test_a_different_run_with_a_stored_id_gets_a_fresh_one(tmp_path: Path,
                                                           shipped: TaskResult) -> None:
    results = tmp_path / "results"
    first = shipped.runs[0]
    merge_task(str(results), [first], {"task": "a"}, None)
    # Another worker's run: same id (same seed, same second), another run.
    cols, data = first.rows["runs"]
    i = cols.index("summary")
    twin = type(first)(first.run_id, {**first.rows, "runs": (cols, [
        tuple("another run" if k == i else v for k, v in enumerate(data[0]))])},
        first.archive, first.outcome)
    m = merge_task(str(results), [twin], {"task": "b"}, None)
    assert m.stored == {first.run_id: f"{first.run_id}-2"}
    db = _db(results)
    assert db.execute("select summary, run_dir from runs where id = ?",
                      [f"{first.run_id}-2"]).fetchone() == ("another run", f"{first.run_id}-2")
    n = db.execute("select count(*) from ops where run = ?", [first.run_id]).fetchone()[0]
    assert db.execute("select count(*) from ops where run = ?",
                      [f"{first.run_id}-2"]).fetchone()[0] == n > 0
    assert (results / f"{first.run_id}-2" / "kek").is_file()
    # The same run again under another id (as if a second coordinator raced this one
    # past the check by id): the check under the write lock finds it by what it is.
    again = type(first)(f"{first.run_id}-x", first.rows, first.archive, first.outcome)
    m = merge_task(str(results), [again], {"task": "c"}, None)
    assert m.skipped == {f"{first.run_id}-x": first.run_id} and not m.stored
    assert not (results / f"{first.run_id}-x").exists()
    assert db.execute("select count(*) from runs").fetchone()[0] == 2


@pytest.mark.sim
def test_a_failed_merge_stores_nothing(tmp_path: Path, shipped: TaskResult,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "results"
    store.check_writable(str(results))
    empty = _count(results)
    real_rename = os.rename
    calls = []

    def second_rename_fails(a: str, b: str) -> None:
        calls.append(b)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_rename(a, b)

    monkeypatch.setattr("orchestrator.nightly.merge.os.rename", second_rename_fails)
    task = Task("sim", "no-barrier", "swarm", seeds=(2, 3))
    mid = start_matrix(str(results), MatrixSpec(builds=["no-barrier"], seeds=0), "dask")
    with pytest.raises(MergeError, match="No space left"):
        merge_task(str(results), shipped.runs, _row(shipped, task), mid)
    assert _count(results) == empty
    assert sorted(os.listdir(results)) == ["cutover.db"] + sorted(
        p for p in os.listdir(results) if p.startswith("cutover.db-"))


# ------------------------------------------------------------------ trend


def _fake_matrix(db: Any, mid: str, revision: str | None, verdicts: dict[tuple[str, int], str],
                 started: str) -> None:
    """A recorded matrix of real-run tasks with the given verdicts (and their runs)."""
    builds = sorted({b for b, _s in verdicts})
    seeds = max(s for _b, s in verdicts)
    spec = MatrixSpec(builds=builds, seeds=seeds, base=base_config(nodes=3, time_limit=5))
    db.conn.execute("insert into matrices (id, revision, config, started) values (?,?,?,?)",
                    [mid, revision, json.dumps(spec.to_dict()), started])
    for t in spec.tasks():
        v = verdicts[(t.build, t.seed)]
        rid = f"{mid}-{t.build}-{t.seed}"
        db.conn.execute("insert into runs (id, started, seed, bugs, status, verdict, summary, "
                        "matrix) values (?,?,?,?,?,?,?,?)",
                        [rid, started, t.seed, "" if t.build == "fixed" else t.build, "done",
                         v, v.upper(), mid])
        if v == "invalid":
            db.conn.execute("insert into checks values (?,?,?,?)", [
                rid, "cutover", "invalid", json.dumps({
                    "valid": "invalid", "failing": "I1", "first_violation": "cleartext",
                    "first_violation_ns": t.seed * 10**9})])
        store.record_task(db, {"matrix": mid, **task_row(t, "done", [rid], {})})
    db.conn.commit()


def test_trend_rates_medians_and_flakes(tmp_path: Path) -> None:
    results = str(tmp_path)
    store.check_writable(results)
    db = store.open_db(results, create=True)
    _fake_matrix(db, "mx-1", "aaa", {("fixed", 1): "valid", ("fixed", 2): "valid",
                                     ("no-barrier", 1): "invalid", ("no-barrier", 2): "valid"},
                 "2026-01-01T02:00:00")
    _fake_matrix(db, "mx-2", "aaa", {("fixed", 1): "valid", ("fixed", 2): "valid",
                                     ("no-barrier", 1): "invalid", ("no-barrier", 2): "invalid"},
                 "2026-01-02T02:00:00")
    # Another revision: a different verdict there is a change of code, not a flake.
    _fake_matrix(db, "mx-3", "bbb", {("fixed", 1): "invalid", ("fixed", 2): "valid",
                                     ("no-barrier", 1): "invalid", ("no-barrier", 2): "invalid"},
                 "2026-01-03T02:00:00")
    data = trend_data(db)
    rates = {label: [p.rate for p in ps] for label, ps in data.series.items()}
    assert rates == {"fixed": [1.0, 1.0, 0.5], "no-barrier": [0.5, 1.0, 1.0]}
    assert [p.median_s for p in data.series["no-barrier"]] == [1.0, 1.5, 1.5]
    assert [(f.label, f.seed, f.revision, [v for _m, v, _r in f.verdicts])
            for f in data.flakes] == [("no-barrier", 2, "aaa", ["valid", "invalid"])]
    text = "\n".join(trend_lines(trend_data(db, builds=["no-barrier"], last=2)))
    assert "fixed" not in text and "mx-1" not in text and "flakes: none in 2" in text
    # Columns as wide as their widest cell: each header word starts where its cells do.
    table = trend_lines(trend_data(db))
    head = table[0]
    cols = [head.index(w) for w in ("matrix", "started", "revision")]
    for row in table[2:8]:
        assert [row[c - 2:c] for c in cols] == ["  "] * 3, (head, row)
        assert row[cols[0]:].startswith("mx-"), row
    with serving(results) as url:
        resp = urllib.request.urlopen(url + "/trend")
        page = resp.read().decode()
    assert resp.status == 200 and "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert page.count('class="pt" data-build="no-barrier"') == 6  # two plots, 3 matrices
    assert '<b>no-barrier</b> seed 2 at <span class="runid">aaa</span>' in page
    assert 'href="/run/mx-1-no-barrier-2/"' in page


# ------------------------------------------------------------------ tasks and flags


def test_tasks_are_named_and_ordered_like_the_table() -> None:
    spec = MatrixSpec(builds=["fixed", "no-barrier"], seeds=2, first_seed=5,
                      modes=["swarm", "churn"], sim_seeds=3, sim_batch=2)
    tasks = spec.tasks()
    assert [t.key for t in tasks[:6]] == [
        "run/fixed/-/swarm/5", "run/fixed/-/swarm/6", "sim/fixed/-/swarm/5-6",
        "sim/fixed/-/swarm/7-7", "run/fixed/-/churn/5", "run/fixed/-/churn/6"]
    assert len(tasks) == 2 * 2 * (2 + 2) and len({t.key for t in tasks}) == len(tasks)
    assert [spec.label(t) for t in tasks[:5]] == [
        "fixed [swarm]", "fixed [swarm]", "fixed [swarm] (sim)", "fixed [swarm] (sim)",
        "fixed [churn]"]
    cfg = tasks[-1].config(spec.base, "R")
    assert (cfg.bugs, cfg.scenario, cfg.seed, cfg.results) == (["no-barrier"], "churn", 7, "R")
    assert Task.from_dict(tasks[-1].to_dict()) == tasks[-1]


@pytest.mark.parametrize("args, needle", [
    (["--resume", "latest", "--seeds", "3"], "drop --seeds"),
    (["--scheduler", "tcp://127.0.0.1:1"], "--scheduler needs --engine dask"),
    (["--seeds", "0"], "nothing to run"),
    (["--resume", "mx-none"], "no matrix 'mx-none'"),
    (["--scenario", "swarm,nope"], "expected a comma list of swarm"),
])
def test_matrix_flags_that_cannot_work_are_one_line_errors(tmp_path: Path, args: list[str],
                                                           needle: str) -> None:
    store.check_writable(str(tmp_path))
    start_matrix(str(tmp_path), MatrixSpec(builds=["fixed"], seeds=1), "local")
    r = subprocess.run(CLI + ["matrix", "--results", str(tmp_path), *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
