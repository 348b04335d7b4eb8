"""The fault schedule of a run, as data: `make_plan(seed, ...)` is a pure function.

Two kinds of entries:

* `Fault`s at a time (seconds into the run), drawn from the seed: kill, pause,
  partition, net, rotate, corrupt. They never overlap each other, and they stay out of
  the *cutover window* around `cutover_at`, which belongs to the cutover sequence.
* `Trigger`s that fire on what the nodes report (their event logs) and on the run's own
  milestones: the cutover sequence. Around the cutover they are what makes the
  dangerous interleavings likely instead of lucky:

  - `snapshot-below-marker`: a follower X snapshots just before the cutover is
    requested, so X's newest snapshot excludes the marker;
  - `lag-across-cutover`: another follower Y is cut off from before the cutover until
    the others have compacted past it, so Y must catch up by InstallSnapshot;
  - `cutover-failover`: acks to the leader are slowed just before EnableRaftEnvelope and
    cut the moment the leader logs `marker-proposed` (the marker reaches the followers
    but they never learn it committed), for longer than the node's apply wait; then the
    old leader is isolated so a follower that holds the marker unapplied takes over;
  - `replay-leader`: after the cutover, rotate the DEK, kill X and restart it (it
    replays the marker from its old snapshot under a newer DEK), then make X lead by a
    star partition around it;
  - `restart-leader`: after the cutover, a node snapshots (above C), is killed and
    restarted, and leads by a star partition around it: a restarted node's in-memory
    state (its wrap, from the sidecar) is then what every new entry goes through;
  - `kill-leader-after-restart`: right after a restart, kill the leader, so a restarted
    node is likely to lead next.

What the executor observed (who led, which node was X) is recorded with each fault,
so "same seed" means "same plan", and the record says how it played out.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

# Families a user names with --nemesis (`all` = every one of them).
FAMILIES: tuple[str, ...] = ("kill", "pause", "partition", "net", "snapshot-replay",
                             "rotate", "corrupt")

KINDS: dict[str, tuple[str, ...]] = {
    "kill": ("kill-one", "kill-minority", "kill-leader"),
    "pause": ("pause-one", "pause-minority", "pause-leader"),
    "partition": ("partition-halves", "isolate-one", "isolate-leader",
                  "partition-majorities-ring", "partition-bridge"),
    "net": ("net-loss", "net-delay", "net-duplicate"),
}


class PlanError(ValueError):
    """A nemesis spec that cannot be planned (unknown family)."""


def parse_families(spec: str) -> tuple[str, ...]:
    """`none`, `all`, or a comma list of FAMILIES."""
    spec = spec.strip()
    if spec in ("", "none"):
        return ()
    if spec == "all":
        return FAMILIES
    out = []
    for name in spec.split(","):
        name = name.strip()
        if name not in FAMILIES:
            raise PlanError(f"unknown nemesis {name!r}; expected none, all, or a comma list "
                            f"of {', '.join(FAMILIES)}")
        if name not in out:
            out.append(name)
    return tuple(out)


@dataclass(frozen=True)
class Fault:
    """One fault at `at` seconds, lasting `duration` (0: instantaneous)."""

    id: int
    at: float
    kind: str
    family: str
    duration: float = 0.0
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Trigger:
    """A fault that fires on an observed event (`on`), with its parameters."""

    id: int
    on: str
    kind: str
    family: str
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    seed: int
    families: tuple[str, ...]
    faults: tuple[Fault, ...]
    triggers: tuple[Trigger, ...]
    window: tuple[float, float] | None  # the cutover window, seconds

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "families": list(self.families),
                "window": list(self.window) if self.window else None,
                "faults": [f.to_dict() for f in self.faults],
                "triggers": [t.to_dict() for t in self.triggers]}


# How long the cutover sequence owns the cluster, in seconds after `cutover_at`.
WINDOW_BEFORE = 2.0
WINDOW_AFTER = 16.0


def make_plan(seed: int, families: tuple[str, ...], *, time_limit: float,
              interval: float, cutover_at: float | None, nodes: int,
              enable_timeout: float = 2.0) -> Plan:
    """The schedule for one run; same arguments, same plan (no clock, no global RNG)."""
    rng = random.Random(f"nemesis:{seed}")
    fams = set(families)
    ids = iter(range(1, 10_000))
    window = None
    if cutover_at is not None:
        window = (max(0.0, cutover_at - WINDOW_BEFORE), cutover_at + WINDOW_AFTER)

    def in_window(t0: float, t1: float) -> bool:
        return window is not None and t0 < window[1] and t1 > window[0]

    faults: list[Fault] = []
    random_kinds = [k for fam in ("kill", "pause", "partition", "net") if fam in fams
                    for k in KINDS[fam]]
    t = min(2.0, time_limit / 4)
    while random_kinds and interval > 0:
        t += interval * rng.uniform(0.6, 1.4)
        kind = rng.choice(random_kinds)
        dur = round(interval * rng.uniform(0.4, 0.8), 3)
        if t + dur >= time_limit - 0.5:
            break
        if in_window(t, t + dur):
            continue
        fam = next(f for f, ks in KINDS.items() if kind in ks)
        params: dict[str, Any] = {}
        if kind == "net-loss":
            params = {"p": round(rng.uniform(0.05, 0.3), 3)}
        elif kind == "net-delay":
            ms = rng.choice([5, 20, 50, 100])
            params = {"ms": ms, "jitter": ms / 2}
        elif kind == "net-duplicate":
            params = {"p": round(rng.uniform(0.1, 0.5), 3)}
        faults.append(Fault(next(ids), round(t, 3), kind, fam, dur, params))
        t += dur
    if "rotate" in fams:
        # At least one rotation before the cutover and some after it.
        points = []
        if cutover_at is not None and cutover_at > 2:
            points.append(rng.uniform(0.5, max(0.6, cutover_at - WINDOW_BEFORE - 0.5)))
        lo = window[1] if window else 1.0
        while lo < time_limit - 1:
            lo += interval * rng.uniform(0.7, 1.5)
            if lo < time_limit - 1:
                points.append(lo)
        for p in points:
            faults.append(Fault(next(ids), round(p, 3), "rotate", "rotate"))
    if "corrupt" in fams and cutover_at is not None:
        # At the very end (after the final reads): damage one replica's copy of the last
        # user entry above C, restart it and let it replay. A correct replica halts at
        # that index (loudly: expected, the checker excuses exactly that); a replica that
        # skips it diverges silently, which I4 sees.
        faults.append(Fault(next(ids), round(time_limit, 3), "corrupt-entry", "corrupt",
                            params={"pick": rng.randrange(1 << 30)}))
    faults.sort(key=lambda f: (f.at, f.id))

    triggers: list[Trigger] = []
    if cutover_at is not None and nodes >= 3:
        pick = rng.randrange(1 << 30)  # which followers play X and Y, at run time
        if "snapshot-replay" in fams:
            triggers.append(Trigger(next(ids), "before-cutover", "snapshot-below-marker",
                                    "snapshot-replay", {"pick": pick, "lead": cutover_at - 1.0}))
            if nodes >= 5:
                triggers.append(Trigger(next(ids), "before-cutover", "lag-across-cutover",
                                        "snapshot-replay", {"pick": pick,
                                                            "lead": cutover_at - 0.8}))
        if "partition" in fams:
            triggers.append(Trigger(next(ids), "marker-proposed", "cutover-failover",
                                    "partition", {"slow_ms": 200,
                                                  "ack_loss": round(enable_timeout + 0.5, 3),
                                                  "isolate": 2.5}))
        if "snapshot-replay" in fams:
            triggers.append(Trigger(next(ids), "cutover-settled", "replay-leader",
                                    "snapshot-replay", {"lead_for": 3.0}))
        if "kill" in fams:
            triggers.append(Trigger(next(ids), "cutover-settled", "restart-leader", "kill",
                                    {"pick": rng.randrange(1 << 30), "lead_for": 2.5}))
            triggers.append(Trigger(next(ids), "restart", "kill-leader-after-restart",
                                    "kill", {"once": True, "delay": 0.3}))
    return Plan(seed, tuple(families), tuple(faults), tuple(triggers), window)
