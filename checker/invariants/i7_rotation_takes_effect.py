"""I7, rotation takes effect: once a node applied a rotation to DEK d, every entry it
seals afterwards is sealed under d or a newer key (one installed at a later index).

Who sealed an envelope, and when, is in its nonce: node number, the process's epoch and
a counter that only grows. A node's `encryption-applied` event of a rotation carries the
nonce position it had then (`nonce_node`, `nonce_epoch`, `nonce_counter`), so its
envelopes with a later position were sealed after it applied the rotation. Epochs grow
across a node's starts, so a later process counts as later. A rotation that does not
re-key the proposer, or a replayed older rotation that re-activates an older key
(elastickv), shows here; a rotation's own entry, sealed before it applied, does not.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from node.envelope import split_nonce
from node.events import EventKind

from .entries import Decoded, DecodedLog, EntryKey
from .keys import Keys
from .nodes import Node
from .report import Collector, InvariantResult

Rotation = tuple[int, int, int, int]  # (nonce epoch, nonce counter, dek, entry index)


@dataclass
class _Sealers:
    """Which node a nonce's node number names, and the rotations each node applied at
    which nonce position (positions in an epoch two processes shared are left out)."""

    by_num: dict[int, str] = field(default_factory=dict)
    rotations: dict[str, list[Rotation]] = field(default_factory=lambda: defaultdict(list))
    ambiguous: set[tuple[str, int]] = field(default_factory=set)


def check_i7(nodes: list[Node], decoded: DecodedLog, keys: Keys) -> InvariantResult:
    col = Collector("I7")
    sealers = _sealers(nodes)
    checked = 0
    for k, d in sorted(decoded.items(), key=lambda kv: kv[0][:2]):
        checked += _check_entry(col, k, d, sealers, keys)
    col.result.summary = {"entries_checked": checked,
                          "rotations_seen": {n: len(r) for n, r in
                                             sorted(sealers.rotations.items())}}
    return col.finish()


def _sealers(nodes: list[Node]) -> _Sealers:
    out = _Sealers()
    for i, n in enumerate(sorted(x.name for x in nodes)):
        out.by_num[i + 1] = n  # the node's default: its place among the sorted peers
    epochs: Counter[tuple[str, int]] = Counter()
    for n in nodes:
        for ev in n.events:
            num = ev.get("nonce_node")
            if isinstance(num, int) and ev.get("kind") == EventKind.START:
                out.by_num[num] = n.name
                if isinstance(ev.get("nonce_epoch"), int):
                    epochs[(n.name, ev["nonce_epoch"])] += 1
            if ev.get("kind") != EventKind.ENCRYPTION_APPLIED \
                    or not str(ev.get("what", "")).startswith("rotate"):
                continue
            dek, ep, ctr, idx = (ev.get("dek"), ev.get("nonce_epoch"),
                                 ev.get("nonce_counter"), ev.get("index"))
            if all(isinstance(v, int) for v in (dek, ep, ctr, idx)):
                out.rotations[n.name].append((ep, ctr, dek, idx))
    # An epoch two processes of a node started with orders nothing (I5 reports it when
    # the node was cut over; elastickv's pre-cutover processes all have epoch 0).
    out.ambiguous = {k for k, c in epochs.items() if c > 1}
    for name in out.rotations:
        out.rotations[name] = [r for r in out.rotations[name]
                               if (name, r[0]) not in out.ambiguous]
    return out


def _check_entry(col: Collector, k: EntryKey, d: Decoded, sealers: _Sealers,
                 keys: Keys) -> int:
    """One wrapped entry against the rotations its sealer had applied before sealing
    it; 1 if it could be checked, else 0."""
    if d.status != "wrapped" or d.nonce is None or d.key_id is None:
        return 0
    num, ep, ctr = split_nonce(d.nonce)
    node = sealers.by_num.get(num)
    if node is None or not sealers.rotations.get(node) or (node, ep) in sealers.ambiguous:
        return 0
    used = keys.point(d.key_id)
    if used is None:
        return 0  # an unknown key is I6's finding
    before = [(keys.point(dek), dek, idx) for rep, rctr, dek, idx in sealers.rotations[node]
              if (ep, ctr) >= (rep, rctr) and keys.point(dek) is not None]
    if not before:
        return 1
    floor_point, floor_dek, floor_idx = max(before)
    if d.key_id != floor_dek and used < floor_point:  # type: ignore[operator]
        col.add(node, k[0], k[1], d.opcode,
                f"{node} sealed this entry under key {d.key_id} after it had applied "
                f"the rotation to key {floor_dek} (entry {floor_idx}): the rotation "
                f"did not take effect", key_id=d.key_id, rotated_to=floor_dek,
                rotation_index=floor_idx)
    return 1
