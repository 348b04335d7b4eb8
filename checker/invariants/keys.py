"""The cluster's known DEKs, and where each got installed.

Known DEKs are the union over the cluster (every node's sidecar and snapshot blobs, plus
install entries): I1 asks whether an entry authenticates under a DEK that a keystore
holds, and Raft replicates installs to everyone. A rotation above C is itself wrapped
under the old key, so install entries are learnt to a fixed point: open what opens,
harvest the keys it installs, try again until no new key appears. What went wrong on
the way (a key that does not unwrap, two different DEKs under one id, a malformed
install body, a bootstrap the applier ignores) is kept for I6.
"""
from __future__ import annotations

from typing import Any

from node.envelope import MAX_KEY_ID, UnwrapError, unwrap
from node.keystore import DekUnwrapError, Kek, Keystore, KeystoreError

from .entries import Decoded, DecodedLog, EntryKey, install_of
from .nodes import Node


class Keys:
    """The cluster's known DEKs (a real Keystore) and where each key got installed."""

    def __init__(self, keystore: Keystore) -> None:
        self.store = keystore
        self.installed: dict[int, tuple[int, str]] = {}  # key id -> (point, source)
        self.problems: list[dict[str, Any]] = []
        self.conflicts: list[dict[str, Any]] = []
        self.malformed_installs: list[dict[str, Any]] = []
        self.ignored_bootstraps: list[dict[str, Any]] = []

    def add(self, key_id: int, wrapped: bytes, purpose: str, created: int, source: str,
            node: str | None = None, index: int | None = None) -> bool:
        """Learn a DEK; True if the id was new."""
        if not 1 <= key_id <= MAX_KEY_ID:
            self.problems.append({"source": source, "key_id": key_id,
                                  "reason": "key id out of range"})
            return False
        new = key_id not in self.store
        try:
            self.store.install_wrapped(key_id, wrapped, purpose or "raft", max(created, 0))
        except DekUnwrapError as e:
            self.problems.append({"source": source, "key_id": key_id, "reason": str(e)})
            return False
        except (KeystoreError, ValueError) as e:
            self.conflicts.append({"source": source, "key_id": key_id, "reason": str(e),
                                   "node": node, "index": index})
            return False
        return new

    def installed_at(self, key_id: int, point: int, source: str) -> None:
        """Keep the lowest install point; at a tie an entry beats a snapshot's claim."""
        old = self.installed.get(key_id)

        def rank(p: int, src: str) -> tuple[int, bool]:
            return p, src.startswith("snapshot")

        if old is None or rank(point, source) < rank(*old):
            self.installed[key_id] = (point, source)

    def point(self, key_id: int) -> int | None:
        """The index from which `key_id` counts as installed, None if it never was."""
        got = self.installed.get(key_id)
        return got[0] if got else None


def learn_keys(nodes: list[Node], decoded: DecodedLog, holders: dict[EntryKey, list[str]],
               kek: Kek) -> Keys:
    """Every DEK the cluster holds: sidecars, snapshot blobs, then install entries (to a
    fixed point). Opens the envelopes of `decoded` on the way (`inner`, `error`)."""
    keys = Keys(Keystore(kek))
    _from_node_files(keys, nodes)
    for k, d in sorted(decoded.items(), key=lambda kv: kv[0][:2]):
        if d.status == "clear":
            _harvest(keys, k, d, holders)
    pending = sorted((k for k, d in decoded.items() if d.status == "wrapped"),
                     key=lambda k: k[:2])
    while pending:
        pending = _open_round(keys, pending, decoded, holders)
    return keys


def _from_node_files(keys: Keys, nodes: list[Node]) -> None:
    for n in nodes:
        if n.sidecar:
            for kid, wk in sorted(n.sidecar.keys.items()):
                keys.add(kid, wk.wrapped, wk.purpose, wk.created_index, f"sidecar of {n.name}",
                         n.name)
        for snap in n.snapshots:
            s = snap.header.index
            st = n.enc.get(s)
            for kid, (wrapped, purpose, created) in sorted((st or {}).get("keys", {}).items()):
                src = f"snapshot {s} of {n.name}"
                keys.add(kid, wrapped, purpose, created, src, n.name, s)
                keys.installed_at(kid, created if 0 < created <= s else s, src)


def _open_round(keys: Keys, pending: list[EntryKey], decoded: DecodedLog,
                holders: dict[EntryKey, list[str]]) -> list[EntryKey]:
    """Try every pending envelope once; the ones still missing their key, if this round
    learnt a new key (else nothing more can open)."""
    progress, still = False, []
    for k in pending:
        d = decoded[k]
        try:
            d.inner = unwrap(keys.store.get, d.payload)
        except UnwrapError as err:
            d.error = f"{err.code}: {err.reason}"
            if err.code == "unknown-key":
                still.append(k)
            continue
        d.error = None
        progress = _harvest(keys, k, d, holders) or progress
    return still if progress else []


def _harvest(keys: Keys, k: EntryKey, d: Decoded, holders: dict[EntryKey, list[str]]) -> bool:
    """Learn the key an install entry carries; True if it was a new one."""
    got = install_of(d.cleartext)
    if got is None:
        return False
    if isinstance(got, str):
        keys.malformed_installs.append({"index": k[0], "term": k[1], "reason": got})
        return False
    kid, wrapped, what = got
    if what == "bootstrap" and any(p < k[0] for p, _ in keys.installed.values()):
        # The node's applier ignores a bootstrap once a raft DEK is active (a retried
        # or duplicate request): it installs nothing, so it conflicts with nothing.
        keys.ignored_bootstraps.append({"index": k[0], "term": k[1], "key_id": kid})
        return False
    src = f"{what} entry {k[0]}"
    new = keys.add(kid, wrapped, "raft", k[0], src, holders[k][0], k[0])
    keys.installed_at(kid, k[0], src)
    return new
