"""`cutover matrix --engine dask`: the matrix's tasks on a Dask distributed cluster.

This process is the coordinator: it submits every task (`orchestrator.nightly.tasks.run_task`)
to a Dask scheduler, a local cluster of `--workers` processes or the one at
`--scheduler`, and merges each finished task into the results as it arrives
(`orchestrator.nightly.merge`: atomic per task, idempotent). Only the coordinator writes the
results directory and database; workers write their own scratch directories.

Faults, and what becomes of them:

* a worker that dies (killed, out of memory, its machine gone): the scheduler runs its
  task again on another worker (up to `distributed.scheduler.allowed-failures` times,
  then `KilledWorker`, recorded as a harness error); the dead attempt shipped nothing,
  so nothing of it is stored;
* a task that raises on a worker: recorded as a harness error of that task
  (`matrix_tasks.status = error`), never as a verdict; `--resume` runs it again;
* Ctrl-C or SIGTERM here: no new task is merged after the one in progress, the tasks
  already finished are merged, the rest are cancelled, and the local cluster (if any)
  is shut down, its workers and their nodes with it. The matrix stays unfinished.

Why worker processes, one thread each: a real run starts node processes (stdlib
`multiprocessing`, spawn) and needs a core; the workers must not be daemonic
processes, which may not have children (`distributed.worker.daemon: false`).
"""
from __future__ import annotations

import logging
import os
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dask
from distributed import Client, Future, LocalCluster, get_worker, wait
from distributed.client import FIRST_COMPLETED
from distributed.scheduler import KilledWorker

from orchestrator.nightly.matrix import (
    MatrixSpec,
    harness_error,
    recorded_outcomes,
    sim_outcomes,
    task_row,
)
from orchestrator.nightly.merge import MergeError, merge_task
from orchestrator.nightly.tasks import Task, TaskResult, run_task
from orchestrator.real.run import RunOutcome

WORKER_CONFIG = {"distributed.worker.daemon": False}


class DaskEngineError(RuntimeError):
    """The Dask cluster could not be started or reached (one line for the user)."""


@dataclass
class EngineStats:
    """Figures of one Dask matrix (printed at its end, for the nightly's log)."""

    tasks: int = 0
    merged_runs: int = 0
    errors: int = 0
    merge_ms: list[float] = field(default_factory=list)
    overhead_s: list[float] = field(default_factory=list)  # per task: all but the task itself
    # The overhead's parts, per task (s): waiting for a free worker to start it, the
    # worker's time outside the task (scratch dir, shipping), getting the result here.
    dispatch_s: list[float] = field(default_factory=list)
    worker_s: list[float] = field(default_factory=list)
    collect_s: list[float] = field(default_factory=list)
    exec_s: list[float] = field(default_factory=list)
    startup_s: float = 0.0
    wall_s: float = 0.0
    aborted: bool = False
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        def ms(xs: list[float], scale: float = 1.0) -> str:
            if not xs:
                return "-"
            return (f"median {statistics.median(xs) * scale:.0f} ms, max "
                    f"{max(xs) * scale:.0f} ms")

        run = f"{statistics.mean(self.exec_s):.1f} s" if self.exec_s else "-"
        return (f"dask: {self.tasks} tasks in {self.wall_s:.1f} s (cluster start "
                f"{self.startup_s:.1f} s), {self.merged_runs} runs merged, "
                f"{self.errors} harness errors; task mean {run}; merge {ms(self.merge_ms)}; "
                f"per-task overhead {ms(self.overhead_s, 1000)}")

    def parts(self) -> str:
        """The per-task overhead's parts (medians): where a task's time goes."""
        def med(xs: list[float], scale: float = 1000.0) -> str:
            return f"{statistics.median(xs) * scale:.0f}" if xs else "-"

        return (f"dask: overhead parts, median ms: dispatch {med(self.dispatch_s)}, on the "
                f"worker {med(self.worker_s)}, result transfer {med(self.collect_s)}, "
                f"merge {med(self.merge_ms, 1.0)}")


def _work(task_doc: Mapping[str, Any], base: Mapping[str, Any]) -> TaskResult:
    """What a Dask worker runs: the task in the worker's own scratch space."""
    try:
        w = get_worker()
        root, name = os.path.join(w.local_directory, "cutover"), str(w.address)
    except ValueError:  # not on a worker (a test calling it directly)
        root, name = tempfile.gettempdir(), ""
    return run_task(task_doc, base, root, worker=name)


