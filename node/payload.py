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
OP_BOOTSTRAP = 0x04  # first raft DEK
OP_ROTATION = 0x05  # sub-tag in payload[1]
# elastickv reserves 0x03-0x07 for encryption entries; its FSM halts on any of them it
# cannot apply (kv/fsm.go applyReservedOpcode). 0x03 (writer registration) and 0x06/0x07
# have no entry in this model.
OP_ENCRYPTION_MIN = 0x03
OP_ENCRYPTION_MAX = 0x07
SUB_ROTATE_DEK = 0x01
SUB_ENABLE_ENVELOPE = 0x05

OPCODE_NAMES = {OP_USER: "user", OP_LEASE: "lease", OP_BOOTSTRAP: "bootstrap",
                OP_ROTATION: "rotation"}


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

def bootstrap_payload(key_id: int, wrapped: bytes) -> bytes:
    return bytes([OP_BOOTSTRAP]) + msgpack.packb({"id": key_id, "wrapped": wrapped},
                                                  use_bin_type=True)


def rotate_payload(key_id: int, wrapped: bytes) -> bytes:
    return bytes([OP_ROTATION, SUB_ROTATE_DEK]) + msgpack.packb(
        {"id": key_id, "wrapped": wrapped}, use_bin_type=True)


def marker_payload(dek: int) -> bytes:
    """The enable-raft-envelope marker: carries the active DEK id its proposer saw."""
    return bytes([OP_ROTATION, SUB_ENABLE_ENVELOPE]) + msgpack.packb({"dek": dek})


def rotation_body(payload: bytes) -> tuple[int, Any]:
    """(sub-tag, decoded body) of an opcode-0x05 payload."""
    if len(payload) < 2:
        raise PayloadError("rotation payload without a sub-tag")
    try:
        body = msgpack.unpackb(payload[2:], raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise PayloadError(f"malformed rotation body: {e}") from None
    return payload[1], body
