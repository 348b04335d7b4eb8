"""`cutover check`: every checker again on a stored run, from its artifacts, with the
checker code of today; the new verdicts replace the stored ones.

A check after a checker fix can change a verdict: that is the point. A damaged run must
not, though. Deleting one node dir of an invalid run (the node where replicas diverged)
and checking again once stored `valid`; a wrong KEK once stored an I1 violation. So a
re-check is all or nothing:

* everything it reads is verified first (`check_artifacts`): the run directory, every
  node's dir with its WAL, newest snapshot, sidecar and event log, the node exit record,
  the KEK (it must unwrap the run's DEKs), and the history (`ops`) as the last check
  counted it. Missing or unreadable is a harness error (exit 3) with one line;
* a corrupt WAL or snapshot inside an otherwise complete run is evidence, judged;
* the new verdicts are stored in one transaction, only when every checker ran on
  complete inputs. Otherwise nothing is written.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlite_utils

from checker import suite
from checker.crashes import EXITS_FILE
from node.events import read_events
from node.keystore import DekUnwrapError, KeystoreError, load_kek
from node.sidecar import SIDECAR_NAME, SidecarError
from node.sidecar import load as load_sidecar
from node.snapshot import SnapshotStore
from node.storage import NODE_ID_FILE, SNAP_DIR, WAL_DIR
from node.wal import RecordKind, WalCorruptError, WalError, iter_records
from orchestrator import store
from orchestrator.errors import ReviewError
from orchestrator.run.program import node_dirs, run_checkers, verdict_line
from orchestrator.store import owner

EVENTS_FILE = "events.jsonl"
# A run in one of these states never reached its end: its verdict is that state.
UNFINISHED = ("aborted", "crashed", "error")


def _readable(path: str, what: str, run_id: str) -> None:
    """A regular file this process can open, without blocking (a FIFO never answers)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ReviewError(f"run {run_id}: {what} {path} is missing; cannot re-check") from None
    except OSError as e:
        raise ReviewError(f"run {run_id}: {what} {path} cannot be read ({e.strerror}); "
                          f"cannot re-check") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ReviewError(f"run {run_id}: {what} {path} is not a regular file; "
                              f"cannot re-check")
    finally:
        os.close(fd)


def expected_nodes(row: Mapping[str, Any], stored: Mapping[str, Any]) -> set[str]:
    """The nodes the run had: from its config (`n1`..`nN`, as `Cluster` names them) and
    from what its last check read. Never from the directory: a deleted node dir must
    not shrink the run."""
    names: set[str] = set()
    n = store.run_config(row).get("nodes")
    if isinstance(n, int) and not isinstance(n, bool) and 0 < n < 100:
        names |= {f"n{i + 1}" for i in range(n)}
    cut = (stored.get("cutover") or {}).get("detail") or {}
    if isinstance(cut.get("nodes"), dict):
        names |= {str(k) for k in cut["nodes"]}
    return names


def _check_node(run_id: str, name: str, d: str) -> list[str]:
    """The wrapped DEKs of a node's sidecar, after checking its files are all there."""
    for f, what in ((NODE_ID_FILE, "the node-id file"), (EVENTS_FILE, "the event log"),
                    (SIDECAR_NAME, "the sidecar")):
        _readable(os.path.join(d, f), f"node {name}'s {what}", run_id)
    wal = os.path.join(d, WAL_DIR)
    segments = sorted(f for f in _listdir(wal) if f.endswith(".wal"))
    if not segments:
        raise ReviewError(f"run {run_id}: node {name}'s WAL ({wal}) is missing; "
                          f"cannot re-check")
    for f in segments:
        _readable(os.path.join(wal, f), f"node {name}'s WAL segment", run_id)
    newest_marker = 0
    try:
        for rec in iter_records(wal):
            if rec.kind is RecordKind.SNAPSHOT:
                newest_marker = max(newest_marker, rec.value.index)  # type: ignore[union-attr]
    except WalCorruptError as e:
        if "is missing" in str(e):  # a segment gone from the middle: a lost file
            raise ReviewError(f"run {run_id}: node {name}'s WAL lost a segment ({e}); "
                              f"cannot re-check") from None
    except WalError:
        pass  # a damaged WAL is evidence: the checker judges it
    snaps = SnapshotStore(Path(d) / SNAP_DIR).files()
    for _, p in snaps:
        _readable(str(p), f"node {name}'s snapshot", run_id)
    if newest_marker and not any(i >= newest_marker for i, _ in snaps):
        raise ReviewError(f"run {run_id}: node {name}'s snapshot at index {newest_marker} "
                          f"(its WAL names it) is missing; cannot re-check")
    try:
        sc = load_sidecar(d)
    except SidecarError:
        return []  # damaged: evidence
    return [wk.wrapped for wk in sc.keys.values()]


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def check_artifacts(results: str, row: Mapping[str, Any],
                    db: sqlite_utils.Database) -> str:
    """The run dir, after making sure everything a re-check reads is there and is this
    run's; a ReviewError naming the first thing that is not."""
    rid = row["id"]
    if row.get("status") == "running":
        who = owner.read(store.run_dir_of(results, row))
        if who is not None and not owner.is_gone(who):
            raise ReviewError(f"run {rid} is still running (pid {who['pid']}); check it "
                              f"when it has finished")
    if row.get("status") in UNFINISHED:
        # Its history stops where the run did: every checker would pass on what never
        # happened (no final reads, no stop), and its CRASHED/ABORTED line is the truth.
        raise ReviewError(f"run {rid} is {row['status']}: it did not finish, so its history "
                          f"and node files are partial and a verdict on them would say "
                          f"nothing; nothing was stored")
    rd = store.run_dir_of(results, row)
    if not os.path.isdir(rd):
        raise ReviewError(f"run {rid}: its directory {rd} is missing; cannot re-check")
    stored = store.checks(db, rid)
    have = node_dirs(rd)
    want = expected_nodes(row, stored) or set(have)
    if not want:
        raise ReviewError(f"run {rid}: no node data dirs under {os.path.join(rd, 'nodes')}; "
                          f"cannot re-check")
    gone = sorted(want - set(have))
    if gone:
        raise ReviewError(f"run {rid}: the data dir of node {', '.join(gone)} is missing "
                          f"from {os.path.join(rd, 'nodes')}; cannot re-check")
    _readable(os.path.join(rd, "nodes", EXITS_FILE), "the node exit record", rid)
    wrapped = [w for name in sorted(want) for w in _check_node(rid, name, have[name])]
    _check_events(db, rid, {n: have[n] for n in sorted(want)})
    kek_path = os.path.join(rd, "kek")
    _readable(kek_path, "its KEK file", rid)
    try:
        kek = load_kek(kek_path)
    except KeystoreError as e:
        raise ReviewError(f"run {rid}: its KEK file cannot be used: {e}") from None
    if wrapped and not any(_unwraps(kek, w) for w in wrapped):
        raise ReviewError(f"run {rid}: its KEK does not unwrap any of the {len(wrapped)} "
                          f"DEK(s) in the nodes' sidecars: it is not this run's KEK; "
                          f"cannot re-check")
    _check_history(db, rid, stored)
    return rd


