"""How a simulated run and its replay on real processes compare: the protocol-event
sequence of each world (elections, the marker's stages, snapshots, restarts, halts,
crashes) and the times of its milestones. A hunt records what differed when real
processes pass a plan the simulator failed (a fidelity gap); `cutover bench fidelity`
counts the plans whose sequences match.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# fidelity gap compare): leader elections, the marker's stages, snapshots, restarts,
# halts and crashes. Op-level events and progress are timing, not protocol.
CLASSES = {"leader": "role changes", "marker-proposed": "marker",
           "marker-committed": "marker", "marker-applied": "marker",
           "snapshot-taken": "snapshots", "snapshot-installed": "snapshots",
           "restart": "restarts", "halt": "halts", "crash": "crashes"}


def _detail(e: Mapping[str, Any]) -> Mapping[str, Any]:
    d = e.get("detail")
    return d if isinstance(d, Mapping) else e


def protocol_tokens(events: Iterable[Mapping[str, Any]]) -> list[tuple[str, float | None]]:
    """The run's protocol events in time order, as (token, seconds into the run): a node
    elected leader, the marker proposed / committed / applied fresh, a snapshot taken /
    installed, a node restarted (every start but its first), a halt, a crash or exit.
    Which node did it is left out: the worlds may pick another node for the same step."""
    started: set[str] = set()
    out: list[tuple[str, float | None]] = []
    for e in sorted(events, key=lambda e: (e.get("time_ns") or 0)):
        kind, d, node = e.get("kind"), _detail(e), str(e.get("node"))
        tok = None
        if kind == "role" and d.get("role") == "leader":
            tok = "leader"
        elif kind in ("marker-proposed", "marker-committed", "snapshot-taken",
                      "snapshot-installed", "halt"):
            tok = str(kind)
        elif kind == "encryption-applied" and d.get("what") == "marker-fresh":
            tok = "marker-applied"
        elif kind == "start":
            tok = "restart" if node in started else None
            started.add(node)
        elif kind in ("crash", "exit", "start-failed"):
            tok = "crash"
        if tok is not None:
            t = e.get("time_ns")
            out.append((tok, t / 1e9 if isinstance(t, int | float) else None))
    return out


def collapse(tokens: Iterable[str]) -> list[str]:
    """Runs of the same token as one (three nodes applying the marker in a row, a burst
    of snapshots): the sequence a protocol step leaves, not how many nodes echoed it."""
    out: list[str] = []
    for t in tokens:
        if not out or out[-1] != t:
            out.append(t)
    return out


def compare_events(sim_events: Iterable[Mapping[str, Any]],
                   real_events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """How a run's protocol-event sequence in the simulator compares with the same plan's
    on real processes: `match` (the collapsed sequences are equal), the mismatch kinds
    (a class whose own events differ: `role changes`, `marker`, `snapshots`, `restarts`,
    `halts`, `crashes`; or `order` when every class agrees and only their interleaving
    differs), the counts per class in each world, both sequences, and the time of each
    milestone's first occurrence in each world (seconds into the run)."""
    st, rt = protocol_tokens(sim_events), protocol_tokens(real_events)
    sseq, rseq = collapse(t for t, _ in st), collapse(t for t, _ in rt)
    kinds: list[str] = []
    counts: dict[str, list[int]] = {}
    for cls in dict.fromkeys(CLASSES.values()):
        toks = [k for k, c in CLASSES.items() if c == cls]
        a = [t for t, _ in st if t in toks]
        b = [t for t, _ in rt if t in toks]
        counts[cls] = [len(a), len(b)]
        if collapse(a) != collapse(b) or (cls in ("role changes", "restarts", "halts",
                                                   "crashes") and len(a) != len(b)):
            kinds.append(cls)
    if sseq != rseq and not kinds:
        kinds.append("order")
    first: dict[str, list[float | None]] = {}
    for tok in CLASSES:
        a = next((t for k, t in st if k == tok), None)
        b = next((t for k, t in rt if k == tok), None)
        if a is not None or b is not None:
            first[tok] = [None if a is None else round(a, 3),
                          None if b is None else round(b, 3)]
    return {"match": sseq == rseq, "mismatch": kinds, "counts": counts, "sim": sseq,
            "real": rseq, "first_s": first}


def differed_line(c: Mapping[str, Any]) -> str:
    """One line: what differed between the worlds (mismatch kinds with their counts,
    and the marker's timing)."""
    if c.get("match"):
        return "the same protocol-event sequence"
    parts = []
    counts = c.get("counts") or {}
    for k in c.get("mismatch") or []:
        n = counts.get(k)
        parts.append(f"{k} (sim {n[0]}, real {n[1]})" if n else k)
    fs = (c.get("first_s") or {}).get("marker-applied")
    if fs:
        parts.append("marker applied at " + ", ".join(
            f"{w} {'never' if v is None else f'{v:.1f}s'}" for w, v in zip(("sim", "real"),
                                                                            fs, strict=True)))
    return "; ".join(parts) or "the sequences differ"
