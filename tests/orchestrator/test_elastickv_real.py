"""The elastickv profile on real node processes: a halt ends the process (exit code
`EXIT_HALTED`), and a restart replays the entry, halts again and exits again, while the
fixed profile's node stays up and refuses writes. Real processes, sockets, fsync and
AES-GCM; the damage is one flipped bit of one replica's WAL copy (the corrupt-entry
nemesis's `damage_entry`)."""
from __future__ import annotations

import time

import pytest

from checker.crashes import check_crashes
from checker.invariants import check_cutover
from node.events import EXIT_HALTED, read_events
from node.keystore import Kek, generate_dek, write_kek
from node.wal import damage_entry
from orchestrator.real.client import Client
from orchestrator.real.cluster import Cluster

pytestmark = pytest.mark.real


def _cluster(tmp_path, seed: int, profile: str) -> tuple[Cluster, Kek, str]:
    """Three real nodes of `profile` with a fresh KEK (its path for the checkers)."""
    print(f"seed={seed} profile={profile}")
    kek_path = str(tmp_path / "kek")
    kek = write_kek(kek_path)
    return Cluster(str(tmp_path / "run"), 3, seed=seed, kek_path=kek_path,
                   profile=profile), kek, kek_path


def _cut_over(c: Client, leader: str, kek: Kek) -> None:
    """Bootstrap key 1 and enable the raft envelope on `leader`, both answered ok."""
    assert c.admin(leader, "bootstrap", key_id=1, wrapped=kek.wrap_dek(generate_dek()))["ok"]
    assert c.admin(leader, "enable-raft-envelope", timeout=10)["ok"]


@pytest.mark.parametrize("profile", ["fixed", "elastickv"])
def test_a_halted_node_process(tmp_path, profile: str) -> None:
    cl, kek, kek_path = _cluster(tmp_path, 12, profile)
    try:
        cl.start()
        leader = cl.wait_leader()
        with Client(cl.endpoints(), timeout=2.0) as c:
            assert c.admin(leader, "bootstrap", key_id=1,
                           wrapped=kek.wrap_dek(generate_dek()))["ok"]
            rep = c.admin(leader, "enable-raft-envelope", timeout=10)
            assert rep["ok"], rep
            w = c.invoke("write", "k", "above-c")
            assert w.type == "ok"
            assert c.invoke("read", "k").value == "above-c"
        x = next(n for n in cl.ids if n != leader)
        h = cl.nodes[x]
        with Client(cl.endpoints(), timeout=2.0) as c:
            index = int(c.admin(leader, "status")["value"]["applied"])
            for _ in range(100):  # the follower has applied (and persisted) it too
                if c.admin(x, "status")["value"]["applied"] >= index:
                    break
        cl.kill(x)
        damage_entry(f"{h.data_dir}/wal", index)
        cl.start_node(x, wait=None)
        if profile == "fixed":
            st = cl.wait_up(x, 10)
            for _ in range(200):
                st = cl.wait_up(x, 10)
                if st["halted"]:
                    break
            assert st["halted"] and h.alive, st
            return
        for attempt in (1, 2):
            h.process.join(20)  # type: ignore[union-attr]
            assert h.process.exitcode == EXIT_HALTED, (attempt, h.process.exitcode)
            if attempt == 1:
                cl.start_node(x, wait=None)  # the restart replays it and halts again
    finally:
        cl.close()
    events = read_events(h.data_dir)
    kinds = [e["kind"] for e in events if e["kind"] in ("halt", "exit")]
    assert kinds == ["halt", "exit", "halt", "exit"], kinds
    assert {e["index"] for e in events if e["kind"] == "halt"} == {index}
    # The harness saw two exits it did not ask for, both by design (after a halt): the
    # crashes checker lists them and does not count them; without the halt they count.
    verdict = check_crashes(str(tmp_path / "run"), halted={x})
    assert verdict["valid"] == "valid" and len(verdict["halt_exits"]) == 2, verdict
    assert check_crashes(str(tmp_path / "run"))["valid"] == "invalid"
    report = check_cutover({n: cl.nodes[n].data_dir for n in cl.ids}, kek_path)
    assert not report["I3"].valid and report["I3"].first_violation["index"] == index


