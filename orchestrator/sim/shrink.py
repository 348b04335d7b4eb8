"""Shrinking a failing simulated run to a minimal one that fails the same way.

Delta debugging (Zeller's ddmin) over the plan's fault steps first (the operator's
EnableRaftEnvelope at `--cutover-at` stays: it is the run's purpose, not a fault), then
the workload's length (shorter time limits), then the node count (5 -> 3). A candidate
is kept when its simulation fails with the same checker and invariant. Each step
draws its own randomness from its id, so removing one step does not reshuffle the
others; the network's draws do change, which is why every candidate is simulated
again rather than assumed.

A `deadline` (a `time.monotonic()` value) bounds it: `cutover sim --budget` and
`cutover hunt --budget` count shrinking inside their budget. At the deadline the
simulations in flight are abandoned and the smallest failing plan found so far is the
result (`Shrunk.complete` is False then); it still fails the same way, it is only not
minimal.

The result is a plan file (`{"format": "cutover-plan", "config", "plan", ...}`) that
`cutover sim --replay FILE` reproduces exactly and `cutover run --plan FILE` plays on real
processes.
"""
from __future__ import annotations

import concurrent.futures as cf
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from nemesis.plan import Plan
from nemesis.primitives import Step
from orchestrator.lifeline import worker_pool
from orchestrator.run.config import RunConfig
from orchestrator.sim.run import simulate

PLAN_FORMAT = "cutover-plan"


def _fails(cfg_doc: dict[str, Any], plan_doc: dict[str, Any], failing: str) -> bool:
    cfg = RunConfig.from_dict(cfg_doc)
    with tempfile.TemporaryDirectory(prefix="cutover-shrink-") as tmp:
        try:
            o = simulate(cfg, tmp, Plan.from_dict(plan_doc))
        except Exception:  # noqa: BLE001 - a candidate that breaks the harness is not kept
            return False
    return o.failing == failing


@dataclass
class Shrunk:
    config: RunConfig
    plan: Plan
    failing: str
    simulations: int
    steps_before: int
    complete: bool = True  # False: stopped at the deadline or the simulation cap

    def to_file_doc(self, seed_from: int) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "failing": self.failing, "shrunk_from_seed": seed_from,
                "complete": self.complete,
                "config": {k: v for k, v in asdict(self.config).items() if k != "plan_file"},
                "plan": self.plan.to_dict(), "faults": self.plan.describe()}


def _with_steps(plan: Plan, steps: list[Step]) -> Plan:
    return replace(plan, steps=tuple(sorted(steps, key=lambda s: s.id)))


class _OutOfTime(Exception):
    """The deadline passed: leave the pool (its workers are ended, not drained)."""


def shrink(cfg: RunConfig, plan: Plan, failing: str, *, workers: int = 2,
           max_simulations: int = 400,
           log: Callable[[str], None] | None = None,
           deadline: float | None = None) -> Shrunk:
    """A minimal (cfg, plan) that still fails with `failing` (see the module docstring);
    by `deadline` (monotonic seconds), the smallest found so far."""
    count = 0
    say = log or (lambda _m: None)
    best: list[tuple[RunConfig, Plan]] = [(cfg, plan)]
    before = len([s for s in plan.steps if not (s.action == "enable" and s.params.get("main"))])
    complete = True
    try:
        # Workers that die with us (SIGKILL included), killed at once on Ctrl-C/SIGTERM
        # and when the deadline passes.
        with worker_pool(workers) as ex:

            def test_many(cands: list[tuple[RunConfig, Plan]]) -> int | None:
                """Index of the first candidate that still fails (simulated together;
                the answer is known once every earlier one has said no)."""
                nonlocal count, complete
                if count >= max_simulations:
                    complete = False
                    return None
                if deadline is not None and time.monotonic() >= deadline:
                    raise _OutOfTime
                cands = cands[: max_simulations - count]
                count += len(cands)
                futs = [ex.submit(_fails, asdict(c), p.to_dict(), failing) for c, p in cands]
                for i, f in enumerate(futs):
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    try:
                        ok = f.result(timeout=left)
                    except cf.TimeoutError:
                        raise _OutOfTime from None
                    if ok:
                        for g in futs[i + 1:]:
                            g.cancel()
                        return i
                return None

            def more() -> bool:
                """Room for another simulation; when there is none, the result is only
                the smallest so far."""
                nonlocal complete
                if count < max_simulations:
                    return True
                complete = False
                return False

            _ddmin(cfg, plan, test_many, best, say, more)
    except _OutOfTime:
        complete = False
        say(f"shrink: out of time after {count} simulations; keeping the smallest so far")
    cfg, plan = best[-1]
    return Shrunk(cfg, plan, failing, count, before, complete)


def _ddmin(cfg: RunConfig, plan: Plan,
           test_many: Callable[[list[tuple[RunConfig, Plan]]], int | None],
           best: list[tuple[RunConfig, Plan]], say: Callable[[str], None],
           more: Callable[[], bool]) -> None:
    """The three passes; every smaller (cfg, plan) that still fails is appended to
    `best` as soon as it is known, so a deadline keeps the latest."""
    keep = [s for s in plan.steps if s.action == "enable" and s.params.get("main")]
    steps = [s for s in plan.steps if s not in keep]
    # ---- ddmin over the fault steps
    n = 2
    while len(steps) >= 2 and more():
        size = max(1, len(steps) // n)
        chunks = [steps[i:i + size] for i in range(0, len(steps), size)]
        cands: list[tuple[RunConfig, Plan]] = []
        for ch in chunks:  # a chunk alone, then everything but a chunk
            cands.append((cfg, _with_steps(plan, keep + ch)))
        for ch in chunks:
            rest = [s for s in steps if s not in ch]
            cands.append((cfg, _with_steps(plan, keep + rest)))
        hit = test_many(cands)
        if hit is None:
            if size == 1:
                break
            n = min(len(steps), n * 2)
            continue
        if hit < len(chunks):
            steps, n = chunks[hit], 2
        else:
            steps = [s for s in steps if s not in chunks[hit - len(chunks)]]
            n = max(n - 1, 2)
        best.append((cfg, _with_steps(plan, keep + steps)))
        say(f"shrink: {len(steps)} fault(s) left")
    if len(steps) == 1 and more():
        if test_many([(cfg, _with_steps(plan, keep))]) == 0:
            steps = []
            best.append((cfg, _with_steps(plan, keep)))
    plan = _with_steps(plan, keep + steps)
    # ---- the workload's length
    limit = cfg.time_limit
    floor = max(5.0, (cfg.cutover_at or 0) + 3.0,
                max((s.when.at + s.duration + 1.0 for s in plan.steps
                     if s.when.on == "time"), default=0.0))
    while limit * 0.6 >= floor and more():
        c2 = replace(cfg, time_limit=round(limit * 0.6, 1))
        if test_many([(c2, plan)]) is None:
            break
        cfg, limit = c2, c2.time_limit
        best.append((cfg, plan))
        say(f"shrink: time limit {limit:g} s")
    # ---- the node count
    if cfg.nodes > 3 and more():
        c3 = replace(cfg, nodes=3, concurrency=None)
        if test_many([(c3, plan)]) == 0:
            best.append((c3, plan))
            say("shrink: 3 nodes")
