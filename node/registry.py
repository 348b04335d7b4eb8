"""elastickv's writer registry (the elastickv profile's row 9): rows in the KV map.

Why it exists there: a raft nonce is (node16, local epoch, counter), and node16 is only
the low 16 bits of a hash of the raft id (row 10). The registry is elastickv's record of
which (node, epoch) has sealed under which raft DEK, so that an epoch that goes
backwards (a restored sidecar) or two nodes that share a node16 halt apply before a
nonce can repeat. Each process load registers its (active raft DEK, full node id,
epoch) with an 0x03 entry and its wrap refuses to seal anything else until that entry
has committed (`node/cutover.py` `Cutover.seal`, `node/registration.py` the watcher).

The rows live where elastickv keeps them: in the state machine's store
(`store/encryption_glue.go` 30-80: Pebble rows under `!encryption|writers|`, written
with pebble.Sync), so they are in the digest and in every snapshot. They are written
only through `KV.put`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from node.kv import KV, METADATA_PREFIX

PREFIX = METADATA_PREFIX + "writers|"


class RegistryRefused(Exception):
    """An 0x03 that ApplyRegistration refuses (ErrEncryptionApply): apply halts."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(reason)
        self.what = what  # rollback | collision
        self.reason = reason


def full_node_id(raft_id: str) -> int:
    """elastickv's full node id: FNV-64a of the raft id, 0 read as 1
    (`internal/raftengine/etcd/peers.go` DeriveNodeID 46-57)."""
    h = 0xCBF29CE484222325
    for b in raft_id.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFF_FFFF_FFFF_FFFF
    return h or 1


def node16_of(full: int) -> int:
    """`internal/encryption/write_path_startup.go` NodeID16: the registry key's node."""
    return full & 0xFFFF


def registry_key(dek_id: int, node16: int) -> str:
    """`internal/encryption/registry.go` RegistryKey 60: one row per (DEK, node16)."""
    return f"{PREFIX}{dek_id}|{node16}"


@dataclass(frozen=True)
class Row:
    """A registry value (`registry.go` RegistryValue): who holds the node16 under this
    DEK, and the first and last epoch it registered."""

    full_node_id: int
    first_seen: int
    last_seen: int


def read_row(kv: KV, dek_id: int, node16: int) -> Row | None:
    v = kv.read(registry_key(dek_id, node16))
    if not isinstance(v, list | tuple) or len(v) != 3:
        return None
    return Row(int(v[0]), int(v[1]), int(v[2]))


def apply_registration(kv: KV, dek_id: int, full: int, epoch: int) -> tuple[str, Row | None]:
    """ApplyRegistration (`internal/encryption/applier.go` 581-640), case by case:
    insert; the same full id at the same epoch is a replay and changes nothing; a higher
    epoch advances last-seen; a lower one is a rollback and a different full id under
    the same (DEK, node16) a collision, both refused (`RegistryRefused`: the FSM wraps
    them in ErrEncryptionApply and apply halts, `kv/fsm_encryption.go` applyRegistration
    99-110). Returns (what it did, the row before)."""
    key = registry_key(dek_id, node16_of(full))
    prev = read_row(kv, dek_id, node16_of(full))
    if prev is None:
        kv.put(key, [full, epoch, epoch])
        return "insert", None
    if prev.full_node_id != full:
        raise RegistryRefused("collision", (
            f"writer-registry uint16 collision at dek_id={dek_id} (existing "
            f"full_node_id={prev.full_node_id:#x}, incoming={full:#x})"))
    if epoch == prev.last_seen:
        return "replay", prev
    if epoch < prev.last_seen:
        raise RegistryRefused("rollback", (
            f"writer-registry local_epoch rollback at dek_id={dek_id} full_node_id="
            f"{full:#x} (existing last_seen={prev.last_seen}, incoming={epoch})"))
    kv.put(key, [full, prev.first_seen, epoch])
    return "advance", prev


def last_seen(kv: KV, dek_id: int, full: int) -> int:
    """registryLastSeen (`main_encryption_registration.go` 525-538): the row under (DEK,
    node16), whoever holds it, or 0 when there is none."""
    row = read_row(kv, dek_id, node16_of(full))
    return row.last_seen if row else 0


def committed_at_epoch(kv: KV, dek_id: int, full: int, epoch: int) -> bool:
    """registrationCommittedAtEpoch (`main_encryption_registration.go` 557-573): this
    exact load's row, same full id and last-seen equal to its epoch."""
    row = read_row(kv, dek_id, node16_of(full))
    return row is not None and row.full_node_id == full and row.last_seen == epoch


def startup_epoch_refusal(kv: KV, sidecar: Any, full: int, epoch: int) -> str:
    """Why elastickv refuses to start ("" if it does not): validateRaftRegistrationStartupEpoch
    (`main_encryption_registration.go` 185-211), run once per start after the engine
    opened, before serving. With a cut-over sidecar and an active raft DEK, this load's
    (bumped) raft epoch must be past the registry's last-seen epoch for (DEK, node16),
    whoever holds the row; otherwise `ErrLocalEpochRollback` (a sidecar that went
    backwards would repeat nonces)."""
    dek = sidecar.active_raft_dek
    if not sidecar.raft_envelope_cutover_index or not dek:
        return ""
    seen = last_seen(kv, dek, full)
    if epoch <= seen:
        return (f"local-epoch-rollback: raft local_epoch {epoch} is not ahead of registry "
                f"last_seen {seen} for dek_id {dek} node {full:#x} (ErrLocalEpochRollback)")
    return ""
