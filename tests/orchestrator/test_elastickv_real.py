"""The elastickv profile on real node processes: a halt ends the process (exit code
`EXIT_HALTED`), and a restart replays the entry, halts again and exits again, while the
fixed profile's node stays up and refuses writes. Real processes, sockets, fsync and
AES-GCM; the damage is one flipped bit of one replica's WAL copy (the corrupt-entry
nemesis's `damage_entry`)."""
from __future__ import annotations

import pytest

from checker.crashes import check_crashes
from checker.invariants import check_cutover
from node.events import EXIT_HALTED, read_events
from node.keystore import generate_dek, write_kek
from node.wal import damage_entry
from orchestrator.real.client import Client
from orchestrator.real.cluster import Cluster

pytestmark = pytest.mark.real


@pytest.mark.parametrize("profile", ["fixed", "elastickv"])
def test_a_halted_node_process(tmp_path, profile: str) -> None:
    seed = 12
    print(f"seed={seed} profile={profile}")
    kek_path = str(tmp_path / "kek")
    kek = write_kek(kek_path)
    cl = Cluster(str(tmp_path / "run"), 3, seed=seed, kek_path=kek_path, profile=profile)
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
