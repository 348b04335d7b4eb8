"""``sidecar.json`` in a node's data dir (protocol §1): the only module that knows its format.

The sidecar is the durable encryption state: the cutover index C, the DEKs (KEK-wrapped
only) and the epoch that keeps nonces unique across restarts. Losing it would lose the
cutover, so:

* a missing file means a node that never wrote one (all zeros, no keys), but a file
  that is present and does not parse is a `SidecarError` naming the file, never a reset;
* `save` replaces the file atomically (temp file, fsync, rename, fsync the directory,
  via ``node.disk.Disk.write_atomic``); a leftover ``sidecar.json.tmp`` from a crash is
  never read;
* `save` refuses a write that would move the state backwards (applied index down, C
  changed once set, a key dropped or swapped), because each of those is a protocol bug
  that would otherwise be persisted and replayed forever.

File format (JSON, UTF-8, sorted keys)::

    {"format": 1, "raft_applied_index": int, "raft_envelope_cutover_index": int,
     "active_raft_dek": u32, "local_epoch": u16,
     "keys": {"<id>": {"wrapped": base64, "purpose": str, "created_index": int}},
     "checksum": u32}

``checksum`` is the CRC-32 of the other fields as compact JSON with sorted keys
(``separators=(",", ":")``). Why: a flipped bit in a digit (an applied index, the cutover
index, the epoch) still parses and validates, and would be believed; the checksum turns
it into a `SidecarCorruptError`. A file without it (written before it existed) is read
as before; every save writes it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.disk import REAL, Disk
from node.envelope import MAX_KEY_ID
from node.keystore import WrappedKey

__all__ = [
    "FORMAT",
    "EpochExhaustedError",
    "SIDECAR_NAME",
    "Sidecar",
    "SidecarCorruptError",
    "SidecarError",
    "bump_epoch",
    "load",
    "next_epoch",
    "save",
    "sidecar_path",
]

FORMAT = 1
SIDECAR_NAME = "sidecar.json"
_FIELDS = {
    "format",
    "raft_applied_index",
    "raft_envelope_cutover_index",
    "active_raft_dek",
    "local_epoch",
    "keys",
}
_KEY_FIELDS = {"wrapped", "purpose", "created_index"}
CHECKSUM = "checksum"  # optional on reading (older files), always written


class SidecarError(Exception):
    """The sidecar cannot be read or must not be written; names the file so an operator can act."""

    def __init__(self, file: Path | str, reason: str) -> None:
        self.file = Path(file)
        self.reason = reason
        super().__init__(f"sidecar {self.file}: {reason}")


class SidecarCorruptError(SidecarError):
    """The file is present but damaged (does not parse, or fails its checksum): the node
    must not start on it, and must not reset it."""


@dataclass(slots=True)
class Sidecar:
    """The durable encryption state of one node; zero values mean "not yet"."""

    raft_applied_index: int = 0
    raft_envelope_cutover_index: int = 0
    active_raft_dek: int = 0
    keys: dict[int, WrappedKey] = field(default_factory=dict)
    local_epoch: int = 0
    # The elastickv profile's storage envelope (docs/protocol.md, row 11; elastickv's
    # Active.Storage, StorageEnvelopeActive, StorageEnvelopeCutoverIndex and the storage
    # DEK's LocalEpoch). Written (as one optional "storage" object) only once a storage
    # DEK is active, so a fixed-profile sidecar is byte for byte what it was.
    active_storage_dek: int = 0
    storage_envelope_active: bool = False
    storage_cutover_index: int = 0
    storage_epoch: int = 0


STORAGE = "storage"  # the optional object: {"active", "enabled", "cutover_index", "epoch"}
_STORAGE_FIELDS = {"active", "enabled", "cutover_index", "epoch"}


def sidecar_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / SIDECAR_NAME


class EpochExhaustedError(ValueError):
    """Every 16-bit epoch has been used: a new one would repeat a nonce prefix."""


def next_epoch(epoch: int) -> int:
    """The epoch after `epoch`: +1 (0 is reserved for "never started").

    It never wraps: after 65535 start-ups every epoch, and with it every nonce prefix
    a DEK may have used, is spent, so the next start is refused (`EpochExhaustedError`)
    rather than repeat one. elastickv refuses the same way (`ErrLocalEpochExhausted`);
    the model used to wrap to 1 and would have repeated nonces after 65,535 starts.
    """
    if epoch >= 0xFFFF:
        raise EpochExhaustedError(f"local_epoch {epoch} is the last one: a further start "
                                  f"would repeat nonces")
    return epoch + 1


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate(s: Sidecar) -> None:
    """Raise ValueError if `s` is not a state the protocol can reach."""
    for name in ("raft_applied_index", "raft_envelope_cutover_index"):
        v = getattr(s, name)
        if not _is_int(v) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    if not _is_int(s.active_raft_dek) or not 0 <= s.active_raft_dek <= MAX_KEY_ID:
        raise ValueError(f"active_raft_dek must be a u32, got {s.active_raft_dek!r}")
    if not _is_int(s.local_epoch) or not 0 <= s.local_epoch <= 0xFFFF:
        raise ValueError(f"local_epoch must be a u16, got {s.local_epoch!r}")
    if not isinstance(s.keys, dict):
        raise ValueError("keys must be a dict of key id -> WrappedKey")
    for key_id, rec in s.keys.items():
        if not _is_int(key_id) or not 1 <= key_id <= MAX_KEY_ID:
            raise ValueError(f"key id must be in 1..{MAX_KEY_ID}, got {key_id!r}")
        if not isinstance(rec, WrappedKey):
            # Only WrappedKey can carry a key here, and it only accepts KEK-wrapped blobs.
            raise ValueError(f"key {key_id} is not a WrappedKey")
    if s.active_raft_dek and s.active_raft_dek not in s.keys:
        raise ValueError(f"active_raft_dek {s.active_raft_dek} is not among the keys")
    if s.raft_envelope_cutover_index and not s.active_raft_dek:
        raise ValueError("cutover index is set but no raft DEK is active")
    if s.active_storage_dek and s.active_storage_dek not in s.keys:
        raise ValueError(f"active_storage_dek {s.active_storage_dek} is not among the keys")
    if (s.storage_envelope_active or s.storage_cutover_index) and not s.active_storage_dek:
        raise ValueError("the storage envelope is on but no storage DEK is active")
    if not _is_int(s.storage_epoch) or not 0 <= s.storage_epoch <= 0xFFFF:
        raise ValueError(f"storage_epoch must be a u16, got {s.storage_epoch!r}")


def _encode(s: Sidecar) -> bytes:
    doc = {
        "format": FORMAT,
        "raft_applied_index": s.raft_applied_index,
        "raft_envelope_cutover_index": s.raft_envelope_cutover_index,
        "active_raft_dek": s.active_raft_dek,
        "local_epoch": s.local_epoch,
        "keys": {
            str(k): {
                "wrapped": base64.b64encode(r.wrapped).decode("ascii"),
                "purpose": r.purpose,
                "created_index": r.created_index,
            }
            for k, r in sorted(s.keys.items())
        },
    }
    if s.active_storage_dek:
        doc[STORAGE] = {"active": s.active_storage_dek,
                        "enabled": bool(s.storage_envelope_active),
                        "cutover_index": s.storage_cutover_index, "epoch": s.storage_epoch}
    doc[CHECKSUM] = _checksum(doc)
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _checksum(doc: dict[str, Any]) -> int:
    body = {k: v for k, v in doc.items() if k != CHECKSUM}
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate field {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _decode(raw: bytes) -> Sidecar:
    """Parse strictly: unknown or missing fields fail, since guessing could lose the cutover."""
    try:
        doc = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
        )
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8: {e.reason}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(doc, dict):
        raise ValueError("top level is not a JSON object")
    if set(doc) - {CHECKSUM, STORAGE} != _FIELDS:
        missing = sorted(_FIELDS - set(doc))
        extra = sorted(set(doc) - _FIELDS - {CHECKSUM, STORAGE})
        raise ValueError(f"fields do not match (missing {missing}, unknown {extra})")
    if doc["format"] != FORMAT or not _is_int(doc["format"]):
        raise ValueError(f"unsupported sidecar format {doc['format']!r}")
    if not isinstance(doc["keys"], dict):
        raise ValueError("keys is not a JSON object")
    keys: dict[int, WrappedKey] = {}
    for sid, entry in doc["keys"].items():
        if not (sid.isascii() and sid.isdigit()) or sid != str(int(sid)):
            raise ValueError(f"key id {sid!r} is not a canonical decimal integer")
        if not isinstance(entry, dict) or set(entry) != _KEY_FIELDS:
            raise ValueError(f"key {sid}: expected fields {sorted(_KEY_FIELDS)}")
        if not isinstance(entry["wrapped"], str):
            raise ValueError(f"key {sid}: wrapped is not a base64 string")
        try:
            blob = base64.b64decode(entry["wrapped"], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"key {sid}: wrapped is not valid base64") from None
        try:
            keys[int(sid)] = WrappedKey(blob, entry["purpose"], entry["created_index"])
        except ValueError as e:
            raise ValueError(f"key {sid}: {e}") from None
    s = Sidecar(
        raft_applied_index=doc["raft_applied_index"],
        raft_envelope_cutover_index=doc["raft_envelope_cutover_index"],
        active_raft_dek=doc["active_raft_dek"],
        keys=keys,
        local_epoch=doc["local_epoch"],
    )
    if STORAGE in doc:
        st = doc[STORAGE]
        if not isinstance(st, dict) or set(st) != _STORAGE_FIELDS \
                or not isinstance(st["enabled"], bool):
            raise ValueError(f"storage: expected fields {sorted(_STORAGE_FIELDS)}")
        s.active_storage_dek, s.storage_envelope_active = st["active"], st["enabled"]
        s.storage_cutover_index, s.storage_epoch = st["cutover_index"], st["epoch"]
        if not all(_is_int(v) and v > 0 for v in (st["active"],)) \
                or not _is_int(st["cutover_index"]) or st["cutover_index"] < 0:
            raise ValueError("storage: active must be a key id, cutover_index >= 0")
    _validate(s)
    if CHECKSUM in doc:  # last: a structural fault is named as itself, not as a bad sum
        got = doc[CHECKSUM]
        if not _is_int(got) or got != _checksum(doc):
            raise ValueError(f"checksum mismatch (stored {got!r}, computed {_checksum(doc)})")
    return s


def load(data_dir: str | os.PathLike[str], disk: Disk = REAL) -> Sidecar:
    """The node's sidecar; defaults if it was never written, SidecarError if it is damaged."""
    path = sidecar_path(data_dir)
    try:
        raw = disk.read_bytes(path)
    except FileNotFoundError:
        return Sidecar()
    except OSError as e:
        raise SidecarError(path, f"cannot read: {e.strerror}") from None
    try:
        return _decode(raw)
    except ValueError as e:
        raise SidecarCorruptError(path, f"corrupt: {e}") from None


