"""The KEK and the DEKs: the only module that holds key bytes or knows the wrapped-DEK format.

**KEK file** (given to every node by the orchestrator): exactly 32 raw bytes, mode
0600. Raw rather than hex so that there is one format with no parsing choices (case,
whitespace, trailing newline); `load_kek` refuses anything group/world accessible, of
another size, or missing, because a node running with a guessed or exposed KEK is worse
than a node that does not start.

**Wrapped DEK** (what the sidecar, snapshots and bootstrap/rotate entries carry)::

    version 0x01 (1) | nonce (12, random) | AES-256-GCM(KEK, DEK, aad) (32 + 16)

61 bytes, AAD ``b"cutover-dek" | version``. GCM rather than RFC 3394 so that a
tampered blob fails with the same kind of error as a tampered log entry; a random
nonce is fine here because a KEK wraps a handful of DEKs in its life, far from GCM's
random-nonce bound.

Keys stay secret: no repr/str in this module shows key bytes, nothing here logs, and
error messages name key ids and sizes, never contents.
"""

from __future__ import annotations

import os
import secrets
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node.disk import REAL
from node.envelope import DEK_LEN, MAX_KEY_ID

__all__ = [
    "DekUnwrapError",
    "KEK_LEN",
    "Kek",
    "KeyFileError",
    "Keystore",
    "KeystoreError",
    "WRAPPED_DEK_LEN",
    "WrappedKey",
    "generate_dek",
    "is_wrapped_dek_shape",
    "load_kek",
    "write_kek",
]

KEK_LEN = 32
_WRAP_VERSION = 0x01
_WRAP_AAD = b"cutover-dek" + bytes([_WRAP_VERSION])
_WRAP_NONCE_LEN = 12
WRAPPED_DEK_LEN = 1 + _WRAP_NONCE_LEN + DEK_LEN + 16  # 61


class KeystoreError(Exception):
    """Base class of key handling failures."""


class KeyFileError(KeystoreError):
    """The KEK file cannot be trusted or read; the node must not start."""


class DekUnwrapError(KeystoreError):
    """A wrapped DEK that is malformed, tampered with, or wrapped under another KEK."""


def generate_dek() -> bytes:
    """A fresh random 256-bit DEK."""
    return secrets.token_bytes(DEK_LEN)


def is_wrapped_dek_shape(blob: bytes) -> bool:
    """Structural test without the KEK: lets the sidecar refuse to persist a raw DEK."""
    return len(blob) == WRAPPED_DEK_LEN and blob[0] == _WRAP_VERSION


