"""The offline cutover checker (invariants I1-I7) on synthetic node dirs.

The dirs are written with the real writers (Storage/WAL, SnapshotStore via compaction,
the sidecar, the event log, the KEK file, envelope.wrap with NonceSource, the payload
encoders and the node's own snapshot encryption blob), so the checker reads exactly the
bytes a node leaves behind. One clean three-node cutover passes; each test then breaks
one thing and expects the checker to name it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from checker.invariants import CutoverReport, check_cutover
from node import payload as pl
from node.cutover import Cutover, MemoryStore
from node.envelope import NonceSource, make_nonce, wrap
from node.events import EventKind, EventLog
from node.keystore import WrappedKey, generate_dek, write_kek
from node.kv import KV, snapshot_data, snapshot_kv
from node.sidecar import Sidecar
from node.sidecar import save as save_sidecar
from node.storage import Storage
from node.types import Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from tests.conftest import assert_no_key_material

NODES = ("n1", "n2", "n3")
C = 6
PRE = [b"tok-pre-0001-alpha", b"tok-pre-0002-bravo"]
POST = [b"tok-post-0001-charlie", b"tok-post-0002-delta", b"tok-post-0003-echo"]
LEAK = b"tok-post-0004-leaked"


@dataclass
class Spec:
    """One log entry before sealing: payload None = leader no-op; key = wrap under it."""

    index: int
    term: int
    payload: bytes | None
    key: int | None = None
    by: int = 1  # node number whose NonceSource seals it
    nonce: bytes | None = None  # forced nonce (for I5)


def write(key: str, value: bytes) -> bytes:
    return pl.user_payload({"op": "write", "key": key, "value": value.decode()})


class Lab:
    """A three-node cluster written to disk; tests tweak the fields, then `check()`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.kek_path = root / "kek"
        self.kek_bytes = secrets.token_bytes(32)
        self.kek = write_kek(self.kek_path, self.kek_bytes)
        self.deks = {1: generate_dek(), 2: generate_dek()}
        self.wrapped = {k: self.kek.wrap_dek(d) for k, d in self.deks.items()}
        self.nonces = {1: NonceSource(1, 1), 2: NonceSource(2, 1)}
        self.specs = [
            Spec(1, 1, None),
            Spec(2, 1, write("a", PRE[0])),
            Spec(3, 1, pl.bootstrap_payload(1, self.wrapped[1])),
            Spec(4, 1, write("b", PRE[1])),
            Spec(5, 1, pl.lease_payload("n1", 1)),
            Spec(C, 1, pl.marker_payload(1)),
            Spec(7, 1, write("a", POST[0]), key=1),
            Spec(8, 1, pl.lease_payload("n1", 1), key=1),
            Spec(9, 1, pl.rotate_payload(2, self.wrapped[2]), key=1),
            Spec(10, 1, write("b", POST[1]), key=2),
            Spec(11, 3, None),
            Spec(12, 3, write("c", POST[2]), key=2, by=2),
        ]
        # Per-node replacements of single entries (a divergent copy on one node).
        self.overrides: dict[str, dict[int, Spec]] = {n: {} for n in NODES}
        # n3 first held a stale cleartext entry at 11 (a would-be leader of term 2),
        # overwritten by the term-3 leader: on disk, not in the durable log.
        self.stale = Spec(11, 2, pl.lease_payload("n3", 2))
        self.sidecars = {n: self.default_sidecar() for n in NODES}
        self.snapshot_at = C  # n1 compacts through here (its WAL loses 1..C)
        self.snapshot_values: dict[str, bytes] = {"a": PRE[0], "b": PRE[1]}
        # Everyone at 12 agrees; earlier observations are at distinct applied indexes.
        # None means the true digest (at build time: I4 holds reports to the replayed
        # committed log, so they must follow the specs a test changed).
        self.digests: dict[str, list[tuple[int, str | None]]] = {
            n: [(12, None), (7 + i, None)] for i, n in enumerate(NODES)}
        self.halts: dict[str, list[dict]] = {n: [] for n in NODES}
        self.extra_events: dict[str, list[dict]] = {n: [] for n in NODES}
        self.cutover_events = True
        # Each node's commit index on disk and in its events (12: caught up; lower: a
        # node that stopped there, as one that refused its damaged storage does).
        self.commits = {n: 12 for n in NODES}
        self.built: dict[str, str] | None = None

    def true_digest(self, index: int) -> str:
        """The KV digest after applying the specs' user entries up to `index`."""
        kv = KV()
        for sp in self.specs:
            if sp.index <= index and sp.payload and sp.payload[0] == pl.OP_USER:
                kv.apply(pl.decode_body(sp.payload))
        return kv.digest()

    def default_sidecar(self) -> Sidecar:
        return Sidecar(
            raft_applied_index=12,
            raft_envelope_cutover_index=C,
            active_raft_dek=2,
            keys={1: WrappedKey(self.wrapped[1], "raft", 3),
                  2: WrappedKey(self.wrapped[2], "raft", 9)},
            local_epoch=1,
        )

    def seal(self, s: Spec) -> Entry:
        if s.payload is None:
            return Entry(s.index, s.term, EntryKind.NOOP)
        body = s.payload
        if s.key is not None:
            nonce = s.nonce or self.nonces[s.by].next()
            body = wrap(self.deks[s.key], s.key, nonce, s.payload)
        return Entry(s.index, s.term, EntryKind.NORMAL, pl.encode_proposal(s.index, body))

    def build(self) -> dict[str, str]:
        shared = [self.seal(s) for s in self.specs]  # replicas share the leader's bytes
        stale = self.seal(self.stale)
        dirs = {}
        t_pre = time.monotonic_ns()
        for n in NODES:
            d = self.root / n
            log = [self.seal(self.overrides[n][e.index]) if e.index in self.overrides[n]
                   else e for e in shared]
            with Storage.open(d, n, segment_size=1) as st:  # one segment per batch
                batches = [log[:4], log[4:6], log[6:10]]
                if n == "n3":
                    batches.append([stale])
                batches.append(log[10:])
                for b in batches:
                    st.save_entries(b)
                    st.sync()
                st.set_hard_state(HardState(3, "n2", self.commits[n]))
                st.sync()
                if n == "n1":
                    st.compact(self.snapshot(), cutover=self.snap_cutover(),
                               encryption=self.snap_blob())
            save_sidecar(d, self.sidecars[n])
            ev = EventLog(str(d), n)
            if self.cutover_events:
                ev.emit("encryption-applied", what="marker-fresh", index=C, term=1,
                        cutover=C, active=1)
            for h in self.halts[n]:
                ev.emit("halt", **h)
            for x in self.extra_events[n]:
                ev.emit(**x)
            reported = [(a, self.true_digest(a) if d is None else d) for a, d in self.digests[n]
                        if a <= self.commits[n]] or [(0, KV().digest())]
            for applied, digest in reported:
                ev.emit(EventKind.PROGRESS, applied=applied, digest=digest)
            top = self.commits[n]
            ev.emit("stop", term=3, commit=top, applied=top,
                    digest=self.true_digest(top) if top < 12 else reported[0][1])
            ev.close()
            dirs[n] = str(d)
        t_post = time.monotonic_ns()
        self.tokens = [(t, t_pre) for t in PRE] + [(t, t_post) for t in POST + [LEAK]]
        self.built = dirs
        return dirs

    def snapshot(self) -> Snapshot:
        kv = KV()
        for k, v in self.snapshot_values.items():
            kv.apply({"op": "write", "key": k, "value": v.decode()})
        data = snapshot_data(kv.snapshot(), self.snap_cutover(), self.snap_blob())
        return Snapshot(SnapshotMeta(self.snapshot_at, 1), data)

    def _snap_state(self) -> Cutover:
        keys = {k: WrappedKey(self.wrapped[k], "raft", at) for k, at in ((1, 3), (2, 9))
                if at <= self.snapshot_at}
        store = MemoryStore()
        cut = Cutover(1, store, self.kek)
        sc = store.load()
        store.save(dataclasses.replace(
            sc, raft_applied_index=self.snapshot_at, raft_envelope_cutover_index=C,
            active_raft_dek=max(keys), keys=keys))
        return cut

    def snap_cutover(self) -> int:
        return self._snap_state().snapshot_fields(self.snapshot_at)[0]

    def snap_blob(self) -> bytes:
        return self._snap_state().snapshot_fields(self.snapshot_at)[1]

    def check(self, **kw) -> CutoverReport:
        dirs = self.built or self.build()
        report = check_cutover(dirs, self.kek_path, self.tokens, **kw)
        self.assert_no_secrets(report)
        return report

    def assert_no_secrets(self, report: CutoverReport) -> None:
        text = json.dumps(report.to_dict())
        for secret in [self.kek_bytes, *self.deks.values(), *self.wrapped.values()]:
            assert_no_key_material(text, secret)


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path)


