"""Coverage-guided choice of plans: a corpus of plans that reached something new, and
AFL-style mutations of them run beside fresh swarm seeds.

Swarm seeds are independent draws: a seed that reached a rare state (a leader elected
with the marker logged but unapplied, a restart from a snapshot below C) teaches the
next seed nothing. A defect that needs that state *and* one more fault near it is then
found only by luck. Here the search keeps every plan whose run reached a *feature* no
earlier run of the search reached, and spends part of its seeds on small edits of those
plans (Zalewski's AFL: keep what is new, mutate it, favour the rare; Hypothesis'
targeted search has the same shape). Everything is pure: what a run reached comes in
as data (`features`, computed in the worker from the run's node events, its nemesis
record and its coverage), and every choice draws from one `random.Random` seeded by the
search's first seed.

**Features** (what counts as new): each coverage point (`checker.coverage.POINTS`), each
point's hit count in a power-of-two bucket (AFL's hit-count buckets), and protocol-state
pairs finer than the points: a role change by the node's marker state (none proposed,
missing, logged, applied), a (re)start by its cutover and snapshot state, every fault,
marker/rotation apply, snapshot install or take, barrier, admin answer, halt, crash and
truncation by the cutover's phase (before the marker, in flight, after its first apply).

**Schedule**: the first `WARMUP` jobs are fresh; after that a job is a mutant with
probability `MUTATE_SHARE` (when the corpus is not empty). The parent is drawn by
energy: the sum over its features of 1/(runs that reached it), divided by how often it
was already picked (AFL's favoured-rare). Determinism with a pool: job k is decided
from the corpus fed with jobs 0..k-LAG-1 exactly, in job order (`Guide.can_plan` says
when that is known), so the same first seed gives the same jobs whatever the pool's
timing or size.

**Mutations** (1-4 stacked, each leaving a valid plan: `Plan.from_dict` re-reads it):
shift a step's time, delay or event count; retrigger it on another node event or a
time; change its target role (among its kind's roles); redraw its arguments
(`FaultKind.draw`, so within `primitives.PARAMS`' ranges); lengthen or shorten it;
duplicate or drop a step; splice self-contained steps from another corpus plan; change
a node knob. The run's own EnableRaftEnvelope and the final corrupt-entry are left as
they are: they are the run's shape, not its faults.
"""
from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from checker.coverage import POINTS
from nemesis.faults import KINDS
from nemesis.plan import DEFAULT_INFLIGHT, DEFAULT_MSG_BYTES, SNAPSHOT_EVERY, Plan
from nemesis.primitives import TRIGGER_EVENTS, Step, When

WARMUP = 4  # fresh jobs before any mutant: the corpus needs something to start from
MUTATE_SHARE = 0.5  # of the jobs after the warm-up, when the corpus holds a plan
LAG = 4  # job k sees the results of jobs < k - LAG (the most a pool keeps in flight)
MAX_STEPS = 200  # a mutant may not grow past this (duplicates and splices add steps)
TRIES = 8  # mutation attempts before a job falls back to its fresh seed
_DELAYS = (0.0, 0.002, 0.01, 0.05, 0.2, 0.5, 1.5)
_DURATIONS = (0.3, 0.8, 1.5, 3.0, 5.0)
_OPS = ("shift", "shift", "retrigger", "retarget", "retarget", "args", "duration",
        "duplicate", "drop", "splice", "knob")


# ---------------------------------------------------------------------- features


def _bucket(n: int) -> int:
    """AFL's hit-count buckets: 1, 2, 3, 4-7, 8-15, ... (one more of a frequent thing
    is not news; twice as many is)."""
    return n if n <= 3 else 1 << (int(n).bit_length() - 1)


def _detail(ev: Mapping[str, Any]) -> Mapping[str, Any]:
    d = ev.get("detail")
    return d if isinstance(d, Mapping) else ev


