"""The wire encoding of Raft messages: the only place that knows how a `Message` looks
between two nodes.

A msgpack-friendly map of ints, strings, booleans, bytes and lists. Entries are
[index, term, kind, data]; a snapshot is [index, term, data]. Decoding validates every
field, because what arrives from the network may be garbage (or a fault injected on
purpose) and must be dropped, not crash the node.
"""

from __future__ import annotations

from typing import Any

from node.raft_types import Message, MsgType
from node.types import Entry, EntryKind, Snapshot, SnapshotMeta


def to_wire(m: Message) -> dict[str, Any]:
    """Encode a Message as a plain map for msgpack (bytes stay bytes)."""
    d: dict[str, Any] = {
        "type": int(m.type),
        "from": m.src,
        "to": m.dst,
        "term": m.term,
        "index": m.index,
        "log_term": m.log_term,
        "commit": m.commit,
        "entries": [[e.index, e.term, int(e.kind), e.data] for e in m.entries],
        "reject": m.reject,
        "hint": m.reject_hint,
        "read_seq": m.read_seq,
    }
    if m.snapshot is not None:
        s = m.snapshot
        d["snapshot"] = [s.meta.index, s.meta.term, s.data]
    return d


def _int(v: Any) -> int:
    if type(v) is not int or v < 0:
        raise ValueError(f"expected a non-negative int, got {v!r}")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {v!r}")
    return v


def _bytes(v: Any) -> bytes:
    if not isinstance(v, bytes | bytearray):
        raise ValueError(f"expected bytes, got {type(v).__name__}")
    return bytes(v)


_MSG_TYPES = {int(t): t for t in MsgType}
_KINDS = {int(k): k for k in EntryKind}


def from_wire(d: dict[str, Any]) -> Message:
    """Decode what `to_wire` produced; raises ValueError on anything malformed, so the
    node can drop garbage from the network instead of crashing on it.

    This runs for every message a node receives, so the checks are table lookups and
    type tests rather than enum constructor calls."""
    if not isinstance(d, dict):
        raise ValueError(f"malformed raft message: not a map but {type(d).__name__}")
    try:
        entries: tuple[Entry, ...] = ()
        raw = d["entries"]
        if raw:
            out = []
            for i, t, k, data in raw:
                if type(i) is not int or type(t) is not int or i < 0 or t < 0 \
                        or type(data) is not bytes:
                    raise ValueError(f"bad entry {i!r}/{t!r}")
                out.append(Entry(i, t, _KINDS[k], data))
            entries = tuple(out)
        snap = d.get("snapshot")
        snapshot = None
        if snap is not None:
            si, st, sdata = snap
            snapshot = Snapshot(SnapshotMeta(_int(si), _int(st)), _bytes(sdata))
        reject = d["reject"]
        if not isinstance(reject, bool):
            raise ValueError("reject must be a bool")
        return Message(
            type=_MSG_TYPES[d["type"]],
            src=_str(d["from"]),
            dst=_str(d["to"]),
            term=_int(d["term"]),
            index=_int(d["index"]),
            log_term=_int(d["log_term"]),
            commit=_int(d["commit"]),
            entries=entries,
            reject=reject,
            reject_hint=_int(d["hint"]),
            snapshot=snapshot,
            read_seq=_int(d["read_seq"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed raft message: {exc!r}") from exc
