"""I2, one cutover: the sidecars that name a C agree, the entry at C is a cleartext
marker, snapshot headers carry C exactly when their index is at or above it.

Besides: a node that applied past C while its sidecar says C = 0 never learned the
cutover (R3: it caught up by an InstallSnapshot that carried no encryption state), so
entries above C reached its state machine unopened; elastickv answers them with an error
response and moves on. Every copy of entry C may be compacted away: then only the
snapshot headers vouch for the marker (a note, not a violation).
"""
from __future__ import annotations

from typing import Any

from node.events import EventKind
from node.types import Entry

from .entries import DecodedLog, entry_key, is_marker, op_name
from .nodes import Node
from .report import Collector, InvariantResult


def applied_seen(nodes: list[Node]) -> dict[str, int]:
    """The highest index each node reported having applied: an `applied` field of any
    event (progress, stop, role, start, snapshot-taken), or a snapshot it installed."""
    out: dict[str, int] = {}
    for n in nodes:
        best = 0
        for ev in n.events:
            a = ev.get("applied")
            if ev.get("kind") == EventKind.SNAPSHOT_INSTALLED:
                a = ev.get("index")
            if isinstance(a, int) and not isinstance(a, bool):
                best = max(best, a)
        out[n.name] = best
    return out


def check_i2(nodes: list[Node], decoded: DecodedLog, side_c: dict[str, int], cut: int,
             applied: dict[str, int] | None = None) -> InvariantResult:
    """I2 over every node; `side_c` is each node's sidecar C, `applied` what
    `applied_seen` gives."""
    col = Collector("I2")
    applied = applied or {}
    markers = {k[0] for k, d in decoded.items() if is_marker(d.cleartext)}
    verified_on: list[str] = []
    for n in nodes:
        c = side_c.get(n.name)
        det: dict[str, Any] = {"sidecar_cutover": c, "snapshots": []}
        _sidecar(col, n, c, cut, side_c, applied.get(n.name, 0), det)
        if cut and cut in n.log and max(n.commit, applied.get(n.name, 0)) < cut:
            # Never committed on this node (its hard state and its events say so): a
            # divergent tail Raft overwrites when the node catches up, unless it never
            # does (a node that refused its damaged storage stays down). Not its history.
            det["uncommitted_at_cutover"] = True
        elif cut and cut in n.log and _marker_at_cutover(col, n, decoded, cut, det):
            verified_on.append(n.name)
        _snapshot_headers(col, n, cut, det)
        col.result.nodes[n.name] = det
    col.result.summary = {
        "cutover": cut,
        "marker_indexes": sorted(markers),
        "marker_verified_on": verified_on,
        # Every copy of entry C may be compacted away: then only the snapshots vouch.
        "marker_verified": bool(verified_on) if cut else None,
    }
    return col.finish()


def _sidecar(col: Collector, n: Node, c: int | None, cut: int, side_c: dict[str, int],
             a: int, det: dict[str, Any]) -> None:
    """The node's sidecar C against the cluster's, and against how far it applied."""
    if c and c != cut:
        col.add(n.name, c, None, None,
                f"sidecar says C={c}, the cluster's C is {cut} "
                f"(sidecars: {dict(sorted(side_c.items()))})")
    det["applied_seen"] = a
    if cut and n.sidecar is not None and not c and a > cut:
        col.add(n.name, cut, None, None,
                f"applied up to {a}, past the cluster's C={cut}, but its sidecar says "
                f"C=0: it never learned the cutover, so the entries above C reached "
                f"its state machine unopened", applied=a)


def _marker_at_cutover(col: Collector, n: Node, decoded: DecodedLog, cut: int,
                       det: dict[str, Any]) -> bool:
    """Whether the node's own entry at C is the cleartext marker (a finding if not)."""
    e: Entry = n.log[cut].value  # type: ignore[assignment]
    d = decoded[entry_key(e)]
    if d.status == "clear" and is_marker(d.payload):
        det["marker_at_cutover"] = True
        return True
    det["marker_at_cutover"] = False
    what = ("a wrapped entry" if d.status == "wrapped"
            else op_name(d.cleartext) or d.status)
    col.add(n.name, cut, e.term, d.opcode if d.status != "wrapped" else None,
            f"the entry at C={cut} is {what}, not a cleartext "
            f"enable-raft-envelope marker", opcode_name=op_name(d.cleartext))
    return False


def _snapshot_headers(col: Collector, n: Node, cut: int, det: dict[str, Any]) -> None:
    """Each snapshot's header cutover, and its encryption blob's, against C."""
    for snap in n.snapshots:
        h = snap.header
        expected = cut if cut and h.index >= cut else 0
        st = n.enc.get(h.index)
        det["snapshots"].append({"index": h.index, "cutover": h.cutover,
                                 "blob_cutover": st["cutover"] if st else None})
        if h.cutover != expected:
            col.add(n.name, h.index, h.term, None,
                    f"snapshot at {h.index} has header cutover {h.cutover}, "
                    f"expected {expected} (C={cut})")
        elif st is not None and st["cutover"] != h.cutover:
            col.add(n.name, h.index, h.term, None,
                    f"snapshot at {h.index}: encryption state says cutover "
                    f"{st['cutover']}, header says {h.cutover}")
