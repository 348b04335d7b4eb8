"""A stored history in Jepsen's shape: what `cutover export` writes and what the web
UI's zip carries as `history.jsonl`.

One event per line, in order, nemesis entries merged in by time (Jepsen puts them in
the same history as process `nemesis`; checkers skip them). Times are nanoseconds since
the run's start; worker processes are integers (a process that timed out is retired,
as in Jepsen), final reads are `"final-N"`.
"""
from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

import sqlite_utils

from checker.edn import dumps_op
from orchestrator import store

FORMATS = ("jepsen-edn", "jsonl")


def _process(p: str) -> int | str:
    """Worker processes are integers in Jepsen's histories; ours are stored as text."""
    return int(p) if p.lstrip("-").isdigit() else p


def history_events(db: sqlite_utils.Database, run_id: str, *,
                   nemesis: bool = True) -> Iterator[dict[str, Any]]:
    """The stored history as Jepsen op maps, nemesis entries merged in by time."""
    nem = store.nemesis_rows(db, run_id) if nemesis else []
    k = 0
    index = 0
    for r in store.iter_ops(db, run_id):
        while k < len(nem) and nem[k]["time_ns"] <= r["time_ns"]:
            yield _nem_event(nem[k], index)
            index += 1
            k += 1
        ev = {"index": index, "time": r["time_ns"], "process": _process(r["process"]),
              "type": r["type"], "f": r["f"], "key": r["key"], "value": r["value"]}
        if r.get("node"):
            ev["node"] = r["node"]
        if r.get("error"):
            ev["error"] = r["error"]
        index += 1
        yield ev
    for n in nem[k:]:
        yield _nem_event(n, index)
        index += 1


def _nem_event(r: Mapping[str, Any], index: int) -> dict[str, Any]:
    f = r["fault"] if r["f"] == "event" else f"{r['f']}-{r['fault']}"
    ev = {"index": index, "time": r["time_ns"], "process": "nemesis", "type": "info", "f": f,
          "value": r["targets"]}
    if r.get("detail") is not None:
        ev["detail"] = r["detail"]
    return ev


def export_history(db: sqlite_utils.Database, row: Mapping[str, Any], fmt: str,
                   out: TextIO) -> int:
    """Write the run's history as `jepsen-edn` or `jsonl`; returns the events written."""
    n = 0
    if fmt == "jepsen-edn":
        out.write(f"; cutover run {row['id']} (seed {row.get('seed')}): one op map per line.\n"
                  f"; check it with: cutover lin FILE --format jepsen-edn --model kv\n")
    for ev in history_events(db, row["id"]):
        if fmt == "jsonl":
            out.write(json.dumps(ev, separators=(",", ":"), ensure_ascii=False, default=str))
        else:
            out.write(dumps_op(ev))
        out.write("\n")
        n += 1
    return n


def history_text(db: sqlite_utils.Database, row: Mapping[str, Any], fmt: str = "jsonl") -> str:
    """The export as one string (the web UI's zip, `export -o` before its atomic write)."""
    buf = io.StringIO()
    export_history(db, row, fmt, buf)
    return buf.getvalue()