def _check_transition(path: Path, old: Sidecar, new: Sidecar) -> None:
    if new.raft_applied_index < old.raft_applied_index:
        raise SidecarError(
            path,
            f"refusing to move raft_applied_index back from {old.raft_applied_index} "
            f"to {new.raft_applied_index}",
        )
    c_old, c_new = old.raft_envelope_cutover_index, new.raft_envelope_cutover_index
    if c_old and c_new != c_old:
        raise SidecarError(path, f"refusing to change the cutover index from {c_old} to {c_new}")
    if old.storage_envelope_active and not new.storage_envelope_active:
        raise SidecarError(path, "refusing to turn the storage envelope off")
    for key_id, rec in old.keys.items():
        if key_id not in new.keys:
            raise SidecarError(path, f"refusing to drop key id {key_id}")
        if new.keys[key_id].wrapped != rec.wrapped:
            raise SidecarError(path, f"refusing to replace the wrapped DEK of key id {key_id}")


def save(data_dir: str | os.PathLike[str], sidecar: Sidecar, disk: Disk = REAL) -> None:
    """Durably replace the sidecar; when this returns the new state survives a crash."""
    path = sidecar_path(data_dir)
    try:
        _validate(sidecar)
    except ValueError as e:
        raise SidecarError(path, f"refusing to write an invalid state: {e}") from None
    _check_transition(path, load(data_dir, disk), sidecar)
    disk.write_atomic(path, _encode(sidecar))


def bump_epoch(data_dir: str | os.PathLike[str], disk: Disk = REAL) -> int:
    """Advance and persist `local_epoch` (see `next_epoch`); call once at every start-up.

    The new epoch is durable before it is returned, so no nonce built from it can be
    handed out by a process whose epoch a crash would then forget. A node whose epochs
    are spent gets a `SidecarError` naming the file (it must not start).
    """
    s = load(data_dir, disk)
    try:
        s.local_epoch = next_epoch(s.local_epoch)
    except EpochExhaustedError as e:
        raise SidecarError(sidecar_path(data_dir), str(e)) from None
    save(data_dir, s, disk)
    return s.local_epoch
