"""A run's or a hunt's rows shipped between databases (a Dask worker's scratch database
to the coordinator's), inserted once, never over another.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlite_utils

from orchestrator.store.schema import _j

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



# ------------------------------------------------ a hunt shipped between databases
# A matrix's hunt task runs in a worker's scratch database; the coordinator copies the
# hunt's record into the results (`orchestrator.nightly.tasks.ShippedHunt`).

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
