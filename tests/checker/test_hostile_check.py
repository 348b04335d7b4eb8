"""`cutover check` is all or nothing (issue 15, attacks 1, 2 and 3).

A re-check of a damaged run used to store a new verdict over the old one: a deleted node
dir turned a stored INVALID into VALID, a wrong KEK turned VALID into an I1 violation.
Now any missing or unreadable artifact is exit 3 with one line and the database's sha256
unchanged, while damage *inside* a complete run (a corrupt WAL) is evidence and judged.

One short real run (3 nodes, a cutover, snapshots every 25 entries) is recorded once;
each test damages a copy of it.
"""
from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from node.storage import SNAP_DIR, WAL_DIR
from node.wal import RecordKind, iter_records
from orchestrator import store
from orchestrator.real.run import RunConfig, execute
from orchestrator.store import owner
from tests.ui.test_review import _assert_bad, cli, db_state

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any]:
    results = str(tmp_path_factory.mktemp("recorded"))
    seed = 2025
    print(f"cutover run --nodes 3 --time-limit 8 --nemesis none --snapshot-every 25 "
          f"--seed {seed}")
    out = execute(RunConfig(nodes=3, time_limit=8, nemesis="none", seed=seed,
                            snapshot_every=25, results=results), out=None, progress=None)
    assert out.verdict == "valid", out.summary
    return results, out


@pytest.fixture
def run(recorded, tmp_path) -> tuple[str, str, str]:
    """(results, run id, run dir) of a private copy, its stored verdict forged INVALID:
    a check that fails must leave it INVALID."""
    results0, out = recorded
    results = str(tmp_path / "copy")
    shutil.copytree(results0, results)
    conn = sqlite3.connect(store.db_path(results))
    with conn:
        conn.execute("update runs set verdict = 'invalid', exit_code = 1 where id = ?",
                     [out.run_id])
    conn.close()
    return results, out.run_id, os.path.join(results, out.run_id)


def _node(run_dir: str, n: str) -> Path:
    return Path(run_dir) / "nodes" / n


def _refused(results: str, run_id: str, *words: str, names_run: bool = True) -> None:
    before = db_state(results)
    _assert_bad(cli("check", run_id, "--results", results),
                *([run_id] if names_run else []), *words)
    assert db_state(results) == before


@pytest.mark.parametrize("gone", [["n2"], ["n1", "n3"]], ids=["one-of-three", "two-of-three"])
def test_a_deleted_node_dir_is_refused(run, gone: list[str]) -> None:
    results, rid, rd = run
    for n in gone:
        shutil.rmtree(_node(rd, n))
    _refused(results, rid, f"node {', '.join(gone)}", "missing")


def test_a_wrong_kek_is_a_harness_error_not_a_violation(run) -> None:
    results, rid, rd = run
    kek = Path(rd) / "kek"
    kek.write_bytes(os.urandom(32))
    os.chmod(kek, 0o600)
    _refused(results, rid, "does not unwrap")


@pytest.mark.parametrize("what", ["wal", "sidecar.json", "events.jsonl", "node-id",
                                  "snapshot", "exits", "fifo-sidecar"])
def test_a_missing_or_unreadable_artifact_is_refused(run, what: str) -> None:
    results, rid, rd = run
    n2 = _node(rd, "n2")
    if what == "wal":
        shutil.rmtree(n2 / WAL_DIR)
        words = ["WAL"]
    elif what == "snapshot":
        marker = max(r.value.index for r in iter_records(n2 / WAL_DIR)
                     if r.kind is RecordKind.SNAPSHOT)
        for p in (n2 / SNAP_DIR).iterdir():
            if int(p.name.split(".")[0]) >= marker:
                p.unlink()
        words = ["snapshot", "missing"]
    elif what == "exits":
        (Path(rd) / "nodes" / "exits.jsonl").unlink()
        words = ["exit record", "missing"]
    elif what == "fifo-sidecar":
        (n2 / "sidecar.json").unlink()
        os.mkfifo(n2 / "sidecar.json")
        words = ["sidecar", "not a regular file"]
    else:
        (n2 / what).unlink()
        words = ["missing"]
    _refused(results, rid, *words)


