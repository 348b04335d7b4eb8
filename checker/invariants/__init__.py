"""The offline checker of the cutover invariants I1-I7 (protocol §7, docs/invariants.md).

Pure analysis of what the nodes left on disk: it reads each node's WAL, snapshots,
``sidecar.json`` and ``events.jsonl`` and never writes into a data dir. Every byte format
is parsed by the node module that owns it (``node.wal``, ``node.snapshot``,
``node.payload``, ``node.envelope``, ``node.keystore``, ``node.sidecar``, ``node.events``,
``node.encstate`` for the snapshot's encryption blob); nothing here slices those bytes
itself, and nothing here imports the node's protocol logic.

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
* **Snapshot encryption blob** (the header's ``encryption`` region, ``node.encstate``):
  msgpack ``{"keys": {id: {"wrapped": bin, "purpose": str, "created_index": int}},
  "active": int, "cutover": int}``; empty means "no encryption state".
* **Events** (``events.jsonl``, kinds in `node.events.EventKind`): ``halt`` ``{index,
  term, reason}`` (I3); any event with an integer ``applied`` and a string ``digest`` is
  a digest observation (I4): the node's ``progress`` and ``stop`` events carry both; the
  cutover time T is the earliest ``t`` of an ``encryption-applied`` event with ``what ==
  "marker-fresh"`` (its ``index``, when present, must equal C). Without any, every token
  counts as written after the cutover (strict). A kind the checker does not know is
  ignored: an event log of another node build is still evidence.

The report never holds key material: key ids, nonces (public), sizes and reasons only.
A KEK file that cannot be loaded raises `node.keystore.KeyFileError` (a harness
failure, not a verdict); unreadable WALs, snapshots or sidecars are listed in
``errors`` and make the report invalid, since the invariants cannot be established.

One module per job (a new invariant is a new ``iN_*.py`` with its ``check_iN``, one
line in `check.analyze` and its title in `report.INVARIANTS`):

* ``check.py``: the suite: `check_cutover`, `check_cutover_state`, C, T, the excused copies
* ``report.py``: the result shapes (`CutoverReport`, `InvariantResult`, `LogRow`, `Collector`)
* ``nodes.py``: a node's evidence, read from its data dir or handed over in memory
* ``entries.py``: what each distinct entry is (no-op, cleartext, envelope, malformed)
* ``keys.py``: the cluster's known DEKs, learnt to a fixed point, and where each got installed
* ``i1_cleartext.py``: I1 no cleartext above the cutover, its structural half and verdict
* ``byte_scan.py``: I1's byte half: plaintext tokens in the WAL and snapshot files
* ``i2_one_cutover.py``: I2 one cutover
* ``i3_no_halts.py``: I3 no halts
* ``i4_convergence.py``: I4 convergence: reported digests, and the replay's verdict
* ``i4_replay.py``: the glue from the node files to `checker.replay`
* ``i5_nonce_reuse.py``: I5 nonce uniqueness
* ``i6_keys_precede_use.py``: I6 keys precede use
* ``i7_rotation_takes_effect.py``: I7 rotation takes effect
"""

from __future__ import annotations

from .byte_scan import MIN_TOKEN_LEN
from .check import check_cutover, check_cutover_state
from .check import excuse as _excuse
from .nodes import NodeState
from .report import INVARIANTS, CutoverReport, InvariantResult, LogRow

__all__ = [
    "INVARIANTS",
    "MIN_TOKEN_LEN",
    "CutoverReport",
    "InvariantResult",
    "LogRow",
    "NodeState",
    "_excuse",
    "check_cutover",
    "check_cutover_state",
]
