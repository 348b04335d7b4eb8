"""The offline checker of the cutover invariants I1-I7 (protocol §7, docs/invariants.md).

Pure analysis of what the nodes left on disk: it reads each node's WAL, snapshots,
``sidecar.json`` and ``events.jsonl`` and never writes into a data dir. Every byte format
is parsed by the module that owns it (``node.wal``, ``node.snapshot``, ``node.payload``,
``node.envelope``, ``node.keystore``, ``node.sidecar``, ``node.events``); nothing here
slices those bytes itself. The one exception is the snapshot encryption blob, which the
node side writes inline (``node.cutover.Cutover.snapshot_fields``) without a public
decoder: `node.cutover.decode_encryption_state`, next to its encoder.

What the checker takes from the disk (and what the node side must keep writing):

* **Durable log of a node**: every ENTRY record of its WAL, the last record per index
  winning, minus what a later TRUNCATE record removed, minus entries a later snapshot
  marker replaced (a marker at S whose term does not match the node's own entry at S
  drops the entries <= S above the node's highest recorded commit index: a stale
  suffix, not the cluster's log). Structural checks (I1 first half, I2, I6) and the
  scan rows use this log. Byte checks (I1 second half) and I5 use every record on disk,
  truncated or compacted ones included.
* **Entry payloads** (``node.payload``): bootstrap ``0x04 | msgpack {"id": u32,
  "wrapped": bin}``, rotate ``0x05 0x01 | msgpack {"id", "wrapped"}``, marker ``0x05 0x05
  | msgpack {"dek": u32}``; ``wrapped`` is the 61-byte KEK-wrapped DEK of
  ``node.keystore``. Installs are learnt from cleartext entries and from wrapped entries
  that unwrap (a rotation above C is wrapped under the old key), iterating until no new
  key appears.
* **Snapshot encryption blob** (the header's ``encryption`` region): msgpack ``{"keys":
  {id: {"wrapped": bin, "purpose": str, "created_index": int}}, "active": int,
  "cutover": int}``; empty means "no encryption state".
* **Events** (``events.jsonl``, kinds in `node.events.EventKind`): ``halt`` ``{index,
  term, reason}`` (I3); any event with an integer ``applied`` and a string ``digest`` is
  a digest observation (I4): the node's ``progress`` and ``stop`` events carry both; the
  cutover time T is the earliest ``t`` of an ``encryption-applied`` event with ``what ==
  "marker-fresh"`` (its ``index``, when present, must equal C). Without any, every token
  counts as written after the cutover (strict). A kind the checker does not know is
  ignored: an event log of another node build is still evidence.

A structural I1 violation carries ``known_committed``: whether its index is at or below
the highest commit index the node recorded in its WAL's hard state. Raft persists the
commit index lazily, so False means "not known", never "uncommitted".

Known DEKs are the union over the cluster (every node's sidecar and snapshot blobs, plus
install entries): I1 asks whether an entry authenticates under a DEK that a keystore
holds, and Raft replicates installs to everyone.

The byte scan looks for the workload's plaintext tokens written after T (monotonic
``time_ns``, strictly greater than T) in: the bytes of every WAL entry record whose
index is above C (truncated ones too), every torn WAL tail when C != 0 (its index is
unknown), and the data region of every snapshot file whose index is above C (the node
build as of this writing stores that region, the KV image, in cleartext, so any snapshot
taken above C fails this half unless the node wraps the region or the caller passes
``scan_snapshot_data=False``). Tokens
shorter than `MIN_TOKEN_LEN` bytes are ignored: random ciphertext would contain them by
chance. Leftover ``*.tmp`` snapshot files are not scanned (start-up prunes them).

The report never holds key material: key ids, nonces (public), sizes and reasons only.
A KEK file that cannot be loaded raises `node.keystore.KeyFileError` (a harness
failure, not a verdict); unreadable WALs, snapshots or sidecars are listed in
``errors`` and make the report invalid, since the invariants cannot be established.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple

from node import payload as pl
from node.cutover import as_int as _as_int
from node.cutover import decode_encryption_state
from node.envelope import (
    MAX_KEY_ID,
    UnwrapError,
    is_wrapped_shape,
    parse_header,
    split_nonce,
    unwrap,
)
from node.events import EventKind, read_events
from node.keystore import DekUnwrapError, Kek, Keystore, KeystoreError, load_kek
from node.kv import snapshot_enc, snapshot_kv
from node.sidecar import Sidecar, SidecarError
from node.sidecar import load as load_sidecar
from node.snapshot import (
    SnapshotError,
    SnapshotFile,
    SnapshotHeader,
    SnapshotStore,
    read_snapshot_file,
)
from node.storage import SNAP_DIR, WAL_DIR
from node.types import Entry, EntryKind
from node.wal import RecordKind, TornTail, WalError, WalRecord, iter_records

from .replay import ReplayNode, entry_payload, replay_check

__all__ = [
    "INVARIANTS",
    "MIN_TOKEN_LEN",
    "CutoverReport",
    "InvariantResult",
    "LogRow",
    "check_cutover",
]

INVARIANTS = {
    "I1": "no cleartext above the cutover",
    "I2": "one cutover",
    "I3": "no halts",
    "I4": "convergence",
    "I5": "nonce uniqueness",
    "I6": "keys precede use",
    "I7": "rotation takes effect",
}
MIN_TOKEN_LEN = 6
_PATTERN_PREFIX = 256  # a match of a token's first 256 bytes counts as a match
_MAX_LISTED = 200  # violations kept per invariant (the count is always exact)


class LogRow(NamedTuple):
    """One durable log entry as scanned, for the results database (`log_entries`).

    `opcode` is the cleartext ``payload[0]`` (of the unwrapped payload for a wrapped
    entry), None for no-ops and for entries that do not open.
    """

    node: str
    index: int
    term: int
    opcode: int | None
    wrapped: bool
    key_id: int | None


@dataclass
class InvariantResult:
    """The verdict on one invariant: the first violation and per-node details."""

    name: str
    title: str
    valid: bool = True
    first_violation: dict[str, Any] | None = None
    violations: list[dict[str, Any]] = field(default_factory=list)  # at most _MAX_LISTED
    violation_count: int = 0
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    unknown: str | None = None  # why a violation-free invariant is still not shown to hold

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "valid": self.valid,
            "unknown": self.unknown,
            "first_violation": self.first_violation,
            "violation_count": self.violation_count,
            "violations": self.violations,
            "nodes": self.nodes,
            "summary": self.summary,
        }


@dataclass
class CutoverReport:
    """Everything `check_cutover` found; `to_dict()` is JSON-serializable."""

    cutover: int
    cutover_time_ns: int | None
    results: dict[str, InvariantResult]
    rows: list[LogRow]
    nodes: dict[str, dict[str, Any]]
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors and all(r.valid for r in self.results.values())

    @property
    def unknown(self) -> str | None:
        """Why a report without violations still does not show the invariants hold."""
        if self.errors:
            return self.errors[0]
        return next((f"{r.name}: {r.unknown}" for r in self.results.values() if r.unknown),
                    None)

    def __getitem__(self, name: str) -> InvariantResult:
        return self.results[name]

    def first_violation(self) -> tuple[str, dict[str, Any]] | None:
        """(invariant, violation) of the first failing invariant, in I1..I7 order."""
        for name, r in self.results.items():
            if r.first_violation is not None:
                return name, r.first_violation
        return None

    def to_dict(self, *, include_rows: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "valid": self.valid,
            "cutover": self.cutover,
            "cutover_time_ns": self.cutover_time_ns,
            "invariants": {k: r.to_dict() for k, r in self.results.items()},
            "nodes": self.nodes,
            "errors": list(self.errors),
            "notes": list(self.notes),
        }
        if include_rows:
            out["log_entries"] = [r._asdict() for r in self.rows]
        return out


# --------------------------------------------------------------------------- reading


@dataclass
class _Node:
    name: str
    path: Path
    records: list[WalRecord] = field(default_factory=list)  # every entry record on disk
    log: dict[int, WalRecord] = field(default_factory=dict)  # the durable log
    torn: list[TornTail] = field(default_factory=list)
    commit: int = 0  # highest commit index of any hard-state record
    stale_dropped: int = 0
    sidecar: Sidecar | None = None
    snapshots: list[SnapshotFile] = field(default_factory=list)  # oldest first
    enc: dict[int, dict[str, Any] | None] = field(default_factory=dict)  # by snapshot index
    enc_errors: dict[int, str] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def rel(self, p: Path) -> str:
        try:
            return str(Path(p).relative_to(self.path))
        except ValueError:
            return str(p)


def _read_node(name: str, path: Path) -> _Node:
    node = _Node(name, path)
    log = node.log
    try:
        for rec in iter_records(path / WAL_DIR, on_torn_tail=node.torn.append):
            v = rec.value
            if rec.kind is RecordKind.ENTRY:
                assert isinstance(v, Entry)
                node.records.append(rec)
                log[v.index] = rec
            elif rec.kind is RecordKind.TRUNCATE:
                assert isinstance(v, int)
                for i in [i for i in log if i >= v]:
                    del log[i]
            elif rec.kind is RecordKind.HARD_STATE:
                node.commit = max(node.commit, v.commit)  # type: ignore[union-attr]
            else:  # snapshot marker
                s, t = v.index, v.term  # type: ignore[union-attr]
                own = log.get(s)
                if own is None or own.value.term != t:  # type: ignore[union-attr]
                    stale = [i for i in log if node.commit < i <= s]
                    for i in stale:
                        del log[i]
                    node.stale_dropped += len(stale)
    except WalError as e:
        node.errors.append(f"{name}: unreadable WAL: {e}")
    try:
        node.sidecar = load_sidecar(path)
    except SidecarError as e:
        node.errors.append(f"{name}: {e}")
    for index, p in SnapshotStore(path / SNAP_DIR).files():
        try:
            snap = read_snapshot_file(p)
        except (SnapshotError, OSError) as e:
            node.errors.append(f"{name}: unreadable snapshot: {e}")
            continue
        node.snapshots.append(snap)
        try:
            node.enc[index] = decode_encryption_state(snap.header.encryption)
        except ValueError as e:
            node.enc[index] = None
            node.enc_errors[index] = str(e)
    node.events = read_events(str(path))
    return node


# --------------------------------------------------------------------------- entries


@dataclass(slots=True)
class _Decoded:
    """One distinct entry (index, term, kind, data) and what it turned out to be."""

    status: str  # noop | clear | wrapped | malformed
    payload: bytes = b""  # the (possibly wrapped) payload after the proposal envelope
    key_id: int | None = None
    nonce: bytes | None = None
    inner: bytes | None = None  # plaintext of a wrapped payload that opened
    error: str | None = None  # why it is malformed / does not open

    @property
    def cleartext(self) -> bytes | None:
        if self.status == "clear":
            return self.payload
        return self.inner

    @property
    def opcode(self) -> int | None:
        p = self.cleartext
        return p[0] if p else None


def _decode(e: Entry) -> _Decoded:
    if e.kind is not EntryKind.NORMAL or not e.data:
        return _Decoded("noop")  # no-ops carry no payload and are never wrapped
    try:
        _, payload = pl.decode_proposal(e.data)
    except pl.PayloadError as err:
        return _Decoded("malformed", error=str(err))
    if not payload:
        return _Decoded("malformed", error="empty payload")
    head = parse_header(payload)
    if head is None:
        return _Decoded("clear", payload)
    return _Decoded("wrapped", payload, head[0], head[1])


def _entry_key(e: Entry) -> tuple[int, int, int, bytes]:
    return (e.index, e.term, int(e.kind), e.data)


def _op_name(p: bytes | None) -> str | None:
    if not p:
        return None
    op = p[0]
    if op == pl.OP_ROTATION:
        sub = p[1] if len(p) > 1 else None
        if sub == pl.SUB_ROTATE_DEK:
            return "rotate-dek"
        if sub == pl.SUB_ENABLE_ENVELOPE:
            return "enable-raft-envelope"
        return "rotation/?" if sub is None else f"rotation/0x{sub:02x}"
    return pl.OPCODE_NAMES.get(op, f"0x{op:02x}")


def _is_marker(p: bytes | None) -> bool:
    return bool(p) and len(p) >= 2 and p[0] == pl.OP_ROTATION and p[1] == pl.SUB_ENABLE_ENVELOPE


def _install_of(p: bytes | None) -> tuple[int, bytes, str] | str | None:
    """(key id, wrapped DEK, purpose) of a bootstrap/rotate payload, an error, or None."""
    if not p:
        return None
    try:
        if p[0] == pl.OP_BOOTSTRAP:
            body, what = pl.decode_body(p), "bootstrap"
        elif p[0] == pl.OP_ROTATION and len(p) > 1 and p[1] == pl.SUB_ROTATE_DEK:
            body, what = pl.rotation_body(p)[1], "rotate"
        else:
            return None
    except pl.PayloadError as e:
        return str(e)
    kid = _as_int(body.get("id")) if isinstance(body, dict) else None
    wrapped = body.get("wrapped") if isinstance(body, dict) else None
    if kid is None or not isinstance(wrapped, bytes):
        return f"malformed {what} body (need id and wrapped bytes)"
    return kid, wrapped, what


class _Keys:
    """The cluster's known DEKs (a real Keystore) and where each key got installed."""

    def __init__(self, keystore: Keystore) -> None:
        self.store = keystore
        self.installed: dict[int, tuple[int, str]] = {}  # key id -> (point, source)
        self.problems: list[dict[str, Any]] = []
        self.conflicts: list[dict[str, Any]] = []

    def add(self, key_id: int, wrapped: bytes, purpose: str, created: int, source: str,
            node: str | None = None, index: int | None = None) -> bool:
        """Learn a DEK; True if the id was new."""
        if not 1 <= key_id <= MAX_KEY_ID:
            self.problems.append({"source": source, "key_id": key_id,
                                  "reason": "key id out of range"})
            return False
        new = key_id not in self.store
        try:
            self.store.install_wrapped(key_id, wrapped, purpose or "raft", max(created, 0))
        except DekUnwrapError as e:
            self.problems.append({"source": source, "key_id": key_id, "reason": str(e)})
            return False
        except (KeystoreError, ValueError) as e:
            self.conflicts.append({"source": source, "key_id": key_id, "reason": str(e),
                                   "node": node, "index": index})
            return False
        return new

    def installed_at(self, key_id: int, point: int, source: str) -> None:
        """Keep the lowest install point; at a tie an entry beats a snapshot's claim."""
        old = self.installed.get(key_id)

        def rank(p: int, src: str) -> tuple[int, bool]:
            return p, src.startswith("snapshot")

        if old is None or rank(point, source) < rank(*old):
            self.installed[key_id] = (point, source)


