"""The results database (`results/cutover.db`): one SQLite file, many runs.

This module owns the schema and every SQL statement: everything that reads or writes
runs goes through it (a new column or query is a change here, and only here).
Tables (times are nanoseconds since the run's start, on the machine's monotonic clock,
which node event logs share):

* `runs`        one row per run: id, started/finished (UTC ISO), seed, config JSON,
                status (running | done | aborted | error), verdict, exit code, summary,
                source (NULL for a real run, `sim` for one of `cutover sim`).
* `ops`         the client history: invoke, then ok / fail / info, per process.
* `nemesis`     every fault as a start and a stop entry of process `nemesis`.
* `node_events` the nodes' own event logs, ingested at the end.
* `log_entries` the cutover checker's scan of every durable log entry.
* `checks`      one verdict per checker, with its detail JSON.
* `coverage`    the protocol states a run reached (`checker/coverage.py`): point, count,
                first time.
* `matrices`    one row per `cutover matrix`: id, the project's git revision (when there is
                one), its config JSON, started, finished (NULL while it runs or after it
                was interrupted: `--resume` finishes it). `runs.matrix` names a run's matrix.
* `matrix_tasks` one row per finished task of a matrix (a run, or a `cutover sim` batch):
                status done | error, the run ids it stored, a detail JSON (a sim batch's
                per-seed verdicts, a harness error's reason). `--resume` runs what has no
                `done` row; a task is recorded once.
* `sim_batches` one row per `cutover sim` batch or `cutover hunt` search: its seed counts
                and coverage (point -> seeds that reached it, over every seed), and the
                reached points of each seed that is not stored as a run (the passing and
                vacuous ones), so `cutover coverage` counts what `sim`/`hunt` printed.
* `hunts`       one row per `cutover hunt`: config, status, exit code, summary, detail
                (timings, coverage in both worlds, the rare-coverage runs).
* `hunt_findings` one row per finding of a hunt (a failure kind): the simulated run, the
                shrunk plan file, its signature, confirmed k of K on real processes, and
                the fidelity gap (what differed) when real processes passed it.
* `hunt_runs`   the real runs a hunt made: which finding they confirm (or none: a
                rare-coverage seed), their verdict and failure kind, and how they compare
                with the simulation (`detail`). No `run` column on purpose: these rows
                belong to the hunt, not to a run shipped between databases.

A run is recorded while it goes: a writer thread batches rows and commits every
`flush_every` seconds in WAL mode, so a crash of the orchestrator keeps what was recorded
up to the last commit, and readers (`cutover list`) never block the writer.

Readers open the database read-only (`opened`): an archived results directory that
nobody may write (a nightly's, kept read-only) is read where it lies, and a reader can
never change what it shows. SQLite's WAL mode wants to create `cutover.db-wal` and
`-shm` beside the file; where the directory forbids that, a database whose write-ahead
log is empty or gone is read as immutable (all of it is in the main file then).
"""
from __future__ import annotations

import atexit
import datetime as dt
import fcntl
import hashlib
import json
import os
import queue
import random
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import sqlite_utils

from . import owner

SCHEMA_VERSION = 3
DB_NAME = "cutover.db"
APP = "cutover"


class StoreError(RuntimeError):
    """A results database or directory that cannot be used; the message says why."""


class NoSuchRun(StoreError):
    """No run has that id or prefix."""


class AmbiguousRun(StoreError):
    """More than one run starts with that prefix."""


class UnsafeRunDir(StoreError):
    """A run's `run_dir` (from the database) leads outside the results directory."""


def db_path(results: str) -> str:
    return os.path.join(results, DB_NAME)


def _j(v: Any) -> str | None:
    return None if v is None else json.dumps(v, separators=(",", ":"), default=str)


# Every table of a fresh database, created together in one transaction. Opening never
# creates a table an existing database lacks: there, a missing table is damage (a
# dropped `ops` would turn a run's history into an empty one), so it is an error. A
# table added in a later version comes with a SCHEMA_VERSION bump and a migration step
# for older databases, never with "create it if it is missing".
TABLES: dict[str, str] = {
    "meta": "CREATE TABLE [meta] ([key] TEXT PRIMARY KEY, [value] TEXT)",
    "matrices": """CREATE TABLE [matrices] ([id] TEXT PRIMARY KEY, [revision] TEXT,
        [config] TEXT, [started] TEXT, [finished] TEXT)""",
    "runs": """CREATE TABLE [runs] ([id] TEXT PRIMARY KEY, [started] TEXT, [finished] TEXT,
        [duration_s] FLOAT, [t0_ns] INTEGER, [seed] INTEGER, [workload] TEXT,
        [nemesis] TEXT, [bugs] TEXT, [config] TEXT, [status] TEXT, [verdict] TEXT,
        [exit_code] INTEGER, [summary] TEXT, [run_dir] TEXT, [source] TEXT,
        [matrix] TEXT REFERENCES [matrices]([id]))""",
    "matrix_tasks": """CREATE TABLE [matrix_tasks] ([matrix] TEXT REFERENCES [matrices]([id]),
        [task] TEXT, [kind] TEXT, [build] TEXT, [seed] INTEGER, [status] TEXT, [runs] TEXT,
        [detail] TEXT, [worker] TEXT, [seconds] FLOAT, [finished] TEXT,
        PRIMARY KEY ([matrix], [task]))""",
    "ops": """CREATE TABLE [ops] ([run] TEXT, [idx] INTEGER, [time_ns] INTEGER,
        [process] TEXT, [type] TEXT, [f] TEXT, [key] TEXT, [value] TEXT, [error] TEXT,
        [node] TEXT, PRIMARY KEY ([run], [idx]))""",
    "nemesis": """CREATE TABLE [nemesis] ([run] TEXT, [idx] INTEGER, [time_ns] INTEGER,
        [f] TEXT, [fault] TEXT, [targets] TEXT, [detail] TEXT, PRIMARY KEY ([run], [idx]))""",
    "node_events": """CREATE TABLE [node_events] ([run] TEXT, [node] TEXT, [seq] INTEGER,
        [time_ns] INTEGER, [kind] TEXT, [detail] TEXT, PRIMARY KEY ([run], [node], [seq]))""",
    "log_entries": """CREATE TABLE [log_entries] ([run] TEXT, [node] TEXT, [idx] INTEGER,
        [term] INTEGER, [opcode] INTEGER, [wrapped] INTEGER, [key_id] INTEGER,
        PRIMARY KEY ([run], [node], [idx], [term]))""",
    "checks": """CREATE TABLE [checks] ([run] TEXT, [checker] TEXT, [valid] TEXT,
        [detail] TEXT, PRIMARY KEY ([run], [checker]))""",
    "coverage": """CREATE TABLE [coverage] ([run] TEXT, [point] TEXT, [count] INTEGER,
        [first_time_ns] INTEGER, PRIMARY KEY ([run], [point]))""",
    "sim_batches": """CREATE TABLE [sim_batches] ([id] TEXT PRIMARY KEY, [kind] TEXT,
        [started] TEXT, [config] TEXT, [seeds] INTEGER, [passed] INTEGER,
        [vacuous] INTEGER, [failed] INTEGER, [coverage] TEXT, [unstored] TEXT)""",
    "hunts": """CREATE TABLE [hunts] ([id] TEXT PRIMARY KEY, [started] TEXT,
        [finished] TEXT, [config] TEXT, [status] TEXT, [exit_code] INTEGER,
        [summary] TEXT, [detail] TEXT)""",
    "hunt_findings": """CREATE TABLE [hunt_findings] ([hunt] TEXT REFERENCES [hunts]([id]),
        [finding] INTEGER, [kind] TEXT, [signature] TEXT, [sentence] TEXT, [seed] INTEGER,
        [sim_run] TEXT, [plan_file] TEXT, [confirmed] INTEGER, [attempts] INTEGER,
        [gap] TEXT, [detail] TEXT, PRIMARY KEY ([hunt], [finding]))""",
    "hunt_runs": """CREATE TABLE [hunt_runs] ([hunt] TEXT REFERENCES [hunts]([id]),
        [real_run] TEXT, [finding] INTEGER, [role] TEXT, [seed] INTEGER, [verdict] TEXT,
        [kind] TEXT, [outcome] TEXT, [seconds] FLOAT, [detail] TEXT,
        PRIMARY KEY ([hunt], [real_run]))""",
}
# What version 2 added to version 1 (coverage, simulated runs, recorded matrices): the
# migration creates these tables and columns where an older database lacks them.
V2_TABLES = ("matrices", "matrix_tasks", "coverage")
V2_RUN_COLUMNS = {"source": "TEXT", "matrix": "TEXT REFERENCES matrices(id)"}
# What version 3 added (`cutover hunt`'s record, the coverage of simulated batches).
V3_TABLES = ("sim_batches", "hunts", "hunt_findings", "hunt_runs")
# The tables each version added, for the migration of older databases.
ADDED_IN = {2: V2_TABLES, 3: V3_TABLES}


