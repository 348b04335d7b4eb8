"""The Dask merge and the matrix against hostile or broken input (issue 22, item 9).

* a shipped archive built like CVE-2025-4517's (a symlink chain that resolves deeper
  than PATH_MAX, past the tar `data` filter of the Pythons this runs on) writes
  nothing outside the results dir: the whole archive is refused, as is any link or
  special file, or a name outside the run directory;
* a run id holding a NUL byte (or a `/`, or `..`) is a clear MergeError, nothing made;
* two runs with one id in one task are refused, not recorded under one id twice;
* the worker ships a run dir's second name of a file (a power-loss keep link) as a file,
  which the merge accepts, and refuses to ship a symlink;
* one matrix resumed twice at once: the second refuses in one line (exit 3) while the
  first runs every task once; a resume killed with SIGKILL leaves no lock behind.

Archives are real tar files (`tarfile`), shipped from a real stored run (`ship`).
"""
from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest

from orchestrator import store
from orchestrator.nightly.matrix import MatrixSpec, base_config, start_matrix, task_row
from orchestrator.nightly.merge import MergeError, merge_task
from orchestrator.nightly.tasks import ShippedRun, Task, UnshippableRun, ship
from tests.conftest import REPO
from tests.ui.test_review import store_synthetic_run

RUN = "20260501T000001-s31"
CLI = [sys.executable, "-m", "orchestrator.cli"]  # this checkout's, whatever is installed


@pytest.fixture
def shipped(tmp_path: Path) -> ShippedRun:
    """A stored run, shipped as a worker ships it (rows and its directory as a tar)."""
    scratch = tmp_path / "scratch"
    store_synthetic_run(str(scratch), RUN, seed=31, n_ops=40)
    return ship(str(scratch), RUN)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """`base/results`, and `base/victim.txt` beside it: what an escape would overwrite."""
    b = tmp_path / "base"
    store.check_writable(str(b / "results"))
    (b / "victim.txt").write_text("original\n")
    return b


def _nothing_stored(base: Path) -> None:
    results = base / "results"
    assert (base / "victim.txt").read_text() == "original\n"
    assert sorted(os.listdir(base)) == ["results", "victim.txt"]
    assert [p for p in os.listdir(results) if not p.startswith(store.DB_NAME)] == []
    db = sqlite3.connect(store.db_path(str(results)))
    assert db.execute("select count(*) from runs").fetchone()[0] == 0
    assert db.execute("select count(*) from ops").fetchone()[0] == 0
    assert db.execute("select count(*) from matrix_tasks").fetchone()[0] == 0
    db.close()


def _add(tar: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, link: str = "",
         data: bytes = b"") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _plus(archive: bytes, extra: Any) -> bytes:
    """`archive` (a shipped run directory) with `extra(tar)`'s members after its own."""
    src = tarfile.open(fileobj=io.BytesIO(archive))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in src.getmembers():
            tar.addfile(m, src.extractfile(m) if m.isreg() else None)
        extra(tar)
    return buf.getvalue()


def _symlink_chain(up: str) -> Any:
    """CVE-2025-4517's chain: sixteen symlinks (a..p) to directories of 247-character
    names, so that `a/b/.../p/<254 x l>` resolves, on disk, deeper than PATH_MAX, where
    `os.path.realpath` stops resolving and the tar filter goes by the text of the path;
    a symlink there climbs back up the sixteen levels to the destination, `escape` climbs
    `up` from it, and two regular files are written through `escape`."""
    def extra(tar: tarfile.TarFile) -> None:
        comp, steps, path = "d" * 247, "abcdefghijklmnop", ""
        for s in steps:
            _add(tar, os.path.join(path, comp), tarfile.DIRTYPE)
            _add(tar, os.path.join(path, s), tarfile.SYMTYPE, comp)
            path = os.path.join(path, s)
        deep = os.path.join(*steps, "l" * 254)
        _add(tar, deep, tarfile.SYMTYPE, "../" * len(steps))
        _add(tar, "escape", tarfile.SYMTYPE, f"{deep}/{up}")
        _add(tar, "escape/victim.txt", data=b"overwritten by a shipped run\n")
        _add(tar, "escape/created.txt", data=b"created by a shipped run\n")
    return extra


def _vulnerable_python() -> bool:
    v = sys.version_info
    return (v[:2] == (3, 11) and v < (3, 11, 13)) or (v[:2] == (3, 12) and v < (3, 12, 11)) \
        or (v[:2] == (3, 13) and v < (3, 13, 4))