def only_failing(report: CutoverReport) -> set[str]:
    return {k for k, r in report.results.items() if not r.valid}


# --------------------------------------------------------------------------- clean


def test_clean_cutover_passes_every_invariant(lab: Lab) -> None:
    report = lab.check()
    assert report.valid, report.to_dict()["invariants"]
    assert report.errors == [] and report.cutover == C
    assert report.cutover_time_ns is not None
    rows = {(r.node, r.index): r for r in report.rows}
    # n1 compacted 1..6 into its snapshot; n2 and n3 hold the whole log.
    assert min(i for (n, i) in rows if n == "n1") == 7
    assert rows[("n2", C)][3:] == (pl.OP_ROTATION, False, None)
    assert rows[("n2", 3)][3:] == (pl.OP_BOOTSTRAP, False, None)
    assert rows[("n2", 7)][3:] == (pl.OP_USER, True, 1)
    assert rows[("n2", 9)][3:] == (pl.OP_ROTATION, True, 1)  # rotate wrapped, old key
    assert rows[("n1", 10)][3:] == (pl.OP_USER, True, 2)
    assert rows[("n3", 11)][1:] == (11, 3, None, False, None)  # the stale copy lost
    assert rows[("n3", 12)].wrapped and rows[("n3", 12)].key_id == 2
    i1, i2, i4, i6 = (report[k] for k in ("I1", "I2", "I4", "I6"))
    scan = i1.summary["byte_scan"]
    assert scan["tokens_after_cutover"] == 4 and scan["wal_records_scanned"] >= 18
    assert scan["hits"] == 0
    assert report["I5"].nodes["n3"] == {"wrapped_records": 5, "sealed_images": 0}  # replicas are no repeat
    assert i6.summary["installed"]["1"]["by"] == "bootstrap entry 3"
    assert i2.summary["marker_verified"] is True
    assert i2.summary["marker_verified_on"] == ["n2", "n3"]
    assert i4.summary["applied_indexes_compared"] >= 1
    assert i6.summary["installed"]["1"]["at"] == 3 and i6.summary["installed"]["2"]["at"] == 9
    assert i6.summary["known_key_ids"] == [1, 2]
    d = report.to_dict()
    assert json.loads(json.dumps(d))["valid"] is True
    assert len(d["log_entries"]) == len(report.rows) == 6 + 12 + 12