# --------------------------------------------------------------------------- results


class _Collector:
    def __init__(self, name: str) -> None:
        self.result = InvariantResult(name, INVARIANTS[name])
        self._all: list[dict[str, Any]] = []

    def add(self, node: str | None, index: int | None, term: int | None,
            opcode: int | str | None, reason: str, **extra: Any) -> None:
        v: dict[str, Any] = {"node": node, "index": index, "term": term, "opcode": opcode,
                             "reason": reason}
        v.update({k: x for k, x in extra.items() if x is not None})
        self._all.append(v)

    def finish(self, order: Any = None) -> InvariantResult:
        def default(v: dict[str, Any]) -> tuple[Any, ...]:
            i = v.get("index")
            return (i if isinstance(i, int) else float("inf"), v.get("node") or "")

        self._all.sort(key=order or default)
        r = self.result
        r.violation_count = len(self._all)
        r.valid = not self._all
        r.violations = self._all[:_MAX_LISTED]
        r.first_violation = self._all[0] if self._all else None
        return r


# --------------------------------------------------------------------------- the check


def check_cutover(
    node_dirs: Mapping[str, str | PathLike[str]],
    kek_path: str | PathLike[str],
    plaintext_tokens: Iterable[tuple[bytes, int]] = (),
    *,
    scan_snapshot_data: bool = True,
    excused: Iterable[tuple[str, int]] = (),
) -> CutoverReport:
    """Check I1-I7 on the data dirs `node_dirs` (node name -> dir); read-only.

    `plaintext_tokens` are (token, monotonic time_ns at which the workload wrote it);
    tokens written after the cutover must not appear in cleartext above C.
    `scan_snapshot_data=False` leaves snapshot data regions out of the byte scan.
    `excused` are (node, index) copies a nemesis damaged on purpose: an I1 finding or an
    I3 halt (or its I5 nonce twin) at exactly that copy is the correct, loud reaction, not a violation
    (it is listed in the invariant's summary instead).
    """
    kek = load_kek(kek_path)
    nodes = [_read_node(n, Path(d)) for n, d in sorted(node_dirs.items())]
    rep = _analyze(nodes, kek, plaintext_tokens, scan_snapshot_data)
    if excused:
        _excuse(rep, {(str(n), int(i)) for n, i in excused})
    return rep


