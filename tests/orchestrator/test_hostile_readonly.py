"""A results directory nobody may write: an archived nightly (issue 22, item 8).

Every reader (`list`, `show`, `report`, `export`, `trend`, `coverage`, `serve`) works on
it and leaves it exactly as it was: not one file created beside the database, not one
byte changed. Every writer (`check`, `run`, `matrix --resume`) refuses it in one line,
exit 3. A copy taken while a writer was busy keeps rows in its write-ahead log: they
are shown, or the reader says it cannot read them; never a view without them.

The directory is read-only for real. These tests run the commands in a child process
that permissions bind: as root, one without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH
(dropped from its bounding set before it runs Python), so the owner's `r-x` of a chmod
0555 directory is all it gets; as any other user, plain permissions. A probe checks
that the child indeed cannot create a file there before anything else is asserted.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import store
from orchestrator.nightly.matrix import MatrixSpec, task_row
from orchestrator.nightly.tasks import Task
from tests.conftest import REPO

pytestmark = pytest.mark.real

MATRIX = "mx-20260401T000000"
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _bound_by_permissions() -> None:
    """preexec_fn: the child (and the Python it runs) loses root's power to ignore
    file permissions; another user has none to lose."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def bound(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """`cutover ARGS` (this checkout's) in a child bound by permissions."""
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          preexec_fn=_bound_by_permissions, **kw)


def _set_writable(root: Path, writable: bool) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            mode = os.stat(p).st_mode & 0o777
            os.chmod(p, (mode | 0o200) if writable else (mode & ~0o222))
        os.chmod(dirpath, 0o755 if writable else 0o555)


def _snapshot(root: Path) -> dict[str, Any]:
    """Every entry under `root` with its type, mode, size and mtime; the database's
    sha256: what "nothing created, nothing changed" means here."""
    out: dict[str, Any] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    out["sha256"] = hashlib.sha256((root / store.DB_NAME).read_bytes()).hexdigest()
    return out


@pytest.fixture
def read_only() -> Iterator[Any]:
    """Makes a directory read-only for the test's children (given back afterwards);
    skips when this machine lets them write it anyway (nothing honest to test)."""
    made: list[Path] = []

    def make(root: Path) -> Path:
        _set_writable(root, False)
        made.append(root)
        probe = root / "probe"
        r = subprocess.run([sys.executable, "-c", f"open({str(probe)!r}, 'w')"],
                           capture_output=True, text=True, preexec_fn=_bound_by_permissions)
        if r.returncode == 0:
            probe.unlink()
            pytest.skip("a child of this test can write a chmod 0555 directory")
        assert "PermissionError" in r.stderr, r.stderr
        return root

    yield make
    for root in made:
        _set_writable(root, True)


