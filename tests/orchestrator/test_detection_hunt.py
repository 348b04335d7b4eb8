"""`cutover bench detection --mode hunt` (issue 19): one `cutover hunt` per defect or bug
switch, read back from the hunt's results database, and the totals (found, confirmed
among found, time to the first failing seed, cost beyond the search per finding).
The long benchmark itself is not a test; these run one tiny hunt each."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from orchestrator.run.config import RunConfig
from orchestrator.search import detection, hunt
from tests.conftest import CLI, REPO


def _switch(name: str) -> detection.Defect:
    [d] = [d for d in detection.switch_targets() if d.name == name]
    return d


# slow (22 s; `pytest -m slow`): make test stays under 10 minutes; the hunt's record is
# written and read back end to end by test_bench_detection_hunt_mode_on_one_switch_end_to_end
# (with no replays) and tests/orchestrator/test_hunt.py (with them).
@pytest.mark.slow
@pytest.mark.real
@pytest.mark.sim
def test_a_hunt_record_is_read_back_as_the_hunt_itself_saw_it(tmp_path: Path) -> None:
    # A real (in-process) hunt, cheap: two simulated seeds of a switch, one replay.
    results = str(tmp_path / "results")
    cfg = RunConfig(nodes=3, time_limit=8, rate=100, bugs=["no-barrier"], results=results,
                    seed=1)
    res = hunt.hunt(cfg, results=results, budget=None, seeds=2, first_seed=1, workers=2,
                    confirm=1, rare=0)
    print(hunt.verdict_line(res))
    assert res.exit_code == 1 and res.findings, hunt.verdict_line(res)
    row = detection.read_hunt(results, detection.HuntRow(_switch("no-barrier")))
    assert row.error is None
    assert row.exit_code == 1 and row.status == "done" and row.found
    assert row.seeds == 2 and row.confirm == 1
    assert row.first_failure_s == pytest.approx(res.search.first_failure_s)
    assert row.search_s == pytest.approx(res.search.wall_seconds)
    assert row.shrink_s == pytest.approx(res.shrink_seconds)
    assert row.confirm_s == pytest.approx(res.confirm_seconds)
    assert [f["kind"] for f in row.findings] == [f.kind for f in res.findings]
    for got, f in zip(row.findings, res.findings, strict=True):
        assert got["confirmed"] == f.confirmed and got["attempts"] == len(f.runs) == 1
        assert got["replay_s"] == pytest.approx([r.seconds for r in f.runs])
        assert got["gap"] == bool(f.gap)
        assert got["outcomes"] == [r.outcome for r in f.runs]
    assert row.confirmed == any(f.confirmed for f in res.findings)
    n = len(res.findings)
    assert row.per_finding() == pytest.approx(
        [res.shrink_seconds / n + sum(r.seconds for r in f.runs) for f in res.findings])
    # A real replay takes at least its schedule: the cost beyond the search is real time.
    assert min(row.per_finding()) >= 5
    lines = detection.hunt_table([row], 60, 1)
    print("\n".join(lines))
    assert lines[1].startswith("no-barrier  yes")
    assert f"{res.findings[0].kind} {res.findings[0].confirmed}/1" in lines[1]
    assert lines[-1] == f"found=1/1 confirmed={int(row.confirmed)}/1"


def _row(name: str, *, exposed: str = "a fault", findings: list[dict] | None = None,
         first: float | None = None, shrink: float = 0.0, conf: float = 0.0,
         summary: str = "", error: str | None = None) -> detection.HuntRow:
    d = detection.Defect(name, Path(f"{name}.patch"), "", exposed)
    return detection.HuntRow(d, exit_code=1 if findings else 0, summary=summary,
                             findings=findings or [], first_failure_s=first, search_s=30.0,
                             shrink_s=shrink, confirm_s=conf, wall_s=100.0, confirm=3,
                             error=error)


def _f(kind: str, k: int, replays: list[float], gap: bool = False) -> dict:
    return {"kind": kind, "signature": kind, "confirmed": k, "attempts": len(replays),
            "gap": gap, "outcomes": [], "replay_s": replays, "complete": True,
            "simulations": 10}


def test_the_totals_count_found_and_confirmed_and_leave_out_the_unexposable() -> None:
    rows = [
        _row("a", findings=[_f("cutover I1 (lease)", 3, [20, 20, 20])], first=2.0,
             shrink=10.0, conf=60.0),
        _row("b", findings=[_f("linearizability", 0, [30, 30, 30], gap=True),
                            _f("cutover I2", 1, [10, 10, 10])], first=6.0, shrink=20.0,
             conf=120.0),
        _row("c", summary="NOTHING FOUND in 60 simulated seeds and 0 real runs"),
        _row("d", exposed="none: no workload reads it",
             findings=[_f("cutover I3", 0, [15, 15, 15])], first=1.0, shrink=4.0, conf=45.0),
        _row("e", error="the hunt wrote no results database"),
    ]
    lines = detection.hunt_table(rows, 60, 3)
    text = "\n".join(lines)
    print(text)
    assert re.search(r"^c +no .*NOTHING FOUND in 60", text, re.M)
    assert re.search(r"^d +yes .*not counted: no fault can expose it", text, re.M)
    assert re.search(r"^e +ERR .*the hunt wrote no results database", text, re.M)
    assert "linearizability 0/3 GAP; cutover I2 1/3" in text
    # d is not counted: 2 of the 4 counted targets found, both confirmed at least once,
    # one of them (a) in every replay of every finding.
    assert "found: 2/4 (50%) defects" in text
    assert "confirmed among found: 2/2 (100%)" in text and "its replays: 1/2" in text
    assert "median time to the first failing seed: 4.0 s" in text
    # Per finding: a 10 + 60 = 70; b 20/2 + 90 = 100 and 10 + 30 = 40: median 70.
    assert "median cost beyond the search per finding: 70.0 s" in text
    assert lines[-1] == "found=2/4 confirmed=2/2"


@pytest.mark.sim
def test_bench_detection_hunt_mode_on_one_switch_end_to_end() -> None:
    # The whole path: an unpatched copy of the tree, a `cutover hunt` child process, its
    # database read back. No replays (--confirm 0) keeps it to a few seconds.
    cmd = [*CLI, "bench", "detection", "--mode", "hunt", "--switches", "--defect",
           "no-barrier", "--budget", "6", "--confirm", "0", "--time-limit", "8"]
    print(" ".join(cmd))
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert re.search(r"^  no-barrier: exit 1, [0-9.]+ s$", r.stderr, re.M)
    assert re.search(r"^    search: \d+ simulated seeds", r.stderr, re.M)
    assert re.search(r"^no-barrier +yes +[0-9.]+ .*cutover I1", r.stdout, re.M)
    assert r.stdout.splitlines()[-1] == "found=1/1 confirmed=0/1"


def test_hunt_mode_flags_that_do_not_go_together_are_one_line() -> None:
    for args in (["--switches"], ["--mode", "hunt", "--sim"],
                 ["--mode", "hunt", "--switches", "--defect", "no-such-switch"],
                 ["--crash-points", "2"], ["--buggify"],
                 ["--nemesis", "all,storage"]):  # the simulator's, not real runs
        r = subprocess.run([*CLI, "bench", "detection", *args], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
        print(args, r.returncode, r.stderr)
        assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith("error: ")