def _excuse(rep: CutoverReport, excused: set[tuple[str, int]]) -> None:
    indexes = {i for _, i in excused}

    def is_excused(name: str, v: dict[str, Any]) -> bool:
        if name == "I5":
            # The damaged copy and a healthy copy of the same entry share a nonce; the
            # finding may name either replica, so match the entry, not the node.
            return v.get("index") in indexes and v.get("first_use_index") == v.get("index")
        return (v.get("node"), v.get("index")) in excused

    for name in ("I1", "I3", "I5"):
        r = rep.results[name]
        kept = [v for v in r.violations if not is_excused(name, v)]
        gone = len(r.violations) - len(kept)
        if not gone:
            continue
        r.summary["excused"] = [v for v in r.violations if is_excused(name, v)]
        r.violations = kept
        r.violation_count -= gone
        r.valid = r.violation_count == 0
        r.first_violation = kept[0] if kept else None


@dataclass
class NodeState:
    """What a node holds, handed over in memory (the simulator's nodes have no files):
    its durable log, its sidecar, its events and its latest snapshot's encryption blob."""

    entries: list[Entry]
    sidecar: Sidecar | None
    events: list[dict[str, Any]] = field(default_factory=list)
    snapshot_index: int = 0
    snapshot_encryption: bytes = b""
    snapshot_term: int = 0
    snapshot_data: bytes = b""  # the snapshot's data (image + encryption state), if any
    commit: int = 0


def check_cutover_state(states: Mapping[str, NodeState], kek: Kek) -> CutoverReport:
    """I1-I7 on in-memory node states, e.g. from the deterministic simulator. Without
    files there is no byte scan: I1 is its structural half only."""
    nodes = []
    for name, st in sorted(states.items()):
        n = _Node(name, Path(f"<memory:{name}>"))
        for e in st.entries:
            rec = WalRecord(n.path, 0, 0, RecordKind.ENTRY, e, 0)
            n.records.append(rec)
            n.log[e.index] = rec
        n.sidecar = st.sidecar
        n.events = list(st.events)
        n.commit = st.commit
        if st.snapshot_encryption:
            n.enc[st.snapshot_index] = decode_encryption_state(st.snapshot_encryption)
        if st.snapshot_index and st.snapshot_data:
            header = SnapshotHeader(st.snapshot_index, st.snapshot_term,
                                    snapshot_enc(st.snapshot_data)[0], st.snapshot_encryption)
            n.snapshots.append(SnapshotFile(None, header, st.snapshot_data, 0, 0))
        nodes.append(n)
    return _analyze(nodes, kek, (), False)


