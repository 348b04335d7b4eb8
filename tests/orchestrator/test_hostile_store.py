"""The results database against damage and races (issue 15, attacks 3, 4, 6 and 8).

* schema creation is race-free: N writers opening one fresh directory together all
  succeed;
* a database with a dropped table, or a non-numeric `schema_version`, is a one-line
  error for every command (`run` and `serve` included), and its sha256 is unchanged:
  no command creates a missing table in an existing database;
* a run left `running` by an orchestrator that died is marked `crashed` by the next
  command that opens the database, judged by the orchestrator's pid and start time.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import time
from typing import Any

import pytest

from orchestrator import store
from orchestrator.store import owner
from tests.conftest import CLI, REPO, wait_for
from tests.ui.test_review import _assert_bad, cli, db_state, store_synthetic_run

COMMANDS = [["list"], ["show", "latest"], ["check", "latest"], ["report", "latest"],
            ["export", "latest", "--format", "jsonl"], ["serve", "--port", "0"]]


# ------------------------------------------------------------ schema race (4)

def _writer(results: str, k: int, gate: Any, out: Any) -> None:
    """What `cutover run` does first: check the dir, then record a run."""
    try:
        gate.wait(10)
        store.check_writable(results)
        rec = store.Recorder(results, f"run-{k}", 0)
        rec.run_row(started="2026-01-01T00:00:00", status="running", seed=k)
        rec.flush()
        rec.close()
        out.put((k, None))
    except BaseException as e:  # noqa: BLE001 - reported to the test
        out.put((k, f"{type(e).__name__}: {e}"))


def test_runs_started_together_on_a_fresh_dir_all_succeed(tmp_path) -> None:
    ctx = mp.get_context("fork")
    writers, rounds = 6, 12
    failures = []
    for r in range(rounds):
        results = str(tmp_path / f"fresh-{r}")
        gate = ctx.Barrier(writers)
        out = ctx.SimpleQueue()
        procs = [ctx.Process(target=_writer, args=(results, k, gate, out))
                 for k in range(writers)]
        for p in procs:
            p.start()
        got = [out.get() for _ in procs]
        for p in procs:
            p.join(30)
        failures += [f"round {r} writer {k}: {err}" for k, err in got if err]
        if not failures:
            with store.opened(results) as db:
                assert len(store.runs(db)) == writers
    assert not failures, failures


# -------------------------------------------------- damaged databases (3, 6)

@pytest.fixture
def one_run(tmp_path) -> tuple[str, dict[str, Any]]:
    results = str(tmp_path / "results")
    return results, store_synthetic_run(results, "20260401T000001-s21", seed=21)


def _damage(results: str, sql: str) -> None:
    conn = sqlite3.connect(store.db_path(results))
    with conn:
        conn.execute(sql)
    conn.close()


def _run_cmd(results: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "run", "--nodes", "1", "--time-limit", "2", "--seed", "1",
                           "--results", results], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def _assert_bad_proc(p: subprocess.CompletedProcess, *words: str) -> None:
    assert p.returncode == 3, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.parametrize("value", ["'abc'", "'1.5'", "x'01'", "NULL", "'99999999999999999'"],
                         ids=["text", "float-text", "blob", "null", "huge"])
def test_a_wrong_typed_schema_version_is_one_line_for_every_command(one_run, value) -> None:
    results, _ = one_run
    _damage(results, f"update meta set value = {value} where key = 'schema_version'")
    before = db_state(results)
    for args in COMMANDS:
        _assert_bad(cli(*args, "--results", results), "schema")
    _assert_bad_proc(_run_cmd(results), "schema")
    assert db_state(results) == before


@pytest.mark.parametrize("table", ["ops", "checks", "runs", "log_entries"])
def test_a_dropped_table_is_never_recreated(one_run, table: str) -> None:
    results, run = one_run
    _damage(results, f"drop table {table}")
    before = db_state(results)
    for args in COMMANDS:
        _assert_bad(cli(*args, "--results", results), f"no {table} table")
    _assert_bad_proc(_run_cmd(results), f"no {table} table")
    assert db_state(results) == before
    conn = sqlite3.connect(store.db_path(results))
    assert table not in {r[0] for r in conn.execute("select name from sqlite_master")}
    conn.close()
    assert sorted(os.listdir(results)) == sorted([run["id"], "cutover.db"]), \
        "a failed command left something behind"


# ------------------------------------------------ a dead orchestrator (8)

def _running_row(results: str, run_id: str, who: dict[str, Any] | None) -> str:
    run_dir = os.path.join(results, run_id)
    os.makedirs(run_dir, exist_ok=True)
    if who is not None:
        with open(os.path.join(run_dir, owner.OWNER_FILE), "w") as fh:
            json.dump(who, fh)
    rec = store.Recorder(results, run_id, 0)
    rec.run_row(started="2026-04-02T00:00:00", status="running", seed=1, run_dir=run_id)
    rec.flush()
    rec.close()
    return run_dir


def _status(results: str, run_id: str) -> tuple[str, str | None]:
    conn = sqlite3.connect(store.db_path(results))
    row = conn.execute("select status, verdict from runs where id = ?", [run_id]).fetchone()
    conn.close()
    return row


def test_a_run_whose_orchestrator_is_gone_is_marked_crashed(one_run) -> None:
    results, _ = one_run
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_stamp = owner.stamp(dead.pid)
    dead.wait()
    _running_row(results, "dead", dead_stamp)
    reused = owner.stamp()  # this very pid, but "started" at another time: pid reuse
    reused["start"] = (reused["start"] or 0) + 12345
    _running_row(results, "reused", reused)
    _running_row(results, "alive", owner.stamp())
    _running_row(results, "elsewhere", {**owner.stamp(), "host": "another-host"})
    _running_row(results, "unstamped", None)
    r = cli("list", "--results", results)
    assert r.exit_code == 0, r.output
    verdicts = {ln.split()[0]: ln.split()[-1] for ln in r.stdout.splitlines()[1:]}
    assert verdicts["dead"] == "crashed" and verdicts["reused"] == "crashed"
    assert verdicts["alive"] == "running" and verdicts["elsewhere"] == "running"
    assert verdicts["unstamped"] == "running"
    assert _status(results, "dead") == ("crashed", "crashed")
    r = cli("show", "dead", "--results", results)
    assert "crashed" in r.output.lower() and "died" in r.output


@pytest.mark.real
def test_sigkill_of_the_orchestrator_leaves_a_crashed_run_and_no_nodes(tmp_path) -> None:
    results = str(tmp_path / "results")
    seed = 8
    print(f"cutover run --nodes 3 --nemesis none --seed {seed} (SIGKILLed once running)")
    p = subprocess.Popen([*CLI, "run", "--nodes", "3", "--time-limit", "40", "--nemesis",
                          "none", "--seed", str(seed), "--results", results],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        def running() -> str | None:
            if not os.path.exists(store.db_path(results)):
                return None
            conn = sqlite3.connect(store.db_path(results))
            try:
                row = conn.execute("select id from runs where status = 'running' "
                                   "and t0_ns is not null").fetchone()
            except sqlite3.DatabaseError:
                row = None
            conn.close()
            return row[0] if row else None

        run_id = wait_for(running, 90, "the run to start its workload")
        time.sleep(1.0)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    pids = set()
    nodes = os.path.join(results, run_id, "nodes")
    for n in os.listdir(nodes):
        ev = os.path.join(nodes, n, "events.jsonl")
        if os.path.exists(ev):
            for line in open(ev):
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if e.get("kind") == "start":
                    pids.add(int(e["pid"]))
    assert pids

    def gone(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    wait_for(lambda: all(gone(x) for x in pids), 15, "the nodes to die with the orchestrator")
    r = cli("list", "--results", results)
    assert r.exit_code == 0
    assert r.stdout.splitlines()[1].split()[-1] == "crashed", r.stdout
    assert _status(results, run_id) == ("crashed", "crashed")
