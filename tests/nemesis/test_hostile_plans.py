"""Hostile plan files against `cutover sim --replay FILE` and `cutover run --plan FILE`
(issue 22).

A plan file is read and checked in full before a run row exists or a process starts
(`orchestrator.run.config.read_plan_file`, `nemesis.plan.Plan.from_dict`, `RunConfig.validate`):
every malformed file below ends with exit 3, exactly one `error:` line on stderr, no
traceback, and no run row in the results database. They once ended in tracebacks
(exit 1, which a nightly reads as "invalid"), a run left `crashed`, a run row with a NULL
config, or a run that played an empty plan (`{}`: no fault, no cutover, while `show`
said nemesis=all). The files are made here, each a small change of one valid plan file,
and both commands are started as a user starts them, several at a time.
"""
from __future__ import annotations

import concurrent.futures as cf
import copy
import glob
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nemesis.plan import FAMILIES, Plan, make_plan
from orchestrator.real.run import RunError
from orchestrator.sim.cli import load_plan_file
from tests.conftest import REPO

CLI = [sys.executable, "-m", "orchestrator.cli"]

# A valid plan file (`cutover sim`'s shape): a 3 s, 3-node run with a cutover at 1 s,
# a bound target and an `after` trigger. Every case below breaks one thing in it.
VALID: dict[str, Any] = {
    "format": "cutover-plan",
    "config": {"nodes": 3, "time_limit": 3.0, "rate": 50.0, "cutover_at": 1.0, "seed": 5,
               "nemesis": "all", "workload": "kv", "keys": 4},
    "plan": {"seed": 5, "families": ["partition", "kill", "net", "enable"],
             "scenario": "swarm", "knobs": {"snapshot_every": 100}, "features": {},
             "steps": [
                 {"id": 1, "action": "enable", "target": {"role": "leader"},
                  "when": {"on": "time", "at": 1.0},
                  "params": {"main": True, "retry_same": True}},
                 {"id": 2, "action": "isolate", "target": {"role": "one", "bind": "A"},
                  "when": {"on": "time", "at": 0.5}, "duration": 0.3},
                 {"id": 3, "action": "kill", "target": {"role": "bound", "ref": "A"},
                  "when": {"on": "after", "step": 2}, "duration": 0.3},
                 {"id": 4, "action": "loss", "target": {"role": "all"},
                  "when": {"on": "time", "at": 0.2}, "duration": 0.5, "params": {"p": 0.1}},
             ]},
}


def _at(doc: Any, path: str) -> tuple[Any, Any]:
    """(the container, the key) of a dotted `path` in `doc` (list indexes as numbers)."""
    *head, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    for p in head:
        doc = doc[p]
    return doc, last


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    """A change of VALID: `path` set to `value`."""
    def change(doc: dict[str, Any]) -> dict[str, Any]:
        x, k = _at(doc, path)
        x[k] = value
        return doc
    return change


def _step(i: int, **fields: Any) -> Callable[[dict[str, Any]], Any]:
    """Step `i` (0-based) of VALID with `fields` replaced."""
    def change(doc: dict[str, Any]) -> dict[str, Any]:
        doc["plan"]["steps"][i].update(fields)
        return doc
    return change


def _drop(path: str) -> Callable[[dict[str, Any]], Any]:
    """A change of VALID: `path` left out."""
    def change(doc: dict[str, Any]) -> dict[str, Any]:
        x, k = _at(doc, path)
        del x[k]
        return doc
    return change


NAN, INF = float("nan"), float("inf")
DEEP = b'{"format": "cutover-plan", "plan": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

