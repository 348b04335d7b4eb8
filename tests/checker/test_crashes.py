"""A node that dies on its own is evidence (issue 15, "Build": the `crashes` checker).

The node variant that raises on a rare path is the test-only hook of `node/server.py`
(`CUTOVER_TEST_RAISE_AT=NODE:INDEX`: that node raises once it has applied INDEX, in its
first life only). The cluster records every exit it did not ask for, and every start
that does not come up; the `crashes` checker fails the run on any of them, in
`cutover run` and again in `cutover check`.
"""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from checker.crashes import EXITS_FILE, check_crashes, read_exits
from node.server import TEST_RAISE_ENV
from orchestrator.cli import main
from orchestrator.real.client import Client
from orchestrator.real.cluster import Cluster, ClusterError
from orchestrator.real.run import RunConfig, execute
from tests.conftest import wait_for


def _write(d, lines: list[object]) -> str:
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, EXITS_FILE), "w") as fh:
        for x in lines:
            fh.write((x if isinstance(x, str) else json.dumps(x)) + "\n")
    return str(d)


def test_the_checker_on_records(tmp_path) -> None:
    assert check_crashes(_write(tmp_path / "none", []))["valid"] == "valid"
    rec = {"kind": "exit", "node": "n2", "t": 5_000_000_000, "code": 1, "pid": 7,
           "start": 1, "log": ["Traceback (most recent call last):", "RuntimeError: boom"]}
    one = _write(tmp_path / "one", [rec])
    with open(os.path.join(one, EXITS_FILE), "a") as fh:
        fh.write('{"kind": "exit", "no')  # a torn last line (a crash mid-write)
    got = check_crashes(one, 1_000_000_000)
    assert got["valid"] == "invalid" and got["exits"] == 1
    assert got["first_violation"] == ("node n2 exited with code 1 without being asked to: "
                                      "RuntimeError: boom")
    assert got["first_violation_ns"] == 4_000_000_000
    failed = {"kind": "failed-start", "node": "n3", "t": 1, "start": 2,
              "reason": "no answer within 20 s", "log": []}
    got = check_crashes(_write(tmp_path / "two", [failed]))
    assert got["valid"] == "invalid" and got["failed_starts"] == 1
    assert got["first_violation"] == "node n3 did not start (no answer within 20 s)"
    missing = check_crashes(str(tmp_path / "nowhere"))
    assert missing["valid"] == "unknown" and missing["incomplete"]
    assert check_crashes(_write(tmp_path / "bad", ["garbage", "{}"]))["incomplete"]


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    monkeypatch.setenv(TEST_RAISE_ENV, "n2:12")  # the spawned nodes inherit it
    cl = Cluster(str(tmp_path / "run"), 3, seed=15)
    try:
        cl.start()
        yield cl
    finally:
        cl.close()


@pytest.mark.real
def test_an_unplanned_exit_is_recorded_once_and_planned_ones_never(cluster: Cluster) -> None:
    cluster.wait_leader()
    # Write until n2 has applied past the hook's index and died of it: a fixed number of
    # writes can all time out on a loaded machine (CI) and never get there.
    with Client(cluster.endpoints(), timeout=1.0) as c:
        def written() -> object:
            for i in range(5):
                c.invoke("write", f"k{i}", f"v{i}")
            return cluster.exits
        wait_for(written, 60, "n2 to die of the test hook")
    (rec,) = cluster.exits
    assert rec["kind"] == "exit" and rec["node"] == "n2" and rec["code"] == 1
    assert any("RuntimeError: test hook" in ln for ln in rec["log"]), rec["log"]
    # The heal's restart: a second life, which the hook spares. Then planned endings.
    cluster.start_node("n2", wait=20)
    leader = cluster.wait_leader()
    cluster.kill(leader)
    cluster.start_node(leader, wait=20)
    cluster.stop_all()
    assert [r["node"] for r in read_exits(cluster.root)] == ["n2"]


@pytest.mark.real
def test_a_node_that_refuses_to_start_is_recorded(cluster: Cluster) -> None:
    cluster.wait_leader()
    cluster.kill("n3")
    with open(os.path.join(cluster.nodes["n3"].data_dir, "node-id"), "w") as fh:
        fh.write("n9\n")  # its data dir now belongs to another node: it must refuse
    with pytest.raises(ClusterError):
        cluster.start_node("n3", wait=20)
    recs = [r for r in read_exits(cluster.root) if r["node"] == "n3"]
    assert len(recs) == 1 and recs[0]["code"] == 2, recs
    assert any("refusing to start" in ln for ln in recs[0]["log"]), recs[0]["log"]


@pytest.mark.real
def test_a_run_where_a_node_raised_is_invalid_and_check_agrees(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(TEST_RAISE_ENV, "n2:60")
    seed = 31
    print(f"{TEST_RAISE_ENV}=n2:60 cutover run --nodes 3 --time-limit 8 "
          f"--nemesis kill,partition --seed {seed}")
    out = execute(RunConfig(nodes=3, time_limit=8, nemesis="kill,partition", seed=seed,
                            results=str(tmp_path)), out=None, progress=None)
    assert out.verdict == "invalid" and out.exit_code == 1, out.summary
    assert out.first is not None and out.first[0] == "crashes", out.summary
    assert "node n2 exited with code 1" in out.summary
    assert out.checks["crashes"]["exits"] >= 1
    monkeypatch.delenv(TEST_RAISE_ENV)
    r = CliRunner().invoke(main, ["check", out.run_id, "--results", str(tmp_path)])
    assert r.exit_code == 1, r.output
    assert "crashes" in r.output and "node n2 exited with code 1" in r.output
