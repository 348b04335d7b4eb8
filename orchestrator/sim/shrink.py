"""Shrinking a failing simulated run to a minimal one that fails the same way.

Delta debugging (Zeller's ddmin) over the plan's fault steps first (the operator's
EnableRaftEnvelope at `--cutover-at` stays: it is the run's purpose, not a fault), then
the workload's length (shorter time limits), then the node count (5 -> 3). A candidate
is kept when its simulation fails with the same checker and invariant. Each step
draws its own randomness from its id, so removing one step does not reshuffle the
others; the network's draws do change, which is why every candidate is simulated
again rather than assumed.

The result is a plan file (`{"format": "cutover-plan", "config", "plan", ...}`) that
`cutover sim --replay FILE` reproduces exactly and `cutover run --plan FILE` plays on real
processes.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from nemesis.plan import Plan
from nemesis.primitives import Step
from orchestrator.config import RunConfig
from orchestrator.lifeline import worker_pool

from .run import simulate

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

    def to_file_doc(self, seed_from: int) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "failing": self.failing, "shrunk_from_seed": seed_from,
                "config": {k: v for k, v in asdict(self.config).items() if k != "plan_file"},
                "plan": self.plan.to_dict(), "faults": self.plan.describe()}


def _with_steps(plan: Plan, steps: list[Step]) -> Plan:
    return replace(plan, steps=tuple(sorted(steps, key=lambda s: s.id)))


def shrink(cfg: RunConfig, plan: Plan, failing: str, *, workers: int = 2,
           max_simulations: int = 400,
           log: Callable[[str], None] | None = None) -> Shrunk:
    """A minimal (cfg, plan) that still fails with `failing` (see the module docstring)."""
    count = 0
    say = log or (lambda _m: None)
    # Workers that die with us (SIGKILL included), killed at once on Ctrl-C/SIGTERM.
    with worker_pool(workers) as ex:

        def test_many(cands: list[tuple[RunConfig, Plan]]) -> int | None:
            """Index of the first candidate that still fails (all simulated at once)."""
            nonlocal count
            if count >= max_simulations:
                return None
            cands = cands[: max_simulations - count]
            count += len(cands)
            futs = [ex.submit(_fails, asdict(c), p.to_dict(), failing) for c, p in cands]
            results = [f.result() for f in futs]
            return next((i for i, ok in enumerate(results) if ok), None)

        keep = [s for s in plan.steps if s.action == "enable" and s.params.get("main")]
        steps = [s for s in plan.steps if s not in keep]
        before = len(steps)
        # ---- ddmin over the fault steps
        n = 2
        while len(steps) >= 2 and count < max_simulations:
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
            say(f"shrink: {len(steps)} fault(s) left after {count} simulations")
        if len(steps) == 1 and count < max_simulations:
            if test_many([(cfg, _with_steps(plan, keep))]) == 0:
                steps = []
        plan = _with_steps(plan, keep + steps)
        # ---- the workload's length
        limit = cfg.time_limit
        floor = max(5.0, (cfg.cutover_at or 0) + 3.0,
                    max((s.when.at + s.duration + 1.0 for s in plan.steps
                         if s.when.on == "time"), default=0.0))
        while limit * 0.6 >= floor and count < max_simulations:
            c2 = replace(cfg, time_limit=round(limit * 0.6, 1))
            if test_many([(c2, plan)]) is None:
                break
            cfg, limit = c2, c2.time_limit
            say(f"shrink: time limit {limit:g} s")
        # ---- the node count
        if cfg.nodes > 3 and count < max_simulations:
            c3 = replace(cfg, nodes=3, concurrency=None)
            if test_many([(c3, plan)]) == 0:
                cfg = c3
                say("shrink: 3 nodes")
    return Shrunk(cfg, plan, failing, count, before)