def features(events: Iterable[Mapping[str, Any]], nemesis: Iterable[Mapping[str, Any]],
             coverage: Mapping[str, Any] | Iterable[str]) -> list[str]:
    """What one run reached, as feature names (sorted): the module docstring's list.
    Read from what the run recorded, never from what its plan intended."""
    out: set[str] = set()
    cov = coverage if isinstance(coverage, Mapping) else {p: {"count": 1} for p in coverage}
    for p, rec in cov.items():
        if p in POINTS:
            out.add(f"point:{p}")
            n = rec.get("count", 1) if isinstance(rec, Mapping) else 1
            out.add(f"count:{p}:{_bucket(int(n or 1))}")
    evs = sorted(events, key=lambda e: e.get("time_ns") or 0)
    t_prop = t_apply = None
    marker = 0
    for ev in evs:
        d, kind = _detail(ev), ev.get("kind")
        if kind == "marker-proposed" and t_prop is None:
            t_prop, marker = ev.get("time_ns"), int(d.get("index") or 0)
        if kind == "encryption-applied" and str(d.get("what", "")).startswith("marker") \
                and t_apply is None:
            t_apply = ev.get("time_ns")
            marker = marker or int(d.get("index") or 0)

    def phase(t: Any) -> str:
        if t_prop is None or t is None or t < t_prop:
            return "pre"
        return "flight" if t_apply is None or t < t_apply else "post"

    applied: set[Any] = set()
    for ev in evs:
        out.update(_event_features(ev, _detail(ev), phase(ev.get("time_ns")), marker,
                                   applied))
    for r in nemesis:
        if r.get("f") in ("start", "event") and r.get("fault"):
            out.add(f"fault:{r['fault']}:{phase(r.get('time_ns'))}")
    return sorted(out)


def _event_features(ev: Mapping[str, Any], d: Mapping[str, Any], ph: str, marker: int,
                    applied: set[Any]) -> list[str]:
    kind, node = ev.get("kind"), ev.get("node")
    if kind == "encryption-applied":
        if str(d.get("what", "")).startswith("marker"):
            applied.add(node)
        return [f"apply:{d.get('what')}:{ph}"]
    if kind == "role":
        if not marker or ph == "pre":
            state = "none"
        elif node in applied:
            state = "applied"
        else:
            state = "logged" if int(d.get("last_index") or 0) >= marker else "missing"
        return [f"role:{d.get('role')}:{state}"]
    if kind == "start":
        cut, snap = int(d.get("cutover") or 0), int(d.get("snapshot_index") or 0)
        applied.discard(node)  # replays the marker again (or not) from here
        where = "none" if not snap else ("below" if cut and snap < cut else
                                         "above" if cut else "plain")
        return [f"start:{'active' if cut else 'off'}:{where}:{ph}"]
    if kind == "snapshot-installed":
        cut = int(d.get("cutover") or 0)
        cross = "cross" if cut and int(d.get("index") or 0) >= cut > int(
            d.get("prev_applied") or cut) else "same"
        return [f"install:{cross}:{ph}"]
    if kind == "barrier":
        return [f"barrier:{'up' if d.get('up') else 'down'}:{ph}"]
    if kind == "enable-raft-envelope":
        return [f"enable:{d.get('status')}:{ph}"]
    if kind in ("snapshot-taken", "halt", "crash", "exit", "log-truncated",
                "apply-wait-timeout", "torn-tail", "apply-error", "unwrap-skipped"):
        return [f"{kind}:{ph}"]
    return []


# ---------------------------------------------------------------------- the corpus


@dataclass
class Entry:
    """A plan whose run reached something new, and what it reached."""

    seed: int
    plan: dict[str, Any]
    features: tuple[str, ...]
    new: tuple[str, ...]  # what no earlier run of the search had reached
    picks: int = 0


@dataclass
class Corpus:
    """Every feature's count over the runs seen, and the plans that brought news."""

    counts: Counter[str] = field(default_factory=Counter)
    entries: list[Entry] = field(default_factory=list)
    runs: int = 0

    def see(self, seed: int, plan: Mapping[str, Any] | None, feats: Iterable[str]) -> bool:
        """Count one run's features; keep its plan if one of them is new. Returns
        whether it was kept."""
        fs = tuple(sorted(set(feats)))
        new = tuple(f for f in fs if not self.counts[f])
        self.counts.update(fs)
        self.runs += 1
        if new and plan is not None:
            self.entries.append(Entry(seed, dict(plan), fs, new))
            return True
        return False

    def energy(self, e: Entry) -> float:
        """Rare features weigh more; a parent picked often weighs less (AFL's
        favoured-rare with a fatigue)."""
        return sum(1.0 / max(1, self.counts[f]) for f in e.features) / math.sqrt(1 + e.picks)

    def pick(self, rng: random.Random) -> Entry:
        e = rng.choices(self.entries, weights=[self.energy(x) + 1e-9
                                               for x in self.entries])[0]
        e.picks += 1
        return e


# ---------------------------------------------------------------------- mutations


def _fixed(s: Step) -> bool:
    """The run's own steps (its EnableRaftEnvelope, the final corrupt-entry): its shape."""
    return (s.action == "enable" and bool(s.params.get("main"))) or s.action == "corrupt-entry"


