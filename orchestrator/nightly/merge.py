"""Merging a task's shipped runs into the results directory and its database.

A worker ran the task in a scratch directory and sent back each run's rows and its
run directory (`orchestrator.nightly.tasks.ShippedRun`). The coordinator stores them so that a
reader never sees half a run, and nothing is stored twice:

* **atomic**: the run directory is unpacked into a temporary directory inside the
  results directory, then every row of the task's runs and the task's own
  `matrix_tasks` row are written in one SQLite transaction, and the directories are
  renamed into place just before it commits (a failure undoes both);
* **idempotent**: a task already recorded as done stores nothing, and neither does a
  run whose id is already stored as the same run (same start, seed, build and
  summary: `store.FINGERPRINT`); the merge says so. A *different* run that happens to
  have a stored run's id (two workers started the same seed in the same second) is
  stored under a fresh id (`<id>-2`, ...), never over it.

A run id is claimed by creating its directory (`os.mkdir`, atomic), as `cutover run`
claims its own, so a merge never takes the id of a run another process is starting.

What a worker ships is checked before anything is claimed or unpacked
(`_check_shipped`), and a task that fails a check stores nothing (the engine records
it as a harness error): each run id is a plain name (no NUL, no `/`, not hidden), no
two runs of a task share one, their rows name this database's tables and columns, and
each archive holds regular files and directories only, every one named inside the run
directory. Links are refused outright rather than judged by where they point: a run
directory never holds one, and a chain of symlinks longer than PATH_MAX gets past the
tar `data` filter of the Pythons this runs on (CVE-2025-4517).
"""
from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator import store
from orchestrator.nightly.tasks import ShippedRun


class MergeError(RuntimeError):
    """A shipped run could not be stored (the reason is for the user)."""


@dataclass
class Merged:
    """What a merge did: `stored` maps each shipped run id to the id it is stored under;
    `skipped` maps the ids of runs that were stored before to theirs; `task_recorded` is
    False when the task was already done (then nothing at all was stored)."""

    stored: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    task_recorded: bool = True
    ms: float = 0.0

    def notes(self) -> list[str]:
        out = [f"run {a} stored as {b} (its id was taken by another run)"
               for a, b in self.stored.items() if a != b]
        out += [f"run {a} is stored already (as {b}): not stored again"
                for a, b in self.skipped.items()]
        if not self.task_recorded:
            out.append("task already done in this matrix: nothing stored")
        return out


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _col(rows: store.RunRows, table: str, name: str) -> int:
    return rows[table][0].index(name)


def _fingerprint(rows: store.RunRows) -> tuple[Any, ...]:
    cols, data = rows["runs"]
    r = dict(zip(cols, data[0], strict=True))
    return tuple(r.get(c) for c in store.FINGERPRINT)


def _claim(db: Any, results: str, run: ShippedRun) -> tuple[str, str | None]:
    """(id to store the run under, its claimed directory), or (its id, None) when this
    very run is stored already."""
    want = _fingerprint(run.rows)
    rid, k = run.run_id, 1
    while True:
        have = store.run_fingerprint(db, rid)
        if have is not None and have == want:
            return rid, None
        if have is None:
            path = os.path.join(results, rid)
            try:
                os.mkdir(path)
                return rid, path
            except FileExistsError:
                pass
        k += 1
        rid = f"{run.run_id}-{k}"


def _renamed(rows: store.RunRows, new: str, matrix: str | None,
             results: str) -> store.RunRows:
    """The rows under run id `new`, in `matrix`, with the config saying where they live
    now (the worker's scratch directory means nothing here)."""
    out: store.RunRows = {}
    for t, (cols, data) in rows.items():
        key = "id" if t == "runs" else "run"
        i = cols.index(key)
        fixed = []
        for r in data:
            lst = list(r)
            lst[i] = new
            if t == "runs":
                if "run_dir" in cols:
                    lst[cols.index("run_dir")] = new
                if "matrix" in cols:
                    lst[cols.index("matrix")] = matrix
                if "config" in cols:
                    lst[cols.index("config")] = _with_results(lst[cols.index("config")],
                                                              results)
            fixed.append(tuple(lst))
        out[t] = (cols, fixed)
    if "matrix" not in rows["runs"][0] and matrix is not None:
        raise MergeError("the shipped run has no matrix column (a worker of an older cutover)")
    return out


def _with_results(config: str | None, results: str) -> str | None:
    if not config:
        return config
    try:
        d = json.loads(config)
    except ValueError:
        return config
    if isinstance(d, dict) and "results" in d:
        d["results"] = results
        return json.dumps(d, separators=(",", ":"), default=str)
    return config


_KINDS = {tarfile.SYMTYPE: "symbolic link", tarfile.LNKTYPE: "hard link",
          tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device",
          tarfile.FIFOTYPE: "named pipe"}


