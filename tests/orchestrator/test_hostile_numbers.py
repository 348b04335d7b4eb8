"""Numbers that are not numbers, stored rows that are not what was stored, and a results
disk that fills up (issue 22).

* Every number of a run is finite and in its range (`RunConfig.validate`), whichever way
  it comes: a flag (`--time-limit nan` once ran no workload phase, `--cutover-at nan`
  made no cutover, `--rate nan` lifted the rate limit), a stored config read back for
  `--replay`, a matrix task shipped to a Dask worker. Each is one line and exit 3, and
  no run row.
* A damaged `matrices` or `matrix_tasks` row (bad JSON, a wrong type, a NULL) is one line
  and exit 3 for `cutover trend` and `cutover matrix --resume`, not a traceback; a stored
  count is bounded before anything is built from it (`sim_seeds: 1e9` took 3 GB in
  `trend`, and serve's `/trend` never answered).
* A results disk that fills up during `cutover run` ends with exit 3, one line naming the
  full disk, and the run marked `error` (it was a traceback, exit 1, and a run left
  `running`). On a 20 MB tmpfs when this test may mount one, else under RLIMIT_FSIZE.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import store
from orchestrator.nightly.matrix import MatrixSpec, base_config, task_row
from orchestrator.nightly.tasks import Task, run_task
from orchestrator.real.run import RunError
from tests.conftest import REPO

CLI = [sys.executable, "-m", "orchestrator.cli"]
MEMORY_CAP = 1 << 30  # bytes of address space a command here may take (RLIMIT_AS)


def _capped() -> None:
    """In the child: at most MEMORY_CAP of memory, so that building a list sized by a
    stored number fails fast instead of taking the machine's memory."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _cli(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    """The command, run to its end (a command still going after `timeout` seconds is
    killed and reads as exit -9: every one here should be over in a second or two)."""
    try:
        return subprocess.run([*CLI, *args], capture_output=True, text=True,
                              timeout=timeout, cwd=REPO, preexec_fn=_capped)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(e.cmd, -9, _text(e.stdout),
                                           f"{_text(e.stderr)}\n(killed after {timeout} s)")


def _many(jobs: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
    """Several commands at once (each is mostly its start-up)."""
    with cf.ThreadPoolExecutor(max_workers=4) as ex:
        futs = {k: ex.submit(_cli, argv) for k, argv in jobs.items()}
        return {k: f.result() for k, f in futs.items()}


def _one_line(p: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 3, no traceback, exactly one `error:` line on stderr, holding `words`."""
    assert "Traceback" not in p.stdout + p.stderr, p.stderr[-2000:]
    assert p.returncode == 3, (p.returncode, p.stdout[-500:], p.stderr[-500:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr[-1000:]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def _rows(results: Path, table: str = "runs") -> list[tuple[Any, ...]]:
    db = results / "cutover.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as c:
        return c.execute(f"select * from {table}").fetchall()


# ------------------------------------------------------------------ flags

FLAG_CASES = {
    "run --time-limit nan": (["run", "--time-limit", "nan"], "--time-limit"),
    "run --time-limit inf": (["run", "--time-limit", "inf"], "--time-limit"),
    "run --cutover-at nan": (["run", "--cutover-at", "nan"], "--cutover-at"),
    "run --cutover-at inf": (["run", "--cutover-at", "inf"], "--cutover-at"),
    "run --rate nan": (["run", "--rate", "nan"], "--rate"),
    "run --nemesis-interval nan": (["run", "--nemesis-interval", "nan"], "--nemesis-interval"),
    "sim --time-limit nan": (["sim", "--seeds", "1", "--time-limit", "nan"], "--time-limit"),
    "sim --rate inf": (["sim", "--seeds", "1", "--rate", "inf"], "--rate"),
    "sim --cutover-at nan": (["sim", "--seeds", "1", "--cutover-at", "nan"], "--cutover-at"),
    "sim --budget nan": (["sim", "--budget", "nan"], "--budget"),  # once: seeds for ever
    "matrix --time-limit nan": (["matrix", "--seeds", "1", "--bugs", "none", "--time-limit",
                                 "nan"], "--time-limit"),
    "matrix --sim-seeds 1e9": (["matrix", "--seeds", "0", "--bugs", "none", "--sim-seeds",
                                "1000000000"], "sim_seeds"),
    "matrix of a million tasks": (["matrix", "--seeds", "0", "--bugs", "none",
                                   "--sim-seeds", "1000000", "--sim-batch", "1"], "tasks"),
}


@pytest.fixture(scope="module")
def flag_outcomes(tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    tmp = tmp_path_factory.mktemp("flags")
    jobs = {}
    for i, (name, (args, _w)) in enumerate(FLAG_CASES.items()):
        results = tmp / f"r{i}"
        jobs[name] = [*args, "--nodes", "3", "--results", str(results)]
    got = _many(jobs)
    return {name: (got[name], Path(jobs[name][-1])) for name in jobs}


@pytest.mark.stress
@pytest.mark.parametrize("name", list(FLAG_CASES))
def test_a_flag_that_is_not_a_finite_number_in_range_is_one_line(flag_outcomes,
                                                                  name: str) -> None:
    p, results = flag_outcomes[name]
    _one_line(p, FLAG_CASES[name][1])
    assert _rows(results) == [] and _rows(results, "matrices") == []


@pytest.mark.parametrize("args,flag", [
    (["lin", "--timeout", "nan", "x.edn"], "--timeout"),
    (["lin", "--max-memory", "inf", "x.edn"], "--max-memory"),
    (["report", "latest", "--from", "nan"], "--from"),
    (["report", "latest", "--to", "inf"], "--to"),
    (["bench", "cluster", "--seconds", "nan"], "--seconds"),
], ids=["lin-timeout", "lin-max-memory", "report-from", "report-to", "bench-seconds"])
def test_every_other_float_flag_is_finite_too(args: list[str], flag: str) -> None:
    """Every number, not only a run's: `lin --timeout nan` once searched without end."""
    _one_line(_cli(args), flag, "not a finite number")


def test_a_stored_config_read_back_is_checked_too(tmp_path: Path) -> None:
    """`run --replay` of a config.json, and of a run in the database, whose numbers are
    not finite: one line each, nothing run."""
    results = tmp_path / "r"
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps({"nodes": 3, "time_limit": float("inf"), "seed": 4}))
    store.check_writable(str(results))
    db = store.open_db(str(results), create=True)
    with db.conn:
        db.conn.execute("insert into runs (id, started, seed, config, status, verdict) "
                        "values (?,?,?,?,?,?)",
                        ["20260101T000000-s4", "2026-01-01T00:00:00", 4,
                         json.dumps({"nodes": 3, "time_limit": 5.0, "rate": float("nan"),
                                     "seed": 4}), "done", "valid"])
    db.conn.close()
    got = _many({"file": ["run", "--replay", str(cfg_file), "--results", str(results)],
                 "row": ["run", "--replay", "20260101T000000-s4", "--results", str(results)]})
    _one_line(got["file"], "--time-limit", "inf")
    _one_line(got["row"], "--rate", "nan")
    assert [r[0] for r in _rows(results)] == ["20260101T000000-s4"]


def test_a_matrix_task_shipped_to_a_worker_is_checked(tmp_path: Path) -> None:
    """A Dask task's payload (a task and its matrix's base config) with a number that is
    not finite is a RunError on the worker before anything is started."""
    task = Task("run", "fixed", "swarm", seed=1)
    for bad in ({"time_limit": float("nan")}, {"rate": float("inf")},
                {"cutover_at": float("nan")}, {"nodes": 1e9}):
        base = {**base_config(nodes=3, time_limit=3), **bad}
        with pytest.raises(RunError):
            task.config(base, str(tmp_path / "r"))
        with pytest.raises(RunError):
            run_task(task.to_dict(), base, str(tmp_path / "scratch"))
    assert os.listdir(tmp_path / "scratch") == []  # no run was started there


# ------------------------------------------------------------------ damaged matrices


def _fake_matrix(results: Path) -> None:
    """Two recorded matrices of real-run tasks (the fixed build and a switch, one seed
    each, every task done with its run) and one of a simulated batch."""
    store.check_writable(str(results))
    db = store.open_db(str(results), create=True)
    for mid, started in (("mx-1", "2026-01-01T02:00:00"), ("mx-2", "2026-01-02T02:00:00")):
        spec = MatrixSpec(builds=["fixed", "no-barrier"], seeds=1,
                          base=base_config(nodes=3, time_limit=5))
        db.conn.execute("insert into matrices (id, revision, config, started) "
                        "values (?,?,?,?)", [mid, "aaa", json.dumps(spec.to_dict()), started])
        for t in spec.tasks():
            rid = f"{mid}-{t.build}"
            db.conn.execute("insert into runs (id, started, seed, bugs, status, verdict, "
                            "summary, matrix) values (?,?,?,?,?,?,?,?)",
                            [rid, started, t.seed, "", "done", "valid", "VALID", mid])
            store.record_task(db, {"matrix": mid, **task_row(t, "done", [rid], {})})
    spec = MatrixSpec(builds=["fixed"], seeds=0, sim_seeds=2, sim_batch=2,
                      base=base_config(nodes=3, time_limit=5))
    db.conn.execute("insert into matrices (id, revision, config, started) values (?,?,?,?)",
                    ["mx-s", "aaa", json.dumps(spec.to_dict()), "2026-01-03T02:00:00"])
    seed = {"seed": 1, "verdict": "valid", "failing": None, "sentence": "", "t_ns": None,
            "coverage": [], "error": None, "run": None}
    for t in spec.tasks():
        store.record_task(db, {"matrix": "mx-s", **task_row(
            t, "done", [], {"seeds": [seed, {**seed, "seed": 2}]})})
    db.conn.commit()
    db.conn.close()


# name -> (the damage, the matrix it is in); each must be one line for both commands.
DAMAGE = {
    "config not JSON": ("update matrices set config = '{not json' where id = 'mx-2'", "mx-2"),
    "config NULL": ("update matrices set config = NULL where id = 'mx-2'", "mx-2"),
    "builds a number": ("update matrices set config = json_set(config, '$.builds', 5) "
                        "where id = 'mx-2'", "mx-2"),
    "modes null": ("update matrices set config = json_set(config, '$.modes', json('null')) "
                   "where id = 'mx-2'", "mx-2"),
    "seeds as text": ("update matrices set config = json_set(config, '$.seeds', 'x') "
                      "where id = 'mx-2'", "mx-2"),
    "sim_seeds 1e9": ("update matrices set config = json_set(config, '$.sim_seeds', "
                      "json('1e9')) where id = 'mx-s'", "mx-s"),
    "first_seed 1e300": ("update matrices set config = json_set(config, '$.first_seed', "
                         "1e300) where id = 'mx-2'", "mx-2"),
    "base a list": ("update matrices set config = json_set(config, '$.base', json('[]')) "
                    "where id = 'mx-2'", "mx-2"),
    "matrix id NULL": ("update matrices set id = NULL where id = 'mx-s'", "latest"),
    "task runs not JSON": ("update matrix_tasks set runs = '[oops' where matrix = 'mx-2'",
                           "mx-2"),
    "task runs a number": ("update matrix_tasks set runs = '5' where matrix = 'mx-2'", "mx-2"),
    "task status NULL": ("update matrix_tasks set status = NULL where matrix = 'mx-2'",
                         "mx-2"),
    "sim seeds numbers": ("update matrix_tasks set detail = '{\"seeds\": [5]}' "
                          "where matrix = 'mx-s'", "mx-s"),
    "sim seed as text": ("update matrix_tasks set detail = json_set(detail, "
                         "'$.seeds[0].seed', 'x') where matrix = 'mx-s'", "mx-s"),
    "sim coverage a number": ("update matrix_tasks set detail = json_set(detail, "
                              "'$.seeds[0].coverage', 5) where matrix = 'mx-s'", "mx-s"),
    "sim verdict a list": ("update matrix_tasks set detail = json_set(detail, "
                           "'$.seeds[0].verdict', json('[1]')) where matrix = 'mx-s'", "mx-s"),
}


@pytest.fixture(scope="module")
def damage_outcomes(tmp_path_factory: pytest.TempPathFactory
                    ) -> dict[tuple[str, str], tuple[subprocess.CompletedProcess, Path]]:
    tmp = tmp_path_factory.mktemp("damage")
    pristine = tmp / "pristine"
    _fake_matrix(pristine)
    jobs: dict[str, list[str]] = {}
    where = {}
    for i, (name, (sql, mid)) in enumerate(DAMAGE.items()):
        results = tmp / f"r{i}"
        shutil.copytree(pristine, results)
        with sqlite3.connect(results / "cutover.db") as c:
            c.execute(sql)
        for cmd, argv in (("trend", ["trend"]), ("resume", ["matrix", "--resume", mid])):
            jobs[f"{name}|{cmd}"] = [*argv, "--results", str(results)]
            where[f"{name}|{cmd}"] = results
    got = _many(jobs)
    return {tuple(k.split("|")): (got[k], where[k]) for k in jobs}  # type: ignore[misc]


@pytest.mark.stress
@pytest.mark.parametrize("command", ["trend", "resume"])
@pytest.mark.parametrize("name", list(DAMAGE))
def test_a_damaged_matrix_row_is_one_line_and_exit_3(damage_outcomes, name: str,
                                                     command: str) -> None:
    p, results = damage_outcomes[(name, command)]
    line = _one_line(p)
    assert "matri" in line and ("damaged" in line or "not JSON" in line), line
    assert len(_rows(results)) == 4  # nothing was run
    if command == "resume":
        assert not [d for d in os.listdir(results) if os.path.isdir(results / d)]


def test_serve_answers_trend_on_a_matrix_of_a_billion_seeds(tmp_path: Path) -> None:
    """`/trend` answered nothing (it was building tens of millions of tasks); now a page
    that says which matrix is damaged, at once. (`cutover serve` in a process of its
    own, its memory capped.)"""
    _fake_matrix(tmp_path)
    with sqlite3.connect(tmp_path / "cutover.db") as c:
        c.execute(DAMAGE["sim_seeds 1e9"][0])
    server = subprocess.Popen([*CLI, "serve", "--results", str(tmp_path), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              cwd=REPO, preexec_fn=_capped)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split(" at ")[1].split()[0].rstrip("/")
        t0 = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "/trend", timeout=30)
        body = e.value.read().decode()
        assert e.value.code == 500 and time.monotonic() - t0 < 10
        assert "matrix mx-s" in body and "sim_seeds" in body, body[-2000:]
    finally:
        server.terminate()
        server.wait(10)


# ------------------------------------------------------------------ a full disk


@contextlib.contextmanager
def _small_disk(root: Path) -> Iterator[tuple[Path, Any]]:
    """A 20 MB tmpfs at `root` when this process may mount one (yields it and None);
    else a plain directory and a preexec function that limits the size of every file
    the command writes (RLIMIT_FSIZE, SIGXFSZ ignored: a write past it fails with
    EFBIG), which is what a full disk looks like to the writer."""
    root.mkdir()
    try:
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(root)],
                           capture_output=True, text=True, timeout=30)
        mounted, why = p.returncode == 0, p.stderr.strip()
    except OSError as e:  # no `mount` here
        mounted, why = False, str(e)
    if not mounted:
        print(f"mount refused ({why}): simulating the full disk with RLIMIT_FSIZE")

        def limit() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1_100_000, 1_100_000))
        yield root, limit
        return
    try:
        yield root, None
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True)


