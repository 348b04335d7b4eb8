"""What a fault handler stands on: the effects it yields, the world it acts on, the
state the handlers share, the network rules and the target chooser.

A handler (`nemesis/faults.py`) is a generator: it acts on a `World` (real processes and
the switchboard in `orchestrator/real/world.py`; the deterministic simulator's own
cluster; a fake in the tests) and yields *effects* when it must wait: `Sleep`, `Until` (a
condition, polled), `Hold` (the step's duration or its `until` trigger) and `Call` (an
admin request that goes through Raft, whose answer comes later). The driver decides what
waiting means (a thread that sleeps, or simulated time), so the same handler runs under
both. The kinds the run itself drives at a phase of its own (the heal, corrupt-entry)
may also yield `LeaderWithin`, `StartAndWait` and `WaitUp`, which only the run's top
level performs: they wait the way the run's phases do, with the run's budget.

Kept apart from the registry of kinds so that `nemesis/primitives.py` can derive its
tables from that registry without importing itself back: nothing here imports
`nemesis.primitives` at run time.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from nemesis.primitives import Step, Target

Link = tuple[str, str]


# ---------------------------------------------------------------------- effects


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Until:
    """Wait until `pred()` is true (polled) or `timeout` seconds passed; yields the result."""

    pred: Callable[[], bool]
    timeout: float
    poll: float = 0.02


@dataclass(frozen=True)
class Hold:
    """Wait out the step: its duration, or until its `until` trigger fires."""

    step: Step


@dataclass(frozen=True)
class Call:
    """An admin request through Raft; the driver sends back the reply dict or None."""

    node: str
    op: str
    timeout: float
    fields: dict[str, Any] = field(default_factory=dict)


# Effects only the run's top level performs (the heal, corrupt-entry: `FaultKind.runs_at`).


@dataclass(frozen=True)
class LeaderWithin:
    """Wait (at most `seconds`) for a leader; yields its id or None."""

    seconds: float


@dataclass(frozen=True)
class StartAndWait:
    """Start `node` and wait (at most `seconds`) until it answers; yields None, or why it
    never did (it ended while starting, or not in time)."""

    node: str
    seconds: float


@dataclass(frozen=True)
class WaitUp:
    """Wait until `nodes` answer, as long as the run can spare; yields {node: why not}."""

    nodes: tuple[str, ...]


Effect = Sleep | Until | Hold | Call | LeaderWithin | StartAndWait | WaitUp
# A step's handler gets its step and chosen nodes; the heal, which no plan holds, gets
# None and no nodes.
Handler = Callable[["Ctx", "Step | None", list[str]], Generator[Effect, Any, None]]


class World(Protocol):
    """What the nemesis needs from a cluster."""

    ids: list[str]
    run_tag: str  # what the workload's values carry (corrupt-entry's probe write too)
    name: str  # "real" or "sim": which worlds a kind runs in (`FaultKind.worlds`)

    def now(self) -> float: ...  # seconds since the run's start

    def alive(self, nid: str) -> bool: ...

    def up(self, nid: str) -> bool: ...  # alive, not paused, answering

    def paused(self, nid: str) -> bool: ...

    def kill(self, nid: str, *, power: bool = False,
             torn: random.Random | None = None) -> dict[str, Any] | None: ...

    def start(self, nid: str) -> None: ...  # begins a start; `up` says when it is done

    def pause(self, nid: str) -> None: ...

    def resume(self, nid: str) -> None: ...

    def status(self, nid: str) -> dict[str, Any] | None: ...

    def snapshot_now(self, nid: str) -> int | None: ...

    def set_net(self, net: Net) -> None: ...

    # The node's timers (its ticks) run `factor` times as fast, from now on and across its
    # restarts, until set back to 1.
    def set_tick_factor(self, nid: str, factor: float) -> None: ...

    def damage_entry(self, nid: str, index: int) -> str | None: ...  # why it could not

    # A node's files damaged at rest (`how`: "flip" one bit, "sector" a latent sector
    # error) in `area` ("wal", "snapshot", "sidecar"), the place drawn from `pick`: what
    # was damaged ({"file", "offset", ...}), or {"skipped": why}.
    def damage_storage(self, nid: str, how: str, area: str, pick: int) -> dict[str, Any]: ...

    # The node's disk loses (`how` "lost") or misplaces ("misdirected") each write with
    # probability `p` from now on; `how` None disarms it and says what it did. The
    # simulated disk only: a real world never gets here (`FaultKind.worlds`).
    def arm_writes(self, nid: str, how: str | None, p: float = 0.0,
                   seed: int = 0) -> dict[str, Any]: ...

    def ended(self, nid: str) -> bool: ...  # neither up nor starting: a start gave up

    def record(self, f: str, fault: str, targets: Any, **detail: Any) -> None: ...

    def op(self, process: Any, type_: str, f: str, key: str | None, value: Any,
           error: str | None = None, node: str | None = None) -> None: ...  # the history

    def new_dek(self) -> bytes: ...  # a fresh DEK, KEK-wrapped


# ---------------------------------------------------------------------- the network


@dataclass
class NetRule:
    """One fault's network effect; `Net` is the union of all active ones."""

    blocked: set[Link] = field(default_factory=set)
    loss_all: float = 0.0
    loss: dict[Link, float] = field(default_factory=dict)
    dup_all: float = 0.0
    dup: dict[Link, float] = field(default_factory=dict)
    delay_all: tuple[float, float] = (0.0, 0.0)
    delay: dict[Link, tuple[float, float]] = field(default_factory=dict)