def _analyze(nodes: list[_Node], kek: Kek, plaintext_tokens: Iterable[tuple[bytes, int]],
             scan_snapshot_data: bool) -> CutoverReport:
    errors = [e for n in nodes for e in n.errors]
    notes: list[str] = []

    # ---- the cluster's C
    side_c = {n.name: n.sidecar.raft_envelope_cutover_index for n in nodes if n.sidecar}
    counts = Counter(c for c in side_c.values() if c)
    cut = min(counts, key=lambda c: (-counts[c], c)) if counts else 0

    # ---- distinct durable entries, decoded once however many replicas hold them
    decoded: dict[tuple[int, int, int, bytes], _Decoded] = {}
    holders: dict[tuple[int, int, int, bytes], list[str]] = defaultdict(list)
    for n in nodes:
        for rec in n.log.values():
            e: Entry = rec.value  # type: ignore[assignment]
            k = _entry_key(e)
            if k not in decoded:
                decoded[k] = _decode(e)
            holders[k].append(n.name)

    # ---- known DEKs: sidecars, snapshot blobs, then install entries (to a fixed point)
    keys = _Keys(Keystore(kek))
    for n in nodes:
        if n.sidecar:
            for kid, wk in sorted(n.sidecar.keys.items()):
                keys.add(kid, wk.wrapped, wk.purpose, wk.created_index, f"sidecar of {n.name}",
                         n.name)
        for snap in n.snapshots:
            s = snap.header.index
            st = n.enc.get(s)
            for kid, (wrapped, purpose, created) in sorted((st or {}).get("keys", {}).items()):
                src = f"snapshot {s} of {n.name}"
                keys.add(kid, wrapped, purpose, created, src, n.name, s)
                keys.installed_at(kid, created if 0 < created <= s else s, src)
    install_errors: list[dict[str, Any]] = []
    ignored: list[dict[str, Any]] = []

    def harvest(k: tuple[int, int, int, bytes], d: _Decoded) -> bool:
        got = _install_of(d.cleartext)
        if got is None:
            return False
        if isinstance(got, str):
            install_errors.append({"index": k[0], "term": k[1], "reason": got})
            return False
        kid, wrapped, what = got
        if what == "bootstrap" and any(p < k[0] for p, _ in keys.installed.values()):
            # The node's applier ignores a bootstrap once a raft DEK is active (a retried
            # or duplicate request): it installs nothing, so it conflicts with nothing.
            ignored.append({"index": k[0], "term": k[1], "key_id": kid})
            return False
        src = f"{what} entry {k[0]}"
        new = keys.add(kid, wrapped, "raft", k[0], src, holders[k][0], k[0])
        keys.installed_at(kid, k[0], src)
        return new

    for k, d in sorted(decoded.items(), key=lambda kv: kv[0][:2]):
        if d.status == "clear":
            harvest(k, d)
    pending = sorted((k for k, d in decoded.items() if d.status == "wrapped"),
                     key=lambda k: k[:2])
    while pending:
        progress, still = False, []
        for k in pending:
            d = decoded[k]
            try:
                d.inner = unwrap(keys.store.get, d.payload)
            except UnwrapError as err:
                d.error = f"{err.code}: {err.reason}"
                if err.code == "unknown-key":
                    still.append(k)
                continue
            d.error = None
            progress = harvest(k, d) or progress
        pending = still if progress else []

    cut_time = _cutover_time(nodes, cut)
    rows: list[LogRow] = []
    results = {
        "I1": _check_i1(nodes, decoded, cut, cut_time, plaintext_tokens, scan_snapshot_data,
                        _committed_entries(nodes),
                        rows, notes),
        "I2": _check_i2(nodes, decoded, side_c, cut, _applied_seen(nodes)),
        "I3": _check_i3(nodes),
        "I4": _check_i4(nodes, decoded, keys, notes),
        "I5": _check_i5(nodes),
        "I6": _check_i6(decoded, holders, keys, install_errors, ignored),
        "I7": _check_i7(nodes, decoded, keys),
    }
    rows.sort(key=lambda r: (r.node, r.index))
    if cut and not results["I2"].summary["marker_verified_on"]:
        notes.append(f"entry {cut} is compacted on every node: only the snapshot headers "
                     f"vouch for the marker")
    if not any(r["digest_observations"] for r in results["I4"].nodes.values()):
        notes.append("no digest events: I4 had nothing to compare")
    summary = {n.name: _node_summary(n) for n in nodes}
    if cut and cut_time is None:
        notes.append("no event records when the marker applied: every token counts as "
                     "written after the cutover")
    return CutoverReport(cut, cut_time, results, rows, summary, errors, notes)


def _cutover_time(nodes: list[_Node], cut: int) -> int | None:
    if not cut:
        return None
    times = []
    for n in nodes:
        for ev in n.events:
            if ev.get("kind") != EventKind.ENCRYPTION_APPLIED or ev.get("what") != "marker-fresh":
                continue
            if "index" in ev and ev.get("index") != cut:
                continue
            t = ev.get("t")
            if isinstance(t, int) and not isinstance(t, bool):
                times.append(t)
    return min(times) if times else None


def _node_summary(n: _Node) -> dict[str, Any]:
    sc = n.sidecar
    newest = n.snapshots[-1].header if n.snapshots else None
    st = n.enc.get(newest.index) if newest else None
    return {
        "sidecar": None if sc is None else {
            "cutover": sc.raft_envelope_cutover_index,
            "active_raft_dek": sc.active_raft_dek,
            "raft_applied_index": sc.raft_applied_index,
            "local_epoch": sc.local_epoch,
            "key_ids": sorted(sc.keys),
        },
        "snapshot": None if newest is None else {
            "index": newest.index,
            "term": newest.term,
            "cutover": newest.cutover,
            "key_ids": sorted(st["keys"]) if st else [],
            "active": st["active"] if st else None,
            "encryption_error": n.enc_errors.get(newest.index),
        },
        "wal_entry_records": len(n.records),
        "durable_entries": len(n.log),
        "first_index": min(n.log) if n.log else None,
        "last_index": max(n.log) if n.log else None,
        "commit": n.commit,
        "stale_entries_dropped": n.stale_dropped,
        "torn_tail": bool(n.torn),
        "events": len(n.events),
    }


# --------------------------------------------------------------------------- I1


