"""The wrapped-payload byte format (protocol §2): the only module that knows it.

A payload above the cutover index is replaced by::

    version 0x01 (1) | flag 0x00 (1) | key_id u32 BE (4) | nonce (12)
    | AES-256-GCM ciphertext + tag (n + 16)

34 bytes of overhead. The AAD is ``b"R" | version | key_id`` (6 bytes), so rewriting
the key id or the version in the header breaks authentication instead of making a
replica decrypt under a key the proposer did not choose. The nonce is
``node_id u16 | local_epoch u16 | counter u64`` (see `NonceSource`).

The node, the simulator and the offline checker all import this module; nobody else
slices these bytes. `unwrap` either returns the exact plaintext or raises
`UnwrapError`: the apply path halts on it, and a replica that applied garbage instead
would diverge without anyone noticing.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "AAD_TAG",
    "DEK_LEN",
    "FLAG",
    "HEADER_LEN",
    "MAX_KEY_ID",
    "NONCE_LEN",
    "NonceExhaustedError",
    "NonceSource",
    "OVERHEAD",
    "TAG_LEN",
    "UnwrapError",
    "VERSION",
    "is_wrapped_shape",
    "make_nonce",
    "parse_header",
    "split_nonce",
    "unwrap",
    "wrap",
]

VERSION = 0x01
FLAG = 0x00
AAD_TAG = b"R"
DEK_LEN = 32  # AES-256 only: a shorter key handed to AESGCM would silently mean AES-128
NONCE_LEN = 12
TAG_LEN = 16
MAX_KEY_ID = 0xFFFF_FFFF  # key ids are u32; 0 means "no key" and never names a DEK

_HEAD = struct.Struct(">BBI")  # version, flag, key_id
_KEY_ID_OFF = 2
_NONCE_OFF = _HEAD.size  # 6
HEADER_LEN = _NONCE_OFF + NONCE_LEN  # 18: everything before the ciphertext
OVERHEAD = HEADER_LEN + TAG_LEN  # 34

_NONCE = struct.Struct(">HHQ")  # node_id, local_epoch, counter
_MAX_COUNTER = 0xFFFF_FFFF_FFFF_FFFF


class UnwrapError(ValueError):
    """A payload that must not be applied. `code` is stable for event logs and tests.

    Codes: ``too-short``, ``bad-version``, ``bad-flag``, ``unknown-key``, ``bad-key``,
    ``auth-failed``. The message names the key id where one was read, never key bytes.
    """

    def __init__(self, code: str, reason: str, key_id: int | None = None) -> None:
        self.code = code
        self.reason = reason
        self.key_id = key_id
        super().__init__(reason)


class NonceExhaustedError(RuntimeError):
    """The per-process counter ran out; reusing a nonce under GCM leaks the key stream."""


def _aad(key_id: int, purpose: bytes = AAD_TAG, context: bytes = b"") -> bytes:
    """``purpose | version | key_id | context``. The raft envelope is ``b"R"`` with no
    context (6 bytes, the layout above); the elastickv profile's storage envelope
    (`node.storenv`) is ``b"S"`` with the value's key as context, as elastickv binds
    its storage envelope to the Pebble key (`store/encryption_glue.go` buildStorageAAD
    514-530), so a value cut from one key and pasted under another, or a raft payload
    fed to the storage reader, fails authentication."""
    return purpose + bytes([VERSION]) + key_id.to_bytes(4, "big") + context


def _check_key_id(key_id: int) -> None:
    if not isinstance(key_id, int) or isinstance(key_id, bool) or not 1 <= key_id <= MAX_KEY_ID:
        raise ValueError(f"key id must be in 1..{MAX_KEY_ID}, got {key_id!r}")


def wrap(dek: bytes, key_id: int, nonce: bytes, plaintext: bytes, *,
         purpose: bytes = AAD_TAG, context: bytes = b"") -> bytes:
    """Encrypt a cleartext payload for the log.

    The caller supplies the nonce (from its `NonceSource`) so that uniqueness is a
    property of the node's durable epoch, not of a random draw.
    """
    _check_key_id(key_id)
    if len(dek) != DEK_LEN:
        raise ValueError(f"a DEK is {DEK_LEN} bytes, got {len(dek)}")
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"a nonce is {NONCE_LEN} bytes, got {len(nonce)}")
    head = _HEAD.pack(VERSION, FLAG, key_id) + bytes(nonce)
    return head + AESGCM(bytes(dek)).encrypt(bytes(nonce), bytes(plaintext),
                                             _aad(key_id, purpose, context))


def parse_header(data: bytes) -> tuple[int, bytes] | None:
    """(key_id, nonce) if `data` is shaped like an envelope, else None.

    Needs no key: the offline checker uses it to scan WALs for nonce reuse (I5) and
    key ids (I6). A shape match is not authentication; only `unwrap` proves that.
    """
    if len(data) < OVERHEAD:
        return None
    version, flag, key_id = _HEAD.unpack_from(data)
    if version != VERSION or flag != FLAG:
        return None
    return key_id, bytes(data[_NONCE_OFF:HEADER_LEN])


def is_wrapped_shape(data: bytes) -> bool:
    """Cheap structural test; cleartext payloads start with an opcode, never 0x01."""
    return parse_header(data) is not None


def unwrap(lookup: Callable[[int], bytes | None], data: bytes, *,
           check_flag: bool = True, purpose: bytes = AAD_TAG, context: bytes = b"") -> bytes:
    """The plaintext of an envelope, or UnwrapError with the precise reason.

    `lookup` maps a key id to its DEK (``Keystore.get``): the key is selected by the
    header, so entries wrapped under a rotated-out key still open. `check_flag=False`
    is elastickv's reader (``internal/encryption/envelope.go`` DecodeEnvelope): the flag
    byte is outside the AAD and not checked, so an envelope with a flipped flag opens.
    """
    if len(data) < OVERHEAD:
        raise UnwrapError(
            "too-short", f"envelope too short: {len(data)} bytes, need at least {OVERHEAD}"
        )
    version, flag, key_id = _HEAD.unpack_from(data)
    if version != VERSION:
        raise UnwrapError("bad-version", f"bad envelope version 0x{version:02x}")
    if flag != FLAG and check_flag:
        raise UnwrapError("bad-flag", f"bad envelope flag 0x{flag:02x}", key_id)
    dek = lookup(key_id) if key_id != 0 else None
    if dek is None:
        raise UnwrapError("unknown-key", f"unknown key id {key_id}", key_id)
    if len(dek) != DEK_LEN:
        raise UnwrapError("bad-key", f"key id {key_id} is not a {DEK_LEN}-byte key", key_id)
    nonce = bytes(data[_NONCE_OFF:HEADER_LEN])
    try:
        return AESGCM(bytes(dek)).decrypt(nonce, bytes(data[HEADER_LEN:]),
                                          _aad(key_id, purpose, context))
    except InvalidTag:
        raise UnwrapError(
            "auth-failed", f"authentication failed under key id {key_id}", key_id
        ) from None


def make_nonce(node_num: int, local_epoch: int, counter: int) -> bytes:
    """The 12-byte nonce layout; exposed so tests and the checker can decompose it."""
    return _NONCE.pack(node_num, local_epoch, counter)


def split_nonce(nonce: bytes) -> tuple[int, int, int]:
    """(node_num, local_epoch, counter) of a nonce: who sealed it, in which process,
    in which order (the checker's I7 orders a node's envelopes by it)."""
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"a nonce is {NONCE_LEN} bytes, got {len(nonce)}")
    node, epoch, counter = _NONCE.unpack(nonce)
    return node, epoch, counter


class NonceSource:
    """Nonces that never repeat for one node: ``node_id | local_epoch | counter``.

    Uniqueness rests on three legs: node ids differ across the cluster, the epoch is
    bumped durably at every start-up (``sidecar.bump_epoch``) so a restarted process
    never re-walks an old counter range, and the counter only grows within a process.
    Epoch 0 is refused because it means the bump was skipped. Thread-safe.
    """

    __slots__ = ("_counter", "_lock", "local_epoch", "node_num")

    def __init__(self, node_num: int, local_epoch: int, *, start: int = 1,
                 zero_epoch: bool = False) -> None:
        if not 0 <= node_num <= 0xFFFF:
            raise ValueError(f"node number must fit u16, got {node_num}")
        # `zero_epoch`: the elastickv profile's raft nonce epoch is 0 in a process that
        # started before the cutover (main_encryption_write_wiring.go
        # prepareRaftNonceEpoch: no bump while C = 0).
        if not (0 if zero_epoch else 1) <= local_epoch <= 0xFFFF:
            raise ValueError(
                f"local epoch must be in 1..65535 (0 = epoch never bumped), got {local_epoch}"
            )
        if not 1 <= start <= _MAX_COUNTER:
            raise ValueError(f"counter start must be in 1..2^64-1, got {start}")
        self.node_num = node_num
        self.local_epoch = local_epoch
        self._counter = start  # the next counter to hand out; `start` exists for tests
        self._lock = threading.Lock()

    def next(self) -> bytes:
        """A fresh nonce; raises rather than wrap the counter around."""
        with self._lock:
            c = self._counter
            if c > _MAX_COUNTER:
                raise NonceExhaustedError(
                    f"nonce counter exhausted for node {self.node_num} epoch {self.local_epoch}"
                )
            self._counter = c + 1
        return _NONCE.pack(self.node_num, self.local_epoch, c)

    @property
    def next_counter(self) -> int:
        """The counter the next nonce gets (public: the nonce is in every envelope)."""
        return self._counter

    def __repr__(self) -> str:
        return (
            f"NonceSource(node_num={self.node_num}, local_epoch={self.local_epoch}, "
            f"next_counter={self._counter})"
        )
