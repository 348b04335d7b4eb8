"""The fault schedule of a run, as data: `make_plan(seed, ...)` is a pure function of the
seed and the run's shape (no clock, no global randomness), stored with the run and
replayable.

Scenarios (`--scenario`):

* `swarm` (the default): the generative schedule below, and on some seeds the scripted
  cutover sequence on top of it.
* `generative`: swarm testing (Groce et al.). Each seed enables its own random subset of
  the fault primitives (`nemesis.primitives`) at its own rates and composes them: timed
  faults anywhere in the run (the cutover window included, overlapping each other or
  not), faults triggered by node events (a marker proposed, a leader elected, a barrier
  up, a snapshot installed, ...) after a random delay, follow-ups chained to them,
  operator calls (EnableRaftEnvelope and RotateDEK, retried as an operator would, a
  rotation sometimes racing the marker), leader churn, and node knobs (how often nodes
  snapshot, how much an append message carries). Some seeds are quiet around the
  cutover, others dense.
* `sequence`: the scripted cutover sequence written while looking at the bug switches
  (snapshot below the marker, a follower lagging across the cutover, acks cut when the
  marker is proposed then a failover, a replayed marker under a newer DEK leading, a
  restarted node leading, the leader killed after a restart), plus non-overlapping
  timed faults outside the cutover window: the previous default, kept so that its
  detection table can still be measured.
* `churn`: leaders isolated or killed right after they are elected, one entry per
  append message: the shape of Raft's Figure 8.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .faults import KINDS
from .primitives import (
    ACTIONS,
    FAMILIES,
    FAMILY_ALIASES,
    OPT_IN_FAMILIES,
    TRIGGER_EVENTS,
    Step,
    Target,
    When,
    integer,
    show,
    text,
)

SCENARIOS = ("swarm", "generative", "sequence", "churn")
DEFAULT_SCENARIO = "swarm"

# Knobs a seed varies (what a node is started with).
SNAPSHOT_EVERY = (25, 50, 100, 400, 2000, 5000)
DEFAULT_MSG_BYTES = 64 * 1024
DEFAULT_INFLIGHT = 64

# How long the scripted sequence owns the cluster, in seconds after `cutover_at`
# (the `sequence` scenario keeps its timed faults out of it).
WINDOW_BEFORE = 2.0
WINDOW_AFTER = 16.0


class PlanError(ValueError):
    """A nemesis spec that cannot be planned (unknown family or scenario)."""


# What a stored plan may hold: `Plan.to_dict`'s keys, the knobs a plan draws (each a
# node option: a count of entries, bytes or messages), and at most this many steps (a
# real run starts a thread per step).
PLAN_KEYS = ("seed", "families", "scenario", "knobs", "features", "steps")
PLAN_FORMAT = "cutover-plan"  # a plan file's `format` (`cutover sim`'s shrunk plans)
KNOBS = {"snapshot_every": 10**9, "max_msg_bytes": 1 << 30, "max_inflight": 1 << 20}
MAX_STEPS = 100_000
MAX_SEED = 2**63 - 1


def parse_families(spec: str) -> tuple[str, ...]:
    """`none`, `all`, or a comma list of families (old names accepted; `all` in a list
    stands for its families: `all,clock` adds the opt-in `clock` to them)."""
    spec = spec.strip()
    if spec in ("", "none"):
        return ()
    if spec == "all":
        return FAMILIES
    out: list[str] = []
    for name in spec.split(","):
        name = FAMILY_ALIASES.get(name.strip(), name.strip())
        if name not in FAMILIES + OPT_IN_FAMILIES + ("all",):
            raise PlanError(f"unknown nemesis {name!r}; expected none, all, or a comma list "
                            f"of {', '.join(FAMILIES + OPT_IN_FAMILIES)} (all among them)")
        for n in FAMILIES if name == "all" else (name,):
            if n not in out:
                out.append(n)
    return tuple(out)


def check_scenario(name: str) -> str:
    if name not in SCENARIOS:
        raise PlanError(f"unknown scenario {name!r}; expected one of {', '.join(SCENARIOS)}")
    return name


@dataclass(frozen=True)
class Plan:
    """Everything a run's nemesis does, decided before the run starts."""

    seed: int
    families: tuple[str, ...]
    scenario: str
    steps: tuple[Step, ...]
    knobs: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)
    features: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "families": list(self.families), "scenario": self.scenario,
                "knobs": dict(self.knobs), "features": dict(self.features),
                "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, d: Any) -> Plan:
        """A stored plan (`config.json`'s `plan`, or a plan file); ValueError with one
        line naming what is wrong if it is not one. Read in full before anything runs:
        a field of the wrong type, a number out of range, a step that names a step or a
        bound target the plan does not have are refused here, not met by a thread of
        the nemesis in the middle of a run."""
        try:
            return cls._from_dict(d)
        except ValueError as e:
            raise ValueError(f"not a nemesis plan: {e}") from None

    @classmethod
    def _from_dict(cls, d: Any) -> Plan:
        if not isinstance(d, dict):
            raise ValueError(f"expected an object, got {show(d)}")
        unknown = [k for k in d if k not in PLAN_KEYS]
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(show(k) for k in unknown)}")
        steps = d.get("steps")
        if not isinstance(steps, list):
            raise ValueError("`steps` must be a list of steps" if "steps" in d
                             else "no `steps`")
        if len(steps) > MAX_STEPS:
            raise ValueError(f"{len(steps)} steps; at most {MAX_STEPS}")
        families = d.get("families") or []
        if not isinstance(families, list) or not all(isinstance(f, str) for f in families):
            raise ValueError(f"`families` must be a list of names, got {show(families)}")
        knobs = d.get("knobs") or {}
        if not isinstance(knobs, dict):
            raise ValueError(f"`knobs` must be an object, got {show(knobs)}")
        for k, v in knobs.items():
            if k not in KNOBS:
                raise ValueError(f"unknown knob {show(k)}; known: {', '.join(KNOBS)}")
            integer(f"knobs.{k}", v, 1, KNOBS[k])
        features = d.get("features") or {}
        if not isinstance(features, dict):
            raise ValueError(f"`features` must be an object, got {show(features)}")
        out = []
        for i, sd in enumerate(steps):
            try:
                out.append(Step.from_dict(sd))
            except ValueError as e:
                sid = sd.get("id") if isinstance(sd, dict) else None
                raise ValueError(f"step {i + 1}" + (f" (id {show(sid)})" if sid is not None
                                                    else "") + f": {e}") from None
        seed = d.get("seed")
        plan = cls(seed=integer("seed", 0 if seed is None else seed, -MAX_SEED - 1, MAX_SEED),
                   families=parse_families(",".join(families)),
                   scenario=check_scenario(text("scenario", d.get("scenario")
                                                or DEFAULT_SCENARIO)),
                   steps=tuple(out), knobs=dict(knobs), features=dict(features))
        plan.check()
        return plan

    def check(self) -> None:
        """ValueError unless the steps make one schedule: ids unique, every `after`
        trigger naming a step of the plan (and no step waiting on itself, even through
        others), every bound target and event filter naming a choice some step binds.
        (An `until` after a step the plan lacks is allowed: the fault is held to the end
        of the run; the shrinker leaves those.)"""
        ids: dict[int, Step] = {}
        for st in self.steps:
            if st.id in ids:
                raise ValueError(f"two steps have id {st.id}")
            ids[st.id] = st
        bound = {st.target.bind for st in self.steps if st.target.bind}
        for st in self.steps:
            if st.when.on == "after" and st.when.step not in ids:
                raise ValueError(f"step {st.id} runs after step {st.when.step}, which the "
                                 f"plan does not have")
            if st.target.role == "bound" and st.target.ref not in bound:
                raise ValueError(f"step {st.id} targets {show(st.target.ref)}, which no "
                                 f"step binds")
            for w in (st.when, st.until):
                if w is not None and w.node is not None and w.node not in bound:
                    raise ValueError(f"step {st.id} waits for an event on "
                                     f"{show(w.node)}, which no step binds")
        done: set[int] = set()  # a chain of `after` triggers that comes back never starts
        for st in self.steps:
            path: set[int] = set()
            cur = st
            while cur.id not in done:
                if cur.id in path:
                    raise ValueError(f"step {cur.id} waits on itself through `after` "
                                     f"triggers")
                path.add(cur.id)
                if cur.when.on != "after":
                    break
                cur = ids[cur.when.step]
            done |= path

    def step(self, action: str) -> Step | None:
        return next((s for s in self.steps if s.action == action), None)

    def describe(self) -> list[str]:
        """The plan as short lines, for people."""
        knobs = ", ".join(f"{k}={v}" for k, v in sorted(self.knobs.items()))
        return [f"scenario {self.scenario}; knobs: {knobs or '-'}"] + [
            s.describe() for s in sorted(self.steps, key=_order)]