def _names_used(plan: Plan) -> tuple[set[int], set[str]]:
    """Step ids others wait for, and bound names others use (what `drop` must keep)."""
    ids: set[int] = set()
    names: set[str] = set()
    for s in plan.steps:
        if s.when.on == "after":
            ids.add(s.when.step)
        if s.target.ref:
            names.add(s.target.ref)
        names.update(s.target.avoid)
        for w in (s.when, s.until):
            if w is not None and w.node:
                names.add(w.node)
    return ids, names


def _roles(s: Step) -> tuple[str, ...]:
    k = KINDS[s.action]
    roles = tuple(dict.fromkeys(k.roles or ("leader", "one")))
    if s.when.on == "event" and k.at_event_node and "event" not in roles:
        roles += ("event",)
    return roles


def _when(rng: random.Random, time_limit: float) -> When:
    if rng.random() < 0.7:
        return When("event", event=rng.choice(sorted(TRIGGER_EVENTS)),
                    nth=rng.choice((1, 1, 2, 3)))
    return When("time", at=round(rng.uniform(0.3, max(0.4, time_limit - 1.0)), 3))


def _shift(rng: random.Random, s: Step, time_limit: float) -> Step:
    if s.when.on == "time" and rng.random() < 0.7:
        at = min(max(0.1, s.when.at + rng.uniform(-3.0, 3.0)), max(0.2, time_limit - 0.5))
        return replace(s, when=replace(s.when, at=round(at, 3)))
    if s.when.on == "event" and rng.random() < 0.4:
        return replace(s, when=replace(s.when, nth=max(1, s.when.nth + rng.choice((-1, 1)))))
    return replace(s, delay=rng.choice(_DELAYS))


def _retarget(rng: random.Random, s: Step) -> Step:
    if s.target.role == "bound":
        return s
    return replace(s, target=replace(s.target, role=rng.choice(_roles(s))))


def _retrigger(rng: random.Random, s: Step, time_limit: float) -> Step:
    w = _when(rng, time_limit)
    out = replace(s, when=w)
    if out.target.role == "event" and w.on != "event":
        out = replace(out, target=replace(out.target, role=_roles(out)[0]))
    return out


def _span(rng: random.Random, s: Step, time_limit: float) -> Step:
    if not s.timed or s.until is not None:
        return s
    d = rng.choice(_DURATIONS + (s.duration * 0.5, s.duration * 2.0))
    return replace(s, duration=round(min(max(0.1, d), max(0.1, time_limit - 0.5)), 3))


def _edit(op: str, rng: random.Random, s: Step, time_limit: float) -> Step:
    """One in-place mutation of step `s`."""
    if op == "shift":
        return _shift(rng, s, time_limit)
    if op == "retrigger":
        return _retrigger(rng, s, time_limit)
    if op == "retarget":
        return _retarget(rng, s)
    if op == "args":
        return replace(s, params={**s.params, **KINDS[s.action].draw(rng)})
    return _span(rng, s, time_limit)


def _self_contained(s: Step) -> bool:
    """A step that can move to another plan: it names no other step or binding."""
    return (not _fixed(s) and s.when.on != "after" and s.target.role != "bound"
            and not s.target.avoid and s.when.node is None
            and (s.until is None or (s.until.on != "after" and s.until.node is None)))


def mutate(plan: Plan, rng: random.Random, *, time_limit: float,
           donors: list[Plan] | None = None) -> tuple[Plan, list[str]]:
    """One to four stacked mutations of `plan` (the module docstring), and what each
    did; ValueError if the result is not a valid plan (the caller tries again)."""
    steps = list(plan.steps)
    knobs = dict(plan.knobs)
    done: list[str] = []
    for _ in range(rng.choice((1, 1, 2, 2, 3, 4))):
        op = rng.choice(_OPS)
        free = [i for i, s in enumerate(steps) if not _fixed(s)]
        if op == "knob":
            name = rng.choice(("snapshot_every", "max_msg_bytes", "max_inflight"))
            knobs[name] = {"snapshot_every": lambda: rng.choice(SNAPSHOT_EVERY),
                           "max_msg_bytes": lambda: rng.choice((1, 512, DEFAULT_MSG_BYTES)),
                           "max_inflight": lambda: rng.choice((1, 2, 4, DEFAULT_INFLIGHT))
                           }[name]()
            done.append(f"knob {name}={knobs[name]}")
            continue
        if op == "splice":
            pool = [s for p in donors or [] for s in p.steps if _self_contained(s)]
            if not pool:
                continue
            nid = max((s.id for s in steps), default=0)
            picked = rng.sample(pool, min(len(pool), rng.choice((1, 1, 2, 3))))
            for s in picked:
                nid += 1
                steps.append(replace(s, id=nid, target=replace(s.target, bind=None)))
            done.append(f"splice {', '.join(s.action for s in picked)} in")
            continue
        if not free:
            continue
        i = rng.choice(free)
        s = steps[i]
        if op == "drop":
            ids, names = _names_used(Plan(plan.seed, plan.families, plan.scenario,
                                          tuple(steps)))
            if s.id in ids or (s.target.bind and s.target.bind in names):
                continue
            steps.pop(i)
            done.append(f"drop #{s.id}")
            continue
        if op == "duplicate":
            nid = max(x.id for x in steps) + 1
            copy = _shift(rng, replace(s, id=nid, target=replace(s.target, bind=None)),
                          time_limit)
            steps.append(copy)
            done.append(f"duplicate #{s.id} as #{nid}")
            continue
        steps[i] = _edit(op, rng, s, time_limit)
        done.append(f"{op} #{s.id}")
    if not done:
        raise ValueError("no mutation applied")
    if len(steps) > MAX_STEPS:
        raise ValueError(f"{len(steps)} steps")
    out = replace(plan, steps=tuple(sorted(steps, key=lambda s: s.id)), knobs=knobs)
    if out == plan:
        raise ValueError("the mutations changed nothing")  # a rerun of the parent
    return Plan.from_dict(out.to_dict()), done