def test_checker_never_writes_into_the_dirs(lab: Lab) -> None:
    dirs = lab.build()

    def state() -> dict[str, tuple[bytes, int, int]]:
        out = {}
        for d in dirs.values():
            for root, _subdirs, files in os.walk(d):
                for f in files:
                    p = os.path.join(root, f)
                    st = os.stat(p)
                    out[p] = (Path(p).read_bytes(), st.st_mtime_ns, st.st_mode)
        return out

    before = state()
    assert lab.check().valid
    assert state() == before


def test_without_a_cutover_time_every_token_counts_but_clean_still_passes(lab: Lab) -> None:
    lab.cutover_events = False
    report = lab.check()
    assert report.valid and report.cutover_time_ns is None
    assert report["I1"].summary["byte_scan"]["tokens_after_cutover"] == 6
    assert any("every token counts" in n for n in report.notes)


def test_event_kinds_no_node_writes_are_ignored(lab: Lab) -> None:
    """An events.jsonl of another build may hold kinds this one does not know: they
    are no evidence of anything (the cutover time comes from `encryption-applied`
    marker-fresh only) and they crash nothing."""
    lab.cutover_events = False
    dirs = lab.build()
    for n, d in dirs.items():
        ev = EventLog(d, n)
        ev.emit("cutover-applied", index=C)  # a kind no node emits
        ev.emit("mystery", applied="x", digest=3)
        ev.close()
    report = lab.check()
    assert report.valid and report.cutover_time_ns is None


def test_a_duplicate_bootstrap_is_a_no_op_not_a_key_conflict(lab: Lab) -> None:
    """A retried bootstrap with a fresh DEK under the same id: the node ignores it once a
    raft DEK is active, so the checker does not call it a conflict."""
    lab.specs[3] = Spec(4, 1, pl.bootstrap_payload(1, lab.kek.wrap_dek(generate_dek())))
    lab.snapshot_values = {"a": PRE[0]}  # entry 4 no longer writes b
    report = lab.check()
    assert report.valid, report.to_dict()["invariants"]["I6"]
    assert report["I6"].summary["ignored_bootstraps"] == [{"index": 4, "term": 1,
                                                            "key_id": 1}]


# --------------------------------------------------------------------------- I1


