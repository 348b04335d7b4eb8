"""The raft-envelope cutover on one node (protocol §3-§6), as pure logic.

No socket, no Raft, no clock here: the host (the node process, or the simulator) feeds
committed entries in log order and asks for proposals to be sealed; durable state goes
through an injected `CutoverStore` (the sidecar file in a real node, a dict in the
simulator), so the same code runs in both and a schedule that breaks it in simulation
replays bit for bit.

Terms: C = cutover index (0 = not cut over); `cell` = the in-memory copy of C the apply
hook reads; `wrap` = the DEK id the proposer seals with (None = cleartext).

Each bug switch of §8 that lives in this logic is one `if` naming it, so the fixed
build is the code with every such branch off.

Two profiles (`PROFILES`): `fixed` is the protocol with every fix this lab made;
`elastickv` reproduces elastickv as it stands at d9a031d (docs/protocol.md, "The
elastickv profile", cites the file and function of each difference). Each difference
is one `if self.ekv` here or in `node/replica.py`.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from node import payload as pl
from node import sidecar as sidecar_file
from node.disk import REAL, Disk
from node.encstate import decode_encryption_state
from node.envelope import NonceSource, UnwrapError, is_wrapped_shape, unwrap
from node.envelope import wrap as seal_bytes
from node.events import EventKind
from node.keystore import Kek, Keystore, KeystoreError, WrappedKey
from node.sidecar import Sidecar
from node.storenv import StorageEnvelope

CUTOVER_BUGS = {
    "nonstrict-dispatch": "the apply hook unwraps at i >= cell instead of i > cell",
    "silent-unwrap-skip": "an entry that fails to unwrap is skipped instead of halting apply",
    "no-barrier": "no quiescence barrier: user proposals go on during EnableRaftEnvelope",
    "raw-admin-proposer": "rotate-DEK is proposed raw (cleartext) after the cutover",
    "no-apply-installer": "only the leader's EnableRaftEnvelope handler installs the wrap",
    "stale-check-first": "the marker applier checks 'stale' before 'already active' (as "
                         "reported: a restarted node whose snapshot is older than C gets "
                         "its wrap from the replayed marker alone)",
    "no-startup-wrap": "the wrap is not initialised from the sidecar at start-up",
    "barrier-release-on-timeout": "the barrier is lowered when the marker's apply wait "
                                  "times out",
    "leader-unapplied-marker": "a new leader serves before applying its own term's first "
                               "entry",
    "duplicate-marker": "EnableRaftEnvelope's pre-check does not wait for applied >= commit",
    "snapshot-install-no-cutover": "a snapshot installed at run time ignores the "
                                   "encryption state it carries",
}


PROFILES = {
    "fixed": "the protocol with every fix this lab made (docs/protocol.md)",
    "elastickv": "elastickv as it stands at d9a031d: its halts and silent skips, snapshots "
                 "without keys, installs, EnableRaftEnvelope retry, lease timing, rotation "
                 "replay, start-up and writer registration (docs/protocol.md, 'The "
                 "elastickv profile')",
}


class Halt(Exception):
    """Apply must stop at `index`: fail closed, never skip (§3)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"entry {index}: {reason}")
        self.index = index
        self.reason = reason


class Busy(Exception):
    """A definite refusal of a proposal; `code` is what the client is told."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


class CutoverStore(Protocol):
    """Durable state of the cutover: the sidecar, or the simulator's stand-in."""

    def load(self) -> Sidecar: ...

    def save(self, sidecar: Sidecar) -> None: ...

    def bump_epoch(self) -> int: ...


class FileStore:
    """The real one: `sidecar.json` in the node's data dir (atomic, fsynced)."""

    def __init__(self, data_dir: str, disk: Disk = REAL) -> None:
        self.data_dir = data_dir
        self.disk = disk

    def load(self) -> Sidecar:
        return sidecar_file.load(self.data_dir, self.disk)

    def save(self, sidecar: Sidecar) -> None:
        sidecar_file.save(self.data_dir, sidecar, self.disk)

    def bump_epoch(self) -> int:
        return sidecar_file.bump_epoch(self.data_dir, self.disk)