@pytest.fixture(scope="module")
def nightly(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A results dir as a finished nightly leaves it: one real run (3 nodes, 2 s, no
    faults), the matrix that ran it, the database closed cleanly (no -wal, no -shm).
    Real, so that `cutover check` gets as far as storing its verdicts."""
    results = tmp_path_factory.mktemp("nightly") / "results"
    r = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", "--nodes", "3",
                        "--time-limit", "2", "--nemesis", "none", "--seed", "21",
                        "--results", str(results)], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode in (0, 1, 2), r.stderr
    (run,) = [p for p in os.listdir(results) if p != store.DB_NAME]
    spec = MatrixSpec(builds=["fixed"], seeds=1, first_seed=21)
    db = store.open_db(str(results), create=True)
    try:
        mid = store.create_matrix(db, MATRIX, "0" * 40, {**spec.to_dict(), "engine": "local"},
                                  "2026-04-01T00:00:00.000+00:00")
        with store.write_transaction(db):
            store.tag_run(db, run, mid)
            store.record_task(db, {"matrix": mid, **task_row(
                Task("run", "fixed", spec.modes[0], seed=21), "done", [run], {})})
        store.finish_matrix(db, mid, "2026-04-01T00:01:00.000+00:00")
    finally:
        db.conn.close()
    assert sorted(os.listdir(results)) == sorted([run, store.DB_NAME])
    return results, run


@pytest.fixture
def archive(nightly: tuple[Path, str], tmp_path: Path) -> tuple[Path, str]:
    """A copy of the nightly of its own for each test (it is made read-only)."""
    copy = tmp_path / "nightly"
    shutil.copytree(nightly[0], copy, symlinks=True)
    return copy, nightly[1]


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.read().decode()


def test_every_reader_works_on_a_read_only_results_dir(archive: tuple[Path, str],
                                                       read_only: Any, tmp_path: Path) -> None:
    archive, run = archive
    out = tmp_path / "out"
    out.mkdir()
    read_only(archive)
    before = _snapshot(archive)
    results = ["--results", str(archive)]
    expect = {("list",): run, ("show", "latest"): run, ("coverage",): "coverage:",
              ("trend",): MATRIX, ("export", "latest", "--format", "jsonl"): '"invoke"',
              ("export", run, "--format", "jepsen-edn", "-o", str(out / "h.edn")): "",
              ("report", "latest", "-o", str(out / "r.html")): str(out / "r.html")}
    for args, want in expect.items():
        r = bound(*args, *results)
        assert r.returncode == 0 and not r.stderr, f"{args}: {r.returncode} {r.stderr}"
        assert want in r.stdout, (args, r.stdout[:300])
    assert (out / "h.edn").read_text().count(":type") > 100
    assert run in (out / "r.html").read_text()
    p = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "serve", "--port", "0",
                          *results], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=_bound_by_permissions)
    try:
        line = p.stdout.readline() if p.stdout else ""
        assert line.startswith("serving"), (line, p.stderr.read() if p.poll() else "")
        base = line.split(" at ")[1].split("/ ")[0]
        assert run in _get(f"{base}/")[1]
        assert "Linearizability" in _get(f"{base}/run/{run}/")[1]
        assert MATRIX in _get(f"{base}/trend")[1]
        assert _get(f"{base}/run/{run}/files/config.json")[0] == 200
    finally:
        p.terminate()
        p.wait(30)
    assert _snapshot(archive) == before


def test_writers_refuse_a_read_only_results_dir_in_one_line(archive: tuple[Path, str],
                                                            read_only: Any) -> None:
    archive, _run = archive
    read_only(archive)
    before = _snapshot(archive)
    for args, why in ((["check", "latest"], "not writable"),
                      (["matrix", "--resume", MATRIX], "cannot lock matrix"),
                      (["run", "--nodes", "3", "--time-limit", "1", "--nemesis", "none"],
                       "not writable")):
        r = bound(*args, "--results", str(archive))
        lines = r.stderr.splitlines()
        assert r.returncode == 3, (args, r.returncode, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, r.stderr)
        assert why in lines[0] and "Traceback" not in r.stdout + r.stderr, lines[0]
    assert _snapshot(archive) == before


@pytest.mark.parametrize("shm", [True, False], ids=["wal-and-shm", "wal-only"])
def test_rows_only_in_a_copied_write_ahead_log_are_never_hidden(archive: tuple[Path, str],
                                                                 read_only: Any,
                                                                 tmp_path: Path,
                                                                 shm: bool) -> None:
    """A copy taken while a writer held the database: a run committed to the -wal file
    only. Shown when SQLite can read the log read-only (its -shm beside it); a one-line
    error when it cannot: never the main file alone (what `immutable` would read)."""
    archive, run = archive
    writer = sqlite3.connect(store.db_path(str(archive)))
    writer.execute("pragma wal_autocheckpoint = 0")
    with writer:
        writer.execute("insert into runs (id, started, status, verdict, summary) values "
                       "('late', '2026-04-02T00:00:00.000+00:00', 'done', 'valid', 'VALID')")
    copy = tmp_path / "copy"
    shutil.copytree(archive, copy)
    writer.close()
    assert (copy / f"{store.DB_NAME}-wal").stat().st_size > 0
    if not shm:
        (copy / f"{store.DB_NAME}-shm").unlink()
    read_only(copy)
    before = _snapshot(copy)
    r = bound("list", "--results", str(copy))
    if shm:
        assert r.returncode == 0, r.stderr
        assert sorted(ln.split()[0] for ln in r.stdout.splitlines()[1:]) == sorted(["late", run])
    else:
        lines = r.stderr.splitlines()
        assert r.returncode == 3 and len(lines) == 1, r.stderr
        assert "write-ahead log" in lines[0] and "Traceback" not in r.stderr
    assert _snapshot(copy) == before
