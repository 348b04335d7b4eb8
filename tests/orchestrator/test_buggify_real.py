"""BUGGIFY on real node processes: a point armed by `CUTOVER_BUGGIFY` fires in the node's
own code (the same call sites the simulator drives), its events say so, and a death at
a point loses nothing that was synced."""
from __future__ import annotations

import pytest

from node.buggify import ENV, ENV_SEED
from node.events import read_events
from orchestrator.real.client import Client
from orchestrator.real.cluster import Cluster
from tests.conftest import wait_for

pytestmark = pytest.mark.real


def _buggify(cl: Cluster, nid: str) -> list[dict]:
    return [e for e in read_events(cl.nodes[nid].data_dir) if e["kind"] == "buggify"]


def test_env_armed_points_fire_on_real_processes(tmp_path, monkeypatch) -> None:
    # The nodes are spawned with this environment (multiprocessing's spawn copies it).
    monkeypatch.setenv(ENV, "host.tick=early:0.2,host.send=dup:0.05")
    monkeypatch.setenv(ENV_SEED, "11")
    cl = Cluster(str(tmp_path / "run"), 3, seed=5)
    try:
        cl.start()
        cl.wait_leader()
        with Client(cl.endpoints(), timeout=1.0) as c:
            acked = {f"k{i}": f"v{i}" for i in range(12) if c.invoke(
                "write", f"k{i}", f"v{i}").type == "ok"}
            assert acked
            for k, v in acked.items():  # duplicated messages change no answer
                assert c.invoke("read", k).value == v
        evs = [e for n in cl.ids for e in _buggify(cl, n)]
        fired = {(e["point"], e["action"]) for e in evs if e["action"] != "reached"}
        reached = {e["point"] for e in evs if e["action"] == "reached"}
        print("fired", sorted(fired))
        assert ("host.tick", "early") in fired and ("host.send", "dup") in fired
        assert {"wal.written", "wal.synced", "file.synced", "host.tick"} <= reached

        # A death at a point: restarted, n3 dies right after its first WAL fsync (a
        # SIGKILL of itself); started again without BUGGIFY, it recovers.
        monkeypatch.setenv(ENV, "wal.synced=crash:1")
        cl.kill("n3")
        cl.start_node("n3", wait=None)
        wait_for(lambda: any(e["action"] == "crash" for e in _buggify(cl, "n3")), 10,
                 "n3 to die at wal.synced")
        monkeypatch.delenv(ENV)
        cl.kill("n3")
        cl.start_node("n3")
        kinds = [e["kind"] for e in read_events(cl.nodes["n3"].data_dir)]
        assert kinds.count("start") == 3 and "start-failed" not in kinds
        assert kinds.count("recovery") == 3
    finally:
        cl.close()
