"""Reading runs back: rows, histories, faults, verdicts, coverage and the scanned log.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import sqlite_utils

from orchestrator.store.schema import AmbiguousRun, NoSuchRun

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


def event_kinds_by_node(db: sqlite_utils.Database, run_id: str) -> dict[str, list[str]]:
    """Each node's stored event kinds in the order it wrote them: what a re-check holds
    the node's event log to (a log that lost lines since checks a shorter story)."""
    out: dict[str, list[str]] = {}
    for node, kind in db.conn.execute("select node, kind from node_events where run = ? "
                                      "order by node, seq", [run_id]):
        out.setdefault(str(node), []).append(str(kind))
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