def test_cleartext_user_entry_above_cutover_is_named(lab: Lab) -> None:
    lab.overrides["n2"][10] = Spec(10, 1, write("b", POST[1]))  # proposed raw on n2
    report = lab.check()
    assert not report.valid and "I1" in only_failing(report)
    v = report["I1"].first_violation
    assert (v["node"], v["index"], v["term"], v["opcode"]) == ("n2", 10, 1, pl.OP_USER)
    assert "cleartext user entry above the cutover C=6" in v["reason"]
    assert v["half"] == "structural"
    # The token in it is caught by the byte scan too, independently.
    hits = [x for x in report["I1"].violations if x["half"] == "bytes"]
    assert [(h["node"], h["index"], h["token"]) for h in hits] == [
        ("n2", 10, POST[1].decode())]
    assert report["I1"].nodes["n2"]["structural_violations"] == 1
    assert report["I1"].nodes["n2"]["byte_hits"] == 1
    assert report["I1"].nodes["n1"]["structural_violations"] == 0


def test_wrapped_entry_at_or_below_cutover(lab: Lab) -> None:
    lab.specs[4] = Spec(5, 1, pl.lease_payload("n1", 1), key=1)
    report = lab.check()
    assert only_failing(report) == {"I1"}
    v = report["I1"].first_violation
    # n1 compacted entry 5 away; n2 is the first node that still holds it.
    assert (v["node"], v["index"], v["opcode"], v["key_id"]) == ("n2", 5, pl.OP_LEASE, 1)
    assert "wrapped entry at or below the cutover C=6" in v["reason"]
    assert report["I1"].violation_count == 2  # n2 and n3


def test_a_wrapped_entry_in_a_cluster_that_never_cut_over(lab: Lab) -> None:
    """Issue 22 (4): with C = 0 every wrapped entry is one too many (a node that seals
    before any cutover); I1 names it by itself, not only through the halts it causes."""
    lab.specs[5] = Spec(C, 1, write("c", PRE[0]))  # no marker: the cluster never cut over
    lab.specs = lab.specs[:7] + [Spec(8, 1, pl.lease_payload("n1", 1))] + [
        s if s.key is None else dataclasses.replace(s, key=None) for s in lab.specs[8:]]
    lab.cutover_events = False
    for n in NODES:
        lab.sidecars[n] = dataclasses.replace(lab.sidecars[n], raft_envelope_cutover_index=0,
                                              active_raft_dek=1)
    report = lab.check()
    assert report.cutover == 0
    assert "I1" in only_failing(report)
    v = report["I1"].first_violation
    assert (v["node"], v["index"], v["key_id"]) == ("n1", 7, 1), v
    assert "wrapped entry but the cluster never cut over (C=0)" in v["reason"]


def test_undecryptable_entry_above_cutover(lab: Lab) -> None:
    stray = generate_dek()
    spec = Spec(8, 1, pl.lease_payload("n1", 1))
    body = wrap(stray, 7, make_nonce(1, 1, 999), spec.payload)
    lab.specs[7] = spec
    orig = lab.seal

    def seal(s: Spec) -> Entry:
        if s is spec:
            return Entry(8, 1, EntryKind.NORMAL, pl.encode_proposal(8, body))
        return orig(s)

    lab.seal = seal  # type: ignore[method-assign]
    report = lab.check()
    assert only_failing(report) == {"I1", "I6"}
    v = report["I1"].first_violation
    assert (v["node"], v["index"], v["opcode"], v["key_id"]) == ("n1", 8, "undecryptable", 7)
    assert "unknown-key" in v["reason"]
    w = report["I6"].first_violation
    assert (w["index"], w["key_id"]) == (8, 7) and "no bootstrap/rotate entry" in w["reason"]


def test_plaintext_token_in_an_uncommitted_tail_is_a_warning(lab: Lab) -> None:
    """The stale copy of entry 11 on n3 (a would-be leader's tail, overwritten, never
    committed) holds a token written after the cutover: the byte scan finds it, and
    lists it apart as a warning, because no node ever committed that entry."""
    lab.stale = Spec(11, 2, write("z", LEAK))
    report = lab.check()
    assert report.valid, report.first_violation()
    i1 = report["I1"]
    assert i1.summary["uncommitted_warning_count"] == 1
    v = i1.summary["uncommitted_warnings"][0]
    assert (v["node"], v["index"], v["term"], v["opcode"]) == ("n3", 11, 2, pl.OP_USER)
    assert v["half"] == "bytes" and v["token"] == LEAK.decode() and v["durable"] is False
    assert v["file"].startswith("wal/") and v["offset"] > 0
    assert "after the cutover" in v["reason"]
    assert any("no node committed" in n for n in report.notes)


