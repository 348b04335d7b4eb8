"""Simulated batches and hunts: what `cutover sim` and `cutover hunt` record.
"""
from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

import sqlite_utils

from orchestrator.store.schema import _j

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
