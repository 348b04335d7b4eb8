"""The `crashes` checker: a node that dies on its own is evidence.

Jepsen fails a test whose nodes logged an unhandled exception; here the equivalent is a
node process that exits without being asked to (the nemesis's SIGKILL and the final
stop are the only planned ways out), or that does not come up when it is started. The
heal at the end restarts dead nodes, so without this record such a run could come out
valid. A halt (I3) is not a crash: the fixed profile's halted node stays up, by design.
The elastickv profile's process ends itself after a halt (exit code `EXIT_HALTED`; a
restart replays the entry and halts again): such an exit, by a node that logged a halt,
is listed under `halt_exits` and not counted, since I3 already fails on the halt itself
and counting its exit would make the verdict name the symptom instead of the cause.
Likewise a node that refuses to start (exit code `EXIT_REFUSED`, or a start that
failed), or that stops itself on storage it cannot trust while running (`EXIT_STORAGE`),
after a storage fault damaged its files did the right thing: listed under
`expected_refusals`, not counted (`refused_start`).

The record is `exits.jsonl` in the cluster's directory (`RUN/nodes/`), one JSON object
per line, written by `orchestrator.cluster.Cluster` while the run goes (so a re-check
reads the same evidence):

* ``{"kind": "exit", "node", "t", "code", "pid", "start", "log"}``: the process `pid` of
  the node's `start`-th start exited with `code` (negative: killed by that signal)
  without the harness asking; `log` is the last lines of its log (a traceback, usually);
* ``{"kind": "failed-start", "node", "t", "start", "reason", "log"}``: a start that never
  answered.

`t` is the orchestrator's monotonic clock in ns (the clock the history's times are
relative to). This module owns the format: the writer's `record` and the reader.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from node.events import EXIT_HALTED, EXIT_REFUSED, EXIT_STORAGE

EXITS_FILE = "exits.jsonl"
# The exit code of a node process that refused to start (`node/server.py: run_node`);
# here so that the checker need not import the node's server.
KINDS = ("exit", "failed-start")
_LISTED = 50


class ExitsError(ValueError):
    """The exit record is missing or cannot be read: the run's evidence is incomplete."""


def record(kind: str, node: str, t_ns: int, **fields: Any) -> str:
    """One line of `exits.jsonl`."""
    if kind not in KINDS:
        raise ValueError(f"unknown exit record kind {kind!r}")
    return json.dumps({"kind": kind, "node": node, "t": t_ns, **fields},
                      separators=(",", ":"), default=str) + "\n"


def read_exits(cluster_dir: str) -> list[dict[str, Any]]:
    """Every record of `cluster_dir/exits.jsonl`; ExitsError when it is missing or is
    not ours (a torn last line, from a crash mid-write, is ignored)."""
    path = os.path.join(cluster_dir, EXITS_FILE)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise ExitsError(f"its node exit record {path} is missing") from None
    except OSError as e:
        raise ExitsError(f"its node exit record {path} cannot be read: {e.strerror}") from None
    out = []
    lines = raw.split(b"\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            if n == len(lines):
                continue  # torn tail
            raise ExitsError(f"{path}:{n} is not a JSON object") from None
        if not isinstance(rec, dict) or rec.get("kind") not in KINDS \
                or not isinstance(rec.get("node"), str):
            raise ExitsError(f"{path}:{n} is not an exit record")
        out.append(rec)
    return out


def describe(rec: Mapping[str, Any]) -> str:
    """One sentence for a record: who, what, and the last line of its log."""
    log = rec.get("log") or []
    last = next((ln for ln in reversed(log) if str(ln).strip()), "") if isinstance(log, list) \
        else str(log)
    tail = f": {str(last).strip()[:300]}" if last else ""
    if rec.get("kind") == "failed-start":
        return f"node {rec['node']} did not start ({rec.get('reason') or 'no answer'}){tail}"
    code = rec.get("code")
    how = (f"killed by signal {-code}" if isinstance(code, int) and code < 0
           else f"exited with code {code}")
    return f"node {rec['node']} {how} without being asked to{tail}"


def refused_start(rec: Mapping[str, Any], refusals: Mapping[str, int]) -> bool:
    """Whether `rec` is a node refusing to start after a storage fault damaged its files
    (`refusals`: node -> when, on the record's clock): a start that failed, or a process
    that ended with `EXIT_REFUSED` or `EXIT_STORAGE`. Fail closed is the correct reaction
    to damage, not a crash. A process that died of the damage any other way (a traceback,
    exit code 1) is still a crash."""
    since = refusals.get(rec.get("node", ""))
    t = rec.get("t")
    if since is None or not isinstance(t, int) or t < since:
        return False
    # A start that failed, a process that refused to start (`EXIT_REFUSED`), or a running
    # node that read the damage back and stopped itself on it (`EXIT_STORAGE`).
    return rec.get("kind") == "failed-start" or (
        rec.get("kind") == "exit" and rec.get("code") in (EXIT_REFUSED, EXIT_STORAGE))


def check_crashes(cluster_dir: str, t0_ns: int = 0,
                  halted: frozenset[str] | set[str] = frozenset(),
                  refusals: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Valid when no node exited on its own and every start came up; `unknown` (with
    `incomplete`) when the record is missing: a run without it cannot be judged.
    `halted`: the nodes that logged a halt, whose `EXIT_HALTED` exits are by design;
    `refusals`: the nodes a storage fault damaged, and since when (`refused_start`)."""
    try:
        recs = read_exits(cluster_dir)
    except ExitsError as e:
        return {"valid": "unknown", "error": str(e), "incomplete": True}
    recs.sort(key=lambda r: r["t"] if isinstance(r.get("t"), int) else 0)
    designed: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    counted: list[dict[str, Any]] = []
    for r in recs:
        by_design = r["kind"] == "exit" and r.get("code") == EXIT_HALTED and r["node"] in halted
        if by_design:
            designed.append(r)
        elif refusals and refused_start(r, refusals):
            refused.append(r)
        else:
            counted.append(r)
    recs = counted
    out: dict[str, Any] = {
        "halt_exits": designed[:_LISTED],
        "valid": "invalid" if recs else "valid",
        "exits": sum(1 for r in recs if r["kind"] == "exit"),
        "failed_starts": sum(1 for r in recs if r["kind"] == "failed-start"),
        "records": recs[:_LISTED],
    }
    if refused:  # absent otherwise: a run without storage faults stores what it did
        out["expected_refusals"] = refused[:_LISTED]
    if recs:
        first = recs[0]
        out["first_violation"] = describe(first)
        t = first.get("t")
        out["first_violation_ns"] = t - t0_ns if isinstance(t, int) and t0_ns else None
    return out