def _table_names(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}


def _create_if_fresh(conn: sqlite3.Connection) -> None:
    """The schema, in a database that has no table at all; one exclusive transaction, so
    N processes creating the same fresh database at once all see it whole (or empty,
    then create it): never half a schema, never "table already exists"."""
    if _table_names(conn):
        return
    # Persistent: readers never block the writer. Switching needs the file to itself,
    # and SQLite answers "locked" at once (no busy wait) while another creator holds it.
    _while_locked(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchall())

    def create() -> None:
        conn.execute("BEGIN EXCLUSIVE")
        try:
            if not _table_names(conn):
                for sql in TABLES.values():
                    conn.execute(sql)
                conn.executemany("insert into meta (key, value) values (?, ?)",
                                 [("app", APP), ("schema_version", str(SCHEMA_VERSION))])
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    _while_locked(create)


def _while_locked(step: Any, patience: float = 30.0) -> Any:
    """`step()`, tried again while another process holds the database (bounded)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return step()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02 + 0.05 * random.random())


def _check_schema(conn: sqlite3.Connection, path: str, readonly: bool = False) -> None:
    """Ours, of a version this build reads, with every table: else a StoreError. A
    read-only `conn` (a reader's) migrates an older schema through a writable
    connection of its own, as the readers did before they opened read-only."""
    tables = _table_names(conn)
    if "meta" not in tables:
        raise StoreError(f"{path} is not a cutover results database (no meta table)")
    meta = dict(conn.execute("select key, value from meta").fetchall())
    if meta.get("app") != APP:
        raise StoreError(f"{path} is not a cutover results database")
    version = meta.get("schema_version")
    if isinstance(version, str) and version.isdigit() and len(version) < 10:
        version = int(version)
    if not isinstance(version, int) or isinstance(version, bool):
        raise StoreError(f"{path} is damaged: its schema_version is {str(version)[:40]!r}, "
                         f"not a number")
    if version > SCHEMA_VERSION:
        raise StoreError(f"{path} has schema {version}; this cutover reads up to "
                         f"{SCHEMA_VERSION}")
    if version < SCHEMA_VERSION:
        later = _added_after(version)
        missing = [t for t in TABLES if t not in tables and t not in later]
        if missing:
            raise StoreError(f"{path} is damaged: it has no {', '.join(missing)} table "
                             f"(nothing was changed; restore it from a copy)")
        if not readonly:
            _migrate(conn, path, version)
        else:
            try:
                w = sqlite3.connect(path, timeout=30)
                try:
                    _migrate(w, path, version)
                finally:
                    w.close()
            except (StoreError, sqlite3.Error):
                if version < 2:
                    raise
                # A version-2 database nobody may write here (an archived nightly): it
                # is read as it is. What version 3 added (hunts, the coverage of
                # simulated batches) is absent, and its readers read that as none.
        tables = _table_names(conn)
        meta = dict(conn.execute("select key, value from meta").fetchall())
        version = int(meta["schema_version"]) if str(meta.get("schema_version")).isdigit() \
            else version
    later = _added_after(version)
    missing = [t for t in TABLES if t not in tables and t not in later]
    if missing:
        raise StoreError(f"{path} is damaged: it has no {', '.join(missing)} table "
                         f"(nothing was changed; restore it from a copy)")


def _added_after(version: int) -> set[str]:
    """The tables the versions after `version` added."""
    return {t for v, ts in ADDED_IN.items() if v > version for t in ts}


def _migrate(conn: sqlite3.Connection, path: str, version: int) -> None:
    """From `version` to SCHEMA_VERSION, in one exclusive transaction (concurrent
    openers: one migrates, the others find it done): each later version's tables, and
    version 2's columns of `runs`. Only what a version added is created, never a table
    the database should have had (that is damage, reported by `_check_schema`)."""
    def step() -> None:
        conn.execute("BEGIN EXCLUSIVE")
        try:
            meta = dict(conn.execute("select key, value from meta").fetchall())
            now = str(meta.get("schema_version"))
            if now.isdigit() and int(now) < SCHEMA_VERSION:
                tables = _table_names(conn)
                for t in sorted(_added_after(int(now)), key=list(TABLES).index):
                    if t not in tables:
                        conn.execute(TABLES[t])
                if int(now) < 2:
                    cols = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
                    for col, decl in V2_RUN_COLUMNS.items():
                        if col not in cols:
                            conn.execute(f"ALTER TABLE runs ADD COLUMN {col} {decl}")
                conn.execute("update meta set value = ? where key = 'schema_version'",
                             [str(SCHEMA_VERSION)])
            conn.commit()
        except BaseException:
            conn.rollback()
            raise

    try:
        _while_locked(step)
    except sqlite3.OperationalError as e:
        raise StoreError(f"{path} has schema {version} and cannot be upgraded here ({e}); "
                         f"open it once where it is writable") from None


def _read_only_error(e: sqlite3.Error) -> bool:
    """SQLite's "attempt to write a readonly database", in any of its forms (a
    read-only file, directory, connection or mount)."""
    return (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF == sqlite3.SQLITE_READONLY


def _connect_readonly(path: str) -> sqlite3.Connection:
    """`path` opened read-only (`mode=ro`): nothing a reader does can change it. In WAL
    mode even a read-only connection needs `-wal` and `-shm` files beside the database;
    where they cannot be created (a read-only directory), the database is opened as
    immutable, which ignores the write-ahead log: only when that log is missing or
    empty, so that every committed row is in the main file. A log with rows in it that
    cannot be read here is a StoreError, never a database shown without them."""
    uri = Path(os.path.abspath(path)).as_uri()
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30, check_same_thread=False)
    try:
        conn.execute("select count(*) from sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as e:
        conn.close()
        code = (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF
        if code not in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN):
            raise
        wal = f"{path}-wal"
        try:
            pending = os.stat(wal).st_size > 0
        except FileNotFoundError:
            pending = False
        if pending:
            raise StoreError(
                f"{path} cannot be read here: its write-ahead log {os.path.basename(wal)} "
                f"holds rows not yet in the database, and reading them needs a writable "
                f"directory ({e}); copy the results dir somewhere writable") from None
    return sqlite3.connect(f"{uri}?immutable=1", uri=True, check_same_thread=False)


def open_db(results: str, *, create: bool = False,
            readonly: bool = False) -> sqlite_utils.Database:
    """The results database of `results`, checked to be ours (StoreError otherwise).

    `create` makes the directory and, in a fresh database, the schema (writers);
    readers get a clear error for a missing, foreign, damaged or corrupt database
    instead of an empty one. `readonly` (what `opened` gives readers) opens it so that
    nothing can be written through it, and works in a directory nobody may write (see
    `_connect_readonly`). Runs whose orchestrator died are marked `crashed` (through a
    connection of its own, where the database can be written).
    """
    if create and readonly:
        raise ValueError("open_db: create and readonly exclude each other")
    path = db_path(results)
    if not create and not os.path.exists(path):
        raise StoreError(f"no results database at {path} (run `cutover run` first, "
                         f"or pass --results DIR)")
    if create:
        try:
            os.makedirs(results, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create results dir {results}: {e.strerror}") from None
        if not os.access(results, os.W_OK | os.X_OK):
            raise StoreError(f"results dir {results} is not writable")
    elif not os.path.isfile(path):
        raise StoreError(f"{path} is not a file")
    conn = None
    try:
        if readonly:
            conn = _connect_readonly(path)
        else:
            conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
        if create:
            _create_if_fresh(conn)
        _check_schema(conn, path, readonly)
        db = sqlite_utils.Database(conn)
        mark_crashed(db, results)
        return db
    except sqlite3.DatabaseError as e:
        if conn is not None:
            conn.close()
        if not readonly and _read_only_error(e):
            raise StoreError(f"{path} cannot be written here ({e}): this command stores "
                             f"results; run it where the results dir is writable") from None
        raise StoreError(f"{path} is not a readable SQLite database ({e})") from None
    except StoreError:
        if conn is not None:
            conn.close()
        raise


def mark_crashed(db: sqlite_utils.Database, results: str) -> list[str]:
    """Mark `crashed` every run still `running` whose orchestrator is gone (its pid and
    start time, `orchestrator.owner`); returns their ids. A database that cannot be
    written now (read-only, busy) keeps them as they are: the next command tries again.
    A reader's connection is read-only: the update then goes through a short-lived
    writable one, so `cutover list` still marks them wherever the directory allows."""
    gone = []
    for rid, rdir in db.conn.execute("select id, run_dir from runs where status = 'running'"):
        try:
            rd = run_dir_of(results, {"id": rid, "run_dir": rdir})
        except StoreError:
            continue
        who = owner.read(rd)
        if who is not None and owner.is_gone(who):
            gone.append((rid, who))
    done: list[str] = []
    conn, spare = db.conn, None

    def mark(c: sqlite3.Connection, rid: str, summary: str) -> None:
        with c:
            c.execute("update runs set status = 'crashed', verdict = 'crashed', "
                      "summary = ? where id = ? and status = 'running'", [summary, rid])

    try:
        for rid, who in gone:
            summary = (f"CRASHED: its orchestrator (pid {who.get('pid')}) died before the "
                       f"run finished; the history up to then is stored (run {rid})")
            try:
                try:
                    mark(conn, rid, summary)
                except sqlite3.OperationalError as e:
                    if spare is not None or not _read_only_error(e):
                        raise
                    conn = spare = sqlite3.connect(db_path(results), timeout=5)
                    mark(conn, rid, summary)
                done.append(rid)
            except sqlite3.OperationalError:
                break
    finally:
        if spare is not None:
            spare.close()
    return done


@contextmanager
def opened(results: str) -> Iterator[sqlite_utils.Database]:
    """The results database for reading, closed afterwards. Every way it can be
    unusable is a `StoreError`, including a corrupt page that only surfaces in some
    later query (SQLite reads pages lazily). Opened read-only: readers work on a
    results dir nobody may write, and cannot change what they read."""
    db = open_db(results, readonly=True)
    try:
        yield db
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{db_path(results)} cannot be read ({e})") from None
    finally:
        db.conn.close()


def run_dir_of(results: str, row: Mapping[str, Any]) -> str:
    """Where a run's files are (`RESULTS/<run-id>/` unless its row says otherwise),
    confined to the results directory: a `run_dir` edited to `../../etc` (or a symlink
    leading out) is a StoreError, never a directory served or read."""
    rel = row.get("run_dir") or row["id"]
    if not isinstance(rel, str) or "\0" in rel:
        raise UnsafeRunDir(f"run {row['id']}: its run_dir {str(rel)[:80]!r} is not a path")
    path = os.path.join(results, rel)
    root = os.path.realpath(results)
    real = os.path.realpath(path)
    if real == root or not real.startswith(root + os.sep):
        raise UnsafeRunDir(f"run {row['id']}: its run_dir {rel[:80]!r} is outside the "
                           f"results directory")
    return path


def run_config(row: Mapping[str, Any]) -> dict[str, Any]:
    """A run's stored config (`runs.config`); {} when missing or not a JSON object."""
    try:
        cfg = json.loads(row.get("config") or "{}")
    except ValueError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def check_writable(results: str) -> None:
    """Fail before a run starts rather than after a minute of work."""
    open_db(results, create=True).conn.close()
    probe = os.path.join(results, f".probe-{os.getpid()}")
    try:
        with open(probe, "w") as fh:
            fh.write("x")
        os.unlink(probe)
    except OSError as e:
        raise StoreError(f"results dir {results} is not writable: {e.strerror}") from None