# name -> the file: bytes, a change of VALID, or "DIR" (a directory at that path).
CASES: dict[str, bytes | str | Callable[[dict[str, Any]], Any]] = {
    "empty file": b"",
    "not JSON": b'{"format": "cutover-plan", "plan": {',
    "not UTF-8": b'{"format": "cutover-plan", "plan": {"steps": []}, "x": "\xff\xfe"}',
    "a directory": "DIR",
    "a JSON array": b"[1, 2, 3]",
    "a JSON string": b'"cutover-plan"',
    "null": b"null",
    "an empty object": b"{}",
    "deeply nested garbage": DEEP,
    "a 5000-digit number": b'{"format": "cutover-plan", "plan": {"seed": 1' + b"0" * 5000
                           + b', "steps": []}}',
    "another format": _set("format", "jepsen"),
    "format without a plan": _drop("plan"),
    "plan is a list": _set("plan", []),
    "config is a number": _set("config", 5),
    "plan without steps": _drop("plan.steps"),
    "steps is an object": _set("plan.steps", {"1": {}}),
    "a step is a number": _set("plan.steps.1", 7),
    "a step without id": _drop("plan.steps.1.id"),
    "a step id as text": _step(1, id="2"),
    "a step id true": _step(1, id=True),
    "duplicate step ids": _step(3, id=2),
    "an unknown action": _step(1, action="explode"),
    "an action as a number": _step(1, action=3),
    "an unknown role": _step(1, target={"role": "president"}),
    "bound without ref": _step(2, target={"role": "bound"}),
    "bound to a name never bound": _step(2, target={"role": "bound", "ref": "B"}),
    "avoid is a number": _step(1, target={"role": "one", "avoid": 5}),
    "an unknown trigger": _step(1, when={"on": "sometimes"}),
    "an unknown trigger event": _step(1, when={"on": "event", "event": "moon-rise"}),
    "after a missing step": _step(2, when={"on": "after", "step": 99}),
    "after itself": _step(2, when={"on": "after", "step": 3}),
    "an unknown milestone": _step(1, when={"on": "milestone", "milestone": "noon"}),
    "an unknown trigger field": _step(1, when={"on": "time", "at": 0.5, "every": 2}),
    "at NaN": _step(1, when={"on": "time", "at": NAN}),
    "at Infinity": _step(1, when={"on": "time", "at": INF}),
    "at as text": _step(1, when={"on": "time", "at": "0.5"}),
    "at 1e308": _step(1, when={"on": "time", "at": 1e308}),
    "nth 0": _step(2, when={"on": "event", "event": "leader-elected", "nth": 0}),
    "delay negative": _step(1, delay=-1.0),
    "delay NaN": _step(1, delay=NAN),
    "duration Infinity": _step(1, duration=INF),
    "duration 1e300": _step(1, duration=1e300),
    "until an unknown trigger": _step(1, until={"on": "never"}),
    "params a list": _step(3, params=[0.1]),
    "param named like a record field": _step(3, params={"step": 1}),
    "probability NaN": _step(3, params={"p": NAN}),
    "probability 2": _step(3, params={"p": 2}),
    "delay ms negative": _step(3, action="delay", params={"ms": -5}),
    "restart times 0": _step(1, action="restart", params={"times": 0}),
    "an unknown step field": _step(1, colour="red"),
    "an unknown plan field": _set("plan.stepz", []),
    "a knob of 0": _set("plan.knobs.snapshot_every", 0),
    "an unknown family": _set("plan.families", ["kill", "meteor"]),
    "families as text": _set("plan.families", "kill"),
    "config time_limit NaN": _set("config.time_limit", NAN),
    "config time_limit Infinity": _set("config.time_limit", INF),
    "config time_limit as text": _set("config.time_limit", "3"),
    "config nodes 0": _set("config.nodes", 0),
    "config nodes 3.5": _set("config.nodes", 3.5),
    "config rate NaN": _set("config.rate", NAN),
    "config cutover_at NaN": _set("config.cutover_at", NAN),
    "config cutover_at after the end": _set("config.cutover_at", 1e9),
    "config seed 1e30": _set("config.seed", 1e30),
    "config bugs as text": _set("config.bugs", "no-barrier"),
    "config an unknown field": _set("config.colour", "red"),
}


# Started as commands (two processes each, half a CPU second apiece): one or more of
# each kind of damage. Every case is also read in this process (below), cheaply.
CLI_CASES = [
    "empty file", "not JSON", "not UTF-8", "a directory", "a JSON array",
    "an empty object", "deeply nested garbage", "a 5000-digit number", "another format",
    "format without a plan", "plan without steps", "steps is an object",
    "a step is a number", "a step without id", "a step id as text", "duplicate step ids",
    "an unknown action", "an unknown role", "bound to a name never bound",
    "an unknown trigger", "an unknown trigger event", "after a missing step",
    "after itself", "at NaN", "at 1e308", "delay negative", "duration Infinity",
    "params a list", "param named like a record field", "probability NaN",
    "an unknown step field", "a knob of 0", "config time_limit Infinity",
    "config nodes 3.5", "config cutover_at NaN", "config seed 1e30",
    "config an unknown field"]


def _write(tmp: Path, name: str) -> str:
    path = tmp / (name.replace(" ", "-") + ".json")
    case = CASES[name]
    if case == "DIR":
        path.mkdir()
    elif isinstance(case, bytes):
        path.write_bytes(case)
    else:
        assert callable(case)
        # allow_nan: NaN and Infinity as Python's json writes them (and reads them back)
        path.write_text(json.dumps(case(copy.deepcopy(VALID))))
    return str(path)


