"""The replicated state machine: a map of string keys to strings or integers.

Deterministic by construction (same commands in the same order give the same map and
the same digest), because invariant I4 compares replicas by that digest.
"""
from __future__ import annotations

import hashlib
from typing import Any

import msgpack


class KV:
    """read / write / cas on string keys."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def apply(self, cmd: dict[str, Any]) -> tuple[bool, Any]:
        """Apply one command; returns (ok, value). A cas mismatch is (False, current)."""
        op = cmd.get("op")
        key = cmd.get("key")
        if not isinstance(key, str):
            return False, "bad-request"
        if op == "write":
            self.data[key] = cmd.get("value")
            return True, None
        if op == "cas":
            cur = self.data.get(key)
            if cur == cmd.get("from"):
                self.data[key] = cmd.get("to")
                return True, None
            return False, cur
        if op == "read":
            return True, self.data.get(key)
        return False, "bad-request"

    def read(self, key: str) -> Any:
        return self.data.get(key)

    def snapshot(self) -> bytes:
        return msgpack.packb(sorted(self.data.items()), use_bin_type=True)

    def restore(self, blob: bytes) -> None:
        self.data = dict(msgpack.unpackb(blob, raw=False)) if blob else {}

    def digest(self) -> str:
        """A short stable fingerprint of the whole map."""
        return hashlib.sha256(self.snapshot()).hexdigest()[:16]


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