def _safe_members(tar: tarfile.TarFile, run_id: str) -> list[tarfile.TarInfo]:
    """Every member of a shipped run directory, checked before any is extracted: a
    regular file or a directory, named inside the directory it is unpacked into (with
    no link among them, the name alone says where it lands). Anything else is a
    MergeError for the whole archive: a run directory holds nothing else."""
    out = []
    for m in tar.getmembers():
        name = m.name
        if not (m.isreg() or m.isdir()):
            raise MergeError(f"run {run_id}: its archive holds {name[:80]!r}, a "
                             f"{_KINDS.get(m.type, 'special file')}; a run directory holds "
                             f"regular files and directories only: nothing was stored")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if name.startswith("/") or ".." in parts or "\0" in name \
                or (m.isreg() and not parts):
            raise MergeError(f"run {run_id}: its archive holds {name[:80]!r}, a path "
                             f"outside the run directory: nothing was stored")
        out.append(m)
    return out


def _inside(dest: str, members: list[tarfile.TarInfo], run_id: str) -> None:
    """Each member's resolved path stays inside `dest` (the run directory itself only
    for a directory: `tar.add(run_dir, arcname=".")` ships it as `.`)."""
    root = os.path.realpath(dest)
    for m in members:
        real = os.path.realpath(os.path.join(root, m.name))
        if not (real.startswith(root + os.sep) or (real == root and m.isdir())):
            raise MergeError(f"run {run_id}: its archive holds {m.name[:80]!r}, a path "
                             f"outside the run directory: nothing was stored")


