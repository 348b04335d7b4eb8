"""Who owns a running run, judged from another PID namespace or another host (issue 22,
3): a pid there means nothing, so the owner's heartbeat decides."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from orchestrator import store
from orchestrator.store import owner


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _stamped(run_dir: str, who: dict, age: float = 0.0) -> dict:
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, owner.OWNER_FILE)
    with open(path, "w") as fh:
        json.dump(who, fh)
    if age:
        t = time.time() - age
        os.utime(path, (t, t))
    got = owner.read(run_dir)
    assert got is not None
    return got


def test_an_owner_in_another_pid_namespace_is_judged_by_its_heartbeat(tmp_path) -> None:
    """A live run seen from another container with the same host name: its pid is not a
    process here, and it used to be marked crashed."""
    who = {**owner.stamp(), "pid": _dead_pid(), "pidns": "pid:[1]"}
    assert not owner.is_gone(_stamped(str(tmp_path / "fresh"), who))
    assert owner.is_gone(_stamped(str(tmp_path / "stale"), who, age=owner.STALE_AFTER + 60))
    # In this namespace the pid decides, as before.
    here = {**owner.stamp(), "pid": _dead_pid()}
    assert owner.is_gone(_stamped(str(tmp_path / "here"), here))


def test_an_owner_on_another_host_is_gone_once_its_heartbeat_stops(tmp_path) -> None:
    """It used to stay `running` forever (and `check` refused it forever)."""
    results = str(tmp_path / "results")
    who = {**owner.stamp(), "host": "another-host"}
    assert not owner.is_gone(_stamped(os.path.join(results, "live"), who))
    _stamped(os.path.join(results, "dead"), who, age=owner.STALE_AFTER + 60)
    for rid in ("live", "dead"):
        rec = store.Recorder(results, rid, 0)
        rec.run_row(started="2026-12-07T00:00:00", status="running", seed=1, run_dir=rid)
        rec.flush()
        rec.close()
    with store.opened(results) as db:
        store.mark_crashed(db, results)  # what every command that opens it does
        rows = {r["id"]: r["status"] for r in db.query("select id, status from runs")}
    assert rows == {"live": "running", "dead": "crashed"}


def test_the_heartbeat_touches_the_owner_file(tmp_path) -> None:
    run_dir = str(tmp_path)
    owner.write(run_dir)
    path = os.path.join(run_dir, owner.OWNER_FILE)
    old = time.time() - 1000
    os.utime(path, (old, old))
    beat = owner.Heartbeat(run_dir, every=0.02).start()
    try:
        deadline = time.monotonic() + 5
        while os.stat(path).st_mtime <= old + 1 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        beat.stop()
    assert os.stat(path).st_mtime > old + 1
    assert owner.read(run_dir)["beat_age"] < 5