def _fill(root: Path) -> None:
    """Write to `root` until the disk says it is full."""
    chunk = bytes(1 << 16)
    try:  # the run may have filled it already: then even the open says so
        with open(root / "filler", "wb") as fh:
            while True:
                fh.write(chunk)
                fh.flush()
    except OSError as e:
        assert e.errno == errno.ENOSPC, e


@pytest.mark.real
def test_a_results_disk_that_fills_up_during_a_run_is_a_harness_error(tmp_path: Path) -> None:
    with _small_disk(tmp_path / "disk") as (root, limit):
        results = root / "r"
        proc = subprocess.Popen([*CLI, "run", "--nodes", "3", "--time-limit", "4",
                                 "--rate", "1000", "--seed", "3", "--results", str(results)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=REPO, preexec_fn=limit)
        try:
            if limit is None:  # fill the disk once the run is under way
                deadline = time.monotonic() + 60
                ops = 0
                while ops < 50 and time.monotonic() < deadline and proc.poll() is None:
                    time.sleep(0.1)
                    with contextlib.suppress(sqlite3.Error):
                        with sqlite3.connect(results / "cutover.db", timeout=1) as c:
                            ops = c.execute("select count(*) from ops").fetchone()[0]
                assert ops >= 50, "the run never got under way"
                _fill(root)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(root / "filler")
        assert "Traceback" not in err, err[-3000:]
        assert proc.returncode == 3, (proc.returncode, out[-1000:], err[-1000:])
        last = out.strip().splitlines()[-1]
        assert last.startswith("ERROR: the results disk is full"), last
        rows = _rows(results)
        assert len(rows) == 1
        with sqlite3.connect(results / "cutover.db") as c:
            status, verdict, config = c.execute(
                "select status, verdict, config from runs").fetchone()
        assert (status, verdict) == ("error", "error") and json.loads(config)["seed"] == 3


def _text(b: bytes | str | None) -> str:
    """What a killed command had written (bytes, even with text=True)."""
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def test_a_damaged_run_row_of_a_matrix_is_shown_not_a_traceback(tmp_path: Path) -> None:
    """A run row with a duration that is not a number (or a verdict that is not text)
    made `trend` a traceback; the matrix is shown, that run as unknown."""
    _fake_matrix(tmp_path)
    with sqlite3.connect(tmp_path / "cutover.db") as c:
        c.execute("update runs set duration_s = 'x', verdict = 5")
    p = _cli(["trend", "--results", str(tmp_path)])
    assert "Traceback" not in p.stdout + p.stderr, p.stderr[-2000:]
    assert p.returncode == 0, (p.returncode, p.stderr[-1000:])
