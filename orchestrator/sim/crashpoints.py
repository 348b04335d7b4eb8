"""Crash-consistency exploration (ALICE, CrashMonkey): a node crashed at one chosen
durability boundary of its run, and the run goes on.

Why systematic and not only BUGGIFY's dice: a mistake in durability ordering shows only
for a crash inside one narrow window (a sidecar written but not renamed, a vote sent
before its fsync, a torn tail that the second restart trusts). BUGGIFY fires with a small
probability per pass and lands on the busy WAL boundaries; the rare boundaries (a
snapshot's or sidecar's temp file, a directory sync) are where recovery code is least
exercised. Here a base run counts each node's boundaries, every node's own sequence of
the node's storage BUGGIFY points (`node/buggify.py`: `wal.*`, `file.*`, `fsm.*`, the two
`host.sent-*`), and picks a few by kind of point first, so a rare kind weighs as much as
the WAL's thousands. Each pick is re-simulated: the simulator is deterministic, and the
counting hook has no effect of its own, so the re-run is the base run up to the chosen
boundary, where the node dies (a power loss that loses what was not synced, one that
tears it, or a process crash). Its supervisor restarts it; with `again`, a second power
loss strikes `again` boundaries later, so a torn tail is read by a second recovery after
new records were written behind it. The run's checkers judge what follows: storage must
recover a state that some durable prefix justifies (or refuse by name: the `crashes`
checker counts a refusal after an honest power loss, since nothing was damaged), and
must never apply a different history.

A crash point is data, in the run's config (`RunConfig.crash_point`): stored with the
run, replayed by `cutover sim --replay`. The real world has no such hook (a real disk's
boundary count differs between runs); `cutover run` refuses a config that has one.
"""
from __future__ import annotations

import random
from typing import Any

from node.buggify import OFF, Buggify, BuggifyCrash
from node.buggify import POINTS as BUGGIFY_POINTS
from node.events import EventKind
from node.raft_types import Role
from orchestrator.run.config import CRASH_BOUNDARIES as BOUNDARIES
from orchestrator.run.config import CRASH_DEATHS as DEATHS

__all__ = ["BOUNDARIES", "CONTEXTS", "DEATHS", "CrashPoint", "install", "pick_crash_points",
           "point_of"]

_INDEX = {p: i for i, p in enumerate(BOUNDARIES)}
# What the node was doing at a boundary, so that a pick can weigh a rare moment like a
# common one: recovering (its process starting: no Raft yet), an election (its term
# moved since its last boundary, or it campaigns), or steady work. A trace byte is
# point + 16 * context.
CONTEXTS = ("steady", "election", "boot")
_STRIDE = 16
assert len(BOUNDARIES) < _STRIDE


def _context(host: Any, last_term: int) -> tuple[int, int]:
    """(context, term) of a node at a boundary, from its host (None while starting)."""
    if host is None:
        return 2, last_term
    raft = host.raft
    term = raft.term
    electing = term != last_term or raft.role in (Role.CANDIDATE, Role.PRE_CANDIDATE)
    return (1 if electing else 0), term


