"""Writing a run while it goes: the batching writer thread (`Recorder`) and a checker's
verdicts replaced only when every checker ran (`replace_checks`).
"""
from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from orchestrator.store.schema import StoreError, _j, db_path, open_db


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
