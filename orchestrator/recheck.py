"""`cutover check`: every checker again on a stored run, from its artifacts, with the
checker code of today; the new verdicts replace the stored ones.

A check after a checker fix can change a verdict: that is the point. A half-deleted run
must not, though: a missing run directory, node dir or KEK would turn a stored
`invalid` into `unknown`, which is a loss, not a check. So everything a re-check reads
is verified first, and nothing is written unless the checkers ran.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from checker import suite
from node.keystore import KeystoreError

from . import store
from .errors import ReviewError
from .run import node_dirs, run_checkers, verdict_line


def check_artifacts(results: str, row: Mapping[str, Any]) -> str:
    """The run dir, after making sure everything a re-check reads is there."""
    rd = store.run_dir_of(results, row)
    if not os.path.isdir(rd):
        raise ReviewError(f"run {row['id']}: its directory {rd} is missing; cannot re-check")
    if not node_dirs(rd):
        raise ReviewError(f"run {row['id']}: no node data dirs under "
                          f"{os.path.join(rd, 'nodes')}; cannot re-check")
    if not os.path.isfile(os.path.join(rd, "kek")):
        raise ReviewError(f"run {row['id']}: its KEK file is missing from {rd}; "
                          f"cannot re-check")
    return rd


def recheck(results: str, ref: str) -> tuple[dict[str, dict[str, Any]], int, str]:
    """Re-run every checker on a stored run and store the outcome (its `checks` rows
    and its verdict, exit code and summary); returns (results per checker, exit code,
    summary). Raises `ReviewError` or `store.StoreError` with nothing written."""
    with store.opened(results) as db:
        row = store.resolve_run(db, ref)
    rd = check_artifacts(results, row)
    bugs = store.run_config(row).get("bugs") or []
    rec = store.Recorder(results, row["id"], int(row.get("t0_ns") or 0))
    try:
        with store.opened(results) as db:
            try:
                res = run_checkers(db, row["id"], rd, rec)
            except KeystoreError as e:
                # raised before anything is stored: the stored verdicts stay as they were
                raise ReviewError(f"run {row['id']}: its KEK file cannot be used: {e}") from None
        verdict = suite.worst(r["valid"] for r in res.values())
        code = suite.EXIT_CODES[verdict]
        summary = verdict_line(verdict, suite.first_violation(res), row.get("seed"), bugs,
                               store.run_config(row).get("profile") or "fixed")
        rec.run_row(verdict=verdict, exit_code=code, summary=summary)
        rec.flush()
    finally:
        rec.close()
    return res, code, summary