def _check_events(db: sqlite_utils.Database, rid: str, dirs: Mapping[str, str]) -> None:
    """Each node's event log must still hold every event the run stored from it.

    The checkers read the events from the node files; the run ingested the same files
    into `node_events` when it ended. A log that lost lines since (a last line dropped, a
    file emptied or cut mid-line) would check a shorter story: the `stop` or `halt` that
    made the run invalid can be exactly the line that went. So fewer events than the
    database holds, other kinds in the same order, or a lost `stop` is a harness error."""
    stored = store.event_kinds_by_node(db, rid)
    for name, d in dirs.items():
        before = stored.get(name, [])
        if not before:
            continue  # a run stored before its events were (or a node that wrote none)
        now = [str(e.get("kind")) for e in read_events(d)]
        if len(now) < len(before) or now[:len(before)] != before:
            if "stop" in before and "stop" not in now:
                what = "its `stop` event is gone"
            elif len(now) < len(before):
                what = f"{len(before) - len(now)} of them are gone"
            else:
                what = "they are not the ones stored"
            raise ReviewError(f"run {rid}: node {name}'s event log holds {len(now)} events "
                              f"where the run stored {len(before)} ({what}): it is not the "
                              f"evidence the run was judged on; cannot re-check")


def _unwraps(kek: Any, wrapped: bytes) -> bool:
    try:
        kek.unwrap_dek(wrapped)
        return True
    except DekUnwrapError:
        return False


def _check_history(db: sqlite_utils.Database, rid: str,
                   stored: Mapping[str, Any]) -> None:
    """The history must be the one the last check counted (when there was one)."""
    before = ((stored.get("stats") or {}).get("detail") or {}).get("total")
    if not isinstance(before, dict):
        return
    now = store.completion_counts(db, rid)
    if {k: v for k, v in before.items() if v} != {k: v for k, v in now.items() if v}:
        raise ReviewError(f"run {rid}: its history is not the one it was checked with "
                          f"(completions then {dict(sorted(before.items()))}, now "
                          f"{dict(sorted(now.items()))}); cannot re-check")


def recheck(results: str, ref: str) -> tuple[dict[str, dict[str, Any]], int, str]:
    """Re-run every checker on a stored run and store the outcome (its `checks` and
    `log_entries` rows and its verdict, exit code and summary) in one transaction;
    returns (results per checker, exit code, summary). Raises `ReviewError` or
    `store.StoreError` with nothing written."""
    pending = store.Pending()
    with store.opened(results) as db:
        row = store.resolve_run(db, ref)
        store.check_writable(results)  # a check stores: say so before a minute of work
        rd = check_artifacts(results, row, db)
        try:
            res = run_checkers(db, row["id"], rd, pending)
        except KeystoreError as e:
            raise ReviewError(f"run {row['id']}: its KEK file cannot be used: {e}") from None
    for name in suite.ORDER:
        r = res.get(name) or {}
        if r.get("incomplete"):
            raise ReviewError(f"run {row['id']}: {name}: {r.get('error')}; cannot re-check "
                              f"(nothing was stored)")
    bugs = store.run_config(row).get("bugs") or []
    verdict = suite.worst(r["valid"] for r in res.values())
    code = suite.EXIT_CODES[verdict]
    summary = verdict_line(verdict, suite.first_violation(res), row.get("seed"), bugs,
                           store.run_config(row).get("profile") or "fixed")
    if row.get("source") == "sim":  # as `cutover sim` stored it: never taken for a real run
        summary = "SIMULATED " + summary
    store.replace_checks(results, row["id"], pending,
                         {"verdict": verdict, "exit_code": code, "summary": summary})
    return res, code, summary
