"""No (DEK, nonce) pair ever seals two different plaintexts: across entries, snapshot
images and restarts, in the fixed profile (issue 12). A property over simulated runs
dense in restarts, power losses, snapshots and rotations, checked two ways: every seal
the node makes is recorded as it happens (a spy around the node's sealing function,
which still seals), and the I5 checker reads what the nodes left behind.

The negative control puts a known defect back (the start-up epoch bump not saved,
`tests/defects/epoch-not-persisted.patch`) and expects both to see the reuse: a
property test that cannot fail proves nothing. Each test prints its seeds."""
from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

import node.cutover
from node import sidecar as sidecar_file
from orchestrator.real.run import RunConfig
from orchestrator.sim.run import simulate

pytestmark = pytest.mark.sim

# Restarts, power losses and snapshots (every 25 entries) on a 3-node cluster, with
# rotations and the cutover: the places a nonce could repeat.
FAMILIES = "kill,power,snapshot,rotate,enable,partition"


def _record_seals(monkeypatch: pytest.MonkeyPatch) -> dict[tuple[int, bytes], set[bytes]]:
    """(key id, nonce) -> digests of the plaintexts sealed with it, for every seal."""
    seals: dict[tuple[int, bytes], set[bytes]] = defaultdict(set)
    real = node.cutover.seal_bytes

    def spy(dek: bytes, key_id: int, nonce: bytes, plaintext: bytes) -> bytes:
        seals[(key_id, bytes(nonce))].add(hashlib.sha256(plaintext).digest())
        return real(dek, key_id, nonce, plaintext)

    monkeypatch.setattr(node.cutover, "seal_bytes", spy)
    return seals


def _run(seed: int, tmp: Path) -> Any:
    cfg = RunConfig(nodes=3, time_limit=12, rate=80, seed=seed, nemesis=FAMILIES,
                    snapshot_every=25, cutover_at=2.0, nemesis_interval=1.5)
    return simulate(cfg, tmp / f"s{seed}")


def _reused(seals: dict[tuple[int, bytes], set[bytes]]) -> list[tuple[int, str]]:
    return [(k, n.hex()) for (k, n), pts in seals.items() if len(pts) > 1]


def _check(seeds: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    print(f"seeds {seeds}")
    seals = _record_seals(monkeypatch)
    restarts = images = sealed = 0
    for seed in seeds:
        seals.clear()  # key ids and nonces mean something within one cluster only
        o = _run(seed, tmp_path)
        assert _reused(seals) == [], (seed, _reused(seals)[:5])
        i5 = o.checks["cutover"]["invariants"]["I5"]
        assert i5["valid"], (seed, i5["first_violation"])
        restarts += sum(1 for e in o.events if e["kind"] == "start") - 3
        images += sum(1 for e in o.events if e["kind"] == "snapshot-taken"
                      and "image_nonce" in e)
        sealed += len(seals)
    # The property means something only if the runs sealed across restarts and images.
    assert restarts >= len(seeds) and images >= len(seeds) and sealed > 100 * len(seeds), \
        (restarts, images, sealed)


def test_no_nonce_seals_two_plaintexts_across_entries_images_and_restarts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _check([1, 2, 3, 4, 5, 6], tmp_path, monkeypatch)


@pytest.mark.slow
def test_no_nonce_seals_two_plaintexts_many_seeds(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _check(list(range(7, 57)), tmp_path, monkeypatch)


def test_negative_control_an_epoch_bump_that_is_not_saved_reuses_nonces(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The defect of issue 12: the epoch is bumped in memory but not saved, so every
    restart seals again from the same (epoch, counter). Both the spy and I5 see it."""
    seed = 2
    print(f"seed={seed}")

    def bump_not_saved(data_dir: Any, disk: Any = None) -> int:
        return sidecar_file.next_epoch(sidecar_file.load(data_dir, disk).local_epoch)

    monkeypatch.setattr(node.cutover.sidecar_file, "bump_epoch", bump_not_saved)
    seals = _record_seals(monkeypatch)
    o = _run(seed, tmp_path)
    assert _reused(seals), "the defect must reuse a nonce in this schedule"
    assert not o.checks["cutover"]["invariants"]["I5"]["valid"]