def _committed_entries(nodes: list[_Node]) -> set[tuple[int, int]]:
    """(index, term) of every entry some node knew committed: it held the entry and its
    commit index covered it (its WAL's hard state, a commit or applied index it reported
    in an event, or a halt: only a committed entry is handed to apply)."""
    out: set[tuple[int, int]] = set()
    for n in nodes:
        seen = [n.commit]
        for ev in n.events:
            for f in ("applied", "commit") + (("index",) if ev.get("kind") == "halt" else ()):
                v = ev.get(f)
                if isinstance(v, int) and not isinstance(v, bool):
                    seen.append(v)
        known = max(seen)
        for idx, rec in n.log.items():
            if idx <= known:
                out.add((idx, rec.value.term))  # type: ignore[union-attr]
    return out


def _check_i1(nodes: list[_Node], decoded: dict[tuple[int, int, int, bytes], _Decoded],
              cut: int, cut_time: int | None, tokens: Iterable[tuple[bytes, int]],
              scan_snapshots: bool, in_cluster_log: set[tuple[int, int]], rows: list[LogRow],
              notes: list[str]) -> InvariantResult:
    """I1. An entry above C that no node committed or applied (a deposed leader's tail,
    written by a leader cut off from the cluster that never heard of the cutover) is a
    warning, listed apart: it never became part of the cluster's log. Its bytes stay in
    the WAL segment until it is deleted, which is worth knowing, but it is not the
    cluster writing cleartext above the cutover."""
    col = _Collector("I1")
    for n in nodes:
        det = {"entries": 0, "above_cutover": 0, "wrapped": 0, "structural_violations": 0,
               "byte_hits": 0}
        for idx in sorted(n.log):
            e: Entry = n.log[idx].value  # type: ignore[assignment]
            d = decoded[_entry_key(e)]
            wrapped = d.status == "wrapped"
            rows.append(LogRow(n.name, idx, e.term, d.opcode, wrapped, d.key_id))
            det["entries"] += 1
            det["wrapped"] += wrapped
            if cut and idx > cut:
                det["above_cutover"] += 1
            if d.status == "noop":
                continue
            committed = idx <= n.commit
            before = len(col._all)
            if d.status == "malformed":
                col.add(n.name, idx, e.term, None, f"malformed proposal envelope: {d.error}",
                        half="structural", known_committed=committed)
            elif cut and idx > cut and not wrapped:
                col.add(n.name, idx, e.term, d.opcode,
                        f"cleartext {_op_name(d.payload)} entry above the cutover C={cut}",
                        half="structural", opcode_name=_op_name(d.payload),
                        known_committed=committed)
            elif cut and idx > cut and d.inner is None:
                col.add(n.name, idx, e.term, "undecryptable",
                        f"wrapped entry does not authenticate under any known DEK "
                        f"({d.error})", half="structural", key_id=d.key_id,
                        known_committed=committed)
            elif wrapped and (not cut or idx <= cut):  # with C = 0 none may be wrapped
                where = (f"at or below the cutover C={cut}" if cut
                         else "but the cluster never cut over (C=0)")
                col.add(n.name, idx, e.term, d.opcode if d.inner else "undecryptable",
                        f"wrapped entry {where}", half="structural", key_id=d.key_id,
                        opcode_name=_op_name(d.inner), known_committed=committed)
            det["structural_violations"] += len(col._all) - before
        col.result.nodes[n.name] = det

    # ---- byte half
    toks: dict[bytes, int] = {}
    short = considered = 0
    for tok, t in tokens:
        tok = tok.encode() if isinstance(tok, str) else bytes(tok)
        if not cut or (cut_time is not None and t <= cut_time):
            continue
        considered += 1
        if len(tok) < MIN_TOKEN_LEN:
            short += 1
            continue
        key = tok[:_PATTERN_PREFIX]
        toks[key] = min(t, toks.get(key, t))
    scan = {"tokens_after_cutover": considered, "tokens_too_short": short,
            "wal_records_scanned": 0, "wal_bytes_scanned": 0, "snapshots_scanned": 0,
            "hits": 0}
    if short:
        notes.append(f"{short} post-cutover token(s) shorter than {MIN_TOKEN_LEN} bytes "
                     f"were not looked for")
    if toks:
        pat = _token_pattern(toks)
        for n in nodes:
            _scan_node(n, decoded, cut, cut_time, pat, toks, scan_snapshots, scan, col)
    # WAL entries only (structural findings, and byte hits in WAL records): a snapshot's
    # data is applied state, committed by construction.
    uncommitted = [v for v in col._all
                   if isinstance(v.get("index"), int) and isinstance(v.get("term"), int)
                   and (v.get("half") == "structural" or "durable" in v)
                   and (v["index"], v["term"]) not in in_cluster_log]
    if uncommitted:
        col._all = [v for v in col._all if v not in uncommitted]
        notes.append(f"I1: {len(uncommitted)} finding(s) on entries no node committed (a "
                     f"deposed leader's tail), listed as warnings")
    col.result.summary = {"cutover": cut, "cutover_time_ns": cut_time, "byte_scan": scan,
                          "uncommitted_warnings": uncommitted[:_MAX_LISTED],
                          "uncommitted_warning_count": len(uncommitted)}
    return col.finish(lambda v: (v.get("half") != "structural", v.get("index") or 0,
                                 v.get("node") or ""))


def _token_pattern(tokens: Iterable[bytes]) -> re.Pattern[bytes]:
    """One regex for all tokens, shaped as a trie so that scanning stays linear."""
    trie: dict[int, Any] = {}
    for tok in tokens:
        cur = trie
        for b in tok:
            cur = cur.setdefault(b, {})
        cur[-1] = {}

    def emit(node: dict[int, Any]) -> bytes:
        if -1 in node:  # a token ends here: that is already a match
            return b""
        alts = [re.escape(bytes([b])) + emit(node[b]) for b in sorted(node)]
        return alts[0] if len(alts) == 1 else b"(?:" + b"|".join(alts) + b")"

    return re.compile(emit(trie), re.DOTALL)