def connect(scheduler: str | None, workers: int) -> tuple[Client, LocalCluster | None]:
    """A client of the cluster at `scheduler`, or of a new local one (`workers`
    processes, one thread each, allowed to start children)."""
    try:
        if scheduler:
            return Client(scheduler, timeout="30s"), None
        # Read by each nanny whenever it (re)starts its worker, so it must hold for as
        # long as the cluster lives: `run_dask` sets it around all of it.
        assert dask.config.get("distributed.worker.daemon") is False
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
        return Client(cluster), cluster
    except (OSError, TimeoutError, ValueError) as e:
        raise DaskEngineError(f"cannot reach the Dask scheduler {scheduler or '(local)'}: "
                              f"{e}") from None


def run_dask(results: str, matrix_id: str, spec: MatrixSpec, tasks: list[Task], *,
             scheduler: str | None = None, workers: int = 2,
             on_outcome: Callable[[Task, RunOutcome], None] | None = None,
             on_note: Callable[[str], None] | None = None,
             work: Callable[..., TaskResult] = _work,
             stop: threading.Event | None = None,
             on_client: Callable[[Client, LocalCluster | None], None] | None = None,
             ) -> EngineStats:
    """Run `tasks` of the matrix on Dask and merge each as it finishes. Returns the
    figures; `stats.aborted` says that Ctrl-C/SIGTERM (or `stop`) ended it early."""
    with dask.config.set(WORKER_CONFIG):
        return _run_dask(results, matrix_id, spec, tasks, scheduler=scheduler,
                         workers=workers, on_outcome=on_outcome, on_note=on_note, work=work,
                         stop=stop, on_client=on_client)


def _run_dask(results: str, matrix_id: str, spec: MatrixSpec, tasks: list[Task], *,
              scheduler: str | None, workers: int,
              on_outcome: Callable[[Task, RunOutcome], None] | None,
              on_note: Callable[[str], None] | None, work: Callable[..., TaskResult],
              stop: threading.Event | None,
              on_client: Callable[[Client, LocalCluster | None], None] | None) -> EngineStats:
    stats = EngineStats()
    stop = stop or threading.Event()
    note = on_note or (lambda _m: None)
    old: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        # A flag, not an exception: a merge in progress is never cut in half. A second
        # signal (a shutdown that hangs) interrupts; a merge undoes itself then.
        def on_signal(_signum: int, _frame: Any) -> None:
            if stop.is_set():
                raise KeyboardInterrupt
            stop.set()
        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, on_signal)
    t0 = time.monotonic()
    try:
        client, cluster = connect(scheduler, workers)
    except BaseException:
        _restore(old)
        raise
    stats.startup_s = time.monotonic() - t0
    if on_client is not None:
        on_client(client, cluster)
    try:
        submitted: dict[Future, tuple[Task, float]] = {}
        free_since: dict[str, float] = {}
        for t in tasks:
            f = client.submit(work, t.to_dict(), spec.base, pure=False,
                              key=f"cutover-{t.key}-{os.urandom(4).hex()}")
            submitted[f] = (t, time.time())
        pending = set(submitted)
        while pending and not stop.is_set():
            try:
                done, pending = wait(list(pending), timeout=0.5, return_when=FIRST_COMPLETED)
                pending = set(pending)
            except TimeoutError:
                continue
            for f in done:
                _finish(results, matrix_id, spec, f, submitted[f], stats, on_outcome, note,
                        free_since)
        if stop.is_set():
            stats.aborted = True
            # What finished is kept: merge it, cancel the rest.
            for f in list(pending):
                if f.status in ("finished", "error"):
                    pending.discard(f)
                    _finish(results, matrix_id, spec, f, submitted[f], stats, on_outcome, note,
                        free_since)
            client.cancel(list(pending), force=True)
    finally:
        try:
            client.close(timeout=10)
        finally:
            try:
                if cluster is not None:
                    cluster.close(timeout=30)
            finally:
                _restore(old)
    stats.wall_s = time.monotonic() - t0
    return stats


def _restore(old: dict[int, Any]) -> None:
    for s, h in old.items():
        signal.signal(s, h)