def test_plaintext_token_in_a_committed_entry_above_cutover(lab: Lab) -> None:
    """The same bytes in entry 12 of term 3, which every node committed: a violation
    (its structural half and its byte half both name it)."""
    lab.specs[11] = Spec(12, 3, write("z", LEAK))  # cleartext, on every node
    report = lab.check()
    assert only_failing(report) == {"I1"}
    halves = {v["half"] for v in report["I1"].violations}
    assert halves == {"structural", "bytes"}
    assert {v["index"] for v in report["I1"].violations} == {12}


def test_plaintext_token_in_a_snapshot_data_region_above_cutover(lab: Lab) -> None:
    lab.snapshot_at = 8
    lab.snapshot_values["a"] = POST[0]  # the FSM image holds a post-cutover value
    report = lab.check()
    assert only_failing(report) == {"I1"}
    v = report["I1"].first_violation
    assert (v["node"], v["index"], v["half"], v["token"]) == ("n1", 8, "bytes",
                                                               POST[0].decode())
    assert v["file"].startswith("snap/")
    assert lab.check(scan_snapshot_data=False).valid


def test_tokens_written_before_the_cutover_are_not_looked_for(lab: Lab) -> None:
    lab.stale = Spec(11, 2, write("z", PRE[0]))  # an old value, rewritten stale
    assert lab.check().valid


# --------------------------------------------------------------------------- I2-I4


def test_two_cutover_indexes(lab: Lab) -> None:
    lab.sidecars["n3"].raft_envelope_cutover_index = 7
    report = lab.check()
    assert report.cutover == C  # the majority
    assert only_failing(report) == {"I2"}
    v = report["I2"].first_violation
    assert (v["node"], v["index"]) == ("n3", 7)
    assert "sidecar says C=7" in v["reason"]


def test_cutover_that_is_not_a_marker(lab: Lab) -> None:
    for n in NODES:
        lab.sidecars[n].raft_envelope_cutover_index = 5
    report = lab.check()
    assert report.cutover == 5 and "I2" in only_failing(report)
    v = report["I2"].first_violation
    assert (v["node"], v["index"], v["opcode"]) == ("n2", 5, pl.OP_LEASE)
    assert "not a cleartext enable-raft-envelope marker" in v["reason"]
    # n1's snapshot header (cutover 6) disagrees with C=5 as well.
    assert any(x["node"] == "n1" and x["index"] == C for x in report["I2"].violations)


def test_an_uncommitted_entry_at_c_on_a_node_that_never_caught_up_is_not_judged(
        lab: Lab, tmp_path: Path) -> None:
    """A node that stopped before C committed (one that refused its damaged storage stays
    down) may hold a divergent uncommitted entry at C, which Raft would have overwritten:
    not its history. Found by a 1,500-seed batch of the fixed build with storage faults
    (seeds 21184 and 21411), which I2 called "the entry at C is user"."""
    lab.overrides["n3"][C] = Spec(C, 1, write("z", b"never-committed"))
    lab.commits["n3"] = 4
    report = lab.check()
    assert "I2" not in only_failing(report), report["I2"].violations
    assert report["I2"].nodes["n3"].get("uncommitted_at_cutover") is True
    # The same entry on a node that committed past C is judged, and it is a violation.
    (tmp_path / "committed").mkdir()
    other = Lab(tmp_path / "committed")
    other.overrides["n3"][C] = Spec(C, 1, write("z", b"never-committed"))
    bad = other.check()
    assert "I2" in only_failing(bad)
    v = bad["I2"].first_violation
    assert (v["node"], v["index"]) == ("n3", C) and "is user, not a cleartext" in v["reason"]


def test_halt_event(lab: Lab) -> None:
    lab.halts["n2"].append({"index": 7, "term": 1,
                            "reason": "unwrap failed (auth-failed): authentication failed"})
    report = lab.check()
    assert only_failing(report) == {"I3"}
    v = report["I3"].first_violation
    assert (v["node"], v["index"], v["term"]) == ("n2", 7, 1)
    assert "auth-failed" in v["reason"]
    assert report["I3"].nodes == {"n1": {"halts": 0}, "n2": {"halts": 1}, "n3": {"halts": 0}}


def test_diverging_digests_at_the_same_applied_index(lab: Lab) -> None:
    lab.digests["n3"][0] = (12, "d12-ffff")
    report = lab.check()
    assert only_failing(report) == {"I4"}
    v = report["I4"].first_violation
    assert (v["node"], v["index"]) == ("n3", 12)
    assert v["digests"] == {lab.true_digest(12): ["n1", "n2"], "d12-ffff": ["n3"]}