def _order(s: Step) -> tuple[int, float, int]:
    rank = {"time": 0, "milestone": 1, "event": 2, "after": 3}[s.when.on]
    return rank, s.when.at, s.id


def make_plan(seed: int, families: tuple[str, ...], *, time_limit: float,
              interval: float, cutover_at: float | None, nodes: int,
              enable_timeout: float = 2.0, scenario: str = DEFAULT_SCENARIO) -> Plan:
    """The schedule for one run; same arguments, same plan."""
    check_scenario(scenario)
    fams = tuple(parse_families(",".join(families)))
    rng = random.Random(f"nemesis:{seed}:{scenario}")
    ids = _ids()
    b = _Builder(rng, set(fams), time_limit, interval, cutover_at, nodes, ids)
    knobs = b.knobs(churn=scenario == "churn")
    if scenario == "sequence":
        b.legacy_timed()
        b.legacy_rotations()
        b.sequence(enable_timeout)
    elif scenario == "churn":
        b.churn(force=True)
        b.operator()
    else:
        b.generative()
        b.operator()
        if scenario == "swarm" and rng.random() < 0.5:
            b.sequence(enable_timeout)
    b.races()
    b.enable_at_cutover(retry_same=scenario != "sequence")
    b.corrupt()
    # Drawn last, from a stream of its own: every earlier step of every seed's plan is
    # what it was before this draw existed.
    b.follow_up(random.Random(f"nemesis:{seed}:{scenario}:follow-up"))
    return Plan(seed, fams, scenario, tuple(b.steps), knobs, b.features)


