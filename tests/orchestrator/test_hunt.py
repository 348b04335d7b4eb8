"""`cutover hunt` (issue 19 part 3) and the budget and coverage of `cutover sim` (issue 23):
a switch found in simulation, shrunk inside the budget, replayed on real processes,
and the hunt recorded so that `list`, `show` and `coverage` read it; the fixed build
finds nothing; a version-2 results database gains the hunt tables; the protocol-event
comparison behind fidelity gaps and `cutover bench fidelity`. Every test prints what
it ran."""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from orchestrator import store
from orchestrator.search import fidelity
from tests.conftest import CLI, REPO
from tests.ui.test_review import cli, store_synthetic_run


def _cutover(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    print("cutover", " ".join(args))
    return subprocess.run([*CLI, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (a results dir): a node left
    behind would name its data dir there."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            out.append(f"{pid}: {cmd[:200]}")
    return out


def _coverage_line(results: Path) -> str:
    r = _cutover("coverage", "--results", str(results), timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()[-1]


@pytest.mark.real
@pytest.mark.sim
def test_a_switch_is_found_shrunk_confirmed_on_real_processes_and_recorded(
        tmp_path: Path) -> None:
    results = tmp_path / "results"
    r = _cutover("hunt", "--seeds", "1", "--budget", "15", "--bug", "no-barrier",
                 "--nodes", "3", "--time-limit", "8", "--confirm", "1", "--rare", "0",
                 "--results", str(results))
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    assert "Traceback" not in out + r.stderr
    # The finding: its kind, first violation, simulated seed, shrunk plan, confirmation.
    m = re.search(r"^finding 1: (cutover I1.*)$", out, re.M)
    assert m, out
    assert re.search(r"^  first violation at [0-9.]+s: I1 no cleartext above the cutover",
                     out, re.M), out
    sim_run = re.search(r"^  simulated seed 1 \(run (\S+)\)", out, re.M).group(1)
    plan = re.search(r"^  shrunk plan: (\S+) ", out, re.M).group(1)
    assert os.path.isfile(plan), plan
    assert json.loads(Path(plan).read_text())["format"] == "cutover-plan"
    k = re.search(r"^  confirmed on real processes (\d)/1$", out, re.M)
    assert k, out
    real_run = re.search(r"^    real run (\S+): ", out, re.M).group(1)
    assert re.search(r"^  reports: .*report\.html", out, re.M), out
    assert re.search(r"^coverage: simulated \d+/\d+ points over 1 seeds", out, re.M), out
    assert "exit 1: FOUND 1" in out and f"cutover show {sim_run}" in out
    assert not _processes_mentioning(str(results)), "a process was left behind"
    # The record links the simulated run with its real replay.
    with store.opened(str(results)) as db:
        [h] = store.hunts(db)
        assert h["status"] == "done" and h["exit_code"] == 1
        [f] = store.hunt_findings(db, h["id"])
        assert f["sim_run"] == sim_run and f["kind"] == m.group(1)
        assert f["confirmed"] == int(k.group(1)) and f["attempts"] == 1
        assert os.path.join(str(results), f["plan_file"]) == plan
        [hr] = store.hunt_runs(db, h["id"])
        assert hr["real_run"] == real_run and hr["finding"] == 1 and hr["role"] == "confirm"
        runs = {x["id"]: x for x in store.runs(db)}
        assert runs[sim_run]["source"] == "sim" and runs[real_run]["source"] is None
        assert store.hunt_links(db, real_run)[0]["finding"]["sim_run"] == sim_run
    # The real run played the shrunk plan: its config and its steps.
    doc = json.loads(Path(plan).read_text())
    stored = json.loads((results / real_run / "config.json").read_text())
    for key in ("bugs", "nodes", "time_limit", "seed"):
        assert stored[key] == doc["config"][key], key
    assert [st["action"] for st in stored["plan"]["steps"]] == \
        [st["action"] for st in doc["plan"]["steps"]]
    # `list` and `show` show the finding with its confirmation.
    listed = cli("list", "--results", str(results))
    assert listed.exit_code == 0, listed.output
    assert h["id"] in listed.stdout and f"real run {real_run}" in listed.stdout
    shown = cli("show", sim_run, "--results", str(results))
    assert "this simulated run is its finding 1" in shown.stdout, shown.stdout
    assert real_run in shown.stdout
    shown = cli("show", real_run, "--results", str(results))
    assert f"replayed finding 1 ({m.group(1)}, simulated run {sim_run})" in shown.stdout
    # `cutover serve` lists the hunt with its finding and its confirmation.
    from orchestrator.ui.web import serving
    with serving(str(results)) as url:
        page = urllib.request.urlopen(url + "/").read().decode()
    assert h["id"] in page and real_run in page and sim_run in page
    # `cutover coverage` counts what the hunt printed (both worlds together).
    together = re.search(r"together (\d+)/", out).group(1)
    assert _coverage_line(results).startswith(f"coverage: {together}/")


@pytest.mark.sim
def test_the_fixed_build_finds_nothing_in_a_tiny_budget(tmp_path: Path) -> None:
    results = tmp_path / "results"
    r = _cutover("hunt", "--budget", "3", "--nodes", "3", "--time-limit", "5", "--rare", "0",
                 "--results", str(results))
    assert r.returncode == 0, r.stdout + r.stderr
    assert not re.search(r"^finding ", r.stdout, re.M), r.stdout
    assert "exit 0: NOTHING FOUND" in r.stdout, r.stdout
    seeds = int(re.search(r"^search: (\d+) simulated seeds", r.stdout, re.M).group(1))
    sim = re.search(r"^coverage: simulated (\d+)/", r.stdout, re.M).group(1)
    # Passing seeds are not stored as runs, yet `cutover coverage` counts them.
    assert _coverage_line(results).startswith(f"coverage: {sim}/")
    assert f"reached in {seeds} runs ({seeds} of them simulated seeds" in \
        _coverage_line(results)
    with store.opened(str(results)) as db:
        [h] = store.hunts(db)
        assert h["exit_code"] == 0 and not store.hunt_findings(db, h["id"])


@pytest.mark.sim
def test_sim_budget_includes_shrinking_and_coverage_counts_passing_seeds(
        tmp_path: Path) -> None:
    results = tmp_path / "results"
    t0 = time.monotonic()
    r = _cutover("sim", "--budget", "6", "--nodes", "3", "--time-limit", "8", "--bug",
                 "no-barrier", "--results", str(results))
    wall = time.monotonic() - t0
    assert r.returncode == 1, r.stdout + r.stderr
    assert "shrunk to" in r.stdout and results.glob("*/shrunk-plan.json")
    # A seed's time over the budget at most, plus the start-up of the command.
    assert wall < 6 + 5, wall
    m = re.search(r"^sim: (\d+) seeds .* coverage (\d+)/", r.stdout, re.M)
    assert m and "search and shrinking" in r.stdout, r.stdout
    line = _coverage_line(results)
    assert line.startswith(f"coverage: {m.group(2)}/") and f"in {m.group(1)} runs" in line


def test_bad_flags_and_an_unusable_results_dir_are_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for args in (["--budget", "0"], ["--bug", "nope", "--budget", "1"],
                 ["--confirm", "-1"], ["--budget", "nan"],
                 ["--budget", "1", "--results", str(blocker / "r")]):
        r = _cutover("hunt", *args, timeout=60)
        assert r.returncode == 3, (args, r.stdout, r.stderr)
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, r.stderr)


def _as_version_2(results: str) -> None:
    """What a database written before hunts looks like: no version-3 table, version 2."""
    conn = sqlite3.connect(store.db_path(results))
    with conn:
        for t in store.V3_TABLES:
            conn.execute(f"drop table {t}")
        conn.execute("update meta set value = '2' where key = 'schema_version'")
    conn.close()


def test_a_version_2_database_is_migrated_and_shows_a_hunt(tmp_path: Path) -> None:
    results = str(tmp_path / "results")
    sim = store_synthetic_run(results, "20260401T000001-s7", seed=7, leak=True)
    real = store_synthetic_run(results, "20260401T000002-s7", seed=7,
                               started="2026-01-01T00:01:00.000+00:00")
    _as_version_2(results)
    listed = cli("list", "--results", results)  # a reader migrates it
    assert listed.exit_code == 0, listed.output
    conn = sqlite3.connect(store.db_path(results))
    names = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
    version = conn.execute("select value from meta where key='schema_version'").fetchone()
    conn.close()
    assert set(store.V3_TABLES) <= names and version == (str(store.SCHEMA_VERSION),)
    db = store.open_db(results, create=True)
    try:
        hid = store.create_hunt(db, "hunt-20260401T000000", {"run": {"bugs": ["no-barrier"]}})
        store.put_finding(db, hid, 1, kind="cutover I1 (user)", signature="cutover I1 (user) "
                          "| isolate", sentence="I1 ...", seed=7, sim_run=sim["id"],
                          plan_file=f"{sim['id']}/shrunk-plan.json", confirmed=0, attempts=1,
                          gap={"passed": 1, "of": 1, "line": "role changes (sim 2, real 3)"})
        store.add_hunt_run(db, hid, real["id"], finding=1, role="confirm", seed=7,
                           verdict="valid", kind=None, outcome="passed", seconds=12.0,
                           detail={"compare": {"match": False, "mismatch": ["role changes"]}})
        store.finish_hunt(db, hid, status="done", exit_code=1, summary="FOUND 1: ...",
                          detail={"search": {"seeds": 40}})
    finally:
        db.conn.close()
    listed = cli("list", "--results", results)
    assert f"{hid}  " in listed.stdout and "confirmed on real processes 0/1" in listed.stdout
    assert f"real run {real['id']}: VALID (passed)" in listed.stdout
    assert "fidelity gap: passed on real processes 1/1" in listed.stdout
    # The run table comes first and stays as it was: the newest run is line 2.
    assert listed.stdout.splitlines()[1].split()[0] == real["id"]
    shown = cli("show", sim["id"], "--results", results)
    assert f"hunt {hid}: this simulated run is its finding 1" in shown.stdout, shown.stdout
    assert f"real run {real['id']}" in shown.stdout
    shown = cli("show", real["id"], "--results", results)
    assert "protocol events: differ: role changes" in shown.stdout, shown.stdout
    trend = cli("trend", "--results", results)
    assert "cutover I1 (user) 0/1 (fidelity gap)" in trend.stdout, trend.stdout


def _ev(node: str, t: float, kind: str, **detail: object) -> dict[str, object]:
    return {"node": node, "time_ns": int(t * 1e9), "kind": kind, "detail": detail}


def test_protocol_event_comparison_names_what_differed() -> None:
    base = [_ev("n1", 0.0, "start"), _ev("n2", 0.0, "start"),
            _ev("n1", 0.1, "role", role="leader"),
            _ev("n1", 1.0, "marker-proposed"), _ev("n1", 1.1, "marker-committed"),
            _ev("n1", 1.2, "encryption-applied", what="marker-fresh"),
            _ev("n2", 1.3, "encryption-applied", what="marker-fresh")]
    same = fidelity.compare_events(base, list(reversed(base)))
    assert same["match"] and same["mismatch"] == []
    real = base[:5] + [_ev("n2", 2.0, "start"), _ev("n2", 2.5, "role", role="leader")]
    c = fidelity.compare_events(base, real)
    assert not c["match"]
    assert set(c["mismatch"]) == {"marker", "restarts", "role changes"}
    assert c["first_s"]["marker-applied"] == [1.2, None]
    assert "marker applied at sim 1.2s, real never" in fidelity.differed_line(c)
    # Same events per class, another interleaving: `order`.
    swapped = [*base[:3], _ev("n1", 1.0, "snapshot-taken"), *base[3:]]
    later = [*base, _ev("n1", 2.0, "snapshot-taken")]
    assert fidelity.compare_events(swapped, later)["mismatch"] == ["order"]
