"""I1, no cleartext above the cutover: the structural half, and the verdict.

With C != 0 every durable entry above C must be an envelope that authenticates under a
known DEK and every entry at or below C must be cleartext; with C = 0 none may be
wrapped. The byte half (`byte_scan.py`) adds what the raw bytes show. A structural
finding carries ``known_committed``: whether its index is at or below the highest commit
index the node recorded in its WAL's hard state. Raft persists the commit index lazily,
so False means "not known", never "uncommitted".

An entry above C that no node committed or applied (a deposed leader's tail, written by
a leader cut off from the cluster that never heard of the cutover) is a warning, listed
apart: it never became part of the cluster's log. Its bytes stay in the WAL segment
until it is deleted, which is worth knowing, but it is not the cluster writing
cleartext above the cutover.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from node.types import Entry

from .byte_scan import scan_nodes
from .entries import Decoded, DecodedLog, entry_key, op_name
from .nodes import Node
from .report import MAX_LISTED, Collector, InvariantResult, LogRow, Violation


def committed_entries(nodes: list[Node]) -> set[tuple[int, int]]:
    """(index, term) of every entry some node knew committed: it held the entry and its
    commit index covered it (its WAL's hard state, a commit or applied index it reported
    in an event, or a halt: only a committed entry is handed to apply)."""
    out: set[tuple[int, int]] = set()
    for n in nodes:
        seen = [n.commit]
        for ev in n.events:
            for f in ("applied", "commit") + (("index",) if ev.get("kind") == "halt" else ()):
                v = ev.get(f)
                if isinstance(v, int) and not isinstance(v, bool):
                    seen.append(v)
        known = max(seen)
        for idx, rec in n.log.items():
            if idx <= known:
                out.add((idx, rec.value.term))  # type: ignore[union-attr]
    return out


def check_i1(nodes: list[Node], decoded: DecodedLog, cut: int, cut_time: int | None,
             tokens: Iterable[tuple[bytes, int]], scan_snapshots: bool,
             in_cluster_log: set[tuple[int, int]], rows: list[LogRow],
             notes: list[str]) -> InvariantResult:
    """I1 over every node; fills `rows` (one per durable entry) on the way."""
    col = Collector("I1")
    for n in nodes:
        col.result.nodes[n.name] = _structural(n, decoded, cut, col, rows)
    scan = scan_nodes(nodes, decoded, cut, cut_time, tokens, scan_snapshots, col, notes)
    uncommitted = _set_aside_uncommitted(col, in_cluster_log, notes)
    col.result.summary = {"cutover": cut, "cutover_time_ns": cut_time, "byte_scan": scan,
                          "uncommitted_warnings": uncommitted[:MAX_LISTED],
                          "uncommitted_warning_count": len(uncommitted)}
    return col.finish(lambda v: (v.get("half") != "structural", v.get("index") or 0,
                                 v.get("node") or ""))


def _structural(n: Node, decoded: DecodedLog, cut: int, col: Collector,
                rows: list[LogRow]) -> dict[str, Any]:
    """One node's durable log against C; returns its per-node details."""
    det = {"entries": 0, "above_cutover": 0, "wrapped": 0, "structural_violations": 0,
           "byte_hits": 0}
    for idx in sorted(n.log):
        e: Entry = n.log[idx].value  # type: ignore[assignment]
        d = decoded[entry_key(e)]
        wrapped = d.status == "wrapped"
        rows.append(LogRow(n.name, idx, e.term, d.opcode, wrapped, d.key_id))
        det["entries"] += 1
        det["wrapped"] += wrapped
        if cut and idx > cut:
            det["above_cutover"] += 1
        if d.status == "noop":
            continue
        before = len(col.found)
        _entry_finding(col, n, idx, e, d, cut)
        det["structural_violations"] += len(col.found) - before
    return det


def _entry_finding(col: Collector, n: Node, idx: int, e: Entry, d: Decoded, cut: int) -> None:
    """At most one finding for one durable entry: what it is against where it sits."""
    committed = idx <= n.commit
    wrapped = d.status == "wrapped"
    if d.status == "malformed":
        col.add(n.name, idx, e.term, None, f"malformed proposal envelope: {d.error}",
                half="structural", known_committed=committed)
    elif cut and idx > cut and not wrapped:
        col.add(n.name, idx, e.term, d.opcode,
                f"cleartext {op_name(d.payload)} entry above the cutover C={cut}",
                half="structural", opcode_name=op_name(d.payload),
                known_committed=committed)
    elif cut and idx > cut and d.inner is None:
        col.add(n.name, idx, e.term, "undecryptable",
                f"wrapped entry does not authenticate under any known DEK "
                f"({d.error})", half="structural", key_id=d.key_id,
                known_committed=committed)
    elif wrapped and (not cut or idx <= cut):  # with C = 0 none may be wrapped
        where = (f"at or below the cutover C={cut}" if cut
                 else "but the cluster never cut over (C=0)")
        col.add(n.name, idx, e.term, d.opcode if d.inner else "undecryptable",
                f"wrapped entry {where}", half="structural", key_id=d.key_id,
                opcode_name=op_name(d.inner), known_committed=committed)


def _set_aside_uncommitted(col: Collector, in_cluster_log: set[tuple[int, int]],
                           notes: list[str]) -> list[Violation]:
    """Move the findings on entries no node committed out of `col`; returns them.

    WAL entries only (structural findings, and byte hits in WAL records): a snapshot's
    data is applied state, committed by construction."""
    uncommitted = [v for v in col.found
                   if isinstance(v.get("index"), int) and isinstance(v.get("term"), int)
                   and (v.get("half") == "structural" or "durable" in v)
                   and (v["index"], v["term"]) not in in_cluster_log]
    if uncommitted:
        col.found = [v for v in col.found if v not in uncommitted]
        notes.append(f"I1: {len(uncommitted)} finding(s) on entries no node committed (a "
                     f"deposed leader's tail), listed as warnings")
    return uncommitted
