"""The suite: read the nodes, learn the cluster's C and keys once, run I1-I7 in order.

Everything the invariants share is computed here once (the cluster's C, the decoded
entries, the known keys, the cutover time T) so that no two invariants can disagree
about what an entry is or which key opens it. The order of `INVARIANTS` is the order
the results are stored and the first violation is picked in.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

from node.events import EventKind
from node.keystore import Kek, load_kek

from .entries import decode_cluster
from .i1_cleartext import check_i1, committed_entries
from .i2_one_cutover import applied_seen, check_i2
from .i3_no_halts import check_i3
from .i4_convergence import check_i4
from .i5_nonce_reuse import check_i5
from .i6_keys_precede_use import check_i6
from .i7_rotation_takes_effect import check_i7
from .keys import learn_keys
from .nodes import Node, NodeState, node_from_state, read_node
from .report import CutoverReport, InvariantResult, LogRow, Violation


def check_cutover(
    node_dirs: Mapping[str, str | PathLike[str]],
    kek_path: str | PathLike[str],
    plaintext_tokens: Iterable[tuple[bytes, int]] = (),
    *,
    scan_snapshot_data: bool = True,
    excused: Iterable[tuple[str, int]] = (),
    damaged: Iterable[str] = (),
) -> CutoverReport:
    """Check I1-I7 on the data dirs `node_dirs` (node name -> dir); read-only.

    `plaintext_tokens` are (token, monotonic time_ns at which the workload wrote it);
    tokens written after the cutover must not appear in cleartext above C.
    `scan_snapshot_data=False` leaves snapshot data regions out of the byte scan.
    `excused` are (node, index) copies a nemesis damaged on purpose: an I1 finding or an
    I3 halt (or its I5 nonce twin) at exactly that copy is the correct, loud reaction,
    not a violation (it is listed in the invariant's summary instead).
    `damaged` are the nodes a storage fault damaged: a disk that lost a synced write
    may lose a vote with it, so their forgotten votes are listed, not counted (two
    leaders or a divergence that follows still are).
    """
    kek = load_kek(kek_path)
    nodes = [read_node(n, Path(d)) for n, d in sorted(node_dirs.items())]
    rep = analyze(nodes, kek, plaintext_tokens, scan_snapshot_data)
    if excused:
        excuse(rep, {(str(n), int(i)) for n, i in excused})
    hurt = {str(n) for n in damaged}
    if hurt:
        _move(rep.results["I4"], lambda v: v.get("evidence") == "vote-durability"
              and v.get("node") in hurt)
    return rep


def check_cutover_state(states: Mapping[str, NodeState], kek: Kek) -> CutoverReport:
    """I1-I7 on in-memory node states, e.g. from the deterministic simulator. Without
    files there is no byte scan: I1 is its structural half only."""
    nodes = [node_from_state(name, st) for name, st in sorted(states.items())]
    return analyze(nodes, kek, (), False)


def excuse(rep: CutoverReport, excused: set[tuple[str, int]]) -> None:
    """Move the findings at copies a nemesis damaged on purpose into the summary."""
    indexes = {i for _, i in excused}

    def is_excused(name: str, v: Violation) -> bool:
        if name == "I5":
            # The damaged copy and a healthy copy of the same entry share a nonce; the
            # finding may name either replica, so match the entry, not the node.
            return v.get("index") in indexes and v.get("first_use_index") == v.get("index")
        return (v.get("node"), v.get("index")) in excused

    for name in ("I1", "I3", "I5"):
        _move(rep.results[name], lambda v, name=name: is_excused(name, v))


def _move(r: InvariantResult, excused: Callable[[Violation], bool]) -> None:
    """The violations `excused` picks go to the summary (`excused`), out of the count."""
    kept = [v for v in r.violations if not excused(v)]
    gone = len(r.violations) - len(kept)
    if not gone:
        return
    r.summary.setdefault("excused", []).extend(v for v in r.violations if excused(v))
    r.violations = kept
    r.violation_count -= gone
    r.valid = r.violation_count == 0
    r.first_violation = kept[0] if kept else None


def analyze(nodes: list[Node], kek: Kek, plaintext_tokens: Iterable[tuple[bytes, int]],
            scan_snapshot_data: bool) -> CutoverReport:
    """I1-I7 on nodes already read."""
    errors = [e for n in nodes for e in n.errors]
    notes: list[str] = []
    side_c, cut = _cluster_cutover(nodes)
    decoded, holders = decode_cluster(nodes)
    keys = learn_keys(nodes, decoded, holders, kek)
    cut_time = cutover_time(nodes, cut)
    rows: list[LogRow] = []
    results = {
        "I1": check_i1(nodes, decoded, cut, cut_time, plaintext_tokens, scan_snapshot_data,
                       committed_entries(nodes), rows, notes),
        "I2": check_i2(nodes, decoded, side_c, cut, applied_seen(nodes)),
        "I3": check_i3(nodes),
        "I4": check_i4(nodes, decoded, keys, notes),
        "I5": check_i5(nodes),
        "I6": check_i6(decoded, holders, keys),
        "I7": check_i7(nodes, decoded, keys),
    }
    rows.sort(key=lambda r: (r.node, r.index))
    _closing_notes(results, cut, cut_time, notes)
    summary = {n.name: node_summary(n) for n in nodes}
    return CutoverReport(cut, cut_time, results, rows, summary, errors, notes)


def _cluster_cutover(nodes: list[Node]) -> tuple[dict[str, int], int]:
    """(each node's sidecar C, the cluster's C): the C most sidecars name, the lower one
    at a tie; 0 when no sidecar names one."""
    side_c = {n.name: n.sidecar.raft_envelope_cutover_index for n in nodes if n.sidecar}
    counts = Counter(c for c in side_c.values() if c)
    cut = min(counts, key=lambda c: (-counts[c], c)) if counts else 0
    return side_c, cut


def _closing_notes(results: dict[str, InvariantResult], cut: int, cut_time: int | None,
                   notes: list[str]) -> None:
    """What the verdicts leave unsaid: evidence that was missing, not wrong."""
    if cut and not results["I2"].summary["marker_verified_on"]:
        notes.append(f"entry {cut} is compacted on every node: only the snapshot headers "
                     f"vouch for the marker")
    if not any(r["digest_observations"] for r in results["I4"].nodes.values()):
        notes.append("no digest events: I4 had nothing to compare")
    if cut and cut_time is None:
        notes.append("no event records when the marker applied: every token counts as "
                     "written after the cutover")


def cutover_time(nodes: list[Node], cut: int) -> int | None:
    """T: the earliest time the marker at C applied fresh on any node, None if no event
    says so."""
    if not cut:
        return None
    times = []
    for n in nodes:
        for ev in n.events:
            if ev.get("kind") != EventKind.ENCRYPTION_APPLIED or ev.get("what") != "marker-fresh":
                continue
            if "index" in ev and ev.get("index") != cut:
                continue
            t = ev.get("t")
            if isinstance(t, int) and not isinstance(t, bool):
                times.append(t)
    return min(times) if times else None


def node_summary(n: Node) -> dict[str, Any]:
    """What the report shows of one node besides the verdicts (no key material)."""
    sc = n.sidecar
    newest = n.snapshots[-1].header if n.snapshots else None
    st = n.enc.get(newest.index) if newest else None
    return {
        "sidecar": None if sc is None else {
            "cutover": sc.raft_envelope_cutover_index,
            "active_raft_dek": sc.active_raft_dek,
            "raft_applied_index": sc.raft_applied_index,
            "local_epoch": sc.local_epoch,
            "key_ids": sorted(sc.keys),
        },
        "snapshot": None if newest is None else {
            "index": newest.index,
            "term": newest.term,
            "cutover": newest.cutover,
            "key_ids": sorted(st["keys"]) if st else [],
            "active": st["active"] if st else None,
            "encryption_error": n.enc_errors.get(newest.index),
        },
        "wal_entry_records": len(n.records),
        "durable_entries": len(n.log),
        "first_index": min(n.log) if n.log else None,
        "last_index": max(n.log) if n.log else None,
        "commit": n.commit,
        "stale_entries_dropped": n.stale_dropped,
        "torn_tail": bool(n.torn),
        "events": len(n.events),
    }
