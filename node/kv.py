"""The replicated state machine: a map of string keys to strings or integers.

Deterministic by construction (same commands in the same order give the same map and
the same digest), because invariant I4 compares replicas by that digest.
"""
from __future__ import annotations

import hashlib
from typing import Any

import msgpack

# Keys the node writes for itself, not for a client (elastickv's `!encryption|...`
# Pebble namespace): no client key starts with "!".
METADATA_PREFIX = "!encryption|"

# The msgpack ext type of a value sealed by the elastickv profile's storage envelope
# (`node.storenv`): how the durable store and a snapshot image hold it.
STORED_EXT = 0x53


class Unopened:
    """A stored value this node cannot open (the elastickv profile's storage envelope,
    `node.storenv`: a key id its keystore lacks, or a tag that fails). It holds the
    envelope, never a plaintext: a read of it fails (`read-error`), a cas on it cannot be
    evaluated here, and an image of the map carries it back out as it came in."""

    __slots__ = ("code", "envelope", "key_id")

    def __init__(self, envelope: bytes, key_id: int, code: str) -> None:
        self.envelope, self.key_id, self.code = bytes(envelope), key_id, code

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unopened) and other.envelope == self.envelope

    def __hash__(self) -> int:
        return hash(self.envelope)

    def __repr__(self) -> str:  # no bytes: an envelope is ciphertext, but keep logs short
        return f"Unopened(key_id={self.key_id}, {self.code})"


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, Unopened):
        return msgpack.ExtType(STORED_EXT, obj.envelope)
    raise TypeError(f"cannot pack {type(obj).__name__}")


class KV:
    """read / write / cas on string keys."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self._writes: list[tuple[str, Any]] = []

    def put(self, key: str, value: Any) -> None:
        """The one way a key is written, by a command or by any other entry's apply:
        what was written since the last `take_writes` is what the elastickv profile's
        durable store must persist after that entry (docs/protocol.md, row 7)."""
        self.data[key] = value
        self._writes.append((key, value))

    def take_writes(self) -> list[tuple[str, Any]]:
        """The writes since the last call, in order (and forget them)."""
        out, self._writes = self._writes, []
        return out

    def apply(self, cmd: dict[str, Any]) -> tuple[bool, Any]:
        """Apply one command; returns (ok, value). A cas mismatch is (False, current)."""
        op = cmd.get("op")
        key = cmd.get("key")
        if not isinstance(key, str):
            return False, "bad-request"
        if op == "write":
            self.put(key, cmd.get("value"))
            return True, None
        if op == "cas":
            cur = self.data.get(key)
            if isinstance(cur, Unopened):
                # The model compares at apply; elastickv's read-modify-write reads at
                # the proposer, where this is a read error and nothing is proposed.
                return False, cur
            if cur == cmd.get("from"):
                self.put(key, cmd.get("to"))
                return True, None
            return False, cur
        if op == "read":
            return True, self.data.get(key)
        return False, "bad-request"

    def read(self, key: str) -> Any:
        return self.data.get(key)

    def snapshot(self) -> bytes:
        return msgpack.packb(sorted(self.data.items()), use_bin_type=True,
                             default=_pack_default)

    def restore(self, blob: bytes) -> None:
        """Replace the whole map; writes not yet taken are part of what it replaces."""
        self.data = dict(msgpack.unpackb(blob, raw=False)) if blob else {}
        self._writes = []

    def digest(self) -> str:
        """A short stable fingerprint of the user map, I4's evidence of convergence at an
        applied index. The encryption metadata rows (`METADATA_PREFIX`, the elastickv
        profile's writer registry, row 9) are left out: elastickv writes them synced but
        without moving the store's applied index (row 7), so a node restarted from its
        store holds rows from entries past the index it reports, and its map at "applied
        i" is not the map other replicas had at i. The registry is judged by its own
        halts (a rollback or a collision), not by I4."""
        if not any(k.startswith(METADATA_PREFIX) for k in self.data):
            return hashlib.sha256(self.snapshot()).hexdigest()[:16]
        user = sorted((k, v) for k, v in self.data.items() if not k.startswith(METADATA_PREFIX))
        return hashlib.sha256(msgpack.packb(user, use_bin_type=True,
                                            default=_pack_default)).hexdigest()[:16]


# The image a snapshot carries (Raft's Snapshot.data): the map plus the encryption state
# that the compacted entries installed (§6), so a follower that installs it at run time
# can adopt C and the keys. The snapshot file header repeats `cutover` and the blob.

def snapshot_data(kv_image: bytes, cutover: int, encryption: bytes) -> bytes:
    return msgpack.packb({"kv": kv_image, "cutover": cutover, "enc": encryption},
                         use_bin_type=True)


def _image(data: bytes) -> dict:
    if not data:
        return {}
    img = msgpack.unpackb(data, raw=False)
    return img if isinstance(img, dict) else {"kv": data}


def snapshot_kv(data: bytes) -> bytes:
    return _image(data).get("kv", b"")


def snapshot_enc(data: bytes) -> tuple[int, bytes]:
    img = _image(data)
    return int(img.get("cutover", 0)), bytes(img.get("enc", b""))