@dataclass
class Net(NetRule):
    """The union: blocked links add up, probabilities and delays take the worst."""

    @classmethod
    def union(cls, rules: Iterable[NetRule]) -> Net:
        out = cls()
        for r in rules:
            out.blocked |= r.blocked
            out.loss_all = max(out.loss_all, r.loss_all)
            out.dup_all = max(out.dup_all, r.dup_all)
            out.delay_all = max(out.delay_all, r.delay_all)
            for k, v in r.loss.items():
                out.loss[k] = max(out.loss.get(k, 0.0), v)
            for k, v in r.dup.items():
                out.dup[k] = max(out.dup.get(k, 0.0), v)
            for k, v in r.delay.items():
                out.delay[k] = max(out.delay.get(k, (0.0, 0.0)), v)
        # A per-link setting replaces the all-links one on that link: keep the worse.
        for k in out.loss:
            out.loss[k] = max(out.loss[k], out.loss_all)
        for k in out.dup:
            out.dup[k] = max(out.dup[k], out.dup_all)
        for k in out.delay:
            out.delay[k] = max(out.delay[k], out.delay_all)
        return out

    def describe(self) -> str:
        parts = []
        if self.blocked:
            parts.append(f"{len(self.blocked)} links cut")
        if self.loss_all or self.loss:
            parts.append("loss")
        if self.dup_all or self.dup:
            parts.append("dup")
        if self.delay_all != (0.0, 0.0) or self.delay:
            parts.append("delay")
        return ", ".join(parts)


# ---------------------------------------------------------------------- context


class Ctx:
    """State the handlers share: the world, bindings of named targets, the network
    rules, what the run learned (marker index, C, restarts, stuck barriers)."""

    def __init__(self, world: World, seed: int, *,
                 milestone: Callable[[str], None] = lambda name: None,
                 time_limit: float = float("inf")) -> None:
        self.world = world
        self.seed = seed
        self.milestone = milestone
        self.time_limit = time_limit
        self.bindings: dict[str, list[str]] = {}
        self.rules: dict[str, NetRule] = {}
        self.marker_index = 0
        self.cutover = 0
        self.cutover_settled = False
        self.restarted: set[str] = set()  # restarted after the cutover
        self.stuck: dict[str, float] = {}  # node -> since when its barrier is stuck
        self.key_id = 1  # the bootstrap DEK; rotations count up from here
        self.active: dict[int, str] = {}  # step id -> description (progress line)
        self.attempts: list[dict[str, Any]] = []  # EnableRaftEnvelope attempts
        self.skews: dict[str, dict[int, float]] = {}  # node -> step id -> tick factor
        self.excused: list[tuple[str, int]] = []  # entry copies corrupt-entry damaged
        # The storage faults: nodes whose files were damaged (at most a minority in a
        # run, so a majority keeps intact disks), the ones that then refused to start
        # (they stay down: fail closed is the correct reaction, and a start would only
        # be refused again), and the nodes whose disk drops or misplaces writes now.
        self.damaged: set[str] = set()
        self.broken: set[str] = set()
        self.armed: set[str] = set()
        # When the phase that runs a kind at the top level must be over (`Run.corrupt`
        # sets it); a handler's waits there share what is left.
        self.phase_end = float("inf")

    def rng(self, *salt: Any) -> random.Random:
        return random.Random(":".join(["nemesis", str(self.seed), *map(str, salt)]))

    # -- network

    def set_rule(self, tag: str, rule: NetRule | None) -> None:
        if rule is None:
            self.rules.pop(tag, None)
        else:
            self.rules[tag] = rule
        self.world.set_net(Net.union(self.rules.values()))

    def clear_rules(self) -> None:
        """Every network fault lifted at once: the heal's, never a step's (a step lifts
        only its own rule, so that ending one fault cannot undo another)."""
        self.rules.clear()
        self.world.set_net(Net())

    # -- what the nodes say (fed by the driver from the nodes' event logs)

    def on_event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("kind")
        if kind == "marker-proposed" and isinstance(ev.get("index"), int):
            self.marker_index = ev["index"]
        elif kind == "encryption-applied" and ev.get("what") == "marker-fresh":
            if not self.cutover and ev.get("cutover"):
                self.cutover = int(ev["cutover"])
        elif kind == "start" and self.cutover and ev.get("node"):
            self.restarted.add(str(ev["node"]))

    # -- the cluster

    def statuses(self) -> dict[str, dict[str, Any]]:
        out = {}
        for n in self.world.ids:
            st = self.world.status(n) if self.world.up(n) else None
            if st is not None:
                out[n] = st
        return out

    def leader(self, statuses: dict[str, dict[str, Any]] | None = None) -> str | None:
        sts = self.statuses() if statuses is None else statuses
        best = None
        for n, st in sts.items():
            if st.get("role") == "leader" and (best is None or st["term"] > sts[best]["term"]):
                best = n
        return best