class MemoryStore:
    """The simulator's: survives a simulated crash because the simulator keeps it."""

    def __init__(self) -> None:
        self._sc = Sidecar()

    def load(self) -> Sidecar:
        return copy.deepcopy(self._sc)

    def save(self, sidecar: Sidecar) -> None:
        self._sc = copy.deepcopy(sidecar)

    def bump_epoch(self) -> int:
        self._sc.local_epoch = sidecar_file.next_epoch(self._sc.local_epoch)
        return self._sc.local_epoch


@dataclass(frozen=True)
class Applied:
    """What applying an encryption entry did, for the event log (never key bytes)."""

    kind: str  # bootstrap | rotate | marker-fresh | marker-already-active | marker-stale | ...
    index: int
    cutover: int
    active: int
    dek: int = 0  # a marker's: the DEK id its proposer saw; a rotation's: the id it installs
    note: str = ""  # why an entry changed nothing (a stale rotation's reason)


class Cutover:
    """One node's encryption state and the rules that move it."""

    def __init__(self, node_num: int, store: CutoverStore, kek: Kek,
                 bugs: frozenset[str] = frozenset(),
                 on_event: Callable[..., None] | None = None, *,
                 profile: str = "fixed", snapshot_cutover: int = 0,
                 snapshot_index: int = 0, full_node_id: int = 0) -> None:
        """The start-up of §5 and §6, in this order: the divergence guard on the newest
        snapshot's header (`snapshot_cutover`; a refusal raises `Halt`), then the epoch
        bump, then the keystore and the installer from the sidecar. The guard comes
        before the bump so a refused start burns no epoch (elastickv's order too:
        main.go run 453-498 checks the header before any epoch bump)."""
        unknown = set(bugs) - set(CUTOVER_BUGS)
        if unknown:
            raise ValueError(f"unknown cutover bug switch(es): {sorted(unknown)}")
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; known: {sorted(PROFILES)}")
        self.bugs = frozenset(bugs)
        self.profile = profile
        self.ekv = profile == "elastickv"
        self.store = store
        self._event = on_event or (lambda kind, **kw: None)
        self.restored_cutover = 0  # elastickv: Restore's restoredCutover (kv/fsm.go 579)
        # elastickv's raft writer-registration gate (row 9): armed only in that profile
        # and only when the host names this node's full id (elastickv: the wrap checks
        # `r.registration != nil`, main_raft_envelope_wiring.go 210). `_registered` is
        # raftRegistrationGate's one packed (DEK, epoch): a rotation to another DEK closes
        # the gate again until that DEK is registered.
        self.full_node_id = full_node_id if self.ekv else 0
        self._registered: tuple[int, int] | None = None
        # setRegistrationVerifier: "is this (DEK, epoch) row committed in the registry?",
        # asked when apply installs a wrap; the replica wires it (it owns the KV map).
        self.registration_verifier: Callable[[int, int], bool] | None = None
        self._latched_cutover = 0  # elastickv: the snapshot header's no-downgrade latch
        self.check_startup_snapshot(snapshot_cutover)
        sc = store.load()
        c = sc.raft_envelope_cutover_index
        if self.ekv and not c:
            # prepareRaftNonceEpoch: no raft epoch bump while C = 0; this process's raft
            # nonces (if it cuts over) use epoch 0.
            epoch = 0
        else:
            epoch = store.bump_epoch()  # before any seal: nonces never repeat across starts
        self.nonces = NonceSource(node_num, epoch, zero_epoch=self.ekv)
        self.kek = kek
        self.keys = Keystore(kek)
        self.keys.import_wrapped(sc.keys)
        # Row 11: the storage envelope (elastickv only), its keys in this keystore.
        self.storage = (StorageEnvelope(store.load, store.save, self.keys, node_num)
                        if self.ekv else None)
        self.cell = 0
        self.wrap: int | None = None
        self.barrier = False  # only a restart clears a barrier left up by a failure
        # §5 start-up: an active cutover is installed before anything is served.
        if c:
            wrap = "no-startup-wrap" not in self.bugs
            if "stale-check-first" in self.bugs and snapshot_index < c:
                # The build the defect was reported against (elastickv PR944 round 1,
                # before 6E-2e-3 wired the start-up install): a restarted node whose
                # snapshot is older than C got its wrap from the marker's replay alone.
                wrap = False
            self._install(c, sc.active_raft_dek, wrap=wrap, why="start-up")

    # ------------------------------------------------------------------ state

    @property
    def sidecar(self) -> Sidecar:
        return self.store.load()

    def status(self) -> dict[str, Any]:
        sc = self.store.load()
        return {"cutover": sc.raft_envelope_cutover_index, "cell": self.cell,
                "wrap_key_id": self.wrap, "active_dek": sc.active_raft_dek,
                "key_ids": sorted(sc.keys)}

    def nonce_position(self) -> dict[str, int]:
        """Where this process's nonces stand (public: every envelope carries its nonce).
        An event that carries it lets the checker tell which of this node's envelopes
        were sealed after that event (I7)."""
        n = self.nonces
        return {"nonce_node": n.node_num, "nonce_epoch": n.local_epoch,
                "nonce_counter": n.next_counter}

    def _install(self, cutover: int, key_id: int, wrap: bool = True, why: str = "") -> None:
        """The installer (§4): idempotent; sets the hook's cell and the proposer's key."""
        self.cell = cutover
        if wrap:
            self.wrap = key_id
            if why in ("marker", "marker-replay", "rotate"):
                # elastickv's installFromApply / installRotatedRaftDEK
                # (main_raft_envelope_wiring.go 116-175) open the gate at once when the
                # registry already holds this load's row for the key (a key it
                # registered before, or the bootstrap batch's epoch-0 row).
                self._mark_if_committed(key_id, why)
        self._event(EventKind.INSTALLER, cutover=cutover, key_id=key_id, wrap=wrap, why=why)

    # ------------------------------------------------------- writer registration

    @property
    def gated(self) -> bool:
        """Does the wrap refuse to seal for an unregistered load (elastickv, row 9)?"""
        return self.full_node_id != 0

    @property
    def raft_epoch(self) -> int:
        return self.nonces.local_epoch

    def registered(self, dek: int) -> bool:
        """raftRegistrationGate.Registered (main_raft_envelope_wiring.go 45-50) for this
        load's epoch."""
        return dek != 0 and self._registered == (dek, self.raft_epoch)

    def mark_registered(self, dek: int, why: str) -> None:
        """MarkRegistered: the wrap may now seal under `dek` (and only under it)."""
        if dek == 0 or self.registered(dek):
            return
        self._registered = (dek, self.raft_epoch)
        self._event(EventKind.WRITER_REGISTERED, dek=dek, epoch=self.raft_epoch,
                    full_node_id=self.full_node_id, why=why)

    def _mark_if_committed(self, dek: int, why: str) -> None:
        v = self.registration_verifier
        if self.gated and v is not None and v(dek, self.raft_epoch):
            self.mark_registered(dek, f"install-{why}")

    def wrap_installed_for(self, dek: int) -> bool:
        """wrapInstalledFor (main_raft_envelope_wiring.go 177-186): the watcher's
        trigger, a wrap for the active raft DEK and a non-zero cell."""
        return dek != 0 and self.wrap == dek and self.cell != 0

    def is_own_registration(self, payload: bytes, dek: int) -> bool:
        """isLocalRaftWriterRegistrationPayload (main_raft_envelope_wiring.go 223-234):
        this load's own 0x03 for the wrap's DEK passes the gate; nothing else does."""
        if not payload or payload[0] != pl.OP_REGISTRATION:
            return False
        try:
            reg = pl.decode_registration(payload)
        except pl.PayloadError:
            return False
        return reg == (dek, self.full_node_id, self.raft_epoch)

    # ------------------------------------------------------------------ apply

    def open_entry(self, index: int, data: bytes) -> bytes | None:
        """The strict apply hook (§3): the cleartext payload of committed entry `index`.

        Raises Halt when an entry above the cell does not unwrap. None means "skip this
        entry", which only the `silent-unwrap-skip` switch ever answers.
        """
        if self.cell == 0:
            return data
        above = index >= self.cell if "nonstrict-dispatch" in self.bugs else index > self.cell
        if not above:
            return data
        try:
            return unwrap(self.keys.get, data, check_flag=not self.ekv)
        except UnwrapError as e:
            if "silent-unwrap-skip" in self.bugs:
                return None
            raise Halt(index, f"unwrap failed ({e.code}): {e.reason}") from None

    def apply(self, index: int, payload: bytes) -> Applied:
        """Apply a cleartext encryption entry (opcodes 0x04 and 0x05); Halt on anything
        unknown (fail closed)."""
        try:
            op = pl.opcode(payload)
            if op == pl.OP_BOOTSTRAP:
                body = pl.decode_body(payload)
                st = body.get("storage") if self.ekv else None
                return self._bootstrap(index, int(body["id"]), bytes(body["wrapped"]),
                                       (int(st[0]), bytes(st[1])) if st else None)
            if op == pl.OP_ROTATION:
                sub, body = pl.rotation_body(payload)
                if sub == pl.SUB_ROTATE_DEK:
                    return self._rotate(index, int(body["id"]), bytes(body["wrapped"]))
                if sub == pl.SUB_ENABLE_ENVELOPE:
                    return self._marker(index, int(body["dek"]))
                if sub == pl.SUB_ENABLE_STORAGE and self.storage is not None:
                    kind, sc = self.storage.apply_enable(index, int(body["dek"]))
                    return Applied(f"storage-{kind}", index, sc.raft_envelope_cutover_index,
                                   sc.active_raft_dek, dek=int(body["dek"]))
                raise Halt(index, f"unknown rotation sub-tag 0x{sub:02x}")
        except (pl.PayloadError, KeyError, TypeError, ValueError, KeystoreError) as e:
            raise Halt(index, f"malformed encryption entry: {e}") from None
        raise Halt(index, f"not an encryption opcode: 0x{op:02x}")

    def _add_key(self, sc: Sidecar, index: int, key_id: int, wrapped: bytes,
                 purpose: str) -> None:
        rec = WrappedKey(wrapped, purpose, index)
        old = sc.keys.get(key_id)
        if old is not None and old.wrapped != wrapped:
            raise Halt(index, f"key id {key_id} already holds a different DEK")
        self.keys.install_wrapped(key_id, wrapped, purpose, index)
        if old is None:
            sc.keys[key_id] = rec

    def _bootstrap(self, index: int, key_id: int, wrapped: bytes,
                   storage: tuple[int, bytes] | None = None) -> Applied:
        sc = self.store.load()
        if sc.active_raft_dek == 0:
            if storage is not None and self.storage is not None:
                # ApplyBootstrap 691-705: the storage DEK first, then the raft DEK.
                self._add_key(sc, index, storage[0], storage[1], "storage")
                sc.active_storage_dek = storage[0]
            self._add_key(sc, index, key_id, wrapped, "raft")
            sc.active_raft_dek = key_id
        # An identical replay (or a late duplicate) changes nothing else.
        sc.raft_applied_index = max(sc.raft_applied_index, index)
        self.store.save(sc)
        if self.storage is not None:
            self.storage.refresh(sc)
        return Applied("bootstrap", index, sc.raft_envelope_cutover_index, sc.active_raft_dek)

    def _rotate(self, index: int, key_id: int, wrapped: bytes) -> Applied:
        sc = self.store.load()
        if index <= sc.raft_applied_index and not self.ekv:
            # A replay from a snapshot older than this entry: the key is already in the
            # sidecar, and re-activating it would move the active key backwards.
            # (elastickv has no such check: applier.go applyRotateDEK 954-984 makes every
            # replayed rotation active again, an older one until the later one replays.)
            self.keys.install_wrapped(key_id, wrapped, "raft", index)
            return Applied("rotate-replay", index, sc.raft_envelope_cutover_index,
                           sc.active_raft_dek, key_id)
        why = self.stale_rotation(sc, key_id)
        if why and not self.ekv:
            # A second entry at a fresh index for a key this node already went past: an
            # operator's retry of an answer that timed out although its first copy
            # committed, or a slower rotation committed after a newer one. Every replica
            # holds the same sidecar at this index, so every replica skips it alike; the
            # active key only ever moves forward (found by `cutover sim`, seeds 82, 258).
            sc.raft_applied_index = max(sc.raft_applied_index, index)
            self.store.save(sc)
            return Applied("rotate-stale", index, sc.raft_envelope_cutover_index,
                           sc.active_raft_dek, key_id, note=why)
        self._add_key(sc, index, key_id, wrapped, "raft")
        sc.active_raft_dek = key_id
        sc.raft_applied_index = max(sc.raft_applied_index, index)
        self.store.save(sc)  # the sidecar write precedes the installer
        if sc.raft_envelope_cutover_index:
            self._install(sc.raft_envelope_cutover_index, key_id, why="rotate")
        return Applied("rotate", index, sc.raft_envelope_cutover_index, key_id, key_id)

    @staticmethod
    def stale_rotation(sc: Sidecar, key_id: int) -> str:
        """Why a rotation to `key_id` would not move the active key forward ("" if it
        would): its key is already held, or its id is not newer than the active one.
        Both the apply (the rule) and the admin request (an early answer) ask this."""
        if key_id in sc.keys:
            return f"key {key_id} is already held (active key {sc.active_raft_dek})"
        if key_id <= sc.active_raft_dek:
            return f"key {key_id} is not newer than the active key {sc.active_raft_dek}"
        return ""

    def rotation_done(self, key_id: int, wrapped: bytes) -> dict[str, Any] | None:
        """The admin request's early answer: the reply value if a rotation to `key_id`
        already took effect here (the same key, active), None if it is worth proposing;
        Busy("stale-key") if the active key is past it."""
        sc = self.store.load()
        why = self.stale_rotation(sc, key_id)
        if not why:
            return None
        held = sc.keys.get(key_id)
        if sc.active_raft_dek == key_id and held is not None and held.wrapped == wrapped:
            return {"cutover": sc.raft_envelope_cutover_index, "active": key_id,
                    "already": True}
        raise Busy("stale-key", why)

    def _marker(self, index: int, dek: int) -> Applied:
        """The applier of §4: already-active, then stale, then fresh, in that order."""
        sc = self.store.load()
        cutover = sc.raft_envelope_cutover_index
        checks = ["already", "stale"]
        if "stale-check-first" in self.bugs:
            checks.reverse()
        for check in checks:
            if check == "already" and cutover != 0:
                sc.raft_applied_index = max(sc.raft_applied_index, index)
                self.store.save(sc)
                self._install(cutover, sc.active_raft_dek, why="marker-replay")
                return Applied("marker-already-active", index, cutover, sc.active_raft_dek,
                               dek)
            if check == "stale" and dek != sc.active_raft_dek:
                # A rotation raced the marker: not a cutover, nothing to install (the
                # fixed order only gets here with C = 0).
                sc.raft_applied_index = max(sc.raft_applied_index, index)
                self.store.save(sc)
                return Applied("marker-stale", index, cutover, sc.active_raft_dek, dek)
        sc.raft_envelope_cutover_index = index
        sc.raft_applied_index = max(sc.raft_applied_index, index)
        self.store.save(sc)  # fsynced before the installer runs
        self._install(index, sc.active_raft_dek, wrap="no-apply-installer" not in self.bugs,
                      why="marker")
        return Applied("marker-fresh", index, index, sc.active_raft_dek, dek)

    # ---------------------------------------------------------------- propose

    def seal(self, payload: bytes) -> bytes:
        """Wrap `payload` under the proposer's key, if one is installed."""
        if self.wrap is None:
            return payload
        if self.gated and not self.registered(self.wrap) \
                and not self.is_own_registration(payload, self.wrap):
            # elastickv's wrap gate (main_raft_envelope_wiring.go wrapFor 209-214): the
            # payload is refused before it is proposed (store.ErrWriterNotRegistered out
            # of the proposer, kv/raft_payload_wrapper.go 225-233): nothing reaches the
            # log, so the caller's failure is definite.
            raise Busy("writer-not-registered",
                       f"writer registration not committed for raft dek_id {self.wrap} "
                       f"local_epoch {self.raft_epoch}")
        dek = self.keys.get(self.wrap)
        if dek is None:  # pragma: no cover - the installer only installs known keys
            raise Busy("failed", f"wrap key {self.wrap} is not in the keystore")
        return seal_bytes(dek, self.wrap, self.nonces.next(), payload)

    def user_proposal(self, payload: bytes, barrier_up: bool) -> bytes:
        """The barrier-aware proposer for user commands (and leases)."""
        if barrier_up and "no-barrier" not in self.bugs:
            raise Busy("cutover-in-progress", "the cutover barrier is up")
        return self.seal(payload)

    def admin_proposal(self, payload: bytes) -> bytes:
        """The wrap-aware proposer for bootstrap and rotate-DEK. No barrier during a
        running EnableRaftEnvelope (the per-node admin lock keeps them apart), but a
        barrier left up by a failed one means a marker may still commit with no wrap
        installed here: an admin entry proposed now could land above it in cleartext and
        halt every replica, so it fails closed (found by `cutover sim`; elastickv latches
        the same refusal after an ambiguous cutover failure)."""
        if self.barrier:
            raise Busy("cutover-in-progress",
                       "a failed EnableRaftEnvelope left the barrier up: its marker may "
                       "still commit; restart this node first")
        if "raw-admin-proposer" in self.bugs:
            return payload
        return self.seal(payload)

    @staticmethod
    def marker_proposal(dek: int) -> bytes:
        """The raw proposer: the marker is never wrapped (it is at C, not above it)."""
        return pl.marker_payload(dek)

    # --------------------------------------------------------------- snapshots

    def snapshot_fields(self, snapshot_index: int) -> tuple[int, bytes]:
        """(header cutover, encryption blob) for a snapshot taken at `snapshot_index`.

        elastickv (kv/fsm.go Snapshot 537-556, kv/snapshot.go observe 79-92): the header
        carries the cell at snapshot time, latched once non-zero (so a restarted node's
        snapshot below C says C), and no encryption state at all."""
        if self.ekv:
            if self.cell:
                self._latched_cutover = self.cell
            return self._latched_cutover, b""
        sc = self.store.load()
        c = sc.raft_envelope_cutover_index
        header_cutover = c if c and snapshot_index >= c else 0
        blob = msgpack.packb({
            "keys": {k: {"wrapped": w.wrapped, "purpose": w.purpose,
                         "created_index": w.created_index} for k, w in sc.keys.items()},
            "active": sc.active_raft_dek, "cutover": header_cutover}, use_bin_type=True)
        return header_cutover, blob

    def seal_image(self, snapshot_index: int, image: bytes) -> bytes:
        """The state-machine image of a snapshot above C is wrapped like an entry above C
        would be: after the cutover no user value rests on disk in cleartext (I1)."""
        if self.ekv:  # the image is the raw store, never raft-wrapped (kv/fsm.go Snapshot)
            return image
        sc = self.store.load()
        c = sc.raft_envelope_cutover_index
        dek = self.keys.get(sc.active_raft_dek) if sc.active_raft_dek else None
        if not c or snapshot_index <= c or dek is None:
            return image
        return seal_bytes(dek, sc.active_raft_dek, self.nonces.next(), image)

    def open_image(self, image: bytes) -> bytes:
        """The cleartext image of a snapshot; Halt if it is wrapped and does not open."""
        if not is_wrapped_shape(image):
            return image
        try:
            return unwrap(self.keys.get, image, check_flag=not self.ekv)
        except UnwrapError as e:
            raise Halt(0, f"snapshot image does not unwrap ({e.code}): {e.reason}") from None

    def check_startup_snapshot(self, header_cutover: int) -> None:
        """The start-up divergence guard (§6): a snapshot that disagrees with the
        sidecar about C means this node's state cannot be trusted."""
        c = self.store.load().raft_envelope_cutover_index
        if header_cutover and header_cutover != c:
            raise Halt(0, f"cutover-divergence: snapshot says C={header_cutover}, "
                          f"sidecar says C={c}")

    def check_sidecar_behind_log(self, engine_applied: int, snapshot_index: int,
                                 entries: Iterable[Any]) -> None:
        """elastickv's second start-up guard (row 8b, `ErrSidecarBehindRaftLog`):
        raise Halt (a refused start) when the sidecar's `raft_applied_index` is behind
        the engine's applied index and the gap cannot be shown harmless. Only the
        elastickv profile calls it (`node/host.py`); see `sidecar_behind_log`."""
        why = sidecar_behind_log(self.store.load().raft_applied_index, engine_applied,
                                 snapshot_index, entries)
        if why:
            raise Halt(0, why)

    def adopt_snapshot(self, header_cutover: int, blob: bytes, snapshot_index: int) -> None:
        """Runtime InstallSnapshot (§6): adopt the encryption state it carries.

        elastickv (engine.go applyReadySnapshotLocked 2523-2552, kv/fsm.go Restore
        558-586): only `restoredCutover` is set, which nothing reads until the next
        start-up's guard; sidecar, keystore, cell and wrap stay as they were."""
        if self.ekv:
            self.restored_cutover = header_cutover
            return
        if "snapshot-install-no-cutover" in self.bugs or not blob:
            return
        enc = decode_encryption_state(blob)
        if enc is None:
            return
        sc = self.store.load()
        for k, (wrapped, purpose, _created) in enc["keys"].items():
            if k not in sc.keys:
                self._add_key(sc, snapshot_index, k, wrapped, purpose or "raft")
        if enc["active"]:
            sc.active_raft_dek = enc["active"]
        if header_cutover and not sc.raft_envelope_cutover_index:
            sc.raft_envelope_cutover_index = header_cutover
        sc.raft_applied_index = max(sc.raft_applied_index, snapshot_index)
        self.store.save(sc)
        if sc.raft_envelope_cutover_index:
            self._install(sc.raft_envelope_cutover_index, sc.active_raft_dek,
                          why="install-snapshot")


