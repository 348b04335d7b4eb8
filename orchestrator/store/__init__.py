"""The results database (`results/cutover.db`): one SQLite file, many runs.

This package owns the schema and every SQL statement: everything that reads or writes
runs goes through it (a new column or query is a change here, and only here). Its
modules: `schema` (tables, migrations, opening), `record` (writing a run as it goes),
`read` (reading runs back), `matrices` (matrix rows and locks), `ship` (rows moved
between databases), `hunts` (sim batches and hunts), `owner` (who runs a run),
`export` (`cutover export`). Callers import the package.
Tables (times are nanoseconds since the run's start, on the machine's monotonic clock,
which node event logs share):

* `runs`        one row per run: id, started/finished (UTC ISO), seed, config JSON,
                status (running | done | aborted | error), verdict, exit code, summary,
                source (NULL for a real run, `sim` for one of `cutover sim`).
* `ops`         the client history: invoke, then ok / fail / info, per process.
* `nemesis`     the fault record: a windowed fault as a `start` and a `stop` row, an
                instant one (what a power loss lost, a snapshot, the heal, a skipped
                corrupt-entry, a milestone) as one `event` row.
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

from orchestrator.store import owner  # noqa: F401
from orchestrator.store.hunts import (  # noqa: F401
    add_hunt_run,
    create_hunt,
    finish_hunt,
    hunt_findings,
    hunt_links,
    hunt_runs,
    hunts,
    put_finding,
    record_sim_batch,
)
from orchestrator.store.matrices import (  # noqa: F401
    MatrixBusy,
    MatrixLock,
    create_matrix,
    finish_matrix,
    lock_matrix,
    matrices,
    matrix_lock_path,
    matrix_tasks,
    record_task,
    resolve_matrix,
    runs_by_id,
    tag_run,
    task_done,
)
from orchestrator.store.read import (  # noqa: F401
    checks,
    completion_counts,
    coverage_by_run,
    coverage_of,
    coverage_rows,
    event_kinds_by_node,
    fault_windows,
    history_tuples,
    iter_ops,
    log_counts_above,
    log_entries_between,
    log_nodes,
    log_wrapped_above,
    nemesis_rows,
    node_events,
    resolve_run,
    runs,
)
from orchestrator.store.record import (  # noqa: F401
    Pending,
    Recorder,
    RowSink,
    replace_checks,
)
from orchestrator.store.schema import (  # noqa: F401
    ADDED_IN,
    APP,
    DB_NAME,
    SCHEMA_VERSION,
    TABLES,
    V2_RUN_COLUMNS,
    V2_TABLES,
    V3_TABLES,
    AmbiguousRun,
    NoSuchRun,
    StoreError,
    UnsafeRunDir,
    check_writable,
    db_path,
    mark_crashed,
    open_db,
    opened,
    run_config,
    run_dir_of,
)
from orchestrator.store.ship import (  # noqa: F401
    FINGERPRINT,
    HUNT_FINGERPRINT,
    HUNT_TABLES,
    RunRows,
    find_run,
    free_id,
    hunt_fingerprint,
    hunt_rows,
    insert_run_rows,
    run_fingerprint,
    run_rows,
    run_tables,
    set_run_config,
    write_transaction,
)