def test_a_symlink_chain_archive_cannot_write_beside_the_results_dir(
        shipped: ShippedRun, base: Path, tmp_path: Path) -> None:
    archive = _plus(shipped.archive, _symlink_chain("../.."))
    # The archive is a working attack on this Python's own filter: unpacked with
    # `filter="data"` two levels down a sandbox, it writes in the sandbox itself.
    sandbox = tmp_path / "sandbox"
    (sandbox / "results").mkdir(parents=True)
    (sandbox / "victim.txt").write_text("original\n")
    dest = tempfile.mkdtemp(dir=sandbox / "results")
    try:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(dest, filter="data")
        escaped = (sandbox / "created.txt").exists()
    except tarfile.FilterError:
        escaped = False
    if _vulnerable_python():
        assert escaped and (sandbox / "victim.txt").read_text().startswith("overwritten")
    evil = ShippedRun(RUN, shipped.rows, archive, shipped.outcome)
    with pytest.raises(MergeError, match="symbolic link"):
        merge_task(str(base / "results"), [evil], {"task": "t"}, None)
    _nothing_stored(base)


@pytest.mark.parametrize("extra, words", [
    (lambda t, b: _add(t, "./nodes/n1/innocent", tarfile.SYMTYPE, "../../kek"),
     "symbolic link"),
    (lambda t, b: _add(t, "./nodes/n1/wal", tarfile.LNKTYPE, "./config.json"), "hard link"),
    (lambda t, b: _add(t, "./nodes/n1/pipe", tarfile.FIFOTYPE), "named pipe"),
    (lambda t, b: _add(t, "./nodes/zero", tarfile.CHRTYPE), "character device"),
    (lambda t, b: _add(t, "../../victim.txt", data=b"overwritten\n"), "outside the run"),
    (lambda t, b: _add(t, str(b / "absolute.txt"), data=b"x"), "outside the run"),
], ids=["symlink", "hardlink", "fifo", "device", "dotdot", "absolute"])
def test_an_archive_with_anything_but_files_and_dirs_is_refused_whole(
        shipped: ShippedRun, base: Path, extra: Any, words: str) -> None:
    archive = _plus(shipped.archive, lambda t: extra(t, base))
    evil = ShippedRun(RUN, shipped.rows, archive, shipped.outcome)
    with pytest.raises(MergeError, match=words):
        merge_task(str(base / "results"), [evil], {"task": "t"}, None)
    _nothing_stored(base)  # absolute.txt included: nothing but results/ and victim.txt


def _with_id(rows: store.RunRows, rid: str) -> store.RunRows:
    out: store.RunRows = {}
    for t, (cols, data) in rows.items():
        i = cols.index("id" if t == "runs" else "run")
        out[t] = (cols, [tuple(rid if k == i else v for k, v in enumerate(r)) for r in data])
    return out


@pytest.mark.parametrize("rid", ["a\0b", "../escape", "x/y", "", ".hidden", "..", "tab\there"],
                         ids=["nul", "dotdot", "slash", "empty", "hidden", "parent", "control"])
def test_a_run_id_that_is_not_a_plain_name_is_a_clear_error(shipped: ShippedRun, base: Path,
                                                            rid: str) -> None:
    evil = ShippedRun(rid, _with_id(shipped.rows, rid), shipped.archive, shipped.outcome)
    with pytest.raises(MergeError, match="not a plain name"):
        merge_task(str(base / "results"), [evil], {"task": "t"}, None)
    _nothing_stored(base)


def test_two_runs_with_one_id_in_one_task_are_refused(shipped: ShippedRun, base: Path) -> None:
    results = str(base / "results")
    cols, data = shipped.rows["runs"]
    i = cols.index("summary")
    twin = ShippedRun(RUN, {**shipped.rows, "runs": (cols, [
        tuple("another run" if k == i else v for k, v in enumerate(data[0]))])},
        shipped.archive, shipped.outcome)
    mid = start_matrix(results, MatrixSpec(builds=["fixed"], seeds=1), "dask")
    row = task_row(Task("run", "fixed", "swarm", seed=1), "done", [RUN, RUN], {})
    with pytest.raises(MergeError, match=f"two shipped runs have the id {RUN}"):
        merge_task(results, [shipped, twin], row, mid)
    _nothing_stored(base)
    # The engine then records the task as a harness error (what `_store_error` does).
    merge_task(results, [], task_row(Task("run", "fixed", "swarm", seed=1), "error", [],
                                     {"error": "two runs, one id"}), mid)
    assert store.matrix_tasks(store.open_db(results), mid)["run/fixed/-/swarm/1"]["status"] \
        == "error"


