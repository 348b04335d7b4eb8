"""BUGGIFY in the simulator: which of the node's points (`node/buggify.py`) a seed arms,
and the hook a simulated node carries.

Swarm testing: each seed arms its own random subset of the points, each with one legal
action and its own probability, so that over many seeds some run with many crashes at
one boundary and none elsewhere, which a uniform low rate would never produce. The draw
uses its own `random.Random` stream: with BUGGIFY off a seed simulates exactly as it
did before BUGGIFY existed.
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING

from node.buggify import ACTIONS, POINTS, Buggify, BuggifyCrash
from node.events import EventKind

if TYPE_CHECKING:
    from orchestrator.sim.cluster import SimCluster

__all__ = ["MAX_CRASHES", "SimBuggify", "draw_points"]

# Crashes a node may take at BUGGIFY points in one run: enough to hit a boundary more
# than once, few enough that the run still makes progress and is not vacuous.
MAX_CRASHES = 3
_DEATHS = frozenset({"crash", "tear", "kill"})


def draw_points(seed: int, points: tuple[str, ...] = POINTS
                ) -> dict[str, tuple[str, float]]:
    """{point: (action, probability)} for the points `seed` arms (about half of
    `points`, a prefix of `POINTS`: new points go at the end, so an older config's
    draw is unchanged). A death is rare per pass (the WAL syncs hundreds of times a
    second); a delay, a duplicate or an early tick may be common."""
    rng = random.Random(f"buggify:{seed}")
    armed: dict[str, tuple[str, float]] = {}
    for p in points:
        if rng.random() < 0.5:
            continue
        action = rng.choice(ACTIONS[p])
        lo, hi = (-4.0, -2.0) if action in _DEATHS else (-3.0, -1.0)
        if p.startswith("raft."):
            lo, hi = -2.0, -0.3  # a legal path of the core's own: often, in some seeds
        elif p == "host.sent-vote":
            lo, hi = -1.0, -0.2  # a few votes per election: a death must be likely there
        armed[p] = (action, 10 ** rng.uniform(lo, hi))
    return armed


class SimBuggify(Buggify):
    """A simulated node's hook. It records the first time the node reaches each point
    and every time one fires (`buggify` events, for coverage), and performs the action:
    a death is raised (`BuggifyCrash`, caught by `SimCluster`), a delay is left for the
    switchboard (`delay_us`), a duplicate or an early tick is returned to the call site."""

    def __init__(self, cl: SimCluster, nid: str, armed: dict[str, tuple[str, float]],
                 seed: int) -> None:
        self.on = True
        self.cl = cl
        self.nid = nid
        self.armed = armed
        self.rng = random.Random(f"buggify:{seed}:{nid}")
        self.reached: set[str] = set()
        self.fired: dict[str, int] = {}
        self.deaths = 0
        self.delay_us = 0

    def hit(self, point: str) -> str | None:
        if point not in self.reached:
            self.reached.add(point)
            self.cl.add_event(self.nid, EventKind.BUGGIFY, {"point": point,
                                                            "action": "reached"})
        arm = self.armed.get(point)
        if arm is None or self.rng.random() >= arm[1]:
            return None
        action = arm[0]
        if action in _DEATHS:
            if self.deaths >= MAX_CRASHES:
                return None
            self.deaths += 1
        self.fired[point] = self.fired.get(point, 0) + 1
        self.cl.add_event(self.nid, EventKind.BUGGIFY, {"point": point, "action": action})
        if action in _DEATHS:
            raise BuggifyCrash(point, action)
        if action == "delay":
            self.delay_us += self.rng.randint(1_000, 50_000)
            return None
        return action
