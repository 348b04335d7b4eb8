"""The byte format of a Raft entry's data: the proposal envelope and the opcodes.

One module owns it (the node, the simulator and the offline checker all import it):

    entry.data = 0x01 | proposal_id (u64 BE) | payload

The outer proposal envelope is never encrypted: the proposer needs the id back to
answer its client. `payload[0]` is the opcode of a cleartext payload (§2 of the
protocol); once the cutover is active, payloads above the cutover index are wrapped
(see the envelope module) and the opcode is inside the ciphertext.
"""
from __future__ import annotations

import struct
from typing import Any

import msgpack

PROPOSAL_VERSION = 0x01
_HEAD = struct.Struct(">BQ")
HEADER_LEN = _HEAD.size  # 9 bytes

OP_USER = 0x00  # read/write/cas on the KV map, msgpack
OP_LEASE = 0x02  # leader lease / heartbeat entry
OP_REGISTRATION = 0x03  # writer registration (elastickv profile only)
OP_BOOTSTRAP = 0x04  # first raft DEK
OP_ROTATION = 0x05  # sub-tag in payload[1]
# elastickv reserves 0x03-0x07 for encryption entries; its FSM halts on any of them it
# cannot apply (kv/fsm.go applyReservedOpcode). 0x03 (writer registration) exists only in
# the elastickv profile (the fixed profile halts on it: an unknown opcode); 0x06/0x07 have
# no entry in this model.
OP_ENCRYPTION_MIN = 0x03
OP_ENCRYPTION_MAX = 0x07
SUB_ROTATE_DEK = 0x01
SUB_ENABLE_STORAGE = 0x04  # elastickv profile only (RotateSubEnableStorageEnvelope)
SUB_ENABLE_ENVELOPE = 0x05

OPCODE_NAMES = {OP_USER: "user", OP_LEASE: "lease", OP_REGISTRATION: "registration",
                OP_BOOTSTRAP: "bootstrap", OP_ROTATION: "rotation"}


class PayloadError(ValueError):
    """Entry data that does not follow this format: apply must fail closed on it."""


def encode_proposal(proposal_id: int, payload: bytes) -> bytes:
    """Wrap a payload in the proposal envelope."""
    return _HEAD.pack(PROPOSAL_VERSION, proposal_id) + payload


def decode_proposal(data: bytes) -> tuple[int, bytes]:
    """(proposal id, payload) of an entry's data."""
    if len(data) < HEADER_LEN or data[0] != PROPOSAL_VERSION:
        raise PayloadError(f"not a proposal envelope (length {len(data)}, "
                           f"first byte {data[:1].hex() or 'none'})")
    _, pid = _HEAD.unpack_from(data)
    return pid, data[HEADER_LEN:]


def user_payload(command: dict[str, Any]) -> bytes:
    """A client command (op, key, value / from, to) as an opcode-0x00 payload."""
    return bytes([OP_USER]) + msgpack.packb(command, use_bin_type=True)


def lease_payload(leader: str, term: int) -> bytes:
    return bytes([OP_LEASE]) + msgpack.packb({"leader": leader, "term": term})


