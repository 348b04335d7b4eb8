"""The cutover in real node processes: bootstrap, EnableRaftEnvelope under load,
rotation after the cutover, a restart, and what the nodes leave on disk."""
from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from node.envelope import is_wrapped_shape, parse_header
from node.keystore import generate_dek, write_kek
from node.payload import decode_proposal
from node.sidecar import load as load_sidecar
from node.types import EntryKind
from node.wal import iter_entries
from orchestrator.real.client import Client, ClientTimeout
from orchestrator.real.cluster import Cluster

pytestmark = pytest.mark.real


def _durable_entries(wal_dir: str) -> dict[int, object]:
    last: dict[int, object] = {}
    for rec in iter_entries(wal_dir):
        e = rec.value if hasattr(rec, "value") else rec
        last[e.index] = e
    return last


def test_cutover_end_to_end(tmp_path) -> None:
    kek_path = str(tmp_path / "kek")
    kek = write_kek(kek_path)
    cl = Cluster(str(tmp_path / "run"), 3, seed=21, kek_path=kek_path)
    stop = threading.Event()
    refused: list[int] = []
    tokens: list[tuple[bytes, int]] = []
    try:
        cl.start()
        leader = cl.wait_leader()
        with Client(cl.endpoints(), timeout=2.0) as c:
            rep = c.admin(leader, "bootstrap", key_id=1, wrapped=kek.wrap_dek(generate_dek()))
            assert rep["ok"], rep
            assert c.invoke("write", "before", "b").type == "ok"

            def load() -> None:
                with Client(cl.endpoints(), timeout=1.0) as w:
                    i = 0
                    while not stop.is_set():
                        i += 1
                        tokens.append((b"tok-%06d" % i, time.monotonic_ns()))
                        r = w.invoke("write", f"k{i % 5}", f"tok-{i:06d}")
                        if r.type == "fail" and r.error == "cutover-in-progress":
                            refused.append(i)

            t = threading.Thread(target=load, daemon=True)
            t.start()
            rep = c.admin(leader, "enable-raft-envelope", timeout=10)
            assert rep["ok"] and rep["value"]["status"] == "ok", rep
            cutover = rep["value"]["cutover"]
            assert cutover > 0
            again = c.admin(leader, "enable-raft-envelope", timeout=10)
            assert again["value"] == {"status": "already-active", "cutover": cutover}
            rot = c.admin(leader, "rotate-dek", key_id=2, wrapped=kek.wrap_dek(generate_dek()))
            assert rot["ok"], rot
            stop.set()
            t.join()
            assert c.invoke("write", "after", "a").type == "ok"
        follower = next(n for n in cl.ids if n != leader)
        with Client(cl.endpoints(), timeout=2.0) as c:
            # A snapshot above C: its image must be wrapped, and a restart must read it.
            snap = c.admin(follower, "snapshot-now")["value"]["snapshot_index"]
            assert snap > cutover
        cl.restart(follower)
        with Client(cl.endpoints(), timeout=2.0) as c:
            assert c.invoke("read", "after").value == "a"
            assert c.invoke("read", "before").value == "b"
        statuses = cl.statuses()
        assert all(s and not s["halted"] for s in statuses.values()), statuses
        assert {s["cutover"] for s in statuses.values()} == {cutover}
        assert {s["wrap_key_id"] for s in statuses.values()} == {2}
    finally:
        stop.set()
        cl.close()
    # The offline checker: every invariant holds, including the byte scan for the values
    # written after the cutover (tokens "tok-N" written during and after EnableRaftEnvelope).
    from checker.invariants import check_cutover

    report = check_cutover({n: cl.nodes[n].data_dir for n in cl.ids}, kek_path, tokens)
    assert report.valid, report.first_violation()
    assert report.cutover_time_ns and any(t > report.cutover_time_ns for _, t in tokens)
    assert report.cutover == cutover
    from node.events import read_events

    committed = [e for n in cl.ids for e in read_events(cl.nodes[n].data_dir)
                 if e["kind"] == "marker-committed"]
    assert [e["index"] for e in committed] == [cutover], committed
    # On disk: every node agrees on C; above C everything is wrapped, at/below cleartext.
    for nid in cl.ids:
        d = cl.nodes[nid].data_dir
        assert load_sidecar(d).raft_envelope_cutover_index == cutover
        for index, e in _durable_entries(f"{d}/wal").items():
            if e.kind is EntryKind.NOOP or not e.data:
                continue
            _, body = decode_proposal(e.data)
            if index > cutover:
                assert is_wrapped_shape(body) and parse_header(body)[0] in (1, 2), (nid, index)
            else:
                assert not is_wrapped_shape(body), (nid, index)