def test_writer_registration_on_real_processes(tmp_path) -> None:
    """Row 9 on real processes: after a rotation every node's watcher registers the new
    key (a follower's through the leader, over the switchboard); until its own row
    commits, the leader refuses writes with `writer-not-registered` (a definite
    failure); a restarted follower registers its new epoch."""
    cl, kek, kek_path = _cluster(tmp_path, 14, "elastickv")
    try:
        cl.start()
        leader = cl.wait_leader()
        with Client(cl.endpoints(), timeout=2.0) as c:
            _cut_over(c, leader, kek)
            assert c.invoke("write", "k", "cut").type == "ok"  # the batch covers key 1
            assert c.admin(leader, "rotate-dek", key_id=2,
                           wrapped=kek.wrap_dek(generate_dek()), timeout=10)["ok"]
            refused, end = 0, time.monotonic() + 20
            while True:
                w = c.invoke("write", "k", f"v{refused}")
                if w.type == "ok":
                    break
                assert w.type == "fail" and w.error == "writer-not-registered", w
                assert time.monotonic() < end, "writes never went through after the rotation"
                refused += 1
                time.sleep(0.05)
        x = next(n for n in cl.ids if n != leader)
        cl.kill(x)
        cl.start_node(x)
        cl.wait_up(x, 10)
        for _ in range(100):  # its watcher ticks every second
            ev = read_events(cl.nodes[x].data_dir)
            epochs = {e["epoch"] for e in ev if e["kind"] == "writer-registered"}
            if any(ep >= 1 for ep in epochs):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"{x} never registered its new epoch: {epochs}")
    finally:
        cl.close()
    print(f"writes refused after the rotation: {refused}")
    for n in cl.ids:
        got = {(e["dek"], e["why"]) for e in read_events(cl.nodes[n].data_dir)
               if e["kind"] == "writer-registered"}
        assert (1, "install-marker") in got, (n, got)
        whys = {w for d, w in got if d == 2}
        expect = {"proposed"} if n == leader else {"forwarded", "applied"}
        assert whys and whys <= expect, (n, got)
    report = check_cutover({n: cl.nodes[n].data_dir for n in cl.ids}, kek_path)
    assert report.valid, report.first_violation()


@pytest.mark.parametrize("profile", ["fixed", "elastickv"])
def test_a_restarted_process_replays_only_what_its_store_does_not_hold(
        tmp_path, profile: str) -> None:
    """Row 7 on real processes and real fsyncs: a follower applies a rotation and a user
    write after it, is killed with a power loss (every unsynced byte cut back), and
    restarted. elastickv's process starts from its durable KV store past the rotation
    and applies no encryption entry again; the fixed profile's replays the marker and
    the rotation from its snapshot."""
    cl, kek, _kek_path = _cluster(tmp_path, 13, profile)
    try:
        cl.start()
        leader = cl.wait_leader()
        with Client(cl.endpoints(), timeout=2.0) as c:
            _cut_over(c, leader, kek)
            rot = c.admin(leader, "rotate-dek", key_id=2,
                          wrapped=kek.wrap_dek(generate_dek()), timeout=10)
            assert rot["ok"], rot
            end = time.monotonic() + 20
            while True:  # row 9: the leader's gate holds writes until it registered key 2
                w = c.invoke("write", "k", "after-rotation")
                if w.type == "ok":
                    break
                assert w.type == "fail" and w.error == "writer-not-registered", w
                assert time.monotonic() < end, "writes never went through after the rotation"
                time.sleep(0.05)
            index = int(c.admin(leader, "status")["value"]["applied"])
            x = next(n for n in cl.ids if n != leader)
            for _ in range(200):
                if c.admin(x, "status")["value"]["applied"] >= index:
                    break
        h = cl.nodes[x]
        seen = len(read_events(h.data_dir))
        cl.kill(x, power=True)
        cl.start_node(x)
        with Client(cl.endpoints(), timeout=2.0) as c:
            for _ in range(200):
                if c.admin(x, "status")["value"]["applied"] >= index:
                    break
    finally:
        cl.close()
    events = read_events(h.data_dir)[seen:]
    start = next(e for e in events if e["kind"] == "start")
    again = [e["what"] for e in events if e["kind"] == "encryption-applied"]
    if profile == "fixed":
        assert "state_from" not in start and len(again) >= 2, again
        return
    assert start["state_from"] == "store" and start["durable_applied"] > rot["index"], start
    assert not again, again
