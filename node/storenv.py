"""The elastickv profile's storage envelope (docs/protocol.md, row 11): KV values sealed
under a storage DEK where elastickv seals its Pebble values, and the only module that
knows how a stored value is sealed and opened.

What elastickv does at d9a031d, and so what this models:

* The storage DEK comes with the bootstrap (the 0x04 entry carries a storage DEK and a
  raft DEK, `adapter/encryption_admin.go` BootstrapEncryption 659-700; its apply installs
  both in the keystore and the sidecar's Active.Storage, `internal/encryption/applier.go`
  ApplyBootstrap 687-715). It is only provisioned then: values stay cleartext until the
  separate EnableStorageEnvelope entry (0x05 sub-tag 0x04) applies and flips the
  sidecar's StorageEnvelopeActive (applyEnableStorageEnvelope 1079-1156: a DEK id that is
  not the sidecar's Active.Storage is a benign no-op, 1090-1096; already active is an
  idempotent no-op, 1110-1116).
* A value is sealed at apply (the FSM path, never gated by the writer registration:
  `store/lsm_store.go` applyMutationsBatch 2164-2189 calls encryptForKey with
  gateRegistration false, ApplyMutationsRaft 2244-2256) when a cipher, an active storage
  DEK and StorageEnvelopeActive are all there (`store/encryption_glue.go`
  resolveEnvelopeEmit 267-298, encryptForKey 335-369): the raft envelope's byte layout
  (`node.envelope`) with an AAD of its own bound to the value's key (buildStorageAAD
  514-530). Tombstones and the writer-registry rows (`!encryption|...`, written raw by
  SetRegistryRow 70-77) stay cleartext.
* A snapshot is the raw Pebble store (`store/snapshot_pebble.go` WriteTo 43-58,
  writePebbleSnapshotEntries 73-105), so its values stay sealed; a restore ingests them
  raw (`store/lsm_store.go` Restore 3035, restorePebbleNative 3133) and nothing is
  opened until a read.
* A read opens the value (decryptForKey 390-425): a key id the keystore does not hold is
  an error (`internal/encryption/cipher.go` aeadFor 135, ErrUnknownKeyID), a tag
  mismatch `ErrEncryptedReadIntegrity`; the read fails, the process goes on. Nothing
  opens values at start-up (Pebble opens lazily), so a node that lacks the storage DEK
  starts.
* The storage nonce is (node16, the storage DEK's local epoch, counter): the epoch is
  bumped at every start while a storage DEK is active and is 0 in a process that started
  before one was (`main_encryption_write_wiring.go` prepareStorageNonceEpoch 337-364,
  buildEncryptionWriteWiring 251-264).

In the model the in-memory map holds cleartext; a value this node cannot open is held as
`node.kv.Unopened` (its envelope, no plaintext): a read of it fails (`read-error`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from node.envelope import NonceSource, UnwrapError, parse_header, unwrap, wrap
from node.keystore import Keystore
from node.kv import METADATA_PREFIX, STORED_EXT, Unopened
from node.sidecar import Sidecar, next_epoch

__all__ = ["STORAGE_KEY_ID", "STORAGE_PURPOSE", "StorageEnvelope"]

STORAGE_PURPOSE = b"S"  # the AAD's first byte; the raft envelope's is b"R"
# The storage DEK's id when the bootstrap request names none: elastickv's operator picks
# both ids, which must differ (BootstrapEncryption 672-676); one far above the raft ids
# the harness rotates through keeps a rotation from ever reusing it.
STORAGE_KEY_ID = 0x0001_0001


def _context(key: str) -> bytes:
    return key.encode("utf-8")


class StorageEnvelope:
    """One process's storage envelope: the sidecar's storage fields (cached as
    elastickv's StateCache caches them), the keystore it shares with the raft envelope,
    and its own nonce source."""

    def __init__(self, load: Callable[[], Sidecar], save: Callable[[Sidecar], None],
                 keys: Keystore, node_num: int) -> None:
        self._load, self._save, self.keys = load, save, keys
        sc = load()
        epoch = 0
        if sc.active_storage_dek:  # prepareStorageNonceEpoch: bump only when active
            sc.storage_epoch = next_epoch(sc.storage_epoch)
            save(sc)
            epoch = sc.storage_epoch
        self.nonces = NonceSource(node_num, epoch, zero_epoch=True)
        self.refresh(sc)

    def refresh(self, sc: Sidecar) -> None:
        """StateCache.RefreshFromSidecar: what the store's gate reads on every put."""
        self.active_dek = sc.active_storage_dek
        self.enabled = sc.storage_envelope_active

    def apply_enable(self, index: int, dek: int) -> tuple[str, Sidecar]:
        """The 0x05 0x04 entry (applyEnableStorageEnvelope 1079-1156): ("stale", sc)
        when `dek` is not the active storage DEK (a node that never applied the
        bootstrap has none: the same no-op), ("already-active", sc), or ("fresh", sc)."""
        sc = self._load()
        if dek != sc.active_storage_dek:
            kind = "stale"
        elif sc.storage_envelope_active:
            kind = "already-active"
        else:
            kind = "fresh"
            sc.storage_envelope_active = True
            sc.storage_cutover_index = index
        sc.raft_applied_index = max(sc.raft_applied_index, index)
        self._save(sc)
        self.refresh(sc)
        return kind, sc

    # ------------------------------------------------------------ values

    def seal(self, key: str, value: Any) -> Any:
        """The stored form of one write: sealed when the envelope is on (resolveEnvelopeEmit)
        and the key is a user key; else the value itself."""
        if not self.enabled or not self.active_dek or key.startswith(METADATA_PREFIX):
            return value
        dek = self.keys.get(self.active_dek)
        if dek is None:  # the cipher has no such key: encryptForKey's Encrypt fails
            return value
        env = wrap(dek, self.active_dek, self.nonces.next(),
                   msgpack.packb(value, use_bin_type=True),
                   purpose=STORAGE_PURPOSE, context=_context(key))
        return msgpack.ExtType(STORED_EXT, env)

    def seal_writes(self, writes: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        return [(k, self.seal(k, v)) for k, v in writes]

    def open(self, key: str, stored: Any) -> Any:
        """The value a read sees: cleartext as is, a sealed value opened under the key
        its header names, or `Unopened` when this node cannot (decryptForKey)."""
        if isinstance(stored, Unopened):
            stored = msgpack.ExtType(STORED_EXT, stored.envelope)
        if not isinstance(stored, msgpack.ExtType) or stored.code != STORED_EXT:
            return stored
        env = bytes(stored.data)
        try:
            plain = unwrap(self.keys.get, env, check_flag=False,
                           purpose=STORAGE_PURPOSE, context=_context(key))
        except UnwrapError as e:
            head = parse_header(env)
            return Unopened(env, head[0] if head else 0, e.code)
        return msgpack.unpackb(plain, raw=False, strict_map_key=False)

    def open_map(self, data: dict[str, Any]) -> dict[str, Any]:
        return {k: self.open(k, v) for k, v in data.items()}


def open_stored_image(image: bytes, lookup: Callable[[int], bytes | None]) -> bytes:
    """The cleartext image (`node.kv.KV.snapshot`'s encoding) of a stored image whose
    values the storage envelope may have sealed: for the offline checker, which holds
    every key it learnt. Raises UnwrapError when a sealed value does not open."""
    try:
        items = msgpack.unpackb(image, raw=False, strict_map_key=False) if image else None
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        return image  # damage: judged by whoever reads it, as before
    if not isinstance(items, list) or not any(
            isinstance(it, list) and len(it) == 2 and isinstance(it[1], msgpack.ExtType)
            for it in items):
        return image  # nothing sealed in it: the image as it is, byte for byte
    out = []
    for key, stored in items:
        if isinstance(stored, msgpack.ExtType) and stored.code == STORED_EXT:
            stored = msgpack.unpackb(
                unwrap(lookup, bytes(stored.data), check_flag=False,
                       purpose=STORAGE_PURPOSE, context=_context(key)),
                raw=False, strict_map_key=False)
        out.append((key, stored))
    return msgpack.packb(out, use_bin_type=True)
