"""One run program, two worlds: the same plan played on real processes and in the
simulator goes through the same phase functions of `orchestrator/run/program.py`, and the
simulator does not even import the real world's machinery."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from nemesis.plan import Plan
from nemesis.primitives import Step, Target, When
from orchestrator.real.run import execute
from orchestrator.run import program
from orchestrator.run.config import RunConfig
from orchestrator.run.program import PHASES, Run
from orchestrator.sim.run import simulate

# The phase functions of a run; each call is counted, by world.
PHASE_FUNCTIONS = ("go", "bootstrap", "client", "step", "heal", "final_reads", "corrupt",
                   "check", "wait_when", "perform")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    seen: Counter[str] = Counter()
    for name in PHASE_FUNCTIONS:
        fn = getattr(Run, name)

        def spy(self: Run, *a: Any, _fn: Any = fn, _name: str = name, **kw: Any) -> Any:
            seen[_name] += 1
            return _fn(self, *a, **kw)

        monkeypatch.setattr(Run, name, spy)
    return seen


def _plan() -> Plan:
    """A kill of a follower at 1 s for 1 s, a loss window, a follower's clock running
    twice as fast, the cutover at 1.5 s, and after the final reads the corrupt-entry
    fault."""
    return Plan(seed=7, families=("kill", "net", "corrupt", "clock"), scenario="swarm", steps=(
        Step(1, "enable", Target("leader"), When(at=1.5), params={"main": True}),
        Step(2, "kill", Target("follower"), When(at=1.0), duration=1.0),
        Step(3, "loss", Target("all"), When(at=0.5), duration=1.0, params={"p": 0.1}),
        Step(4, "corrupt-entry", Target("follower"), When("milestone", milestone="final"),
             origin="final", params={"pick": 5}),
        Step(5, "clock-skew", Target("follower"), When(at=0.8), duration=1.0,
             params={"factor": 2.0}),
    ))


def _windows(nemesis: list[dict[str, Any]], fault: str) -> list[tuple[str, Any]]:
    """A fault's start/stop entries: (f, its factor)."""
    return [(n["f"], (json.loads(n["detail"]) if isinstance(n["detail"], str)
                      else n["detail"]).get("factor")) for n in nemesis if n["fault"] == fault]


def _corrupt_outcome(nemesis: list[dict[str, Any]]) -> str:
    [stop] = [n for n in nemesis if n["fault"] == "corrupt-entry" and n["f"] == "stop"]
    detail = stop["detail"]
    return json.loads(detail)["outcome"] if isinstance(detail, str) else detail["outcome"]


@pytest.mark.real
@pytest.mark.sim
def test_one_plan_goes_through_the_same_phase_functions_in_both_worlds(
        tmp_path: Any, calls: Counter[str]) -> None:
    plan = _plan()
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan.to_dict()))
    cfg = RunConfig(seed=7, nodes=3, time_limit=4.0, rate=50, cutover_at=1.5,
                    results=str(tmp_path / "results"), plan_file=str(plan_file))
    sim = simulate(cfg, tmp_path / "sim", plan)
    in_sim = Counter(calls)
    calls.clear()
    real = execute(cfg, out=None, progress=None, handle_signals=False)
    in_real = Counter(calls)
    print("seed 7; sim:", sim.verdict, dict(in_sim), "real:", real.verdict, dict(in_real))
    assert sim.phases == real.phases == list(PHASES)
    # Every phase function ran in both worlds; a step and a client process per worker.
    for name in PHASE_FUNCTIONS:
        assert in_sim[name] >= 1 and in_real[name] >= 1, name
    # A step process per fault of the workload (the corrupt-entry fault is its own phase).
    assert in_sim["step"] == in_real["step"] == len(plan.steps) - 1
    assert in_sim["client"] == in_real["client"] == 2 * 3
    assert sim.verdict == "valid" and real.verdict == "valid", (sim.first, real.first)
    # The corrupt-entry fault did the same in both worlds: the victim restarted, replayed
    # the damaged entry and halted there (the simulator once took a node that had not yet
    # booted for one that had ended, and the fault never happened).
    from orchestrator import store
    with store.opened(cfg.results) as db:
        real_nemesis = store.nemesis_rows(db, real.run_id)
    for outcome in (_corrupt_outcome(sim.nemesis), _corrupt_outcome(real_nemesis)):
        assert outcome.startswith("halted: entry "), outcome
    # The clock skew is a window in both records, like every windowed fault.
    assert _windows(sim.nemesis, "clock-skew") == _windows(real_nemesis, "clock-skew") \
        == [("start", 2.0), ("stop", None)]


def test_the_simulator_imports_neither_zeromq_nor_the_process_machinery() -> None:
    code = ("import sys, orchestrator.sim.run, orchestrator.sim.batch, "
            "orchestrator.sim.shrink\n"
            "bad = sorted(m for m in sys.modules if m == 'zmq' or m.startswith('zmq.') or m in "
            "('orchestrator.real.cluster', 'orchestrator.real.client', 'orchestrator.real.switchboard', "
            "'orchestrator.real.world', 'orchestrator.real.run', 'orchestrator.real.watch', "
            "'node.server'))\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "", f"the simulator imported: {out}"


def test_the_client_rules_exist_once() -> None:
    """The run's clients (both worlds) and `Client.invoke` follow `invoke.invoke`."""
    import inspect

    from orchestrator.real import client

    src = inspect.getsource(client.Client.invoke)
    assert "_invoke(" in src and "definite" not in src
    assert "invoke(" in inspect.getsource(program.Run.client)
