"""I5, nonce uniqueness: a (key id, nonce) pair must seal one ciphertext only.

Sealed things are WAL entries (every record on disk, truncated or rewritten ones too),
snapshot images in the files, and the sealed images of every incarnation that
`snapshot-taken` events describe (key id, nonce and a digest survive the file's
pruning). Two copies of the same bytes (a replica's copy of an entry, a snapshot
installed by InstallSnapshot) are one ciphertext, not a reuse: ciphertexts are compared,
not places. A node that started twice with one nonce epoch while cut over is a finding
too, since its envelopes may be compacted away by the time anyone looks.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

from node.envelope import parse_header
from node.events import EventKind
from node.kv import snapshot_kv
from node.types import Entry

from .entries import decode
from .nodes import Node
from .report import Collector, InvariantResult

Where = dict[str, Any]


class _Seals:
    """(key id, nonce) -> ciphertext digest -> where it was first seen (lowest index,
    then node name: the same answer whatever order the nodes are read in)."""

    def __init__(self) -> None:
        self.uses: dict[tuple[int, bytes], dict[bytes, Where]] = defaultdict(dict)
        self.done: set[tuple[int, int, bytes]] = set()  # entries already counted

    def seen(self, kid: int, nonce: bytes, ident: bytes, where: Where) -> None:
        first = self.uses[(kid, nonce)].setdefault(ident, where)
        if (where["index"], where["node"]) < (first["index"], first["node"]):
            self.uses[(kid, nonce)][ident] = where


def check_i5(nodes: list[Node]) -> InvariantResult:
    col = Collector("I5")
    seals = _Seals()
    for n in nodes:
        wrapped = _entries(seals, n)
        images = _snapshot_files(seals, n) + _snapshot_events(seals, n)
        col.result.nodes[n.name] = {"wrapped_records": wrapped, "sealed_images": images}
    for n in nodes:
        _epoch_restarts(col, n)
    _reuses(col, seals)
    col.result.summary = {"distinct_pairs": len(seals.uses)}
    return col.finish()


def _entries(seals: _Seals, n: Node) -> int:
    """Every wrapped entry record on the node's disk; returns how many."""
    wrapped = 0
    for rec in n.records:
        e: Entry = rec.value  # type: ignore[assignment]
        ident = (e.index, e.term, e.data)
        if ident in seals.done:  # a replica's (or a rewritten) copy of the same entry
            wrapped += 1
            continue
        d = decode(e)
        if d.status != "wrapped":
            continue
        seals.done.add(ident)
        wrapped += 1
        assert d.key_id is not None and d.nonce is not None
        seals.seen(d.key_id, d.nonce, hashlib.sha256(d.payload).digest()[:16],
                   {"node": n.name, "index": e.index, "term": e.term, "what": "entry"})
    return wrapped


def _snapshot_files(seals: _Seals, n: Node) -> int:
    """The sealed image of every snapshot file on the node's disk; returns how many."""
    images = 0
    for snap in n.snapshots:
        try:
            image = snapshot_kv(snap.data)
        except (ValueError, TypeError):
            continue
        head = parse_header(image) if image else None
        if head is None:
            continue
        images += 1
        seals.seen(head[0], head[1], hashlib.sha256(image).digest()[:16],
                   {"node": n.name, "index": snap.header.index, "term": snap.header.term,
                    "what": "snapshot image"})
    return images


def _snapshot_events(seals: _Seals, n: Node) -> int:
    """The sealed images `snapshot-taken` events describe, pruned files included;
    returns how many."""
    images = 0
    for ev in n.events:
        if ev.get("kind") != EventKind.SNAPSHOT_TAKEN or "image_nonce" not in ev:
            continue
        try:
            kid = int(ev["image_key_id"])
            nonce = bytes.fromhex(str(ev["image_nonce"]))
            ident = bytes.fromhex(str(ev["image_sha"]))[:16]
        except (KeyError, TypeError, ValueError):
            continue
        idx = ev.get("index") if isinstance(ev.get("index"), int) else 0
        images += 1
        seals.seen(kid, nonce, ident, {"node": n.name, "index": idx, "term": ev.get("term"),
                                       "what": "snapshot image"})
    return images


def _epoch_restarts(col: Collector, n: Node) -> None:
    """The epoch is what keeps one node's processes apart: two starts with the same one
    while cut over restart the nonce space where it was, and the first seal of the
    second process repeats the first seal of the first (the envelopes themselves may be
    compacted away by the time anyone looks)."""
    starts: dict[int, list[Any]] = defaultdict(list)
    for ev in n.events:
        ep = ev.get("nonce_epoch")
        if ev.get("kind") == EventKind.START and isinstance(ep, int) and ep \
                and ev.get("cutover"):
            starts[ep].append(ev.get("t"))
    for ep, ts in sorted(starts.items()):
        if len(ts) > 1:
            col.add(n.name, None, None, None,
                    f"{n.name} started {len(ts)} times with nonce epoch {ep} while cut "
                    f"over: every nonce the first of them sealed can repeat",
                    nonce_epoch=ep, t=ts[1])


def _reuses(col: Collector, seals: _Seals) -> None:
    """Every ciphertext after the first one a (key id, nonce) pair sealed."""
    for (kid, nonce), where in seals.uses.items():
        if len(where) < 2:
            continue
        ordered = sorted(where.values(), key=lambda w: (w["index"], w["node"]))
        w0 = ordered[0]
        for w in ordered[1:]:
            col.add(w["node"], w["index"], w["term"], None,
                    f"key id {kid} nonce {nonce.hex()} seals two ciphertexts: this "
                    f"{w['what']} and the {w0['what']} at {w0['index']} "
                    f"(term {w0['term']}, {w0['node']})",
                    key_id=kid, nonce=nonce.hex(), first_use_index=w0["index"],
                    sealed=w["what"])