def _scan_node(n: _Node, decoded: dict[tuple[int, int, int, bytes], _Decoded], cut: int,
               cut_time: int | None, pat: re.Pattern[bytes], toks: dict[bytes, int],
               scan_snapshots: bool, scan: dict[str, int], col: _Collector) -> None:
    def hit(m: re.Match[bytes], where: str, index: int | None = None, term: int | None = None,
            opcode: int | None = None, **extra: Any) -> None:
        scan["hits"] += 1
        col.result.nodes[n.name]["byte_hits"] += 1
        tok = m.group(0)
        t = toks.get(tok)
        when = ("after the cutover" if cut_time is None
                else f"at {t}, after the cutover at {cut_time}")
        shown = tok[:64].decode("utf-8", "replace")
        col.add(n.name, index, term, opcode,
                f"plaintext token {shown!r} (written {when}) in {where}", half="bytes",
                token=shown, token_time_ns=t, **extra)

    by_file: dict[Path, list[WalRecord]] = defaultdict(list)
    for rec in n.records:
        if rec.value.index > cut:  # type: ignore[union-attr]
            by_file[rec.file].append(rec)
    torn_by_file = {t.file: t for t in n.torn}
    for path in sorted(set(by_file) | set(torn_by_file)):
        try:
            data = path.read_bytes()
        except OSError as err:
            col.add(n.name, None, None, None, f"cannot read {n.rel(path)} for the byte "
                    f"scan: {err.strerror}", half="bytes")
            continue
        for rec in by_file.get(path, ()):
            e: Entry = rec.value  # type: ignore[assignment]
            scan["wal_records_scanned"] += 1
            scan["wal_bytes_scanned"] += rec.length
            for m in pat.finditer(data, rec.offset, rec.offset + rec.length):
                d = decoded.get(_entry_key(e)) or _decode(e)
                durable = n.log.get(e.index) is rec
                state = "durable" if durable else "not in the durable log"
                hit(m, f"the WAL record of entry {e.index} ({state})", index=e.index,
                    term=e.term, opcode=d.opcode, file=n.rel(path), offset=m.start(),
                    durable=durable)
        torn = torn_by_file.get(path)
        if torn is not None:
            scan["wal_bytes_scanned"] += len(data) - torn.offset
            for m in pat.finditer(data, torn.offset):
                hit(m, "a torn WAL tail", file=n.rel(path), offset=m.start())
    if not scan_snapshots:
        return
    for snap in n.snapshots:
        s = snap.header.index
        if s <= cut:
            continue
        scan["snapshots_scanned"] += 1
        for m in pat.finditer(snap.data):
            hit(m, f"the data region of snapshot {s}", index=s, term=snap.header.term,
                file=n.rel(snap.path) if snap.path else None,
                offset=snap.data_offset + m.start())


# --------------------------------------------------------------------------- I2


def _applied_seen(nodes: list[_Node]) -> dict[str, int]:
    """The highest index each node reported having applied: an `applied` field of any
    event (progress, stop, role, start, snapshot-taken), or a snapshot it installed."""
    out: dict[str, int] = {}
    for n in nodes:
        best = 0
        for ev in n.events:
            a = ev.get("applied")
            if ev.get("kind") == EventKind.SNAPSHOT_INSTALLED:
                a = ev.get("index")
            if isinstance(a, int) and not isinstance(a, bool):
                best = max(best, a)
        out[n.name] = best
    return out


def _check_i2(nodes: list[_Node], decoded: dict[tuple[int, int, int, bytes], _Decoded],
              side_c: dict[str, int], cut: int,
              applied: dict[str, int] | None = None) -> InvariantResult:
    """I2. Besides the sidecars agreeing and C being a marker: a node that applied past
    C while its sidecar says C = 0 never learned the cutover (R3: it caught up by an
    InstallSnapshot that carried no encryption state), so entries above C reached its
    state machine unopened; elastickv answers them with an error response and moves on."""
    col = _Collector("I2")
    applied = applied or {}
    markers: set[int] = set()
    for k, d in decoded.items():
        if _is_marker(d.cleartext):
            markers.add(k[0])
    verified_on: list[str] = []
    for n in nodes:
        c = side_c.get(n.name)
        det: dict[str, Any] = {"sidecar_cutover": c, "snapshots": []}
        if c and c != cut:
            col.add(n.name, c, None, None,
                    f"sidecar says C={c}, the cluster's C is {cut} "
                    f"(sidecars: {dict(sorted(side_c.items()))})")
        a = applied.get(n.name, 0)
        det["applied_seen"] = a
        if cut and n.sidecar is not None and not c and a > cut:
            col.add(n.name, cut, None, None,
                    f"applied up to {a}, past the cluster's C={cut}, but its sidecar says "
                    f"C=0: it never learned the cutover, so the entries above C reached "
                    f"its state machine unopened", applied=a)
        if cut and cut in n.log:
            e: Entry = n.log[cut].value  # type: ignore[assignment]
            d = decoded[_entry_key(e)]
            if d.status == "clear" and _is_marker(d.payload):
                verified_on.append(n.name)
                det["marker_at_cutover"] = True
            else:
                det["marker_at_cutover"] = False
                what = ("a wrapped entry" if d.status == "wrapped"
                        else _op_name(d.cleartext) or d.status)
                col.add(n.name, cut, e.term, d.opcode if d.status != "wrapped" else None,
                        f"the entry at C={cut} is {what}, not a cleartext "
                        f"enable-raft-envelope marker", opcode_name=_op_name(d.cleartext))
        for snap in n.snapshots:
            h = snap.header
            expected = cut if cut and h.index >= cut else 0
            st = n.enc.get(h.index)
            det["snapshots"].append({"index": h.index, "cutover": h.cutover,
                                     "blob_cutover": st["cutover"] if st else None})
            if h.cutover != expected:
                col.add(n.name, h.index, h.term, None,
                        f"snapshot at {h.index} has header cutover {h.cutover}, "
                        f"expected {expected} (C={cut})")
            elif st is not None and st["cutover"] != h.cutover:
                col.add(n.name, h.index, h.term, None,
                        f"snapshot at {h.index}: encryption state says cutover "
                        f"{st['cutover']}, header says {h.cutover}")
        col.result.nodes[n.name] = det
    col.result.summary = {
        "cutover": cut,
        "marker_indexes": sorted(markers),
        "marker_verified_on": verified_on,
        # Every copy of entry C may be compacted away: then only the snapshots vouch.
        "marker_verified": bool(verified_on) if cut else None,
    }
    return col.finish()


# --------------------------------------------------------------------------- I3, I4


def _check_i3(nodes: list[_Node]) -> InvariantResult:
    col = _Collector("I3")
    for n in nodes:
        halts = [ev for ev in n.events if ev.get("kind") == EventKind.HALT]
        for ev in halts:
            col.add(n.name, ev.get("index"), ev.get("term"), None,
                    f"halt: {ev.get('reason')}", t=ev.get("t"))
        col.result.nodes[n.name] = {"halts": len(halts)}
    return col.finish()