def _check_archive(run: ShippedRun) -> None:
    """The archive of `run` is one `_unpack` accepts (read, not extracted)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(run.archive), mode="r:") as tar:
            _safe_members(tar, run.run_id)
    except (tarfile.TarError, OSError, ValueError, TypeError) as e:
        raise MergeError(f"cannot unpack run {run.run_id}: {e}") from None


# A run id is a directory name in the results: one path component, printable, and not
# hidden (the merge's temporary directories and the matrices' lock files are).
_PLAIN_ID = re.compile(r"[^/.][^/]{0,199}")


def _check_shipped(db: Any, runs: list[ShippedRun], task: Any) -> None:
    """Refuse (MergeError, nothing stored) a task whose shipped runs cannot be stored as
    they are: a run id that is not a plain name (a NUL byte, a `/`, `..`), two runs
    with one id (the task's row would name one of them twice), rows of a table or
    column this database lacks (their names go into SQL), other than one `runs` row,
    or an archive `_unpack` would refuse."""
    ids: set[str] = set()
    have = {t: set(db[t].columns_dict) for t in store.run_tables(db)}
    for run in runs:
        rid = run.run_id
        if not isinstance(rid, str) or not rid.isprintable() \
                or _PLAIN_ID.fullmatch(rid) is None:
            raise MergeError(f"task {task}: a shipped run id {str(rid)[:80]!r} is not a plain "
                             f"name (a harness error): nothing was stored")
        if rid in ids:
            raise MergeError(f"task {task}: two shipped runs have the id {rid} (a harness "
                             f"error): nothing was stored")
        ids.add(rid)
        try:
            for t, (cols, _data) in run.rows.items():
                key = "id" if t == "runs" else "run"
                if t not in have or key not in cols or not set(cols) <= have[t]:
                    raise MergeError(f"run {rid}: its rows are of a table or column this "
                                     f"database does not have ({str(t)[:40]!r}): nothing "
                                     f"was stored")
            if len(run.rows["runs"][1]) != 1:
                raise MergeError(f"run {rid}: its rows hold {len(run.rows['runs'][1])} runs "
                                 f"rows, not one: nothing was stored")
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            raise MergeError(f"run {rid}: its rows are malformed ({type(e).__name__}): "
                             f"nothing was stored") from None
        _check_archive(run)


def _unpack(run: ShippedRun, results: str, rid: str) -> str:
    """The run directory in a temporary directory inside `results` (same file system:
    the final step is a rename). Every member is checked before the first is
    extracted (`_safe_members`, `_inside`); the `data` filter stays on as well."""
    tmp = tempfile.mkdtemp(prefix=f".merge-{rid}-", dir=results)
    try:
        with tarfile.open(fileobj=io.BytesIO(run.archive), mode="r:") as tar:
            members = _safe_members(tar, run.run_id)
            _inside(tmp, members, run.run_id)
            tar.extractall(tmp, members=members, filter="data")
        cfg = os.path.join(tmp, "config.json")
        if os.path.isfile(cfg):
            with open(cfg, encoding="utf-8") as fh:
                doc = json.load(fh)
            if isinstance(doc, dict) and "results" in doc:
                doc["results"] = results
                with open(cfg, "w", encoding="utf-8") as fh:
                    json.dump(doc, fh, indent=2, default=str)
        os.chmod(tmp, 0o755)
    except MergeError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except (OSError, tarfile.TarError, ValueError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise MergeError(f"cannot unpack run {run.run_id}: {e}") from None
    return tmp


# What `merge_task(extra=)` calls inside its transaction, after the runs' rows and before
# the task's row: (database, shipped run id -> stored id, stored id -> the run directory
# as unpacked, not yet renamed into place) -> keys to add to the task row's detail.
Extra = Callable[[Any, Mapping[str, str], Mapping[str, str]], Mapping[str, Any] | None]


def merge_task(results: str, runs: Iterable[ShippedRun], task_row: Mapping[str, Any],
               matrix: str | None, *, extra: Extra | None = None) -> Merged:
    """Store a task's shipped runs and its `matrix_tasks` row (`task_row`, whose `runs`
    are the shipped ids: rewritten to the stored ones) as one transaction. `extra`
    stores what else the task shipped (a hunt's record) in the same transaction."""
    t0 = time.perf_counter()
    runs = list(runs)
    out = Merged()
    claimed: list[tuple[ShippedRun, str, str]] = []  # (run, id, claimed dir)
    tmps: dict[str, str] = {}
    moved: list[tuple[str, str]] = []
    db = store.open_db(results, create=True)
    try:
        _check_shipped(db, runs, task_row.get("task"))
        if matrix is not None and store.task_done(db, matrix, task_row["task"]):
            out.task_recorded = False
            return out
        for run in runs:
            rid, path = _claim(db, results, run)
            if path is None:
                out.skipped[run.run_id] = rid
                continue
            claimed.append((run, rid, path))
            out.stored[run.run_id] = rid
        for run, rid, _path in claimed:
            tmps[rid] = _unpack(run, results, rid)
        with store.write_transaction(db):
            if matrix is not None and store.task_done(db, matrix, task_row["task"]):
                out.task_recorded = False
                out.stored.clear()
                raise _AlreadyDone
            for run, rid, path in list(claimed):
                # Under the write lock: the same run stored meanwhile, under any id
                # (another coordinator merging the same result), is not stored again.
                have = store.find_run(db, _fingerprint(run.rows))
                if have is not None:
                    claimed.remove((run, rid, path))
                    _release([(run, rid, path)], [])
                    del out.stored[run.run_id]
                    out.skipped[run.run_id] = have
                    continue
                store.insert_run_rows(db, _renamed(run.rows, rid, matrix, results))
            if extra is not None:
                more = extra(db, {**out.skipped, **out.stored},
                             {rid: tmps[rid] for _run, rid, _path in claimed})
                if more:
                    task_row = {**task_row, "detail": {**(task_row.get("detail") or {}),
                                                       **more}}
            if matrix is not None:
                store.record_task(db, {"matrix": matrix, **_remapped(task_row, out)})
            # Last: the directories appear only with their rows, just before the commit.
            for _run, rid, path in claimed:
                os.rename(tmps[rid], path)  # replaces the empty directory that claimed it
                moved.append((rid, path))
    except _AlreadyDone:
        pass
    except BaseException as e:
        for _rid, path in moved:
            shutil.rmtree(path, ignore_errors=True)
        _release(claimed, moved)
        if isinstance(e, OSError | store.StoreError | sqlite3.Error):
            raise MergeError(f"cannot store the runs of task {task_row.get('task')}: {e}") from e
        raise
    finally:
        for p in tmps.values():
            shutil.rmtree(p, ignore_errors=True)
        db.conn.close()
    if not out.task_recorded:
        _release(claimed, moved)
    out.ms = (time.perf_counter() - t0) * 1000
    return out


def _remapped(task_row: Mapping[str, Any], m: Merged) -> dict[str, Any]:
    """The task's row naming its runs by the ids they are stored under (a run stored
    before keeps the id it has)."""
    ids = {**m.skipped, **m.stored}
    row = dict(task_row)
    row["runs"] = [ids.get(r, r) for r in row.get("runs") or []]
    detail = dict(row.get("detail") or {})
    if isinstance(detail.get("seeds"), list):
        detail["seeds"] = [{**d, "run": ids.get(d.get("run"), d.get("run"))}
                           if isinstance(d, dict) else d for d in detail["seeds"]]
    row["detail"] = detail
    row.setdefault("finished", _now())
    return row


class _AlreadyDone(Exception):
    """The task was recorded by someone else between the first check and the lock."""


def _release(claimed: list[tuple[ShippedRun, str, str]], moved: list[tuple[str, str]]) -> None:
    """Give back the ids claimed but not filled (their empty directories)."""
    done = {p for _r, p in moved}
    for _run, _rid, path in claimed:
        if path not in done:
            try:
                os.rmdir(path)
            except OSError:
                pass
