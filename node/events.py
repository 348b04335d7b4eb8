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
from enum import StrEnum
from typing import Any, TextIO

EVENTS_FILE = "events.jsonl"
# The exit code of a node process that ended itself after a halt (the elastickv profile):
# here, beside the `exit` event that goes with it, so the checkers need not import the
# node's server to tell a designed exit from a crash.
EXIT_HALTED = 4
# A node that refused to start: its files failed their checks (or its KEK, its lock).
EXIT_REFUSED = 2
# A running node that met storage it cannot trust (a checksum that does not match, a
# sector that does not read): it stops itself (fail-stop), after an `exit` event with
# reason `storage`, rather than go on from state it can no longer vouch for.
EXIT_STORAGE = 5


class EventKind(StrEnum):
    """Every `kind` a node writes today (docs/protocol.md has their fields).

    One list for the node that writes them, the checkers that read them and the UI that
    draws them. A `StrEnum`, so a member is the string on disk and compares equal to it.
    Readers must tolerate a kind that is not here: an events.jsonl written by another
    node build (older, newer, another language) is still evidence. A new kind is one
    more line here, then in docs/protocol.md.
    """

    START = "start"
    STOP = "stop"
    ROLE = "role"
    PROGRESS = "progress"
    HALT = "halt"
    ENCRYPTION_APPLIED = "encryption-applied"
    INSTALLER = "installer"
    BARRIER = "barrier"
    MARKER_PROPOSED = "marker-proposed"
    MARKER_COMMITTED = "marker-committed"
    ENABLE_RAFT_ENVELOPE = "enable-raft-envelope"
    SNAPSHOT_TAKEN = "snapshot-taken"
    SNAPSHOT_INSTALLED = "snapshot-installed"
    RECOVERY = "recovery"
    TORN_TAIL = "torn-tail"
    LOG_DISCARDED = "log-discarded"
    UNWRAP_SKIPPED = "unwrap-skipped"
    PARENT_GONE = "parent-gone"
    APPLY_WAIT_TIMEOUT = "apply-wait-timeout"
    LOG_TRUNCATED = "log-truncated"
    # elastickv profile: an entry consumed with an error response (applied index moves on)
    APPLY_ERROR = "apply-error"
    # the process ends on its own: `exit` after a halt (the elastickv profile's design),
    # `crash` of an exception nobody handled, `start-failed` when it refuses to start
    EXIT = "exit"
    CRASH = "crash"
    START_FAILED = "start-failed"
    # a BUGGIFY point (node/buggify.py) first reached by a process, or fired there
    BUGGIFY = "buggify"
    # elastickv profile, row 9: an 0x03 writer registration applied (or refused: a halt
    # follows), and this process load's wrap gate opening for a raft DEK
    WRITER_REGISTRATION = "writer-registration"
    WRITER_REGISTERED = "writer-registered"
    # a vote granted (never a pre-vote), written before the grant is sent: a node must
    # never come back from a crash without it (Raft's votedFor on stable storage)
    VOTE = "vote"


class EventLog:
    """Append-only event writer for one node."""

    def __init__(self, data_dir: str, node_id: str) -> None:
        self.node = node_id
        self.path = os.path.join(data_dir, EVENTS_FILE)
        self._fh: TextIO = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def emit(self, kind: EventKind | str, **detail: Any) -> None:
        rec = {"t": time.monotonic_ns(), "wall": round(time.time(), 6), "node": self.node,
               "kind": str(kind), **detail}
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