# ---------------------------------------------------------------------- targets


def choose(ctx: Ctx, target: Target, rng: random.Random,
           event: dict[str, Any] | None = None) -> list[str]:
    """The nodes a step hits, from what the cluster shows now (see `Target`)."""
    ids = list(ctx.world.ids)
    role = target.role
    sts: dict[str, dict[str, Any]] | None = None

    def statuses() -> dict[str, dict[str, Any]]:
        nonlocal sts
        if sts is None:
            sts = ctx.statuses()
        return sts

    avoid: set[str] = set()
    for name in target.avoid:
        if name == "leader":
            lead = ctx.leader(statuses())
            if lead:
                avoid.add(lead)
        elif name == "event":
            if event and event.get("node"):
                avoid.add(str(event["node"]))
        else:
            avoid.update(ctx.bindings.get(name, ()))
    pool = [n for n in ids if n not in avoid] or ids
    if ctx.broken:  # a node that refused its damaged disk stays down: no more faults
        pool = [n for n in pool if n not in ctx.broken] or pool

    def one_of(cands: list[str]) -> list[str]:
        cands = [c for c in cands if c in pool]
        return [rng.choice(cands)] if cands else [rng.choice(pool)]

    if role == "none":
        out: list[str] = []
    elif role == "all":
        out = list(ids)
    elif role == "bound":
        out = list(ctx.bindings.get(target.ref or "", ()))
    elif role == "event":
        node = event.get("node") if event else None
        out = [str(node)] if node in ids else one_of(pool)
    elif role == "one":
        out = one_of(pool)
    elif role == "minority":
        out = sorted(rng.sample(pool, min(len(pool), (len(ids) - 1) // 2)))
    elif role == "majority":
        out = sorted(rng.sample(pool, min(len(pool), len(ids) // 2 + 1)))
    elif role == "leader":
        lead = ctx.leader(statuses())
        out = [lead] if lead and lead in pool else one_of(pool)
    elif role == "follower":
        lead = ctx.leader(statuses())
        out = one_of([n for n in pool if n != lead])
    elif role == "leader-pair":
        lead = ctx.leader(statuses())
        lead = lead if lead is not None else rng.choice(ids)
        out = sorted({lead, *one_of([n for n in ids if n != lead])})
    elif role == "marker-holder":
        m = ctx.marker_index
        holders = [n for n, st in statuses().items()
                   if m and st.get("last_index", 0) >= m > st.get("applied", 0)]
        lead = ctx.leader(statuses())
        out = one_of(holders or [n for n in pool if n != lead])
    elif role == "restarted":
        out = one_of(sorted(ctx.restarted) or pool)
    elif role == "lagging":
        st = statuses()
        live = [n for n in pool if n in st]
        if live:
            low = min(st[n].get("applied", 0) for n in live)
            out = one_of([n for n in live if st[n].get("applied", 0) == low])
        else:
            out = one_of(pool)
    else:  # pragma: no cover - Target validates roles
        raise ValueError(role)
    if target.bind:
        ctx.bindings[target.bind] = list(out)
    return out