class CrashPoint(Buggify):
    """A node's hook that counts its durability boundaries across its restarts and, when
    armed, kills it at the `k`-th (and, with `again`, once more that many later). It
    wraps the node's own BUGGIFY hook (`OFF` or the swarm's), which sees every point
    first, so a seed with both plays the swarm's draws unchanged. `host()` gives the
    node's host (None while it starts), for the context of each boundary."""

    def __init__(self, inner: Buggify, add_event: Any, nid: str, host: Any,
                 cp: dict[str, Any] | None = None, seed: int = 0,
                 points: frozenset[str] | None = None) -> None:
        self.on = True
        self.points = points  # the boundaries that count (None: all)
        self.inner = inner
        self.add_event = add_event
        self.nid = nid
        self.host = host
        self.count = 0
        self.term = 0
        self.trace = bytearray()  # each boundary's point + 16 * its context, in order
        self.cp = cp
        self.targets = [] if cp is None else [cp["k"]]
        if cp is not None and cp.get("again"):
            self.targets.append(cp["k"] + cp["again"])
        self.rng = random.Random(f"crashpoint:{seed}:{nid}")
        self.fired: list[dict[str, Any]] = []

    @property
    def delay_us(self) -> int:  # the swarm's `delay` (read by the simulator's send)
        return getattr(self.inner, "delay_us", 0)

    @delay_us.setter
    def delay_us(self, v: int) -> None:
        if hasattr(self.inner, "delay_us"):
            self.inner.delay_us = v  # type: ignore[attr-defined]

    def hit(self, point: str) -> str | None:
        out = self.inner.hit(point) if self.inner.on else None
        i = _INDEX.get(point)
        if i is None or (self.points is not None and point not in self.points):
            return out
        self.count += 1
        ctx, self.term = _context(self.host(), self.term)
        self.trace.append(i + _STRIDE * ctx)
        if not self.targets or self.count != self.targets[0]:
            return out
        self.targets.pop(0)
        assert self.cp is not None
        # The first death is the chosen one; the second is a power loss (it must find
        # what the first recovery wrote behind a torn tail), torn like the first if it was.
        action = self.cp["action"] if not self.fired else (
            "tear" if self.cp["action"] == "tear" else "crash")
        self.fired.append({"point": point, "k": self.count, "action": action})
        self.add_event(self.nid, EventKind.BUGGIFY,
                       {"point": point, "action": action, "crash_point": self.count,
                        "context": CONTEXTS[ctx],
                        **({"expected": self.cp["point"]} if "point" in self.cp
                           and len(self.fired) == 1 else {})})
        raise BuggifyCrash(point, action)


# How to die at each kind of boundary: a write not yet synced is torn more often than
# not (that is where a torn tail comes from); a send before the persist is a power loss
# or a process crash (nothing is half-written there).
_ACTIONS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "wal.written": (DEATHS, (3, 5, 2)),
    "file.written": (DEATHS, (3, 5, 2)),
    "fsm.written": (DEATHS, (3, 5, 2)),
    "host.sent-unsynced": (("crash", "kill"), (3, 2)),
}
_OTHER = (DEATHS, (6, 2, 2))


def point_of(b: int) -> str:
    """The boundary of a trace byte."""
    return BOUNDARIES[b % _STRIDE]


def pick_crash_points(seed: int, traces: dict[str, bytes], n: int) -> list[dict[str, Any]]:
    """`n` crash points for a seed's re-runs, from its base run's boundary traces: a node
    (by how many boundaries it crossed), a kind of moment (a point in a context, uniform
    among the kinds that node crossed, so the rare ones count as much as the WAL's
    thousands of steady syncs), one of its occurrences, how to die there, and whether a
    second power loss follows (a few to a few hundred boundaries later: after the
    recovery has written behind what the first one left)."""
    rng = random.Random(f"crash-points:{seed}")
    nodes = sorted(nid for nid, t in traces.items() if t)
    if not nodes or n <= 0:
        return []
    where: dict[str, dict[int, list[int]]] = {}
    for nid in nodes:
        by_kind: dict[int, list[int]] = {}
        for k, b in enumerate(traces[nid], start=1):
            by_kind.setdefault(b, []).append(k)
        where[nid] = by_kind
    weights = [len(traces[nid]) for nid in nodes]
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    for _ in range(n * 4):
        if len(out) >= n:
            break
        nid = rng.choices(nodes, weights)[0]
        kinds = sorted(where[nid])
        b = rng.choice(kinds)
        k = rng.choice(where[nid][b])
        if (nid, k) in seen:
            continue
        seen.add((nid, k))
        point = point_of(b)
        actions, w = _ACTIONS.get(point, _OTHER)
        action = rng.choices(actions, w)[0]
        again = 0 if rng.random() < 0.5 else int(10 ** rng.uniform(0.7, 2.7))
        out.append({"node": nid, "k": k, "action": action, "again": again, "point": point})
    return out


def install(nodes: dict[str, Any], add_event: Any, cp: dict[str, Any] | None,
            seed: int, points: tuple[str, ...] = BUGGIFY_POINTS) -> None:
    """Every node's hook wrapped in a counting `CrashPoint` (the same hook on every node,
    in the base run and in its re-runs, so that both play alike); the one of `cp`'s node
    armed. Only the boundaries among `points` count: a config stored before a point
    existed (`RunConfig.buggify_points`) counts as it did."""
    for nid, node in nodes.items():
        mine = cp if cp is not None and cp["node"] == nid else None
        node.bug = CrashPoint(node.bug if node.bug is not None else OFF, add_event, nid,
                              lambda n=node: n.host, mine, seed, frozenset(points))