class Kek:
    """The key-encryption key. It only wraps and unwraps DEKs."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEK_LEN:
            raise ValueError(f"a KEK is {KEK_LEN} bytes, got {len(key)}")
        # Only the AEAD object is kept, so the raw bytes are not an attribute anyone
        # could print or pickle by accident.
        self._aead = AESGCM(bytes(key))

    @classmethod
    def generate(cls) -> Kek:
        return cls(secrets.token_bytes(KEK_LEN))

    def wrap_dek(self, dek: bytes, nonce: bytes | None = None) -> bytes:
        """The 61-byte KEK-wrapped form; differs on every call (random nonce). A given
        `nonce` is for the deterministic simulator only, whose runs must replay byte
        for byte: it must never repeat under one KEK."""
        if len(dek) != DEK_LEN:
            raise ValueError(f"a DEK is {DEK_LEN} bytes, got {len(dek)}")
        if nonce is None:
            nonce = secrets.token_bytes(_WRAP_NONCE_LEN)
        elif len(nonce) != _WRAP_NONCE_LEN:
            raise ValueError(f"a wrap nonce is {_WRAP_NONCE_LEN} bytes")
        return bytes([_WRAP_VERSION]) + nonce + self._aead.encrypt(nonce, bytes(dek), _WRAP_AAD)

    def unwrap_dek(self, blob: bytes) -> bytes:
        """The DEK inside `blob`, or DekUnwrapError: never a guessed key."""
        if len(blob) != WRAPPED_DEK_LEN:
            raise DekUnwrapError(
                f"wrapped DEK must be {WRAPPED_DEK_LEN} bytes, got {len(blob)}"
            )
        if blob[0] != _WRAP_VERSION:
            raise DekUnwrapError(f"unsupported wrapped-DEK version 0x{blob[0]:02x}")
        nonce = bytes(blob[1 : 1 + _WRAP_NONCE_LEN])
        try:
            return self._aead.decrypt(nonce, bytes(blob[1 + _WRAP_NONCE_LEN :]), _WRAP_AAD)
        except InvalidTag:
            raise DekUnwrapError(
                "wrapped DEK failed authentication (tampered, or another KEK)"
            ) from None

    def __repr__(self) -> str:
        return "Kek(<secret>)"

    __str__ = __repr__

    def __reduce__(self) -> object:
        # Pickling would copy the key into whatever receives the bytes (a queue, a log).
        raise TypeError("a Kek is not picklable; pass the KEK file path instead")


def load_kek(path: str | os.PathLike[str]) -> Kek:
    """Read the KEK file, refusing one that is missing, exposed or of the wrong size.

    The checks run on the opened descriptor (fstat), so the file judged is the file read.
    """
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyFileError(f"KEK file {p} does not exist") from None
    except OSError as e:
        raise KeyFileError(f"cannot open KEK file {p}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"KEK file {p} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"KEK file {p} has mode {mode:04o}: group/world may access it; "
                f"it must be 0600 (chmod 600 {p})"
            )
        if st.st_size != KEK_LEN:
            hint = " (hex-encoded? the file holds raw bytes)" if st.st_size in (64, 65) else ""
            raise KeyFileError(
                f"KEK file {p} holds {st.st_size} bytes, must be exactly {KEK_LEN} raw bytes{hint}"
            )
        key = os.read(fd, KEK_LEN + 1)
    finally:
        os.close(fd)
    if len(key) != KEK_LEN:
        raise KeyFileError(f"KEK file {p} changed size while being read")
    return Kek(key)


def write_kek(path: str | os.PathLike[str], key: bytes | None = None) -> Kek:
    """Create a KEK file (mode 0600) atomically; refuses to overwrite an existing one.

    Overwriting would orphan every DEK wrapped under the old KEK, so it is never done
    silently. The temp file is created 0600 from the start (mkstemp), so the key is
    never readable by others even for a moment; it is published with link(), which
    fails if the target exists, and a crash leaves at worst a ``*.tmp`` file.
    """
    p = Path(path)
    key = secrets.token_bytes(KEK_LEN) if key is None else bytes(key)
    kek = Kek(key)
    if not REAL.link_new(p, key, mode=0o600):
        raise KeyFileError(f"KEK file {p} already exists; refusing to overwrite")
    return kek


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A DEK as it may be stored or shipped: KEK-wrapped, with its bookkeeping."""

    wrapped: bytes = field(repr=False)
    purpose: str
    created_index: int

    def __post_init__(self) -> None:
        if not is_wrapped_dek_shape(self.wrapped):
            raise ValueError(
                f"not a KEK-wrapped DEK ({len(self.wrapped)} bytes, expected {WRAPPED_DEK_LEN})"
            )
        ci = self.created_index
        if not isinstance(ci, int) or isinstance(ci, bool) or ci < 0:
            raise ValueError(f"created_index must be a non-negative int: {self.created_index!r}")
        if not isinstance(self.purpose, str):
            raise ValueError(f"purpose must be a string: {self.purpose!r}")


@dataclass(frozen=True, slots=True)
class _Slot:
    dek: bytes = field(repr=False)
    record: WrappedKey


def _check_key_id(key_id: int) -> None:
    if not isinstance(key_id, int) or isinstance(key_id, bool) or not 1 <= key_id <= MAX_KEY_ID:
        raise KeystoreError(f"key id must be in 1..{MAX_KEY_ID} (0 = none), got {key_id!r}")