def _ids() -> Iterator[int]:
    n = 0
    while True:
        n += 1
        yield n


# Target roles that make sense for each action (the generator draws from these), in the
# order of `KINDS`: the generative phases' pool of actions is drawn in it.
_ROLES: dict[str, tuple[str, ...]] = {k.name: k.roles for k in KINDS.values() if k.roles}
_EVENT_WEIGHTS = {"marker-proposed": 3, "marker-committed": 3, "marker-applied": 2,
                  "leader-elected": 3, "snapshot-installed": 1, "snapshot-taken": 1,
                  "barrier-up": 2, "apply-wait-timeout": 2, "restarted": 2,
                  "rotation-applied": 1, "log-truncated": 1}
_CUTOVER_EVENTS = {"marker-proposed", "marker-committed", "marker-applied", "barrier-up",
                   "apply-wait-timeout"}
_DELAYS = (0.0, 0.002, 0.01, 0.05, 0.2, 0.5, 1.5)
_DISRUPTIVE = {k.name for k in KINDS.values() if k.disruptive}
_DURATIONS = (0.3, 0.8, 1.5, 3.0, 5.0)


class _Builder:
    """Accumulates steps; every random choice goes through the plan's own rng."""

    def __init__(self, rng: random.Random, fams: set[str], time_limit: float,
                 interval: float, cutover_at: float | None, nodes: int,
                 ids: Iterator[int]) -> None:
        self.rng = rng
        self.fams = fams
        self.time_limit = time_limit
        self.interval = max(interval, 0.1)
        self.cutover_at = cutover_at
        self.nodes = nodes
        self.ids = ids
        self.steps: list[Step] = []
        self.features: dict[str, Any] = {}

    # ------------------------------------------------------------------ helpers

    def add(self, action: str, target: Target, when: When, *, delay: float = 0.0,
            duration: float = 0.0, until: When | None = None, origin: str = "",
            **params: Any) -> Step:
        s = Step(next(self.ids), action, target, when, round(delay, 3), round(duration, 3),
                 until, params, origin)
        self.steps.append(s)
        return s

    def allowed(self, *actions: str) -> bool:
        return all(ACTIONS[a][0] in self.fams for a in actions)

    def params(self, action: str) -> dict[str, Any]:
        return KINDS[action].draw(self.rng)

    def duration(self, t: float) -> float:
        return max(0.1, min(self.rng.choice(_DURATIONS), self.time_limit - 0.5 - t))

    # ------------------------------------------------------------------ knobs

    def knobs(self, churn: bool = False) -> dict[str, Any]:
        r = random.Random(f"knobs:{self.rng.random()}")
        small = churn or r.random() < 0.25
        return {"snapshot_every": r.choice(SNAPSHOT_EVERY),
                "max_msg_bytes": r.choice([1, 1, 512]) if small else DEFAULT_MSG_BYTES,
                "max_inflight": r.choice([1, 2, 4]) if small else DEFAULT_INFLIGHT}

    # ------------------------------------------------------------------ generative

    def generative(self) -> None:
        r = self.rng
        pool = [a for a in _ROLES if self.allowed(a)]
        # Swarm testing, per phase: a run is cut into one to three stretches (before,
        # around and after the cutover, when there is one), and each draws its own
        # subset of the primitives, their weights and a density. One run then explores
        # several swarm configurations, and some stretches are quiet while others are
        # dense.
        bounds = [0.0, self.time_limit - 1.0]
        if self.cutover_at is not None and r.random() < 0.7:
            cuts = sorted({round(max(0.5, self.cutover_at - r.uniform(0.5, 3.0)), 3),
                           round(min(self.time_limit - 1.5, self.cutover_at
                                     + r.uniform(3.0, 10.0)), 3)})
            bounds = [0.0, *[c for c in cuts if 0.0 < c < self.time_limit - 1.0],
                      self.time_limit - 1.0]
        # Some bugs need the cutover to go through undisturbed (then fail later).
        calm = self.cutover_at is not None and r.random() < 0.15
        window = (self.cutover_at - 2.0, self.cutover_at + 8.0) if calm else None
        union: set[str] = set()
        phases = []
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            enabled = [a for a in pool if r.random() < 0.55] or (
                [r.choice(pool)] if pool else [])
            weights = {a: r.choice((1, 2, 4)) for a in enabled}
            density = r.choice(["quiet", "sparse", "moderate", "moderate", "dense"])
            phases.append((lo, hi, enabled, weights, density))
            union.update(enabled)
        enabled = sorted(union)
        self.features.update(actions=enabled, density=[p[4] for p in phases],
                             calm_cutover=calm)
        if not enabled:
            return
        weights = {a: max(p[3].get(a, 0) for p in phases) for a in enabled}

        def pick() -> str:
            return r.choices(enabled, weights=[weights[a] for a in enabled])[0]

        for lo, hi, en, ws, density in phases:
            gap = {"quiet": 0.0, "sparse": 1.2, "moderate": 0.5, "dense": 0.2}[density]
            if not gap or not en:
                continue
            mean = gap * self.interval
            t = lo + r.uniform(0.3, mean + 0.3)
            while t < hi:
                a = r.choices(en, weights=[ws[x] for x in en])[0]
                d = self.duration(t)
                if window is None or t + d < window[0] or t > window[1]:
                    self.add(a, Target(r.choice(_ROLES[a])), When("time", at=round(t, 3)),
                             duration=d, origin="timed", **self.params(a))
                t += r.expovariate(1.0 / mean)
        events = [e for e in _EVENT_WEIGHTS
                  if self.cutover_at is not None and not calm or e not in _CUTOVER_EVENTS]
        k = r.choice([0, 1, 2, 3, 4, 6])
        self.features["triggered"] = k
        for _ in range(k):
            ev = r.choices(events, weights=[_EVENT_WEIGHTS[e] for e in events])[0]
            a = pick()
            role = "event" if r.random() < 0.4 and KINDS[a].at_event_node \
                else r.choice(_ROLES[a])
            name = f"t{len(self.steps) + 1}"
            first = self.add(a, Target(role, bind=name), When("event", event=ev,
                                                              nth=r.choice([1, 1, 1, 2, 3])),
                             delay=r.choice(_DELAYS), duration=r.choice(_DURATIONS),
                             origin="triggered", **self.params(a))
            if r.random() < 0.35:
                b = pick()
                tgt = Target("bound", ref=name) if r.random() < 0.5 and _ROLES[b][0] != "none" \
                    else Target(r.choice(_ROLES[b]))
                self.add(b, tgt, When("after", step=first.id), delay=r.choice(_DELAYS),
                         duration=r.choice(_DURATIONS), origin="follow-up", **self.params(b))
        if self.cutover_at is not None and not calm and r.random() < 0.45:
            self.cutover_focus([a for a in enabled if a in _DISRUPTIVE])
        if r.random() < 0.2:
            self.churn()

    def cutover_focus(self, actions: list[str]) -> None:
        """Faults on the leader at the cutover's own moments (the barrier going up, the
        marker proposed or committed): the interleavings the protocol exists for."""
        r = self.rng
        if not actions:
            return
        n = r.choice([1, 1, 2, 3])
        self.features["cutover_focus"] = n
        for _ in range(n):
            a = r.choice(actions)
            ev = r.choice(["marker-proposed", "marker-committed", "barrier-up",
                           "marker-proposed"])
            role = r.choice(KINDS[a].focus_roles)
            self.add(a, Target(role), When("event", event=ev), delay=r.choice([0.0, 0.002, 0.01, 0.05, 0.2]),
                     duration=r.choice([0.5, 1.0, 2.5, 4.0]), origin="cutover-focus",
                     **self.params(a))

    def churn(self, force: bool = False) -> None:
        """Leaders cut off right after they are elected (their no-op stays partial), for
        long enough that another takes over: Raft's Figure 8 needs several such terms."""
        r = self.rng
        acts = [a for a in ("isolate", "kill", "cut-out") if self.allowed(a)]
        if not acts:
            return
        n = r.choice([3, 5, 8]) if not force else 40
        self.features["churn"] = n
        # The first leader was elected before the run began, and a chain of election
        # triggers can stall (a cut-off leader that nobody replaced keeps leading once
        # healed): leaders are also deposed on a clock, over a stretch of the run.
        t = r.uniform(0.5, max(0.6, min(3.0, self.time_limit / 4)))
        end = t + (self.time_limit * r.uniform(0.3, 0.8) if not force else self.time_limit)
        if self.allowed("delay") and (force or r.random() < 0.5):
            # Slow links: a new leader's first appends are still on the wire when it is
            # cut off, so its no-op stays where it is and an older term's entry can win.
            ms = r.choice([20, 40, 80])
            self.add("delay", Target("all"), When("time", at=round(t, 3)),
                     duration=max(0.0, round(min(end, self.time_limit - 0.5) - t, 3)),
                     origin="churn", ms=ms, jitter=ms / 2)
        while t < min(end, self.time_limit - 1.0):
            self.add(r.choice(acts), Target("leader"), When("time", at=round(t, 3)),
                     duration=r.choice([0.3, 0.6, 1.0]), origin="churn")
            t += r.uniform(0.8, 2.5)
        for i in range(1, n + 1):
            self.add(r.choice(acts), Target("event"), When("event", event="leader-elected",
                                                           nth=i),
                     delay=r.choice([0.0, 0.005, 0.02, 0.05]),
                     duration=r.choice([0.3, 0.6, 1.0]), origin="churn")

    def operator(self) -> None:
        """RotateDEK at random times (one sometimes racing the marker) and, when the
        `enable` family is on, EnableRaftEnvelope asked again later."""
        r = self.rng
        if self.allowed("rotate"):
            for _ in range(r.choice([0, 1, 1, 2, 3])):
                self.add("rotate", Target("leader"),
                         When("time", at=round(r.uniform(0.5, self.time_limit - 1.0), 3)),
                         origin="operator")
            if self.cutover_at is not None and r.random() < 0.4:
                if r.random() < 0.5:
                    when = When("milestone", milestone="cutover-requested")
                else:
                    when = When("event", event="marker-proposed")
                self.add("rotate", Target("leader"), when, delay=r.choice([0.0, 0.01, 0.05,
                                                                           0.2]),
                         origin="race-marker")
        if self.allowed("enable") and self.cutover_at is not None and r.random() < 0.5:
            for _ in range(r.choice([1, 2])):
                when = r.choice([When("milestone", milestone="cutover-settled"),
                                 When("event", event="leader-elected", nth=r.choice([2, 3])),
                                 When("event", event="apply-wait-timeout"),
                                 When("time", at=round(r.uniform(self.cutover_at,
                                                                 self.time_limit - 1), 3))])
                role = r.choice(["leader", "one"] + (["event"] if when.on == "event" else []))
                self.add("enable", Target(role), when, delay=r.choice([0.0, 0.05, 0.5, 1.5]),
                         origin="operator")

    def races(self) -> None:
        """With the `races` family: a DEK rotation between the marker's proposal and
        its apply, through the leader, or with a follower slowed so that it lags across
        both (`rotate-race`). Draws nothing when the family is off, so that plans
        without it stay as they were."""
        if not self.allowed("rotate-race") or self.cutover_at is None:
            return
        r = self.rng
        for _ in range(r.choice([1, 1, 2])):
            role = r.choice(["leader", "lagging", "follower"])
            self.add("rotate-race", Target(role),
                     When("event", event=r.choice(["marker-proposed", "marker-committed"])),
                     delay=r.choice([0.0, 0.0, 0.001, 0.005, 0.02]),
                     duration=r.choice([0.5, 1.0, 2.0]), origin="race-marker",
                     **self.params("rotate-race"))

    def follow_up(self, r: random.Random) -> None:
        """An operator's next move on the node whose EnableRaftEnvelope just failed
        (`apply-wait-timeout`: its marker may still commit): a RotateDEK there, as one
        who suspects the key. The node keeps its barrier up and its leadership, so
        whatever it proposes now lands above a marker that can still commit."""
        if not self.allowed("rotate") or self.cutover_at is None or r.random() >= 0.35:
            return
        self.add("rotate", Target("event"), When("event", event="apply-wait-timeout"),
                 delay=r.choice([0.0, 0.02, 0.1, 0.3]), origin="operator")

    def enable_at_cutover(self, retry_same: bool) -> None:
        if self.cutover_at is None:
            return
        self.add("enable", Target("leader"), When("time", at=self.cutover_at),
                 origin="cutover", main=True, retry_same=retry_same)

    def corrupt(self) -> None:
        if "corrupt" in self.fams and self.cutover_at is not None:
            # After the final reads: damage one replica's copy of the last write above C,
            # restart it and let it replay. A correct replica halts at exactly that entry
            # (loudly: the checker excuses exactly that copy); one that skips it diverges.
            self.add("corrupt-entry", Target("follower"), When("milestone", milestone="final"),
                     origin="final", pick=self.rng.randrange(1 << 30))

    # ------------------------------------------------------------------ sequence

    def legacy_timed(self) -> None:
        """The previous default's timed faults: one at a time, out of the cutover window."""
        r = self.rng
        kinds = [(a, role) for a, role in _LEGACY if KINDS[a].family in self.fams]
        window = None
        if self.cutover_at is not None:
            window = (max(0.0, self.cutover_at - WINDOW_BEFORE), self.cutover_at + WINDOW_AFTER)
        t = min(2.0, self.time_limit / 4)
        while kinds:
            t += self.interval * r.uniform(0.6, 1.4)
            a, role = r.choice(kinds)
            dur = round(self.interval * r.uniform(0.4, 0.8), 3)
            if t + dur >= self.time_limit - 0.5:
                break
            if window is not None and t < window[1] and t + dur > window[0]:
                continue
            self.add(a, Target(role), When("time", at=round(t, 3)), duration=dur,
                     origin="timed", **self.params(a))
            t += dur

    def legacy_rotations(self) -> None:
        if not self.allowed("rotate"):
            return
        r = self.rng
        points = []
        if self.cutover_at is not None and self.cutover_at > 2:
            points.append(r.uniform(0.5, max(0.6, self.cutover_at - WINDOW_BEFORE - 0.5)))
        lo = self.cutover_at + WINDOW_AFTER if self.cutover_at is not None else 1.0
        while lo < self.time_limit - 1:
            lo += self.interval * r.uniform(0.7, 1.5)
            if lo < self.time_limit - 1:
                points.append(lo)
        for p in points:
            self.add("rotate", Target("leader"), When("time", at=round(p, 3)), origin="operator")

    def sequence(self, enable_timeout: float) -> None:
        """The scripted cutover sequence as steps (see the module docstring)."""
        at = self.cutover_at
        if at is None or self.nodes < 3:
            return
        self.features["sequence"] = True
        snap, part, kill = (self.allowed("snapshot"), self.allowed("isolate"),
                            self.allowed("kill"))
        lag = None
        if snap:
            self.add("snapshot", Target("follower", bind="X"), When("time", at=round(at - 1.0, 3)),
                     origin="sequence")
            if self.nodes >= 5 and part:
                lag = self.add("isolate", Target("follower", bind="Y", avoid=("X",)),
                               When("time", at=round(at - 0.8, 3)), origin="sequence")
        last: Step | None = None
        if part:
            self.add("slow-in", Target("leader", bind="L"),
                            When("time", at=round(at - 0.15, 3)),
                            until=When("event", event="marker-proposed", node="L"),
                            origin="sequence", ms=200, jitter=0)
            acks = self.add("cut-in", Target("bound", ref="L"),
                            When("event", event="marker-proposed", node="L"),
                            duration=round(enable_timeout + 0.5, 3), origin="sequence")
            self.add("delay", Target("all"), When("after", step=acks.id), duration=2.5,
                     origin="sequence", ms=30, jitter=10)
            last = self.add("isolate", Target("bound", ref="L"), When("after", step=acks.id),
                            duration=2.5, origin="sequence")
        settled = When("milestone", milestone="cutover-settled")
        after_last = When("after", step=last.id) if last is not None else settled
        if snap:
            rot = self.add("rotate", Target("leader"), after_last, delay=1.0,
                           origin="sequence", wait_applied=True)
            down = self.add("kill", Target("bound", ref="X"), When("after", step=rot.id),
                            duration=0.3, origin="sequence")
            last = self.add("lead", Target("bound", ref="X"), When("after", step=down.id),
                            duration=3.0, origin="sequence", cut_off=["leader", "Y"])
            after_last = When("after", step=last.id)
        if kill and snap:
            z = self.add("snapshot", Target("one", bind="Z", avoid=("leader", "X", "Y")),
                         after_last, delay=0.5, origin="sequence")
            down = self.add("kill", Target("bound", ref="Z"), When("after", step=z.id),
                            duration=0.3, origin="sequence")
            last = self.add("lead", Target("bound", ref="Z"), When("after", step=down.id),
                            duration=2.5, origin="sequence", cut_off=["leader", "Y"])
            after_last = When("after", step=last.id)
        if lag is not None:
            done = self.add("compact", Target("bound", ref="Y"), after_last, delay=0.5,
                            origin="sequence")
            self.steps[self.steps.index(lag)] = Step(
                lag.id, lag.action, lag.target, lag.when, lag.delay, 0.0,
                When("after", step=done.id), lag.params, lag.origin)
        if kill:
            self.add("kill", Target("leader", avoid=("event",)),
                     When("event", event="restarted", since="cutover-settled"), delay=0.3,
                     duration=1.0, origin="sequence")


# The previous default's timed faults: (action, role), each drawn when its family is on.
_LEGACY: list[tuple[str, str]] = [
    ("kill", "one"), ("kill", "minority"), ("kill", "leader"),
    ("pause", "one"), ("pause", "minority"), ("pause", "leader"),
    ("halves", "none"), ("isolate", "one"), ("isolate", "leader"), ("ring", "none"),
    ("bridge", "one"),
    ("loss", "all"), ("delay", "all"), ("duplicate", "all"),
]

# Re-exported for callers that build their own plans.
__all__ = ["DEFAULT_SCENARIO", "FAMILIES", "OPT_IN_FAMILIES", "PLAN_FORMAT", "Plan",
           "PlanError", "SCENARIOS",
           "SNAPSHOT_EVERY", "Step", "TRIGGER_EVENTS", "Target", "When", "check_scenario",
           "make_plan", "parse_families"]