# ---------------------------------------------------------------------- the schedule


@dataclass(frozen=True)
class Job:
    """One seed of the search: its number, and a mutant's plan (None: the seed's own)."""

    seed: int
    plan: dict[str, Any] | None = None
    lineage: str = ""  # "mutant of seed N: op, op" for a mutant


class Guide:
    """The search's choice of jobs (the module docstring's schedule). The caller asks
    `can_plan()` before `plan(seed)` and hands every result to `done`, in any order."""

    def __init__(self, first_seed: int, *, time_limit: float, warmup: int = WARMUP,
                 share: float = MUTATE_SHARE, lag: int = LAG) -> None:
        self.rng = random.Random(f"corpus:{first_seed}")
        self.time_limit = time_limit
        self.warmup, self.share, self.lag = warmup, share, lag
        self.corpus = Corpus()
        self.jobs: list[Job] = []  # in the order they were planned
        self.index: dict[int, int] = {}  # seed -> its job's place in `jobs`
        self.waiting: dict[int, tuple[dict[str, Any] | None, list[str]]] = {}  # job -> result
        self.fed = 0  # jobs 0..fed-1 are in the corpus
        self.mutants = 0
        self.kept_mutants = 0

    def can_plan(self) -> bool:
        """Whether every job the next one must see has finished."""
        return all(i in self.waiting for i in range(self.fed, len(self.jobs) - self.lag))

    def plan(self, seed: int) -> Job:
        k = len(self.jobs)
        self._feed(k - self.lag)
        coin = self.rng.random()
        job = Job(seed)
        if k >= self.warmup and self.corpus.entries and coin < self.share:
            job = self._mutant(seed) or job
        self.jobs.append(job)
        self.index[seed] = k
        return job

    def _mutant(self, seed: int) -> Job | None:
        for _ in range(TRIES):
            parent = self.corpus.pick(self.rng)
            donors = [Plan.from_dict(self.rng.choice(self.corpus.entries).plan)]
            try:
                p, ops = mutate(Plan.from_dict(parent.plan), self.rng,
                                time_limit=self.time_limit, donors=donors)
            except ValueError:
                continue
            lineage = f"mutant of seed {parent.seed}: {', '.join(ops)}"
            p = replace(p, features={**p.features, "mutant_of": parent.seed,
                                     "mutations": ops})
            self.mutants += 1
            return Job(seed, p.to_dict(), lineage)
        return None

    def done(self, seed: int, plan: dict[str, Any] | None, feats: Iterable[str]) -> None:
        """A finished job's plan (what ran) and features; fed in job order later."""
        self.waiting[self.index[seed]] = (plan, list(feats))

    def _feed(self, upto: int) -> None:
        while self.fed < upto:
            plan, feats = self.waiting.pop(self.fed)
            job = self.jobs[self.fed]
            if self.corpus.see(job.seed, job.plan or plan, feats) and job.plan:
                self.kept_mutants += 1
            self.fed += 1

    def settle(self) -> None:
        """Feed every finished job the next ones never waited for (the search is over:
        its corpus is reported whole)."""
        while self.fed in self.waiting:
            self._feed(self.fed + 1)

    def summary(self) -> str:
        return (f"corpus {len(self.corpus.entries)} plans, {len(self.corpus.counts)} "
                f"features, {self.mutants} mutants run ({self.kept_mutants} kept)")