def _commands(path: str, results: str) -> dict[str, list[str]]:
    return {"sim --replay": [*CLI, "sim", "--replay", path, "--results", results],
            "run --plan": [*CLI, "run", "--plan", path, "--nodes", "3", "--time-limit", "3",
                           "--results", results]}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory
             ) -> dict[tuple[str, str], tuple[subprocess.CompletedProcess, str]]:
    """Every case under both commands, four at a time: (case, command) -> (the process,
    its results directory)."""
    tmp = tmp_path_factory.mktemp("plans")
    jobs = {}
    for name in CLI_CASES:
        path = _write(tmp, name)
        for cmd, argv in _commands(path, str(tmp / f"r-{len(jobs)}")).items():
            jobs[(name, cmd)] = (argv, argv[-1])
    with cf.ThreadPoolExecutor(max_workers=4) as ex:
        futs = {k: ex.submit(_cli, argv) for k, (argv, _r) in jobs.items()}
        return {k: (f.result(), jobs[k][1]) for k, f in futs.items()}


def _cli(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    """The command, run to its end (one still going after `timeout` seconds is killed and
    reads as exit -9: a refused file is refused in a second)."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              cwd=REPO)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(argv, -9, _text(e.stdout),
                                           f"{_text(e.stderr)}\n(killed after {timeout} s)")


def _run_rows(results: str) -> list[tuple[Any, ...]]:
    db = os.path.join(results, "cutover.db")
    if not os.path.exists(db):
        return []
    with sqlite3.connect(db) as c:
        return c.execute("select id, status, config from runs").fetchall()


@pytest.mark.stress
@pytest.mark.parametrize("command", ["sim --replay", "run --plan"])
@pytest.mark.parametrize("name", CLI_CASES)
def test_a_malformed_plan_file_is_one_line_and_exit_3(outcomes, name: str,
                                                      command: str) -> None:
    p, results = outcomes[(name, command)]
    assert "Traceback" not in p.stdout + p.stderr, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 3, (p.returncode, p.stdout[-500:], p.stderr[-500:])
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr[-1000:]
    assert len(lines[0]) < 400, lines[0]
    # Checked before anything started: no run row at all (so none `crashed`, `running`,
    # or with a NULL config), and no run directory.
    assert _run_rows(results) == []
    assert not [d for d in glob.glob(os.path.join(results, "*")) if os.path.isdir(d)]


@pytest.mark.parametrize("name", list(CASES))
def test_the_plan_file_reader_refuses_every_case_with_one_line(tmp_path: Path,
                                                                name: str) -> None:
    """Both commands read a plan file with `read_plan_file` and its config with
    `RunConfig.from_dict` (`load_plan_file` is both, for `sim --replay`): every case is a
    RunError of one line, never another exception."""
    path = _write(tmp_path, name)
    with pytest.raises(RunError) as e:
        load_plan_file(path)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400, str(e.value)


@pytest.mark.sim
def test_the_valid_plan_file_replays(tmp_path: Path) -> None:
    """The file every case above breaks is itself a plan file: the cases fail for what
    they change."""
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(VALID))
    p = subprocess.run([*CLI, "sim", "--replay", str(path), "--results",
                        str(tmp_path / "r")], capture_output=True, text=True, timeout=120,
                       cwd=REPO)
    assert p.returncode in (0, 1, 2), p.stderr[-2000:]
    assert p.stdout.startswith("seed 5: ") and "#3 kill bound A after step 2" in p.stdout


def test_a_replay_refuses_the_flags_it_would_not_use(tmp_path: Path) -> None:
    """`sim --replay FILE --profile fixed` once played the file's elastickv config
    silently; a replay is exact, so a flag that would change the run is named."""
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(VALID))
    p = subprocess.run([*CLI, "sim", "--replay", str(path), "--profile", "fixed", "--bug",
                        "no-barrier", "--results", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert p.returncode == 3 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "--bug, --profile would not be used" in p.stderr
    assert not (tmp_path / "r").exists()  # refused before anything was simulated


def test_every_stored_plan_and_every_generated_plan_reads_back() -> None:
    """The checks refuse nothing the harness writes: the plan files in the repository,
    and plans the generator makes at the edges (a 1 s run, a cutover at 0, one node)."""
    stored = glob.glob(str(REPO / "docs" / "findings" / "*.json")) + glob.glob(
        str(REPO / "tests" / "plans" / "*.json"))
    assert stored
    for f in stored:
        with open(f, encoding="utf-8") as fh:
            Plan.from_dict(json.load(fh)["plan"])
    for scenario in ("swarm", "generative", "sequence", "churn"):
        for time_limit, cutover_at, nodes in ((1.0, None, 1), (1.0, 0.0, 3), (3.0, 1.0, 5),
                                              (30.0, 10.0, 5)):
            for seed in range(1, 9):
                plan = make_plan(seed, FAMILIES, time_limit=time_limit, interval=0.5,
                                 cutover_at=cutover_at, nodes=nodes, scenario=scenario)
                assert Plan.from_dict(plan.to_dict()) == plan


def _text(b: bytes | str | None) -> str:
    """What a killed command had written (bytes, even with text=True)."""
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