def _check_i4(nodes: list[_Node], decoded: dict[tuple[int, int, int, bytes], _Decoded],
              keys: _Keys, notes: list[str]) -> InvariantResult:
    """Convergence, held to the replayed committed log (`checker.replay`), plus the
    digests two replicas reported at one applied index (kept: it needs no replay)."""
    col = _Collector("I4")
    seen: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for n in nodes:
        obs = 0
        for ev in n.events:
            a, dg = ev.get("applied"), ev.get("digest")
            if isinstance(a, int) and not isinstance(a, bool) and isinstance(dg, str):
                obs += 1
                if n.name not in seen[a][dg]:
                    seen[a][dg].append(n.name)
        col.result.nodes[n.name] = {"digest_observations": obs}
    compared = 0
    for applied in sorted(seen):
        by_digest = seen[applied]
        if sum(len(v) for v in by_digest.values()) > 1:
            compared += 1
        if len(by_digest) > 1:
            ranked = sorted(by_digest.items(), key=lambda kv: (-len(kv[1]), kv[0]))
            odd = ranked[1][1][0]
            col.add(odd, applied, None, None,
                    f"replicas at applied index {applied} disagree: "
                    + "; ".join(f"{dg} on {', '.join(ns)}" for dg, ns in ranked),
                    digests={dg: ns for dg, ns in ranked}, evidence="reported-digests")

    def open_entry(e: Entry) -> bytes | None:
        d = decoded.get(_entry_key(e)) or _decode(e)
        if d.status == "noop":
            return None
        if d.status == "clear":
            return d.payload
        if d.status == "wrapped" and d.inner is not None:
            return d.inner
        raise ValueError(d.error or d.status)

    rnodes = []
    for n in nodes:
        applied = [ev["applied"] for ev in n.events
                   if isinstance(ev.get("applied"), int) and not isinstance(ev["applied"], bool)]
        images = [(snap.header.index, snap.header.term, *_open_image(snap, keys))
                  for snap in n.snapshots]
        rnodes.append(ReplayNode(n.name, {i: rec.value for i, rec in n.log.items()},  # type: ignore[misc]
                                 max([n.commit, *applied]), images, n.events))
    res = replay_check(rnodes, entry_payload(open_entry))
    for v in res.violations:
        col.add(v.pop("node"), v.pop("index"), v.pop("term"), v.pop("opcode"),
                v.pop("reason"), **v)
    notes.extend(f"I4 replay: {m}" for m in res.notes)
    col.result.summary = {"applied_indexes_compared": compared,
                          "replay": {"compared": res.compared, "from": res.replayed_from,
                                     "to": res.replayed_to, "base": res.base}}
    r = col.finish()
    if r.valid and not res.compared and not compared:
        r.unknown = "nothing to compare: no reported digest or snapshot image met the replay"
    return r


def _open_image(snap: SnapshotFile, keys: _Keys) -> tuple[bytes | None, str | None]:
    """The cleartext KV image of a snapshot file (sealed above C), or why not."""
    try:
        image = snapshot_kv(snap.data)
        if is_wrapped_shape(image):
            image = unwrap(keys.store.get, image)
        return image, None
    except UnwrapError as e:
        return None, f"image does not unwrap ({e.code})"
    except (ValueError, TypeError) as e:
        return None, f"image does not decode ({e})"


# --------------------------------------------------------------------------- I5, I6


def _check_i5(nodes: list[_Node]) -> InvariantResult:
    """I5. A (key id, nonce) pair must seal one ciphertext only. Sealed things are WAL
    entries (every record on disk, truncated or rewritten ones too), snapshot images in
    the files, and the sealed images of every incarnation that `snapshot-taken` events
    describe (key id, nonce and a digest survive the file's pruning). Two copies of the
    same bytes (a replica's copy of an entry, a snapshot installed by InstallSnapshot)
    are one ciphertext, not a reuse: ciphertexts are compared, not places."""
    col = _Collector("I5")
    # (key id, nonce) -> ciphertext digest -> where it was first seen
    uses: dict[tuple[int, bytes], dict[bytes, dict[str, Any]]] = defaultdict(dict)
    done: set[tuple[int, int, bytes]] = set()

    def seen(kid: int, nonce: bytes, ident: bytes, where: dict[str, Any]) -> None:
        first = uses[(kid, nonce)].setdefault(ident, where)
        if (where["index"], where["node"]) < (first["index"], first["node"]):
            uses[(kid, nonce)][ident] = where

    for n in nodes:
        wrapped = images = 0
        for rec in n.records:
            e: Entry = rec.value  # type: ignore[assignment]
            ident = (e.index, e.term, e.data)
            if ident in done:  # a replica's (or a rewritten) copy of the same entry
                wrapped += 1
                continue
            d = _decode(e)
            if d.status != "wrapped":
                continue
            done.add(ident)
            wrapped += 1
            assert d.key_id is not None and d.nonce is not None
            seen(d.key_id, d.nonce, hashlib.sha256(d.payload).digest()[:16],
                 {"node": n.name, "index": e.index, "term": e.term, "what": "entry"})
        for snap in n.snapshots:
            try:
                image = snapshot_kv(snap.data)
            except (ValueError, TypeError):
                continue
            head = parse_header(image) if image else None
            if head is None:
                continue
            images += 1
            seen(head[0], head[1], hashlib.sha256(image).digest()[:16],
                 {"node": n.name, "index": snap.header.index, "term": snap.header.term,
                  "what": "snapshot image"})
        for ev in n.events:
            if ev.get("kind") != EventKind.SNAPSHOT_TAKEN or "image_nonce" not in ev:
                continue
            try:
                kid = int(ev["image_key_id"])
                nonce = bytes.fromhex(str(ev["image_nonce"]))
                ident = bytes.fromhex(str(ev["image_sha"]))[:16]
            except (KeyError, TypeError, ValueError):
                continue
            idx = ev.get("index") if isinstance(ev.get("index"), int) else 0
            images += 1
            seen(kid, nonce, ident, {"node": n.name, "index": idx, "term": ev.get("term"),
                                     "what": "snapshot image"})
        col.result.nodes[n.name] = {"wrapped_records": wrapped, "sealed_images": images}
    for n in nodes:
        # The epoch is what keeps one node's processes apart: two starts with the same
        # one while cut over restart the nonce space where it was, and the first seal
        # of the second process repeats the first seal of the first (the envelopes
        # themselves may be compacted away by the time anyone looks).
        starts: dict[int, list[Any]] = defaultdict(list)
        for ev in n.events:
            ep = ev.get("nonce_epoch")
            if ev.get("kind") == EventKind.START and isinstance(ep, int) and ep \
                    and ev.get("cutover"):
                starts[ep].append(ev.get("t"))
        for ep, ts in sorted(starts.items()):
            if len(ts) > 1:
                col.add(n.name, None, None, None,
                        f"{n.name} started {len(ts)} times with nonce epoch {ep} while cut "
                        f"over: every nonce the first of them sealed can repeat",
                        nonce_epoch=ep, t=ts[1])
    for (kid, nonce), where in uses.items():
        if len(where) < 2:
            continue
        ordered = sorted(where.values(), key=lambda w: (w["index"], w["node"]))
        w0 = ordered[0]
        for w in ordered[1:]:
            col.add(w["node"], w["index"], w["term"], None,
                    f"key id {kid} nonce {nonce.hex()} seals two ciphertexts: this "
                    f"{w['what']} and the {w0['what']} at {w0['index']} "
                    f"(term {w0['term']}, {w0['node']})",
                    key_id=kid, nonce=nonce.hex(), first_use_index=w0["index"],
                    sealed=w["what"])
    col.result.summary = {"distinct_pairs": len(uses)}
    return col.finish()


