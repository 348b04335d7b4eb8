"""No cutover, no I1 violation (issue 15, attack 0): real processes, faults on.

C = 0 means the cluster never cut over: nothing is "above the cutover", and every
invariant must hold on a plain chaos run. Two cases:

* `cutover run --cutover-at none` with the nemesis on (the run a user tries first);
* a cutover that was requested but never happened: the leader is cut off, proposes
  its marker, cannot commit it and gives up; it is killed, the network heals, and the
  new leader's log replaces the marker. C stays 0 on every node.

Seeds are fixed and printed, so a failure replays.
"""
from __future__ import annotations

import json
import os

import pytest

from checker import suite
from checker.crashes import check_crashes
from nemesis import grudges
from node.events import EventKind, read_events
from node.keystore import Kek, generate_dek, write_kek
from node.sidecar import load as load_sidecar
from orchestrator.real.client import Client, ClientTimeout
from orchestrator.real.cluster import Cluster
from orchestrator.real.run import RunConfig, execute
from tests.conftest import wait_for

pytestmark = pytest.mark.real


@pytest.mark.parametrize(("nemesis", "seed"), [("kill,partition", 7), ("all", 3)])
def test_a_run_without_a_cutover_is_valid(tmp_path, nemesis: str, seed: int) -> None:
    print(f"cutover run --nodes 3 --time-limit 10 --cutover-at none --nemesis {nemesis} "
          f"--seed {seed}")
    out = execute(RunConfig(nodes=3, time_limit=10, cutover_at=None, nemesis=nemesis,
                            seed=seed, results=str(tmp_path)), out=None, progress=None)
    assert out.verdict == "valid", out.summary
    cut = out.checks["cutover"]
    assert cut["cutover"] == 0 and cut["cutover_time_ns"] is None
    for name, inv in cut["invariants"].items():
        assert inv["valid"] and inv["violation_count"] == 0, (name, inv["first_violation"])
    assert cut["invariants"]["I1"]["summary"]["byte_scan"]["tokens_after_cutover"] == 0
    # Nobody's sidecar names a C, and the node table has nothing "above" it.
    assert all((n.get("sidecar") or {}).get("cutover") == 0 for n in cut["nodes"].values())


def _bootstrap(cl: Cluster, kek: Kek) -> None:
    wrapped = kek.wrap_dek(generate_dek())
    with Client(cl.endpoints(), timeout=2.0) as c:
        def done() -> bool:
            try:
                rep = c.admin(cl.wait_leader(10), "bootstrap", key_id=1, wrapped=wrapped)
            except ClientTimeout:
                return False
            return bool(rep.get("ok"))

        wait_for(done, 20, "encryption to bootstrap")


def _write(cl: Cluster, n: int, tag: str) -> None:
    with Client(cl.endpoints(), timeout=1.0) as c:
        for i in range(n):
            c.invoke("write", f"k{i % 4}", f"{tag}-{i}")


def test_a_cutover_requested_but_never_made_is_valid(tmp_path) -> None:
    seed = 11
    print(f"Cluster(3, seed={seed}): isolate the leader, ask it to cut over, kill it, heal")
    root = tmp_path / "run"
    root.mkdir()
    kek_path = str(tmp_path / "kek")
    kek = write_kek(kek_path)
    cl = Cluster(str(root / "nodes"), 3, seed=seed, kek_path=kek_path,
                 enable_timeout_ticks=40)  # a 1 s marker wait: the cut-off leader gives up
    try:
        cl.start()
        _bootstrap(cl, kek)
        _write(cl, 40, "before")
        old = cl.wait_leader()
        assert cl.control is not None
        cl.control.partition([list(link) for link in grudges.isolate(cl.ids, old)])
        with Client(cl.endpoints(), timeout=1.0) as c:
            rep = c.admin(old, "enable-raft-envelope", timeout=8.0)
        assert not rep.get("ok") and rep.get("code") == "failed", rep
        new = cl.wait_leader(15, exclude=old, among=[n for n in cl.ids if n != old])
        _write(cl, 40, "during")
        cl.kill(old)  # the nemesis's kill: planned
        cl.control.heal()
        cl.start_node(old, wait=20)
        _write(cl, 40, "after")
        target = cl.statuses()[new]["commit"]  # type: ignore[index]
        wait_for(lambda: all(st and st["applied"] >= target for st in cl.statuses().values()),
                 20, "every node to apply the new leader's log")
        cl.stop_all()
    finally:
        cl.close()
    dirs = {n: h.data_dir for n, h in cl.nodes.items()}
    proposed = [ev for ev in read_events(dirs[old]) if ev.get("kind") == EventKind.MARKER_PROPOSED]
    assert proposed, "the cut-off leader never proposed its marker"
    assert all(load_sidecar(d).raft_envelope_cutover_index == 0 for d in dirs.values())
    res, rep = suite.check_invariants(dirs, kek_path, [(b"after-39", 1)])
    assert res["valid"] == "valid", json.dumps(res.get("first_violation"))
    assert rep is not None and rep.cutover == 0
    assert check_crashes(os.path.dirname(dirs[old]))["valid"] == "valid"