def test_a_digest_no_other_replica_reported_is_held_to_the_replay(lab: Lab) -> None:
    # n2 alone reports index 8: no replica to compare with, but the committed log is.
    lab.digests["n2"][1] = (8, lab.true_digest(6))
    report = lab.check()
    assert only_failing(report) == {"I4"}
    v = report["I4"].first_violation
    assert (v["node"], v["index"], v["evidence"]) == ("n2", 8, "reported-digest")
    assert lab.true_digest(8) in v["reason"]


def test_a_snapshot_labelled_below_the_state_it_holds_breaks_i4(lab: Lab) -> None:
    # n1's snapshot says index 6 but its image already holds entry 7's write (the
    # double-apply hazard: a restart from it would apply 7 again).
    lab.snapshot_values = {"a": POST[0], "b": PRE[1]}
    report = lab.check()
    assert only_failing(report) == {"I4"}
    v = report["I4"].first_violation
    assert (v["node"], v["index"], v["evidence"]) == ("n1", C, "snapshot-image")
    assert v["holds_index"] == 7 and "the state at index 7" in v["reason"]


def test_i4_is_unknown_when_nothing_met_the_replay(lab: Lab) -> None:
    lab.digests = {n: [(99, "far-beyond-the-log")] for n in NODES}
    lab.build()
    for n in NODES:  # drop every digest carrier the nodes wrote, and n1's snapshot
        p = Path(lab.built[n]) / "events.jsonl"
        p.write_text("".join(line + "\n" for line in p.read_text().splitlines()
                             if '"applied"' not in line))
    for f in (Path(lab.built["n1"]) / "snap").iterdir():
        f.unlink()
    report = lab.check()
    assert report.valid and report["I4"].unknown
    assert "nothing to compare" in report.unknown


# --------------------------------------------------------------------------- I5, I6


def test_repeated_key_nonce_on_different_indexes(lab: Lab) -> None:
    reused = make_nonce(1, 1, 500)
    lab.specs[9] = dataclasses.replace(lab.specs[9], nonce=reused)  # entry 10, key 2
    lab.specs[11] = dataclasses.replace(lab.specs[11], nonce=reused)  # entry 12, key 2
    report = lab.check()
    assert only_failing(report) == {"I5"}
    v = report["I5"].first_violation
    assert (v["node"], v["index"], v["term"], v["key_id"]) == ("n1", 12, 3, 2)
    assert v["nonce"] == reused.hex() and v["first_use_index"] == 10
    assert report["I5"].violation_count == 1  # three replicas, one repeat


def test_key_used_before_its_install(lab: Lab) -> None:
    lab.specs[7] = Spec(8, 1, pl.lease_payload("n1", 1), key=2)  # rotate to 2 is at 9
    report = lab.check()
    assert only_failing(report) == {"I6"}
    v = report["I6"].first_violation
    assert (v["node"], v["index"], v["opcode"], v["key_id"]) == ("n1", 8, pl.OP_LEASE, 2)
    assert v["installed_at"] == 9 and "installed only at 9" in v["reason"]


def test_excused_damage_hides_exactly_the_damaged_entry() -> None:
    """The corrupt-entry nemesis damages one replica's copy: its I1 finding, its halt
    and its nonce twin (which may be reported on a healthy replica) are excused; a
    finding at any other entry is not."""
    from checker.invariants import INVARIANTS, InvariantResult, _excuse

    def result(name: str, vs: list[dict]) -> InvariantResult:
        return InvariantResult(name, INVARIANTS[name], valid=not vs,
                               first_violation=vs[0] if vs else None, violations=vs,
                               violation_count=len(vs))

    rep = CutoverReport(10, None, {
        "I1": result("I1", [{"node": "n1", "index": 20}, {"node": "n2", "index": 21}]),
        "I2": result("I2", []),
        "I3": result("I3", [{"node": "n1", "index": 20}]),
        "I4": result("I4", []),
        "I5": result("I5", [{"node": "n3", "index": 20, "first_use_index": 20},
                            {"node": "n3", "index": 22, "first_use_index": 5}]),
        "I6": result("I6", [])}, [], {})
    _excuse(rep, {("n1", 20)})
    assert [v["index"] for v in rep.results["I1"].violations] == [21]
    assert rep.results["I3"].valid and rep.results["I3"].summary["excused"]
    assert [v["index"] for v in rep.results["I5"].violations] == [22]
    assert rep.results["I5"].violation_count == 1 and not rep.valid