class Keystore:
    """Every DEK this node knows, by id; `get` is the lookup `envelope.unwrap` takes.

    Keys are only ever added: an old key must keep opening the old entries wrapped
    under it. Re-installing an id with the same DEK is a no-op (replayed bootstrap or
    rotate entries); with a different DEK it is an error, never a silent replacement.
    Each DEK keeps the wrapped blob it arrived with (or was first wrapped into), so
    exports are stable and every node stores the bytes the log carried.
    """

    __slots__ = ("_kek", "_lock", "_slots")

    def __init__(self, kek: Kek) -> None:
        self._kek = kek
        self._slots: dict[int, _Slot] = {}
        self._lock = threading.Lock()

    def install(self, key_id: int, dek: bytes, purpose: str, created_index: int) -> WrappedKey:
        """Add a raw DEK (a freshly generated one); returns its wrapped form to propose."""
        _check_key_id(key_id)
        if len(dek) != DEK_LEN:
            raise KeystoreError(f"a DEK is {DEK_LEN} bytes, got {len(dek)}")
        with self._lock:
            existing = self._slots.get(key_id)
            if existing is not None:
                return self._same_or_raise(key_id, existing, bytes(dek))
            record = WrappedKey(self._kek.wrap_dek(dek), purpose, created_index)
            self._slots[key_id] = _Slot(bytes(dek), record)
            return record

    def install_wrapped(
        self, key_id: int, wrapped: bytes, purpose: str, created_index: int
    ) -> WrappedKey:
        """Add a DEK from its KEK-wrapped form (bootstrap/rotate entries, sidecar, snapshot)."""
        _check_key_id(key_id)
        dek = self._kek.unwrap_dek(wrapped)
        with self._lock:
            existing = self._slots.get(key_id)
            if existing is not None:
                return self._same_or_raise(key_id, existing, dek)
            record = WrappedKey(bytes(wrapped), purpose, created_index)
            self._slots[key_id] = _Slot(dek, record)
            return record

    @staticmethod
    def _same_or_raise(key_id: int, existing: _Slot, dek: bytes) -> WrappedKey:
        if not secrets.compare_digest(existing.dek, dek):
            raise KeystoreError(f"key id {key_id} is already installed with a different DEK")
        return existing.record

    def get(self, key_id: int) -> bytes | None:
        """The DEK for `key_id`, or None (0 and unknown ids alike)."""
        slot = self._slots.get(key_id)
        return None if slot is None else slot.dek

    def record(self, key_id: int) -> WrappedKey | None:
        slot = self._slots.get(key_id)
        return None if slot is None else slot.record

    def ids(self) -> list[int]:
        return sorted(self._slots)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._slots

    def __len__(self) -> int:
        return len(self._slots)

    def export_wrapped(self) -> dict[int, WrappedKey]:
        """What the sidecar and snapshots persist: wrapped forms only, never raw DEKs."""
        with self._lock:
            return {k: s.record for k, s in sorted(self._slots.items())}

    def import_wrapped(self, keys: Mapping[int, WrappedKey]) -> None:
        """Hydrate from a sidecar or snapshot; all-or-nothing, so a bad blob adds nothing."""
        opened = []
        for key_id, rec in keys.items():
            _check_key_id(key_id)
            opened.append((key_id, self._kek.unwrap_dek(rec.wrapped), rec))
        with self._lock:
            for key_id, dek, _ in opened:
                existing = self._slots.get(key_id)
                if existing is not None and not secrets.compare_digest(existing.dek, dek):
                    raise KeystoreError(
                        f"key id {key_id} is already installed with a different DEK"
                    )
            for key_id, dek, rec in opened:
                self._slots.setdefault(key_id, _Slot(dek, rec))

    def __repr__(self) -> str:
        return f"Keystore(ids={self.ids()})"

    __str__ = __repr__

    def __reduce__(self) -> object:
        raise TypeError("a Keystore is not picklable; ship export_wrapped() instead")