def _check_i6(decoded: dict[tuple[int, int, int, bytes], _Decoded],
              holders: dict[tuple[int, int, int, bytes], list[str]], keys: _Keys,
              install_errors: list[dict[str, Any]],
              ignored: list[dict[str, Any]]) -> InvariantResult:
    col = _Collector("I6")
    per_node: dict[str, int] = defaultdict(int)
    for k, d in sorted(decoded.items(), key=lambda kv: kv[0][:2]):
        if d.status != "wrapped":
            continue
        index, term = k[0], k[1]
        for node in holders[k]:
            per_node[node] += 1
        node = sorted(holders[k])[0]
        got = keys.installed.get(d.key_id)  # type: ignore[arg-type]
        if got is None:
            col.add(node, index, term, d.opcode,
                    f"key id {d.key_id} is used at {index} but no bootstrap/rotate entry "
                    f"installs it and no snapshot carries it", key_id=d.key_id,
                    nodes=sorted(holders[k]))
        elif got[0] >= index:
            col.add(node, index, term, d.opcode,
                    f"key id {d.key_id} is used at {index} but installed only at "
                    f"{got[0]} ({got[1]})", key_id=d.key_id, installed_at=got[0],
                    nodes=sorted(holders[k]))
    for c in keys.conflicts:
        col.add(c.get("node"), c.get("index"), None, None,
                f"key id {c['key_id']} from {c['source']}: {c['reason']}", key_id=c["key_id"])
    col.result.nodes = {n: {"wrapped_entries": c} for n, c in sorted(per_node.items())}
    col.result.summary = {
        "installed": {str(k): {"at": p, "by": src} for k, (p, src) in
                      sorted(keys.installed.items())},
        "known_key_ids": keys.store.ids(),
        "unopenable_keys": keys.problems,
        "malformed_install_entries": install_errors,
        "ignored_bootstraps": ignored,
    }
    return col.finish()


# --------------------------------------------------------------------------- I7


def _check_i7(nodes: list[_Node], decoded: dict[tuple[int, int, int, bytes], _Decoded],
              keys: _Keys) -> InvariantResult:
    """I7. Once a node applied a rotation to DEK d, every entry it seals afterwards is
    sealed under d or a newer key (one installed at a later index).

    Who sealed an envelope, and when, is in its nonce: node number, the process's epoch
    and a counter that only grows. A node's `encryption-applied` event of a rotation
    carries the nonce position it had then (`nonce_node`, `nonce_epoch`,
    `nonce_counter`), so its envelopes with a later position were sealed after it
    applied the rotation. Epochs grow across a node's starts, so a later process counts
    as later. A rotation that does not re-key the proposer, or a replayed older rotation
    that re-activates an older key (elastickv), shows here; a rotation's own entry,
    sealed before it applied, does not."""
    col = _Collector("I7")
    by_num: dict[int, str] = {}
    for i, n in enumerate(sorted(x.name for x in nodes)):
        by_num[i + 1] = n  # the node's default: its place among the sorted peers
    rotations: dict[str, list[tuple[int, int, int, int]]] = defaultdict(list)
    epochs: Counter[tuple[str, int]] = Counter()
    for n in nodes:
        for ev in n.events:
            num = ev.get("nonce_node")
            if isinstance(num, int) and ev.get("kind") == EventKind.START:
                by_num[num] = n.name
                if isinstance(ev.get("nonce_epoch"), int):
                    epochs[(n.name, ev["nonce_epoch"])] += 1
            if ev.get("kind") != EventKind.ENCRYPTION_APPLIED \
                    or not str(ev.get("what", "")).startswith("rotate"):
                continue
            dek, ep, ctr, idx = (ev.get("dek"), ev.get("nonce_epoch"),
                                 ev.get("nonce_counter"), ev.get("index"))
            if all(isinstance(v, int) for v in (dek, ep, ctr, idx)):
                rotations[n.name].append((ep, ctr, dek, idx))
    # An epoch two processes of a node started with orders nothing (I5 reports it when
    # the node was cut over; elastickv's pre-cutover processes all have epoch 0).
    ambiguous = {k for k, c in epochs.items() if c > 1}
    for name in rotations:
        rotations[name] = [r for r in rotations[name] if (name, r[0]) not in ambiguous]

    def point(k: int) -> int | None:
        got = keys.installed.get(k)
        return got[0] if got else None

    checked = 0
    for k, d in sorted(decoded.items(), key=lambda kv: kv[0][:2]):
        if d.status != "wrapped" or d.nonce is None or d.key_id is None:
            continue
        num, ep, ctr = split_nonce(d.nonce)
        node = by_num.get(num)
        if node is None or not rotations.get(node) or (node, ep) in ambiguous:
            continue
        used = point(d.key_id)
        if used is None:
            continue  # an unknown key is I6's finding
        checked += 1
        before = [(point(dek), dek, idx) for rep, rctr, dek, idx in rotations[node]
                  if (ep, ctr) >= (rep, rctr) and point(dek) is not None]
        if not before:
            continue
        floor_point, floor_dek, floor_idx = max(before)
        if d.key_id != floor_dek and used < floor_point:  # type: ignore[operator]
            col.add(node, k[0], k[1], d.opcode,
                    f"{node} sealed this entry under key {d.key_id} after it had applied "
                    f"the rotation to key {floor_dek} (entry {floor_idx}): the rotation "
                    f"did not take effect", key_id=d.key_id, rotated_to=floor_dek,
                    rotation_index=floor_idx)
    col.result.summary = {"entries_checked": checked,
                          "rotations_seen": {n: len(r) for n, r in sorted(rotations.items())}}
    return col.finish()
