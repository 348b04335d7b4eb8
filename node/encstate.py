"""The encryption-state blob of a snapshot: the one module that reads its bytes.

A snapshot carries the keys and the cutover its compacted entries installed (protocol
§6), in the header's ``encryption`` region (opaque to `node.snapshot`) and again in the
data region's ``enc`` field (`node.kv.snapshot_data`)::

    msgpack {"keys": {id: {"wrapped": bin, "purpose": str, "created_index": int}},
             "active": int, "cutover": int}

An empty blob means "no encryption state" (elastickv's snapshots, for one). The node
writes it in `node.cutover.Cutover.snapshot_fields`; the node on InstallSnapshot and the
offline checker both read it through this module, so the checker reads the format
without importing the protocol logic (docs/architecture.md: checker/ imports node's byte
formats only).
"""
from __future__ import annotations

from typing import Any

import msgpack

__all__ = ["as_int", "decode_encryption_state"]


def decode_encryption_state(blob: bytes) -> dict[str, Any] | None:
    """The snapshot header's encryption blob, or None when empty; ValueError if malformed.

    The decoder of `Cutover.snapshot_fields`'s blob: msgpack ``{"keys":
    {id: {"wrapped": bin, "purpose": str, "created_index": int}}, "active": int,
    "cutover": int}``. Returns ``{"keys": {id: (wrapped, purpose, created_index)},
    "active": int, "cutover": int}``.
    """
    if not blob:
        return None
    try:
        doc = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    except (ValueError, TypeError) as e:
        raise ValueError(f"encryption blob is not msgpack: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError("encryption blob is not a map")
    keys: dict[int, tuple[bytes, str, int]] = {}
    raw_keys = doc.get("keys") or {}
    if not isinstance(raw_keys, dict):
        raise ValueError("encryption blob: keys is not a map")
    for k, rec in raw_keys.items():
        kid = as_int(k)
        if kid is None or not isinstance(rec, dict) or not isinstance(rec.get("wrapped"), bytes):
            raise ValueError(f"encryption blob: malformed key entry {k!r}")
        created = as_int(rec.get("created_index", 0))
        keys[kid] = (rec["wrapped"], str(rec.get("purpose", "")), created or 0)
    active = as_int(doc.get("active", 0))
    cutover = as_int(doc.get("cutover", 0))
    if active is None or cutover is None:
        raise ValueError("encryption blob: active/cutover is not an integer")
    return {"keys": keys, "active": active, "cutover": cutover}


def as_int(v: Any) -> int | None:
    """An int from msgpack/JSON-ish input (bools refused, digit strings accepted)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.isascii() and v.isdigit():
        return int(v)
    return None