# --------------------------------------------------------------------------- issue 12


def _sealed_snapshot(lab: Lab, nonce: bytes) -> Snapshot:
    """n1's snapshot at 10 with its image sealed under key 2 with `nonce` (a node seals
    an image above C like an entry)."""
    kv = KV()
    for k, v in lab.snapshot_values.items():
        kv.apply({"op": "write", "key": k, "value": v.decode()})
    image = wrap(lab.deks[2], 2, nonce, kv.snapshot())
    return Snapshot(SnapshotMeta(10, 1), snapshot_data(image, C, lab.snap_blob()))


def test_i5_sees_a_snapshot_image_sealed_with_an_entrys_nonce(lab: Lab) -> None:
    """Issue 12: the epoch bump not saved, a restarted node sealed its snapshot image and
    its first entry with one (DEK, nonce) pair; I5 used to scan entries only."""
    reused = make_nonce(2, 1, 1)  # what n2's first seal (entry 12) uses
    lab.snapshot_at = 10
    lab.snapshot_values = {"a": POST[0], "b": POST[1]}
    lab.snapshot = lambda: _sealed_snapshot(lab, reused)  # type: ignore[method-assign]
    report = lab.check(scan_snapshot_data=False)
    assert "I5" in only_failing(report)
    v = report["I5"].first_violation
    assert v["nonce"] == reused.hex() and {v["index"], v["first_use_index"]} == {10, 12}, v


def test_i5_a_copied_snapshot_is_no_reuse_but_an_event_of_another_image_is(lab: Lab) -> None:
    """The same sealed bytes in two places (a snapshot and the event that describes it:
    what InstallSnapshot's copy amounts to) are one ciphertext. A `snapshot-taken` event
    of an image that is no longer on disk, under the same pair but other bytes, is a
    reuse across incarnations."""
    import hashlib

    nonce = make_nonce(1, 1, 900)
    lab.snapshot_at = 10
    lab.snapshot_values = {"a": POST[0], "b": POST[1]}
    snap = _sealed_snapshot(lab, nonce)
    lab.snapshot = lambda: snap  # type: ignore[method-assign]
    image = snapshot_kv(snap.data)
    same = {"kind": EventKind.SNAPSHOT_TAKEN, "index": 10, "term": 1, "image_key_id": 2,
            "image_nonce": nonce.hex(), "image_sha": hashlib.sha256(image).hexdigest()[:32]}
    lab.extra_events["n1"].append(same)
    lab.extra_events["n2"].append(same)
    assert lab.check(scan_snapshot_data=False)["I5"].valid
    lab.built, lab.root = None, lab.root / "again"  # a fresh cluster on disk
    lab.nonces = {1: NonceSource(1, 1), 2: NonceSource(2, 1)}
    lab.extra_events["n3"].append({**same, "index": 8, "image_sha": "00" * 16})
    report = lab.check(scan_snapshot_data=False)
    assert only_failing(report) == {"I5"}
    assert report["I5"].violation_count == 1
    assert report["I5"].nodes["n1"]["sealed_images"] == 2


def _rotation_event(counter: int) -> dict:
    return {"kind": EventKind.ENCRYPTION_APPLIED, "what": "rotate", "index": 9, "term": 1,
            "cutover": C, "active": 2, "dek": 2, "nonce_node": 1, "nonce_epoch": 1,
            "nonce_counter": counter}


def test_i7_an_entry_sealed_with_the_old_key_after_the_rotation_applied(lab: Lab) -> None:
    """n1 seals entries 7, 8, 9 (counters 1-3), applies the rotation to key 2 (its next
    counter is 4), then seals entry 10 under key 1: the rotation did not take effect."""
    lab.extra_events["n1"].append(_rotation_event(4))
    assert lab.check()["I7"].valid  # entry 10 under key 2: fine
    assert lab.check()["I7"].summary["entries_checked"] >= 4
    lab.built, lab.root = None, lab.root / "again"  # a fresh cluster on disk
    lab.nonces = {1: NonceSource(1, 1), 2: NonceSource(2, 1)}
    lab.specs[9] = dataclasses.replace(lab.specs[9], key=1)  # entry 10
    report = lab.check()
    assert only_failing(report) == {"I7"}
    v = report["I7"].first_violation
    assert (v["node"], v["index"], v["key_id"], v["rotated_to"]) == ("n1", 10, 1, 2), v