def sidecar_behind_log(sidecar_applied: int, engine_applied: int, snapshot_index: int,
                       entries: Iterable[Any]) -> str:
    """Why elastickv refuses to start on this sidecar and log ("" if it does not).

    elastickv at d9a031d (`main_encryption_startup_guard.go` runSidecarBehindRaftLogGuard
    145-197, `internal/encryption/audit.go` GuardSidecarBehindRaftLog 113-136,
    `internal/raftengine/etcd/encryption_scanner.go` HasEncryptionRelevantEntryInRange
    57-112, isEncryptionRelevantEntry 131-140), once per start after the engine opened:
    a sidecar index of 0 skips the guard (a legacy or absent sidecar); an index at or
    past the engine's applied index passes; otherwise the entries in (sidecar, engine]
    are scanned for a cleartext encryption opcode (0x04-0x07 after the proposal
    envelope; a wrapped entry reads as 0x01, invisible) and a hit refuses. The scan
    reads the raft MemoryStorage, whose first entry follows the snapshot: a gap that
    starts at or below the snapshot index is `ErrCompacted`, which the guard passes up
    as a refusal of its own. The sidecar's index only moves on encryption entries, so
    a node that took or installed a snapshot past its last one is refused for good.
    Why a pure function: the unit test drives every branch without a node."""
    if sidecar_applied == 0 or sidecar_applied >= engine_applied:
        return ""
    if sidecar_applied + 1 <= snapshot_index:
        return (f"sidecar-behind-log: cannot scan ({sidecar_applied}, {engine_applied}] for "
                f"encryption entries: compacted below the snapshot at {snapshot_index} "
                f"(ErrCompacted)")
    for e in entries:
        if not sidecar_applied < e.index <= engine_applied or not e.data:
            continue
        try:
            _pid, body = pl.decode_proposal(e.data)
        except pl.PayloadError:
            continue
        if body and pl.OP_BOOTSTRAP <= body[0] <= pl.OP_ENCRYPTION_MAX:
            return (f"sidecar-behind-log: entry {e.index} in ({sidecar_applied}, "
                    f"{engine_applied}] is an encryption entry the sidecar has not "
                    f"recorded (ErrSidecarBehindRaftLog)")
    return ""