class RowSink(Protocol):
    """Where checkers' rows go: a `Recorder` (a run, as it goes) or a `Pending` (a
    re-check, stored all at once or not at all)."""

    def rows(self, table: str, rows: Iterable[dict[str, Any]]) -> None: ...

    def flush(self, timeout: float = 30.0) -> None: ...


class Pending:
    """Rows held back: `cutover check` stores them only once every checker has run on
    complete inputs (`replace_checks`), in one transaction."""

    def __init__(self) -> None:
        self.tables: dict[str, list[dict[str, Any]]] = {}

    def rows(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        self.tables.setdefault(table, []).extend(rows)

    def flush(self, timeout: float = 30.0) -> None:
        """Nothing to do: held until `replace_checks`."""


def replace_checks(results: str, run_id: str, pending: Pending,
                   run_fields: Mapping[str, Any]) -> None:
    """A re-check's outcome, in one transaction: the run's `checks` and `log_entries`
    replaced by `pending`'s (rows of checkers that no longer exist go too), and its
    `runs` row updated with `run_fields`. Either all of it is stored or none."""
    allowed = {"checks": ("checker", "valid", "detail"),
               "log_entries": ("node", "idx", "term", "opcode", "wrapped", "key_id")}
    db = open_db(results)
    try:
        with db.conn:
            for table, cols in allowed.items():
                db.conn.execute(f"delete from {table} where run = ?", [run_id])
                rows = pending.tables.get(table, [])
                db.conn.executemany(
                    f"insert or replace into {table} (run, {', '.join(cols)}) "
                    f"values (?{', ?' * len(cols)})",
                    [[run_id, *(r.get(c) for c in cols)] for r in rows])
            sets = [k for k in run_fields if k in _RUN_FIELDS]
            db.conn.execute(f"update runs set {', '.join(f'{k} = ?' for k in sets)} "
                            f"where id = ?", [*(run_fields[k] for k in sets), run_id])
    except sqlite3.DatabaseError as e:
        raise StoreError(f"{db_path(results)}: storing the verdicts failed ({e}); "
                         f"nothing was changed") from None
    finally:
        db.conn.close()


_RUN_FIELDS = ("verdict", "exit_code", "summary", "status", "finished", "duration_s")


class Recorder:
    """Records one run while it goes: thread-safe `op()` / `fault()` calls, one writer
    thread that commits a batch every `flush_every` seconds (WAL mode)."""

    def __init__(self, results: str, run_id: str, t0_ns: int, *,
                 flush_every: float = 0.2) -> None:
        self.results = results
        self.run_id = run_id
        self.t0_ns = t0_ns
        self.flush_every = flush_every
        self._q: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._op_idx = 0
        self._nem_idx = 0
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._db = open_db(results, create=True)
        self._thread = threading.Thread(target=self._writer, name="recorder", daemon=True)
        self._thread.start()

    # -- producers (any thread) -----------------------------------------------------

    def rel(self, t_ns: int) -> int:
        return t_ns - self.t0_ns

    def op(self, t_ns: int, process: str | int, type_: str, f: str, key: str | None,
           value: Any, error: str | None = None, node: str | None = None) -> None:
        with self._lock:
            idx = self._op_idx
            self._op_idx += 1
            self._q.put(("ops", {"run": self.run_id, "idx": idx, "time_ns": self.rel(t_ns),
                                 "process": str(process), "type": type_, "f": f,
                                 "key": key, "value": _j(value), "error": error,
                                 "node": node}))

    def fault(self, t_ns: int, f: str, fault: str, targets: Any = None,
              detail: Any = None) -> None:
        with self._lock:
            idx = self._nem_idx
            self._nem_idx += 1
            self._q.put(("nemesis", {"run": self.run_id, "idx": idx,
                                     "time_ns": self.rel(t_ns), "f": f, "fault": fault,
                                     "targets": _j(targets), "detail": _j(detail)}))

    def run_row(self, **fields: Any) -> None:
        """Insert or update this run's row (`config` may be a dict)."""
        if "config" in fields and not isinstance(fields["config"], str):
            fields["config"] = _j(fields["config"])
        self._q.put(("runs", {"id": self.run_id, **fields}))

    def rows(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        for r in rows:
            self._q.put((table, {"run": self.run_id, **r}))

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything queued so far is committed."""
        done = threading.Event()
        self._q.put(("__flush__", done))
        if not done.wait(timeout):
            raise StoreError("the results writer did not catch up")
        if self._error is not None:
            raise StoreError(f"writing results failed: {self._error}")

    def close(self) -> None:
        self._q.put(("__stop__", None))
        self._thread.join(30)
        self._db.conn.close()

    # -- the writer thread ----------------------------------------------------------

    def _writer(self) -> None:
        stop = False
        while not stop:
            batch: dict[str, list[dict[str, Any]]] = {}
            waiters: list[threading.Event] = []
            deadline = time.monotonic() + self.flush_every
            while True:
                try:
                    kind, item = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if kind == "__flush__":
                    waiters.append(item)
                    break
                if kind == "__stop__":
                    stop = True
                    break
                batch.setdefault(kind, []).append(item)
            try:
                self._commit(batch)
            except Exception as e:  # noqa: BLE001 - reported by flush()
                self._error = e
            for w in waiters:
                w.set()

    def _commit(self, batch: dict[str, list[dict[str, Any]]]) -> None:
        if not batch:
            return
        with self._db.conn:
            for table, rows in batch.items():
                if table == "runs":
                    for r in rows:
                        self._db["runs"].upsert(r, pk="id", alter=False)
                elif table == "checks":
                    self._db["checks"].upsert_all(rows, pk=("run", "checker"))
                else:
                    self._db[table].insert_all(rows, replace=True)


# ------------------------------------------------------------------------ reading


def runs(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """All runs, newest first."""
    return list(db.query("select * from runs order by started desc, id desc"))


def resolve_run(db: sqlite_utils.Database, ref: str) -> dict[str, Any]:
    """`latest`, a full run id, or a unique prefix of one."""
    if ref == "latest":
        rows = runs(db)
        if not rows:
            raise NoSuchRun("there are no runs in this results database yet")
        return rows[0]
    rows = list(db.query("select * from runs where id = ?", [ref]))
    if not rows:
        rows = list(db.query("select * from runs where id like ? escape '\\'",
                             [ref.replace("%", r"\%").replace("_", r"\_") + "%"]))
    if not rows:
        raise NoSuchRun(f"no run {ref!r} in this results database (see `cutover list`)")
    if len(rows) > 1:
        raise AmbiguousRun(f"run id prefix {ref!r} is ambiguous: "
                           f"{', '.join(r['id'] for r in rows[:5])}")
    return rows[0]


def iter_ops(db: sqlite_utils.Database, run_id: str) -> Iterator[dict[str, Any]]:
    for r in db.query("select * from ops where run = ? order by idx", [run_id]):
        r["value"] = None if r["value"] is None else json.loads(r["value"])
        yield r


def nemesis_rows(db: sqlite_utils.Database, run_id: str) -> list[dict[str, Any]]:
    out = []
    for r in db.query("select * from nemesis where run = ? order by idx", [run_id]):
        r["targets"] = None if r["targets"] is None else json.loads(r["targets"])
        r["detail"] = None if r["detail"] is None else json.loads(r["detail"])
        out.append(r)
    return out


def checks(db: sqlite_utils.Database, run_id: str) -> dict[str, dict[str, Any]]:
    out = {}
    for r in db.query("select * from checks where run = ?", [run_id]):
        out[r["checker"]] = {"valid": r["valid"],
                             "detail": None if r["detail"] is None else json.loads(r["detail"])}
    return out


def coverage_of(db: sqlite_utils.Database, run_id: str) -> dict[str, dict[str, Any]]:
    """The coverage points a run reached ({} for a database from before coverage)."""
    if "coverage" not in db.table_names():
        return {}
    return {r["point"]: {"count": r["count"], "first_ns": r["first_time_ns"]}
            for r in db.query("select * from coverage where run = ? order by point", [run_id])}


def coverage_by_run(db: sqlite_utils.Database) -> dict[str, set[str]]:
    """Every finished run's reached points (runs without any are included, empty), and
    every simulated seed that was not stored as a run (a passing or vacuous seed of a
    `cutover sim` batch, a `cutover hunt` search or a matrix's sim task), keyed
    `BATCH/seed N`: a passing seed went where it went too, and `cutover coverage` must
    agree with what `sim` and `hunt` printed (issue 23)."""
    out: dict[str, set[str]] = {r["id"]: set() for r in db.query(
        "select id from runs where status in ('done', 'error') order by id")}
    tables = set(db.table_names())
    if "coverage" in tables:
        for r in db.query("select run, point from coverage"):
            if r["run"] in out:
                out[r["run"]].add(r["point"])
    if "sim_batches" in tables:
        for r in db.query("select id, unstored from sim_batches order by started, id"):
            for seed, points in _seed_points(r["unstored"]):
                out[f"{r['id']}/seed {seed}"] = points
    if "matrix_tasks" in tables:
        for r in db.query("select matrix, task, detail from matrix_tasks "
                          "where kind = 'sim' and status = 'done' order by matrix, task"):
            try:
                seeds = (json.loads(r["detail"] or "{}") or {}).get("seeds") or []
            except (ValueError, AttributeError):
                continue
            for d in seeds if isinstance(seeds, list) else []:
                if isinstance(d, dict) and not d.get("run") and d.get("verdict") != "error" \
                        and isinstance(d.get("coverage"), list):
                    out[f"{r['matrix']}/{r['task']}/seed {d.get('seed')}"] = {
                        str(p) for p in d["coverage"]}
    return out


def _seed_points(doc: Any) -> list[tuple[Any, set[str]]]:
    """`sim_batches.unstored` decoded: [(seed, points)]; [] when damaged."""
    try:
        v = json.loads(doc) if isinstance(doc, str) else doc
    except ValueError:
        return []
    if not isinstance(v, dict):
        return []
    return [(k, {str(p) for p in ps}) for k, ps in v.items() if isinstance(ps, list)]


def coverage_rows(cov: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"point": p, "count": int(v["count"]), "first_time_ns": v.get("first_ns")}
            for p, v in sorted(cov.items())]


def completion_counts(db: sqlite_utils.Database, run_id: str) -> dict[str, int]:
    """Completions of the run's clients by type (ok / fail / info): what the `stats`
    checker counts, as one query."""
    return dict(db.conn.execute(
        "select type, count(*) from ops where run = ? and process != 'nemesis' "
        "and type != 'invoke' group by type", [run_id]).fetchall())


def fault_windows(rows: list[dict[str, Any]]) -> list[tuple[int, int | None, str, Any]]:
    """(start_ns, stop_ns or None, fault, targets) for every start/stop pair."""
    open_: dict[tuple[str, str], list[dict[str, Any]]] = {}
    out: list[tuple[int, int | None, str, Any]] = []
    for r in rows:
        k = (r["fault"], json.dumps(r["targets"], sort_keys=True))
        if r["f"] == "start":
            open_.setdefault(k, []).append(r)
        elif r["f"] == "stop" and open_.get(k):
            s = open_[k].pop(0)
            out.append((s["time_ns"], r["time_ns"], r["fault"], s["targets"]))
        elif r["f"] == "event":
            out.append((r["time_ns"], r["time_ns"], r["fault"], r["targets"]))
    for lst in open_.values():
        for s in lst:
            out.append((s["time_ns"], None, s["fault"], s["targets"]))
    return sorted(out, key=lambda w: w[0])


def history_tuples(db: sqlite_utils.Database, run_id: str) -> list[tuple[Any, ...]]:
    """The history as plain tuples (process, type, f, key, value JSON, time_ns, node,
    error): a report of a 100,000-op run reads 200,000 rows, and dicts plus JSON
    decoding of every value would be most of its time."""
    return db.conn.execute("select process, type, f, key, value, time_ns, node, error "
                           "from ops where run = ? order by idx", [run_id]).fetchall()


def node_events(db: sqlite_utils.Database, run_id: str,
                kinds: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The nodes' events in time order, `detail` decoded ({} when unreadable);
    `kinds` keeps only those kinds."""
    q = "select node, seq, time_ns, kind, detail from node_events where run = ?"
    args: list[Any] = [run_id]
    if kinds is not None:
        ks = [str(k) for k in kinds]
        q += f" and kind in ({','.join('?' * len(ks))})"
        args += ks
    out = []
    for r in db.query(q + " order by time_ns, node, seq", args):
        try:
            r["detail"] = json.loads(r["detail"]) if r["detail"] else {}
        except ValueError:
            r["detail"] = {}
        out.append(r)
    return out


def log_nodes(db: sqlite_utils.Database, run_id: str) -> set[str]:
    """The nodes the cutover checker scanned a log of."""
    return {r["node"] for r in db.query("select distinct node from log_entries where run = ?",
                                        [run_id])}


def log_counts_above(db: sqlite_utils.Database, run_id: str, node: str,
                     c: int) -> dict[str, int] | None:
    """Entries of `node`'s log above index `c`: wrapped, cleartext and no-op, or None
    when it has none. A no-op (a new leader's empty entry) has no payload, hence no
    opcode, and is never wrapped: it is not cleartext."""
    r = next(iter(db.query(
        "select count(*) n, coalesce(sum(wrapped), 0) w, "
        "coalesce(sum(case when wrapped = 0 and opcode is null then 1 else 0 end), 0) noop "
        "from log_entries where run = ? and node = ? and idx > ?", [run_id, node, c])), None)
    if not r or not r["n"]:
        return None
    return {"wrapped": r["w"], "cleartext": r["n"] - r["w"] - r["noop"], "noop": r["noop"]}


def log_wrapped_above(db: sqlite_utils.Database, run_id: str,
                      c: int) -> dict[tuple[str, int, int], int]:
    """{(node, index, term): wrapped} for every scanned entry above index `c`."""
    return {(r["node"], r["idx"], r["term"]): r["wrapped"] for r in db.query(
        "select node, idx, term, wrapped from log_entries where run = ? and idx > ?",
        [run_id, c])}


def log_entries_between(db: sqlite_utils.Database, run_id: str, node: str, lo: int, hi: int,
                        limit: int = 60) -> list[dict[str, Any]]:
    """`node`'s scanned entries with lo <= index <= hi, in log order."""
    return list(db.query("select node, idx, term, opcode, wrapped, key_id from log_entries "
                         "where run = ? and node = ? and idx between ? and ? "
                         "order by idx, term limit ?", [run_id, node, lo, hi, limit]))


# ------------------------------------------------------------------------ matrices


def create_matrix(db: sqlite_utils.Database, base_id: str, revision: str | None,
                  config: Mapping[str, Any], started: str) -> str:
    """A new `matrices` row; its id is `base_id`, or `base_id-K` when two matrices start
    in the same second (the primary key decides, so two coordinators never share one)."""
    mid, k = base_id, 1
    while True:
        try:
            with db.conn:
                db.conn.execute("insert into matrices (id, revision, config, started) "
                                "values (?, ?, ?, ?)", [mid, revision, _j(config), started])
            return mid
        except sqlite3.IntegrityError:
            k += 1
            mid = f"{base_id}-{k}"


def finish_matrix(db: sqlite_utils.Database, matrix_id: str, finished: str) -> None:
    with db.conn:
        db.conn.execute("update matrices set finished = ? where id = ?", [finished, matrix_id])


def _matrix_row(r: dict[str, Any]) -> dict[str, Any]:
    try:
        cfg = json.loads(r.get("config") or "{}")
    except ValueError:
        cfg = {}
    return {**r, "config": cfg if isinstance(cfg, dict) else {}}


def matrices(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Every recorded matrix, oldest first, `config` decoded ([] for a database from
    before matrices were recorded)."""
    if "matrices" not in db.table_names():
        return []
    return [_matrix_row(r) for r in db.query("select * from matrices order by started, id")]


def resolve_matrix(db: sqlite_utils.Database, ref: str) -> dict[str, Any]:
    """`latest`, a full matrix id, or a unique prefix of one."""
    rows = matrices(db)
    if not rows:
        raise StoreError("there are no matrices in this results database")
    if ref == "latest":
        return rows[-1]
    hits = [r for r in rows if r["id"] == ref] or [r for r in rows if r["id"].startswith(ref)]
    if not hits:
        raise StoreError(f"no matrix {ref!r} in this results database (see `cutover trend`)")
    if len(hits) > 1:
        raise StoreError(f"matrix id prefix {ref!r} is ambiguous: "
                         f"{', '.join(r['id'] for r in hits[:5])}")
    return hits[0]


def matrix_tasks(db: sqlite_utils.Database, matrix_id: str) -> dict[str, dict[str, Any]]:
    """The finished tasks of a matrix by task key, `runs` and `detail` decoded."""
    if "matrix_tasks" not in db.table_names():
        return {}
    out = {}
    for r in db.query("select * from matrix_tasks where matrix = ?", [matrix_id]):
        r["runs"] = json.loads(r["runs"]) if r["runs"] else []
        r["detail"] = json.loads(r["detail"]) if r["detail"] else {}
        out[r["task"]] = r
    return out


def runs_by_id(db: sqlite_utils.Database, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    ids = list(ids)
    out: dict[str, dict[str, Any]] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        for r in db.query(f"select * from runs where id in ({','.join('?' * len(chunk))})",
                          chunk):
            out[r["id"]] = r
    return out


def record_task(db: sqlite_utils.Database, row: Mapping[str, Any]) -> bool:
    """Record a finished task (`row` holds the `matrix_tasks` columns; `runs` and `detail`
    may be a list and a dict). A task already `done` is never overwritten: False then.
    Call it inside a transaction to make it one with the task's runs."""
    r = {**row, "runs": _j(list(row.get("runs") or [])), "detail": _j(row.get("detail") or {})}
    cols = ["matrix", "task", "kind", "build", "seed", "status", "runs", "detail", "worker",
            "seconds", "finished"]
    cur = db.conn.execute(
        f"insert into matrix_tasks ({', '.join(cols)}) values ({', '.join('?' * len(cols))}) "
        f"on conflict (matrix, task) do update set "
        f"{', '.join(f'{c} = excluded.{c}' for c in cols[2:])} "
        f"where matrix_tasks.status != 'done'", [r.get(c) for c in cols])
    return cur.rowcount > 0


class MatrixBusy(StoreError):
    """Another process holds the matrix's lock: it is running the matrix now."""


class MatrixLock:
    """An exclusive `flock` on a matrix's lock file in the results directory, taken by
    the process that runs the matrix's pending tasks (`lock_matrix`). Without it, two
    `cutover matrix --resume` of one matrix at once each run every pending task. The
    kernel drops it when the process ends, however it ends; `release` (or the end of
    the process) also removes the file."""

    def __init__(self, path: str, fd: int, matrix_id: str) -> None:
        self.path = path
        self.fd = fd
        self.matrix_id = matrix_id
        self.pid = os.getpid()

    def release(self) -> None:
        """Remove the lock file (while still holding it, so that nobody locks a file
        about to vanish: a taker checks it locked the file the path names) and unlock.
        Only in the process that took it: a forked child exiting must not drop it."""
        if self.fd < 0 or os.getpid() != self.pid:
            return
        _HELD.pop(os.path.realpath(self.path), None)
        try:
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1


_HELD: dict[str, MatrixLock] = {}  # the lock files this process holds, by real path


@atexit.register
def _release_held() -> None:
    for lock in list(_HELD.values()):
        lock.release()


def matrix_lock_path(results: str, matrix_id: str) -> str:
    """`RESULTS/.matrix-<id>.lock`; an id that is not a plain name (from a damaged
    database) is hashed, so the file stays in the results directory."""
    name = matrix_id if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,120}", matrix_id) \
        else hashlib.sha256(matrix_id.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return os.path.join(results, f".matrix-{name}.lock")


def lock_matrix(results: str, matrix_id: str) -> MatrixLock:
    """Take `matrix_id`'s lock for this process, at once or not at all: `MatrixBusy`
    (one line for the user) when another process holds it, a StoreError when the
    results directory cannot hold a lock file (read-only: resuming writes there
    anyway). Held until `release()` or the end of the process; taking it again in the
    same process returns the lock already held."""
    path = matrix_lock_path(results, matrix_id)
    held = _HELD.get(os.path.realpath(path))
    if held is not None:
        return held
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise StoreError(f"cannot lock matrix {matrix_id}: {path}: {e.strerror} (the "
                             f"results dir must be writable to run a matrix)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:  # what the holder wrote ("pid N"), kept to one printable line
                who = (os.pread(fd, 200, 0).decode("utf-8", "replace").splitlines()
                       or [""])[0].strip()[:60]
            except OSError:
                who = ""
            who = who if who.isprintable() else ""
            os.close(fd)
            raise MatrixBusy(f"matrix {matrix_id} is being run by another process"
                             f"{f' ({who})' if who else ''}; wait for it to finish or stop "
                             f"it, then resume") from None
        except OSError as e:
            os.close(fd)
            raise StoreError(f"cannot lock matrix {matrix_id}: {path}: {e.strerror}") from None
        try:  # the file we locked may have been removed by its last holder meanwhile
            st, mine = os.stat(path, follow_symlinks=False), os.fstat(fd)
            same = (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
        except OSError:
            same = False
        if not same:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        lock = MatrixLock(path, fd, matrix_id)
        _HELD[os.path.realpath(path)] = lock
        return lock


def task_done(db: sqlite_utils.Database, matrix_id: str, task: str) -> bool:
    return db.conn.execute("select 1 from matrix_tasks where matrix = ? and task = ? and "
                           "status = 'done'", [matrix_id, task]).fetchone() is not None


def tag_run(db: sqlite_utils.Database, run_id: str, matrix_id: str) -> None:
    """Say which matrix a run (stored by `cutover run`'s own writer) belongs to."""
    db.conn.execute("update runs set matrix = ? where id = ?", [matrix_id, run_id])


# Rows of one run, table by table: (column names, rows as tuples). What a Dask worker
# ships back from its scratch database, and what the coordinator inserts.
RunRows = dict[str, tuple[list[str], list[tuple[Any, ...]]]]


def run_tables(db: sqlite_utils.Database) -> list[str]:
    """The tables that hold a run's rows: `runs` and every table with a `run` column
    (so a table added later travels with the run without a change here)."""
    return ["runs"] + sorted(t for t in db.table_names()
                             if t != "runs" and "run" in db[t].columns_dict)


def run_rows(db: sqlite_utils.Database, run_id: str) -> RunRows:
    out: RunRows = {}
    for t in run_tables(db):
        cur = db.conn.execute(f"select * from [{t}] where {'id' if t == 'runs' else 'run'} = ?",
                              [run_id])
        out[t] = ([d[0] for d in cur.description], [tuple(r) for r in cur.fetchall()])
    return out


# What makes two stored runs the same run: a run id can come back twice (a result
# merged again), and two different runs can share one (two workers starting the same
# seed in the same second); these columns tell the cases apart.
FINGERPRINT = ("started", "t0_ns", "seed", "bugs", "summary")


def run_fingerprint(db: sqlite_utils.Database, run_id: str) -> tuple[Any, ...] | None:
    """FINGERPRINT of the stored run `run_id`, or None when there is no such run."""
    r = db.conn.execute(f"select {', '.join(FINGERPRINT)} from runs where id = ?",
                        [run_id]).fetchone()
    return None if r is None else tuple(r)


def find_run(db: sqlite_utils.Database, fingerprint: tuple[Any, ...]) -> str | None:
    """The id of a stored run with this FINGERPRINT, whatever its id, or None."""
    r = db.conn.execute(f"select id from runs where "
                        f"{' and '.join(f'{c} is ?' for c in FINGERPRINT)} limit 1",
                        list(fingerprint)).fetchone()
    return None if r is None else r[0]


@contextmanager
def write_transaction(db: sqlite_utils.Database) -> Iterator[None]:
    """One transaction that holds SQLite's write lock from its first statement (BEGIN
    IMMEDIATE): what it checks stays true until it commits."""
    conn = db.conn
    if conn.in_transaction:
        conn.commit()
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def insert_run_rows(db: sqlite_utils.Database, rows: RunRows) -> None:
    """Insert one run's rows as they are (no replace: a clash is an error, never an
    overwrite); call it inside `write_transaction`."""
    for t, (cols, data) in rows.items():
        if not data:
            continue
        sql = (f"insert into [{t}] ({', '.join(f'[{c}]' for c in cols)}) "
               f"values ({', '.join('?' * len(cols))})")
        db.conn.executemany(sql, data)


# ------------------------------------------------------- simulated batches and hunts


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _new_id(db: sqlite_utils.Database, table: str, base_id: str, row: dict[str, Any]) -> str:
    """Insert `row` under `base_id`, or `base_id-K` when that id is taken (two hunts or
    batches started in the same second); the primary key decides."""
    rid, k = base_id, 1
    while True:
        try:
            with db.conn:
                cols = ["id", *row]
                db.conn.execute(f"insert into [{table}] ({', '.join(cols)}) values "
                                f"({', '.join('?' * len(cols))})", [rid, *row.values()])
            return rid
        except sqlite3.IntegrityError:
            k += 1
            rid = f"{base_id}-{k}"


def record_sim_batch(db: sqlite_utils.Database, base_id: str, kind: str,
                     config: Mapping[str, Any], counts: Mapping[str, int],
                     coverage: Mapping[str, int], unstored: Mapping[int, Iterable[str]]
                     ) -> str:
    """One simulated batch's coverage (`kind`: sim | hunt): `coverage` counts the seeds
    that reached each point over every seed; `unstored` holds the points of each seed
    that was not stored as a run (a stored one has its own coverage rows)."""
    return _new_id(db, "sim_batches", base_id, {
        "kind": kind, "started": _now(), "config": _j(config),
        "seeds": int(counts.get("seeds", 0)), "passed": int(counts.get("passed", 0)),
        "vacuous": int(counts.get("vacuous", 0)), "failed": int(counts.get("failed", 0)),
        "coverage": _j(dict(coverage)),
        "unstored": _j({str(s): sorted(ps) for s, ps in unstored.items()})})


def create_hunt(db: sqlite_utils.Database, base_id: str, config: Mapping[str, Any]) -> str:
    """A new `hunts` row, status `running`; returns its id."""
    return _new_id(db, "hunts", base_id, {"started": _now(), "config": _j(config),
                                          "status": "running"})


def finish_hunt(db: sqlite_utils.Database, hunt_id: str, *, status: str, exit_code: int,
                summary: str, detail: Mapping[str, Any]) -> None:
    with db.conn:
        db.conn.execute("update hunts set finished = ?, status = ?, exit_code = ?, "
                        "summary = ?, detail = ? where id = ?",
                        [_now(), status, exit_code, summary, _j(detail), hunt_id])


def put_finding(db: sqlite_utils.Database, hunt_id: str, finding: int,
                **fields: Any) -> None:
    """Insert or update finding `finding` of a hunt (JSON fields are encoded here)."""
    row = {k: (_j(v) if k in ("gap", "detail") else v) for k, v in fields.items()}
    with db.conn:
        db["hunt_findings"].upsert({"hunt": hunt_id, "finding": finding, **row},
                                   pk=("hunt", "finding"), alter=False)


def add_hunt_run(db: sqlite_utils.Database, hunt_id: str, real_run: str, **fields: Any) -> None:
    """A real run a hunt made: a confirmation of a finding, or a rare-coverage run."""
    row = {k: (_j(v) if k == "detail" else v) for k, v in fields.items()}
    with db.conn:
        db["hunt_runs"].upsert({"hunt": hunt_id, "real_run": real_run, **row},
                               pk=("hunt", "real_run"), alter=False)


def _decoded(r: dict[str, Any], *names: str) -> dict[str, Any]:
    for n in names:
        try:
            v = json.loads(r[n]) if r.get(n) else None
        except ValueError:
            v = None
        r[n] = v
    return r


def hunts(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Every hunt, newest first, `config` and `detail` decoded ([] before version 3)."""
    if "hunts" not in db.table_names():
        return []
    return [_decoded(r, "config", "detail")
            for r in db.query("select * from hunts order by started desc, id desc")]


def hunt_findings(db: sqlite_utils.Database, hunt_id: str) -> list[dict[str, Any]]:
    if "hunt_findings" not in db.table_names():
        return []
    return [_decoded(r, "gap", "detail") for r in db.query(
        "select * from hunt_findings where hunt = ? order by finding", [hunt_id])]


def hunt_runs(db: sqlite_utils.Database, hunt_id: str) -> list[dict[str, Any]]:
    """The real runs of a hunt, in the order they ran."""
    if "hunt_runs" not in db.table_names():
        return []
    return [_decoded(r, "detail") for r in db.query(
        "select * from hunt_runs where hunt = ? order by rowid", [hunt_id])]


def hunt_links(db: sqlite_utils.Database, run_id: str) -> list[dict[str, Any]]:
    """How a run takes part in hunts: as a finding's simulated run, or as one of the real
    runs (a confirmation, a rare-coverage run). Each: {hunt, role, finding (its row, or
    None), runs (the finding's real runs)}."""
    if "hunt_findings" not in db.table_names():
        return []
    out: list[dict[str, Any]] = []
    for f in db.query("select * from hunt_findings where sim_run = ? order by hunt, finding",
                      [run_id]):
        f = _decoded(f, "gap", "detail")
        out.append({"hunt": f["hunt"], "role": "sim", "finding": f,
                    "runs": [r for r in hunt_runs(db, f["hunt"])
                             if r.get("finding") == f["finding"]]})
    for r in db.query("select * from hunt_runs where real_run = ? order by hunt", [run_id]):
        r = _decoded(r, "detail")
        f = None
        if r.get("finding") is not None:
            f = next(iter(_decoded(x, "gap", "detail") for x in db.query(
                "select * from hunt_findings where hunt = ? and finding = ?",
                [r["hunt"], r["finding"]])), None)
        out.append({"hunt": r["hunt"], "role": r.get("role") or "confirm", "finding": f,
                    "runs": [r], "run": r})
    return out


# ------------------------------------------------ a hunt shipped between databases
# A matrix's hunt task runs in a worker's scratch database; the coordinator copies the
# hunt's record into the results (`orchestrator.tasks.ShippedHunt`).

# The tables of a hunt's record and the column that names the hunt in each.
HUNT_TABLES = {"hunts": "id", "hunt_findings": "hunt", "hunt_runs": "hunt",
               "sim_batches": "id"}
# What makes two stored hunts the same hunt (a result merged again).
HUNT_FINGERPRINT = ("started", "finished", "summary")


def hunt_rows(db: sqlite_utils.Database, hunt_id: str) -> RunRows:
    """A hunt's record, table by table (as `run_rows`): its `hunts` row, its findings,
    its real runs, and the coverage row of its search (`sim_batches`, the hunt's id)."""
    out: RunRows = {}
    for t, key in HUNT_TABLES.items():
        cur = db.conn.execute(f"select * from [{t}] where [{key}] = ?", [hunt_id])
        out[t] = ([d[0] for d in cur.description], [tuple(r) for r in cur.fetchall()])
    return out


def hunt_fingerprint(db: sqlite_utils.Database, hunt_id: str) -> tuple[Any, ...] | None:
    """HUNT_FINGERPRINT of the stored hunt `hunt_id`, or None when there is none."""
    r = db.conn.execute(f"select {', '.join(HUNT_FINGERPRINT)} from hunts where id = ?",
                        [hunt_id]).fetchone()
    return None if r is None else tuple(r)


def free_id(db: sqlite_utils.Database, table: str, base_id: str) -> str:
    """`base_id`, or `base_id-K` (K = 2, 3, ...) when that `id` of `table` (a table of
    HUNT_TABLES keyed by `id`) is taken: what `_new_id` would give, without inserting."""
    assert HUNT_TABLES.get(table) == "id", table
    rid, k = base_id, 1
    while db.conn.execute(f"select 1 from [{table}] where id = ?", [rid]).fetchone():
        k += 1
        rid = f"{base_id}-{k}"
    return rid


def set_run_config(db: sqlite_utils.Database, run_id: str, config: Mapping[str, Any]) -> None:
    """Replace a stored run's config (a merged run whose plan file moved with it)."""
    db.conn.execute("update runs set config = ? where id = ?", [_j(dict(config)), run_id])
