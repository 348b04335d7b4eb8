"""The schema, its migrations, and opening the database safely (read-only for readers,
with a lock-patient writer).
"""
from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

from orchestrator.store import owner

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
    start time, `orchestrator.store.owner`); returns their ids. A database that cannot be
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