class EnableHost(Protocol):
    """What the EnableRaftEnvelope flow needs from the node around it."""

    def is_leader(self) -> bool: ...

    def ready_to_serve(self) -> bool: ...  # applied its own term's first entry

    def commit_index(self) -> int: ...

    def applied_index(self) -> int: ...

    def inflight_user(self) -> int: ...

    def propose_raw(self, payload: bytes) -> int: ...  # raises on a non-leader


@dataclass
class EnableResult:
    """The answer to EnableRaftEnvelope: ok / already-active / stale / not-bootstrapped /
    failed / not-leader, with C where there is one."""

    status: str
    cutover: int = 0
    text: str = ""


class EnableFlow:
    """EnableRaftEnvelope on the leader (§5), one step per call, driven by ticks.

    The host calls `poll(host)` from its loop until it returns a result. The barrier
    lives on the Cutover (the proposers read it); the flow raises it and decides when
    it may come down. Steps: pre-check (leader, applied >= commit, bootstrapped, not yet
    active), barrier up, drain in-flight user proposals, propose the marker raw, wait
    for it to apply, then read the sidecar back: C == 0 means the stale branch ran.
    """

    def __init__(self, cut: Cutover, timeout_ticks: int) -> None:
        self.cut = cut
        self.timeout_ticks = timeout_ticks
        self.phase = "precheck"
        self.ticks = 0
        self.marker_index = 0
        self.commit_seen = False

    def tick(self) -> None:
        self.ticks += 1

    def _fail(self, text: str) -> EnableResult:
        # Step 5: a marker that may still commit makes lowering the barrier unsafe;
        # it stays up until a restart (unless the switch puts the old defect back).
        if "barrier-release-on-timeout" in self.cut.bugs:
            self.cut.barrier = False
        self.phase = "done"
        return EnableResult("failed", 0, text)

    def poll(self, host: EnableHost) -> EnableResult | None:
        cut = self.cut
        if self.phase == "precheck":
            if not host.is_leader():
                self.phase = "done"
                return EnableResult("not-leader", 0, "not the leader")
            # A marker committed by an earlier leader may sit in the log unapplied. A new
            # leader's commit index only covers it once its own term's first entry is
            # committed, so "applied >= commit" means something only after that.
            if "duplicate-marker" not in cut.bugs and (
                    not host.ready_to_serve() or host.applied_index() < host.commit_index()):
                if self.ticks > self.timeout_ticks:
                    self.phase = "done"
                    return EnableResult("failed", 0, "log not applied in time")
                return None
            if cut.barrier and not cut.ekv:
                # An earlier attempt on this node timed out with its marker still able to
                # commit (step 5 keeps the barrier up). "applied >= commit" says nothing
                # about that uncommitted marker: a second one now would land above C.
                # Found by the harness (`cutover run`, seed 1): only a restart clears it.
                # (elastickv: EnableRaftEnvelope ignores the latch its own failure set,
                # and Begin is idempotent: adapter/encryption_admin.go EnableRaftEnvelope
                # 1324-1385, runRaftEnvelopeCutoverBarrier 1484-1495; R2.)
                self.phase = "done"
                return EnableResult("failed", 0, "an earlier marker may still commit; the "
                                                 "barrier stays up until this node restarts")
            sc = cut.store.load()
            if sc.active_raft_dek == 0:
                self.phase = "done"
                return EnableResult("not-bootstrapped", 0, "no raft DEK yet")
            if sc.raft_envelope_cutover_index:
                self.phase = "done"
                return EnableResult("already-active", sc.raft_envelope_cutover_index)
            cut.barrier = True
            cut._event(EventKind.BARRIER, up=True)
            self.phase, self.ticks = "drain", 0
        if self.phase == "drain":
            # Without the quiescence barrier (the switch) there is nothing to drain to:
            # intake goes on, so the old code proposed the marker at once.
            if host.inflight_user() > 0 and "no-barrier" not in cut.bugs:
                if self.ticks > self.timeout_ticks:
                    return self._fail("in-flight proposals did not drain in time")
                return None
            try:
                self.marker_index = host.propose_raw(
                    cut.marker_proposal(cut.store.load().active_raft_dek))
            except Exception as e:  # noqa: BLE001 - leadership lost: same as a timeout
                return self._fail(f"could not propose the marker: {e}")
            cut._event(EventKind.MARKER_PROPOSED, index=self.marker_index)
            self.phase, self.ticks = "wait-apply", 0
            return None
        if self.phase == "wait-apply":
            if not self.commit_seen and host.commit_index() >= self.marker_index:
                self.commit_seen = True  # the leader's view; followers learn it later
                cut._event(EventKind.MARKER_COMMITTED, index=self.marker_index)
            if host.applied_index() < self.marker_index:
                if self.ticks > self.timeout_ticks:
                    cut._event(EventKind.APPLY_WAIT_TIMEOUT, index=self.marker_index,
                               barrier=cut.barrier)
                    return self._fail(f"marker {self.marker_index} not applied in time")
                return None
            sc = cut.store.load()
            self.phase = "done"
            cut.barrier = False
            cut._event(EventKind.BARRIER, up=False)
            c = sc.raft_envelope_cutover_index
            if c == 0:
                return EnableResult("stale", 0, "a DEK rotation raced the marker")
            cut._install(c, sc.active_raft_dek, why="enable-handler")
            return EnableResult("ok", c)
        return None
