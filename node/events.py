"""The node's structured event log: JSON lines in `<data dir>/events.jsonl`.

The orchestrator ingests it into SQLite after a run and the checkers read it, so it is
written line-buffered and flushed per event: a SIGKILL loses at most the line being
written. Times are CLOCK_MONOTONIC nanoseconds (comparable across the processes of one
machine, like the history's) plus wall-clock for people. Never put key material here.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, TextIO

EVENTS_FILE = "events.jsonl"


class EventLog:
    """Append-only event writer for one node."""

    def __init__(self, data_dir: str, node_id: str) -> None:
        self.node = node_id
        self.path = os.path.join(data_dir, EVENTS_FILE)
        self._fh: TextIO = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def emit(self, kind: str, **detail: Any) -> None:
        rec = {"t": time.monotonic_ns(), "wall": round(time.time(), 6), "node": self.node,
               "kind": kind, **detail}
        self._fh.write(json.dumps(rec, separators=(",", ":"), default=str) + "\n")

    def close(self) -> None:
        self._fh.close()


def read_events(data_dir: str) -> list[dict[str, Any]]:
    """All events of a node; a torn last line (a kill mid-write) is skipped."""
    path = os.path.join(data_dir, EVENTS_FILE)
    out: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        pass
    return out