def _finish(results: str, matrix_id: str, spec: MatrixSpec, f: Future,
            sub: tuple[Task, float], stats: EngineStats,
            on_outcome: Callable[[Task, RunOutcome], None] | None,
            note: Callable[[str], None], free_since: dict[str, float]) -> None:
    """Merge one finished future (a result, or the harness error it raised)."""
    task, t_submit = sub
    stats.tasks += 1
    if f.status == "cancelled":
        return
    if f.status == "error":
        exc = f.exception()
        why = f"{type(exc).__name__}: {exc}".strip()
        if isinstance(exc, KilledWorker):
            why = f"the workers running it died too often ({exc})"
        _store_error(results, matrix_id, task, why, stats, on_outcome, note)
        return
    try:
        res: TaskResult = f.result()
    except Exception as e:  # noqa: BLE001 - a result that cannot be read is an error
        _store_error(results, matrix_id, task, f"{type(e).__name__}: {e}", stats,
                     on_outcome, note)
        return
    received = time.time()
    extra = None
    if res.kind == "hunt" and res.hunt is not None:  # the hunt's record, merged with its runs
        detail = res.hunt.detail()
        row = task_row(task, "error" if "error" in detail else "done",
                       [r.run_id for r in res.runs], detail, worker=res.worker,
                       seconds=res.exec_s)
        extra = res.hunt.merger(results, matrix_id, task.key)
    elif res.kind == "run":
        o = res.runs[0].outcome if res.runs else {}
        status = "error" if o.get("verdict") == "error" else "done"
        detail = {"error": o.get("summary")} if status == "error" else {}
        row = task_row(task, status, [r.run_id for r in res.runs], detail, worker=res.worker,
                       seconds=res.exec_s)
    else:
        row = task_row(task, "done", [r.run_id for r in res.runs], {"seeds": res.sim or []},
                       worker=res.worker, seconds=res.exec_s)
    try:
        m = merge_task(results, res.runs, row, matrix_id, extra=extra)
    except MergeError as e:
        _store_error(results, matrix_id, task, str(e), stats, on_outcome, note)
        return
    stats.merge_ms.append(m.ms)
    stats.merged_runs += len(m.stored)
    stats.exec_s.append(res.exec_s)
    # Overhead: everything a task costs besides running it. The worker's idle time
    # before it started it (from when it was submitted or the worker's previous task
    # ended, whichever is later), its time outside the run (scratch dir, shipping),
    # getting the result here, and the merge. Wall clocks of the worker and this
    # process; on one machine they are one clock.
    ready = max(t_submit, free_since.get(res.worker, t_submit))
    free_since[res.worker] = res.ended
    parts = (max(0.0, res.started - ready), max(0.0, res.ended - res.started - res.exec_s),
             max(0.0, received - res.ended))
    stats.dispatch_s.append(parts[0])
    stats.worker_s.append(parts[1])
    stats.collect_s.append(parts[2])
    stats.overhead_s.append(sum(parts) + m.ms / 1000)
    for n in m.notes():
        note(f"{task.key}: {n}")
    if on_outcome is None:
        return
    ids = {**m.skipped, **m.stored}
    if res.kind == "hunt":
        for out in recorded_outcomes(results, matrix_id, task):
            on_outcome(task, out)
        return
    if res.kind == "sim":
        for out in sim_outcomes([{**d, "run": ids.get(d.get("run"), d.get("run"))}
                                 for d in res.sim or []]):
            on_outcome(task, out)
        return
    for shipped in res.runs:
        d = shipped.outcome
        on_outcome(task, RunOutcome(ids.get(shipped.run_id, shipped.run_id), "",
                                    d.get("verdict", "unknown"), int(d.get("exit_code", 2)),
                                    d.get("summary", ""), seed=d.get("seed"),
                                    seconds=float(d.get("seconds") or 0.0)))


def _store_error(results: str, matrix_id: str, task: Task, why: str, stats: EngineStats,
                 on_outcome: Callable[[Task, RunOutcome], None] | None,
                 note: Callable[[str], None]) -> None:
    stats.errors += 1
    note(f"{task.key}: harness error: {why}")
    try:
        merge_task(results, [], task_row(task, "error", [], {"error": why}, worker="?"),
                   matrix_id)
    except MergeError as e:
        note(f"{task.key}: cannot record the harness error: {e}")
    if on_outcome is not None:
        on_outcome(task, harness_error(task, why))