def test_i7_entries_sealed_before_the_rotation_applied_are_fine(lab: Lab) -> None:
    """The rotate entry itself, and anything else sealed before the node applied it
    (a lower nonce counter), may use the old key."""
    lab.specs[9] = dataclasses.replace(lab.specs[9], key=1)  # entry 10
    lab.extra_events["n1"].append(_rotation_event(5))  # applied after sealing entry 10
    assert lab.check()["I7"].valid


def test_i2_a_node_that_applied_past_c_with_a_sidecar_that_says_zero(lab: Lab) -> None:
    """R3's symptom: n3 applied up to 12 but its sidecar never learned C."""
    lab.sidecars["n3"] = dataclasses.replace(lab.sidecars["n3"], raft_envelope_cutover_index=0)
    report = lab.check()
    assert only_failing(report) == {"I2"}
    v = report["I2"].first_violation
    assert v["node"] == "n3" and v["applied"] == 12 and "C=0" in v["reason"], v



def test_i5_a_node_started_twice_with_one_epoch_while_cut_over(lab: Lab) -> None:
    """The epoch keeps a node's processes apart; two starts with the same one (the epoch
    bump not saved) restart its nonces where they were, even once the envelopes of the
    first are compacted away. Epoch 0 repeats (elastickv's processes before the cutover
    seal nothing) and starts before the cutover are not a finding."""
    start = {"kind": EventKind.START, "nonce_node": 2, "nonce_counter": 1, "applied": 0}
    lab.extra_events["n2"] += [{**start, "nonce_epoch": 0, "cutover": 0},
                               {**start, "nonce_epoch": 0, "cutover": 0},
                               {**start, "nonce_epoch": 3, "cutover": 0},
                               {**start, "nonce_epoch": 3, "cutover": C}]
    assert lab.check()["I5"].valid
    lab.built, lab.root = None, lab.root / "again"  # a fresh cluster on disk
    lab.nonces = {1: NonceSource(1, 1), 2: NonceSource(2, 1)}
    lab.extra_events["n2"].append({**start, "nonce_epoch": 3, "cutover": C})
    report = lab.check()
    assert only_failing(report) == {"I5"}
    v = report["I5"].first_violation
    assert v["node"] == "n2" and v["nonce_epoch"] == 3 and "started 2 times" in v["reason"]


# --------------------------------------------------------------------------- votes kept


def test_a_vote_forgotten_across_a_restart_breaks_i4(lab: Lab) -> None:
    """Raft's votedFor on stable storage: n2 granted n1 its vote in term 2, then came
    back in term 2 voting for nobody, free to grant a second candidate."""
    lab.extra_events["n2"] += [{"kind": "vote", "term": 2, "candidate": "n1"},
                               {"kind": "start", "term": 2, "vote": None}]
    report = lab.check()
    assert only_failing(report) == {"I4"}
    v = report["I4"].first_violation
    assert (v["node"], v["term"], v["evidence"]) == ("n2", 2, "vote-durability")
    assert "to n1" in v["reason"] and "voting for nobody" in v["reason"]


def test_a_vote_restarted_into_an_older_term_breaks_i4(lab: Lab) -> None:
    lab.extra_events["n3"] += [{"kind": "vote", "term": 3, "candidate": "n2"},
                               {"kind": "start", "term": 2, "vote": "n1"}]
    v = lab.check()["I4"].first_violation
    assert (v["node"], v["evidence"]) == ("n3", "vote-durability") and "in term 2" in v["reason"]


def test_votes_kept_or_superseded_are_fine(lab: Lab) -> None:
    lab.extra_events["n2"] += [{"kind": "vote", "term": 2, "candidate": "n1"},
                               {"kind": "start", "term": 2, "vote": "n1"},  # kept
                               {"kind": "vote", "term": 3, "candidate": "n3"},
                               {"kind": "start", "term": 5, "vote": None}]  # a later term
    # A start without `vote` is an older build's evidence: it proves nothing.
    lab.extra_events["n3"] += [{"kind": "vote", "term": 2, "candidate": "n1"},
                               {"kind": "start", "term": 1}]
    assert lab.check().valid


def test_a_forgotten_vote_on_a_node_a_storage_fault_damaged_is_listed(lab: Lab) -> None:
    """A disk that lost a write it reported synced may lose a vote with it: listed under
    `excused`, not counted (what follows from it, two leaders, still would be)."""
    lab.extra_events["n2"] += [{"kind": "vote", "term": 2, "candidate": "n1"},
                               {"kind": "start", "term": 2, "vote": None}]
    report = lab.check(damaged=["n2"])
    assert report.valid
    assert [v["evidence"] for v in report["I4"].summary["excused"]] == ["vote-durability"]
    assert not lab.check(damaged=["n3"]).valid
