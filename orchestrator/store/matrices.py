"""Matrices: their rows, their tasks, and the lock that keeps two coordinators off one
matrix.
"""
from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

import sqlite_utils

from orchestrator.store.schema import StoreError, _j

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