def test_a_dropped_ops_table_is_refused(run) -> None:
    results, rid, _ = run
    conn = sqlite3.connect(store.db_path(results))
    with conn:
        conn.execute("drop table ops")
    conn.close()
    _refused(results, rid, "no ops table", names_run=False)


def test_a_history_with_rows_deleted_is_refused(run) -> None:
    results, rid, _ = run
    conn = sqlite3.connect(store.db_path(results))
    with conn:
        conn.execute("delete from ops where run = ? and idx % 3 = 1", [rid])
    conn.close()
    _refused(results, rid, "history")


def test_a_run_still_running_is_refused(run) -> None:
    results, rid, rd = run
    conn = sqlite3.connect(store.db_path(results))
    with conn:
        conn.execute("update runs set status = 'running' where id = ?", [rid])
    conn.close()
    owner.write(rd)  # this process: alive
    _refused(results, rid, "still running")


@pytest.mark.parametrize("how", ["last-line", "emptied", "cut-mid-line"])
def test_an_event_log_shorter_than_the_stored_one_is_refused(run, how: str) -> None:
    """Issue 22 (1): dropping a node's last event (its `stop`), emptying its log or
    cutting it mid-line stored VALID over an INVALID run; now nothing is stored."""
    results, rid, rd = run
    ev = _node(rd, "n2") / "events.jsonl"
    lines = ev.read_bytes().splitlines(keepends=True)
    if how == "last-line":
        ev.write_bytes(b"".join(lines[:-1]))
    elif how == "emptied":
        ev.write_bytes(b"")
    else:
        ev.write_bytes(b"".join(lines[:-3]) + lines[-3][: len(lines[-3]) // 2])
    _refused(results, rid, "n2", "event log", "cannot re-check")


@pytest.mark.parametrize("status", ["crashed", "aborted", "error"])
def test_a_run_that_did_not_finish_keeps_its_verdict(run, status: str) -> None:
    """Issue 22 (3): a check of a crashed or aborted run replaced its CRASHED/ABORTED
    line with "VALID: every checker passed"."""
    results, rid, _ = run
    conn = sqlite3.connect(store.db_path(results))
    with conn:
        conn.execute("update runs set status = ?, verdict = ?, summary = ? where id = ?",
                     [status, status, f"{status.upper()}: the orchestrator died", rid])
    conn.close()
    _refused(results, rid, status, "did not finish")


def test_a_check_of_a_simulated_run_keeps_its_mark(run) -> None:
    """Issue 22 (3): a check of a simulated run dropped its SIMULATED mark."""
    results, rid, _ = run
    conn = sqlite3.connect(store.db_path(results))
    with conn:
        conn.execute("update runs set source = 'sim' where id = ?", [rid])
    conn.close()
    r = cli("check", rid, "--results", results)
    assert r.exit_code == 0, r.output
    with store.opened(results) as db:
        assert store.resolve_run(db, rid)["summary"].startswith("SIMULATED VALID"), r.output


def test_a_corrupt_wal_inside_a_complete_run_is_evidence(run) -> None:
    results, rid, rd = run
    seg = sorted((_node(rd, "n3") / WAL_DIR).iterdir())[-1]
    data = bytearray(seg.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = os.urandom(64)
    seg.write_bytes(bytes(data))
    r = cli("check", rid, "--results", results)
    assert r.exit_code in (1, 2), r.output
    with store.opened(results) as db:
        row = store.resolve_run(db, rid)
        assert row["verdict"] in ("invalid", "unknown") and row["exit_code"] == r.exit_code
        assert store.checks(db, rid)["cutover"]["valid"] in ("invalid", "unknown")


def test_an_intact_run_is_checked_and_stored_whole(run) -> None:
    results, rid, _ = run
    conn = sqlite3.connect(store.db_path(results))
    with conn:  # a checker that no longer exists: its row must go with the others
        conn.execute("insert into checks (run, checker, valid, detail) values (?, 'gone', "
                     "'invalid', '{}')", [rid])
    conn.close()
    r = cli("check", rid, "--results", results)
    assert r.exit_code == 0, r.output
    with store.opened(results) as db:
        row = store.resolve_run(db, rid)
        assert (row["verdict"], row["exit_code"]) == ("valid", 0)
        got = store.checks(db, rid)
        assert set(got) == {"linearizability", "cutover", "crashes", "stats", "availability",
                            "vacuity"}