def decode_body(payload: bytes) -> Any:
    """The msgpack body after the opcode byte(s) of a cleartext payload."""
    try:
        return msgpack.unpackb(payload[1:], raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise PayloadError(f"malformed payload body: {e}") from None


def opcode(payload: bytes) -> int:
    if not payload:
        raise PayloadError("empty payload")
    return payload[0]


# Encryption admin entries (protocol §2): a DEK travels only KEK-wrapped.

def bootstrap_payload(key_id: int, wrapped: bytes,
                      writers: list[tuple[int, int]] | None = None,
                      storage: tuple[int, bytes] | None = None) -> bytes:
    """`writers` (the elastickv profile only): the bootstrap's writer batch, one (full
    node id, local epoch) per member, which its apply registers under the new raft DEK
    (elastickv's BootstrapPayload.BatchRegistry). `storage` (the elastickv profile only):
    the storage DEK's (id, KEK-wrapped DEK) (BootstrapPayload.StorageDEKID,
    WrappedStorage)."""
    body: dict[str, Any] = {"id": key_id, "wrapped": wrapped}
    if writers is not None:
        body["writers"] = [[n, e] for n, e in writers]
    if storage is not None:
        body["storage"] = [storage[0], storage[1]]
    return bytes([OP_BOOTSTRAP]) + msgpack.packb(body, use_bin_type=True)


def rotate_payload(key_id: int, wrapped: bytes) -> bytes:
    return bytes([OP_ROTATION, SUB_ROTATE_DEK]) + msgpack.packb(
        {"id": key_id, "wrapped": wrapped}, use_bin_type=True)


def marker_payload(dek: int) -> bytes:
    """The enable-raft-envelope marker: carries the active DEK id its proposer saw."""
    return bytes([OP_ROTATION, SUB_ENABLE_ENVELOPE]) + msgpack.packb({"dek": dek})


def enable_storage_payload(dek: int) -> bytes:
    """The enable-storage-envelope entry (elastickv's RotateSubEnableStorageEnvelope,
    proposed by EnableStorageEnvelope): the storage DEK id its proposer saw active."""
    return bytes([OP_ROTATION, SUB_ENABLE_STORAGE]) + msgpack.packb({"dek": dek})


def rotation_body(payload: bytes) -> tuple[int, Any]:
    """(sub-tag, decoded body) of an opcode-0x05 payload."""
    if len(payload) < 2:
        raise PayloadError("rotation payload without a sub-tag")
    try:
        body = msgpack.unpackb(payload[2:], raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise PayloadError(f"malformed rotation body: {e}") from None
    return payload[1], body


def registration_payload(dek_id: int, full_node_id: int, local_epoch: int) -> bytes:
    """A writer registration (elastickv's 0x03 OpRegistration, `internal/encryption/fsmwire`
    EncodeRegistration: dek id u32, full node id u64, local epoch u16): "this process
    load of node `full_node_id` seals under raft DEK `dek_id` with nonce epoch
    `local_epoch`". msgpack here, like every other body of the model."""
    return bytes([OP_REGISTRATION]) + msgpack.packb(
        {"dek": dek_id, "node": full_node_id, "epoch": local_epoch})


def decode_registration(payload: bytes) -> tuple[int, int, int]:
    """(dek id, full node id, local epoch) of an opcode-0x03 payload; PayloadError when
    it does not decode or a field is out of its wire range (elastickv's
    DecodeRegistration fails on a short or long body, and its apply halts on that)."""
    if opcode(payload) != OP_REGISTRATION:
        raise PayloadError(f"not a registration: opcode 0x{payload[0]:02x}")
    body = decode_body(payload)
    try:
        dek, node, epoch = body["dek"], body["node"], body["epoch"]
    except (KeyError, TypeError):
        raise PayloadError(f"malformed registration body: {body!r}") from None
    for name, v, top in (("dek", dek, 2**32), ("node", node, 2**64), ("epoch", epoch, 2**16)):
        if type(v) is not int or not 0 <= v < top:
            raise PayloadError(f"registration {name} out of range: {v!r}")
    return dek, node, epoch


def registry_rows(payload: bytes) -> list[tuple[int, int, int]]:
    """The writer-registry rows (dek id, full node id, local epoch) an entry registers,
    in order: an 0x03's one row, a bootstrap's writer batch under its key; none for any
    other payload. One reading for the node's apply and the checker's replay."""
    op = opcode(payload)
    if op == OP_REGISTRATION:
        return [decode_registration(payload)]
    if op != OP_BOOTSTRAP:
        return []
    body = decode_body(payload)
    writers = body.get("writers") if isinstance(body, dict) else None
    if not writers:
        return []
    try:
        dek = int(body["id"])
        rows = [(dek, int(n), int(e)) for n, e in writers]
    except (KeyError, TypeError, ValueError):
        raise PayloadError(f"malformed bootstrap writer batch: {writers!r}") from None
    for _d, n, e in rows:
        if not 0 < n < 2**64 or not 0 <= e < 2**16:
            raise PayloadError(f"bootstrap writer out of range: {n!r}, {e!r}")
    return rows