def test_raw_admin_proposer_switch_puts_cleartext_above_c(tmp_path) -> None:
    """With `raw-admin-proposer`, a rotation after the cutover goes in raw: every replica's
    strict hook refuses it and halts, and the cleartext entry sits above C on disk."""
    from node.events import read_events

    kek_path = str(tmp_path / "kek")
    kek = write_kek(kek_path)
    cl = Cluster(str(tmp_path / "run"), 3, seed=5, kek_path=kek_path,
                 bugs=["raw-admin-proposer"])
    try:
        cl.start()
        leader = cl.wait_leader()
        with Client(cl.endpoints(), timeout=2.0) as c:
            assert c.admin(leader, "bootstrap", key_id=1,
                           wrapped=kek.wrap_dek(generate_dek()))["ok"]
            rep = c.admin(leader, "enable-raft-envelope", timeout=10)
            cutover = rep["value"]["cutover"]
            try:  # the leader halts on its own entry: no answer is the expected outcome
                c.admin(leader, "rotate-dek", key_id=2, wrapped=kek.wrap_dek(generate_dek()),
                        timeout=1)
            except ClientTimeout:
                pass

        def all_halted() -> bool:
            st = cl.statuses()
            return all(s and s["halted"] for s in st.values())

        deadline = time.monotonic() + 10
        while not all_halted():
            assert time.monotonic() < deadline, cl.statuses()
            time.sleep(0.05)
    finally:
        cl.close()
    from checker.invariants import check_cutover

    report = check_cutover({n: cl.nodes[n].data_dir for n in cl.ids}, kek_path)
    assert not report.valid
    i1, i3 = report.results["I1"], report.results["I3"]
    assert not i1.valid and i1.first_violation["index"] > cutover
    assert i1.first_violation["node"] in cl.ids
    assert not i3.valid
    for nid in cl.ids:
        halts = [e for e in read_events(cl.nodes[nid].data_dir) if e["kind"] == "halt"]
        assert halts and halts[0]["index"] > cutover and "unwrap" in halts[0]["reason"]
        cleartext_above = [i for i, e in _durable_entries(f"{cl.nodes[nid].data_dir}/wal").items()
                           if i > cutover and e.data
                           and not is_wrapped_shape(decode_proposal(e.data)[1])]
        assert cleartext_above, nid


def _until_registered(c: Client, node: str, op: str, **req: Any) -> dict[str, Any]:
    """The admin request, sent again while the node's wrap refuses it: elastickv's gate
    (row 9) holds every proposal, admin entries included, until the leader's watcher has
    registered the key a rotation just brought in (RotateDEK answers `Unavailable`;
    nothing was proposed, so sending it again is safe)."""
    deadline = time.monotonic() + 20
    while True:
        rep = c.admin(node, op, **req)
        if rep.get("code") != "writer-not-registered" or time.monotonic() > deadline:
            return rep
        time.sleep(0.05)


@pytest.mark.parametrize("profile", ["fixed", "elastickv"])
def test_a_retried_rotation_never_moves_the_active_key_back(tmp_path, profile: str) -> None:
    """Issue 26 on real processes: RotateDEK to 3, to 4, then the operator's retry of the
    rotation to 3 (same id, same wrapped bytes). The fixed node answers `stale-key` and
    every replica keeps key 4; elastickv as it stands proposes the copy and every replica
    goes back to key 3 (applier.go writeRotationSidecar 1391-1392)."""
    kek_path = str(tmp_path / "kek")
    kek = write_kek(kek_path)
    seed = 26
    print(f"real cluster, seed {seed}, profile {profile}")
    cl = Cluster(str(tmp_path / "run"), 3, seed=seed, kek_path=kek_path, profile=profile)
    try:
        cl.start()
        leader = cl.wait_leader()
        with Client(cl.endpoints(), timeout=2.0) as c:
            assert c.admin(leader, "bootstrap", key_id=1,
                           wrapped=kek.wrap_dek(generate_dek()))["ok"]
            rep = c.admin(leader, "enable-raft-envelope", timeout=10)
            assert rep["ok"] and rep["value"]["status"] == "ok", rep
            w3 = kek.wrap_dek(generate_dek())
            assert c.admin(leader, "rotate-dek", key_id=3, wrapped=w3)["ok"]
            assert _until_registered(c, leader, "rotate-dek", key_id=4,
                                     wrapped=kek.wrap_dek(generate_dek()))["ok"]
            again = _until_registered(c, leader, "rotate-dek", key_id=3, wrapped=w3)
            assert c.invoke("write", "after", "a").type == "ok"
            # Every replica has applied everything the leader has.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                st = cl.statuses()
                if len({s["applied"] for s in st.values() if s}) == 1:
                    break
                time.sleep(0.05)
        active = {n: (s["active_dek"], s["wrap_key_id"]) for n, s in cl.statuses().items()}
    finally:
        cl.close()
    if profile == "fixed":
        assert not again["ok"] and again["code"] == "stale-key", again
        assert set(active.values()) == {(4, 4)}, active
    else:
        assert again["ok"], again
        assert set(active.values()) == {(3, 3)}, active