def test_a_second_name_of_a_file_is_shipped_as_a_file_and_a_symlink_not_at_all(
        tmp_path: Path, base: Path) -> None:
    scratch = tmp_path / "scratch"
    store_synthetic_run(str(scratch), RUN, seed=31, n_ops=40)
    log = scratch / RUN / "nodes" / "n1.log"
    os.link(log, scratch / RUN / "nodes" / "n1.log.pl-keep-1-1")
    run = ship(str(scratch), RUN)
    m = merge_task(str(base / "results"), [run], {"task": "t"}, None)
    assert m.stored == {RUN: RUN}
    kept = base / "results" / RUN / "nodes" / "n1.log.pl-keep-1-1"
    assert kept.read_bytes() == log.read_bytes() and not kept.is_symlink()
    os.symlink("n1.log", scratch / RUN / "nodes" / "innocent")
    with pytest.raises(UnshippableRun, match="innocent"):
        ship(str(scratch), RUN)


# ------------------------------------------------------------------ resuming, once


def _resume(results: Path, mid: str) -> list[str]:
    return [*CLI, "matrix", "--resume", mid, "--results", str(results)]


def _sim_matrix(results: Path, seeds: int) -> str:
    """A matrix of `seeds` one-seed `cutover sim` tasks of a bug build (about a second
    each; failing seeds store a run), recorded and not started."""
    spec = MatrixSpec(builds=["no-barrier"], seeds=0, first_seed=5, sim_seeds=seeds,
                      sim_batch=1, base=base_config(nodes=3, time_limit=6))
    return start_matrix(str(results), spec, "local")


@pytest.mark.sim
def test_one_matrix_resumed_twice_at_once_runs_each_task_once(tmp_path: Path) -> None:
    results = tmp_path / "results"
    mid = _sim_matrix(results, 8)
    a = subprocess.Popen(_resume(results, mid), cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        first = a.stderr.readline() if a.stderr else ""
        assert first.startswith(f"matrix {mid}: 8 of 8 tasks to run"), first
        b = subprocess.run(_resume(results, mid), cwd=REPO, capture_output=True, text=True,
                           timeout=300)
        a_busy = a.poll() is None
        _out, err = a.communicate(timeout=300)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    lines = b.stderr.splitlines()
    assert b.returncode == 3, (f"the second resume ran (exit {b.returncode}; the first was "
                               f"{'still' if a_busy else 'no longer'} running)", b.stderr[-500:])
    assert len(lines) == 1 and lines[0].startswith("error: "), b.stderr
    assert "being run by another process" in lines[0] and "Traceback" not in b.stderr
    assert a.returncode in (0, 1), err
    db = sqlite3.connect(store.db_path(str(results)))
    tasks = db.execute("select status, runs from matrix_tasks where matrix = ?",
                       [mid]).fetchall()
    assert len(tasks) == 8 and all(s == "done" for s, _r in tasks)
    recorded = sorted(r for _s, rs in tasks for r in json.loads(rs))
    stored = sorted(r for (r,) in db.execute("select id from runs where matrix = ?", [mid]))
    db.close()
    assert stored == recorded, "a task ran twice: runs stored that no task names"
    assert not [p for p in os.listdir(results) if p.startswith(".matrix-")]
    c = subprocess.run(_resume(results, mid), cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert c.returncode in (0, 1) and f"matrix {mid}: 0 of 8 tasks" in c.stderr, c.stderr


@pytest.mark.sim
def test_a_resume_killed_outright_leaves_no_lock_behind(tmp_path: Path) -> None:
    results = tmp_path / "results"
    mid = _sim_matrix(results, 2)
    a = subprocess.Popen(_resume(results, mid), cwd=REPO, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert (a.stderr.readline() if a.stderr else "").startswith(f"matrix {mid}:")
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait(30)
    assert [p for p in os.listdir(results) if p.startswith(".matrix-")]  # its file stays
    r = subprocess.run(_resume(results, mid), cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode in (0, 1), r.stderr
    assert not [p for p in os.listdir(results) if p.startswith(".matrix-")]
