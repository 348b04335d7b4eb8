"""Real processes: 3 nodes and the switchboard on 127.0.0.1, real WAL files and fsync.

No mocks: these drive the actual node processes through the client library and the
switchboard's control socket, and look at what the nodes report and leave on disk.
"""
from __future__ import annotations

import os
import shutil
import time

import pytest

from node.events import read_events
from orchestrator.real.client import Client
from orchestrator.real.cluster import Cluster
from tests.conftest import wait_for

pytestmark = pytest.mark.real


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def _write_all(c: Client, n: int, prefix: str) -> dict[str, str]:
    acked = {}
    for i in range(n):
        k = f"{prefix}{i % 7}"
        v = f"{prefix}-{i}"
        r = c.invoke("write", k, v)
        if r.type == "ok":
            acked[k] = v
    return acked


@pytest.fixture
def cluster(tmp_path):
    cl = Cluster(str(tmp_path / "run"), 3, seed=7)
    pids: list[int] = []
    try:
        cl.start()
        yield cl
        pids = cl.pids()
    finally:
        cl.close()
    for pid in pids:
        wait_for(lambda pid=pid: not _alive(pid), 5, f"process {pid} to exit")


def test_kill_leader_restart_and_catch_up(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    with Client(cluster.endpoints(), timeout=1.0) as c:
        acked = _write_all(c, 60, "a")
        assert len(acked) == 7
        for k, v in acked.items():
            assert c.invoke("read", k).value == v
        cluster.kill(leader)
        new = cluster.wait_leader(exclude=leader, among=[n for n in cluster.ids if n != leader])
        assert new != leader
        # Every acknowledged write survives the leader's death.
        for k, v in acked.items():
            r = c.invoke("read", k)
            assert r.type == "ok" and r.value == v, (k, r)
        more = _write_all(c, 30, "b")
        assert more
        cluster.start_node(leader)
        # The killed node restarts from its own disk and catches up.
        def same() -> bool:
            st = cluster.statuses()
            ds = {s["digest"] for s in st.values() if s}
            ap = {s["applied"] for s in st.values() if s}
            return all(st.values()) and len(ds) == 1 and len(ap) == 1
        wait_for(same, 15, "the restarted node to converge")
    kinds = [e["kind"] for e in read_events(cluster.nodes[leader].data_dir)]
    assert kinds.count("start") == 2 and "recovery" in kinds


def test_wiped_follower_catches_up_by_install_snapshot(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    follower = next(n for n in cluster.ids if n != leader)
    with Client(cluster.endpoints(), timeout=1.0) as c:
        acked = _write_all(c, 80, "s")
        rep = c.admin(leader, "snapshot-now")
        assert rep["ok"] and rep["value"]["snapshot_index"] > 0
        cluster.kill(follower)
        shutil.rmtree(cluster.nodes[follower].data_dir)
        _write_all(c, 10, "t")
        cluster.start_node(follower)
        wait_for(lambda: (st := cluster.statuses()[follower]) and st["applied"]
              >= rep["value"]["snapshot_index"], 15, "the wiped follower to catch up")
        digests = wait_for(lambda: (d := {s["digest"] for s in cluster.statuses().values()
                                       if s}) and len(d) == 1 and d, 15, "convergence")
        assert len(digests) == 1
        assert c.invoke("read", "s0").value == acked["s0"]
    kinds = [e["kind"] for e in read_events(cluster.nodes[follower].data_dir)]
    assert "snapshot-installed" in kinds


def test_partitioned_leader_stops_committing(cluster: Cluster) -> None:
    leader = cluster.wait_leader()
    others = [n for n in cluster.ids if n != leader]
    assert cluster.control is not None
    cluster.control.partition([[leader, o] for o in others] + [[o, leader] for o in others])
    new = cluster.wait_leader(among=others, timeout=10)
    assert new in others
    before = cluster.statuses()[leader]
    with Client({leader: cluster.nodes[leader].endpoint}, timeout=0.5) as old:
        r = old.invoke("write", "p", "minority")
        assert r.type in ("info", "fail")
    with Client({n: cluster.nodes[n].endpoint for n in others}, timeout=1.0) as c:
        assert c.invoke("write", "p", "majority").type == "ok"
        assert c.invoke("read", "p").value == "majority"
    after = cluster.statuses()[leader]
    assert after["commit"] == before["commit"], "a minority leader must not commit"
    cluster.control.heal()
    wait_for(lambda: (st := cluster.statuses()[leader]) and st["role"] == "follower", 10,
          "the old leader to step down")


def test_data_dir_of_another_node_is_refused(tmp_path) -> None:
    cl = Cluster(str(tmp_path / "run"), 3, seed=3)
    try:
        cl.start()
        cl.kill("n2")
        # Point n2's process at n1's data dir: it must refuse, not adopt it.
        cl.nodes["n2"].data_dir = cl.nodes["n1"].data_dir + "-copy"
        shutil.copytree(cl.nodes["n1"].data_dir, cl.nodes["n2"].data_dir,
                        ignore=shutil.ignore_patterns("LOCK"))
        with pytest.raises(Exception, match="n2"):
            cl.start_node("n2", wait=5)
        log = open(cl.nodes["n2"].log_path).read()
        assert "refusing to start" in log and "n1" in log
    finally:
        cl.close()


def _stale_read_history(tmp_path, bugs: list[str]) -> list:
    """Partition the leader away, write on the majority, then read from the old leader.

    Returns the client history as checker ops (Jepsen semantics: fail dropped)."""
    from checker.history import EventPairer

    cl = Cluster(str(tmp_path / "run"), 3, seed=11, bugs=bugs)
    p = EventPairer("history")
    try:
        cl.start()
        leader = cl.wait_leader()
        others = [n for n in cl.ids if n != leader]
        with Client(cl.endpoints(), timeout=1.0) as c:
            p.invoke(0, 0, "write", "x", "old")
            r = c.invoke("write", "x", "old")
            p.complete(0, 0, r.type if r.type != "fail" else "fail")
        assert cl.control is not None
        cl.control.partition([[leader, o] for o in others] + [[o, leader] for o in others])
        cl.wait_leader(among=others)
        with Client({n: cl.nodes[n].endpoint for n in others}, timeout=1.0) as c:
            p.invoke(0, 1, "write", "x", "new")
            r = c.invoke("write", "x", "new")
            p.complete(0, 1, r.type)
            assert r.type == "ok"
        with Client({leader: cl.nodes[leader].endpoint}, timeout=0.5) as old:
            p.invoke(0, 2, "read", "x", None)
            r = old.invoke("read", "x")
            p.complete(0, 2, r.type, r.value)
    finally:
        cl.close()
    return p.finish()


def test_stale_read_switch_breaks_linearizability(tmp_path) -> None:
    from checker import check, get_model

    ops = _stale_read_history(tmp_path, ["stale-read"])
    res = check(get_model("kv"), ops)
    assert res.verdict.value == "invalid"
    read = next(o for o in ops if o.f == "read")
    assert read.output == "old"


def test_reads_stay_linearizable_without_the_switch(tmp_path) -> None:
    from checker import check, get_model

    ops = _stale_read_history(tmp_path, [])
    assert check(get_model("kv"), ops).verdict.value == "valid"
    read = next(o for o in ops if o.f == "read")
    assert read.ret is None or read.output == "new"  # the old leader cannot answer


def test_nodes_die_with_the_orchestrator(tmp_path) -> None:
    """Kill -9 the process that started the cluster: no node may outlive it."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys, time
        from orchestrator.real.cluster import Cluster
        if __name__ == "__main__":
            cl = Cluster({str(tmp_path / "run")!r}, 3, seed=5)
            cl.start()
            print(" ".join(str(p) for p in cl.pids()), flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            text=True, cwd=os.getcwd())
    try:
        pids = [int(x) for x in proc.stdout.readline().split()]
        assert len(pids) == 4
        proc.kill()
        proc.wait(5)
        for pid in pids:
            wait_for(lambda pid=pid: not _alive(pid), 5, f"orphan {pid} to die")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_node_restarted_from_a_short_lived_thread_outlives_it(tmp_path) -> None:
    """Found by `cutover run`: PR_SET_PDEATHSIG fires when the *thread* that forked the
    node exits, so nodes a nemesis thread restarted died with that thread. The cluster
    starts every node from one long-lived thread."""
    import threading

    cl = Cluster(str(tmp_path / "c"), 3, seed=4)
    try:
        cl.start()
        t = threading.Thread(target=lambda: cl.restart("n1", wait=20))
        t.start()
        t.join()
        pid = cl.nodes["n1"].process.pid
        # The kernel sends the signal as the thread exits: by now it would have landed.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert cl.nodes["n1"].alive, "the node died with the thread that started it"
            time.sleep(0.05)
        assert cl.wait_up("n1", 5)["id"] == "n1"
        assert cl.nodes["n1"].process.pid == pid
    finally:
        cl.close()
