"""What each fault action does, and how it is undone: one handler per action, in a registry.

A handler is a generator: it acts on a `World` (real processes and the switchboard in
`orchestrator/real_world.py`; the deterministic simulator's own cluster; a fake in the
tests) and yields *effects* when it must wait: `Sleep`, `Until` (a condition, polled),
`Hold` (the step's duration or its `until` trigger) and `Call` (an admin request that goes
through Raft, whose answer comes later). The driver decides what waiting means (a thread
that sleeps, or simulated time), so the same handler runs under both.

Also here: choosing a step's target nodes from what the cluster shows (`choose`), the
union of every active network fault (`Net`), and the operator's habits when an admin call
answers indeterminately (`operator_enable`, `operator_rotate`): retry on the same node and
on the next leader, after random delays.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from nemesis import grudges
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


Effect = Sleep | Until | Hold | Call
Handler = Callable[["Ctx", Step, list[str]], Generator[Effect, Any, None]]


class World(Protocol):
    """What the nemesis needs from a cluster."""

    ids: list[str]

    def now(self) -> float: ...  # seconds since the run's start

    def alive(self, nid: str) -> bool: ...

    def up(self, nid: str) -> bool: ...  # alive, not paused, answering

    def kill(self, nid: str, *, power: bool = False,
             torn: random.Random | None = None) -> dict[str, Any] | None: ...

    def start(self, nid: str) -> None: ...  # begins a start; `up` says when it is done

    def pause(self, nid: str) -> None: ...

    def resume(self, nid: str) -> None: ...

    def status(self, nid: str) -> dict[str, Any] | None: ...

    def snapshot_now(self, nid: str) -> int | None: ...

    def set_net(self, net: Net) -> None: ...

    def record(self, f: str, fault: str, targets: Any, **detail: Any) -> None: ...

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


# ---------------------------------------------------------------------- handlers

HANDLERS: dict[str, Handler] = {}


def handler(*actions: str) -> Callable[[Handler], Handler]:
    def reg(fn: Handler) -> Handler:
        for a in actions:
            HANDLERS[a] = fn
        return fn
    return reg


def _wait_up(ctx: Ctx, nodes: Iterable[str]) -> Until:
    nodes = list(nodes)
    return Until(lambda: all(ctx.world.up(n) for n in nodes), 20.0, 0.05)


@handler("kill", "kill-power")
def _kill(ctx: Ctx, step: Step, nodes: list[str]) -> Generator[Effect, Any, None]:
    power = step.action == "kill-power"
    torn = ctx.rng(step.id, "torn") if step.params.get("torn") else None
    lost: dict[str, Any] = {}
    for n in nodes:
        rep = ctx.world.kill(n, power=power, torn=torn)
        if rep:
            lost[n] = {"truncated_bytes": sum(rep.get("truncated", {}).values()),
                       "undone": len(rep.get("undone", []))}
    if power:
        ctx.world.record("event", step.action, nodes, step=step.id, lost=lost)
    yield Hold(step)
    for n in nodes:
        ctx.world.start(n)
    yield _wait_up(ctx, nodes)


@handler("restart")
def _restart(ctx: Ctx, step: Step, nodes: list[str]) -> Generator[Effect, Any, None]:
    """A bounce: SIGKILL and start again, `times` times in a row (a crash loop)."""
    down = float(step.params.get("down", 0.0))
    for _ in range(max(1, int(step.params.get("times", 1)))):
        for n in nodes:
            ctx.world.kill(n)
        if down:
            yield Sleep(down)
        for n in nodes:
            ctx.world.start(n)
        yield _wait_up(ctx, nodes)


@handler("pause")
def _pause(ctx: Ctx, step: Step, nodes: list[str]) -> Generator[Effect, Any, None]:
    for n in nodes:
        ctx.world.pause(n)
    yield Hold(step)
    for n in nodes:
        ctx.world.resume(n)


@handler("snapshot")
def _snapshot(ctx: Ctx, step: Step, nodes: list[str]) -> Generator[Effect, Any, None]:
    got = {n: ctx.world.snapshot_now(n) for n in nodes}
    ctx.world.record("event", "snapshot", nodes, step=step.id, snapshot_index=got)
    yield from ()


@handler("compact")
def _compact(ctx: Ctx, step: Step, nodes: list[str]) -> Generator[Effect, Any, None]:
    others = [n for n in ctx.world.ids if n not in nodes and ctx.world.up(n)]
    got = {n: ctx.world.snapshot_now(n) for n in others}
    ctx.world.record("event", "compact", others, step=step.id, snapshot_index=got,
                     left_behind=nodes)
    yield from ()


def _partition_rule(ctx: Ctx, step: Step, nodes: list[str],
                    rng: random.Random) -> NetRule | None:
    ids = list(ctx.world.ids)
    a = step.action
    if a == "isolate":
        groups = [[n] for n in nodes] + [[n for n in ids if n not in nodes]]
        return NetRule(blocked=grudges.complete(g for g in groups if g))
    if a == "split":
        return NetRule(blocked=grudges.complete([nodes, [n for n in ids if n not in nodes]]))
    if a == "lead":
        if not nodes:
            return None
        cut: list[str] = []
        for name in step.params.get("cut_off", ()):
            if name == "leader":
                lead = ctx.leader()
                if lead and lead != nodes[0]:
                    cut.append(lead)
            else:
                cut.extend(n for n in ctx.bindings.get(name, ()) if n != nodes[0])
        return NetRule(blocked=grudges.star(ids, nodes[0], cut))
    if a == "halves":
        if nodes:  # the targets in the minority, filled up with random others
            k = len(ids) // 2
            rest = [n for n in ids if n not in nodes]
            rng.shuffle(rest)
            small = (sorted(nodes) + rest)[:k]
            return NetRule(blocked=grudges.complete([small, [n for n in ids if n not in small]]))
        links, _groups = grudges.halves(ids, rng)
        return NetRule(blocked=links)
    if a == "ring":
        return NetRule(blocked=grudges.majorities_ring(ids, rng))
    if a == "bridge":
        links, _mid = grudges.bridge(ids, rng) if not nodes else _bridge_at(ids, nodes[0], rng)
        return NetRule(blocked=links)
    if a == "cut-in":
        return NetRule(blocked={(x, t) for t in nodes for x in ids if x != t})
    if a == "cut-out":
        return NetRule(blocked={(t, x) for t in nodes for x in ids if x != t})
    raise ValueError(a)  # pragma: no cover


def _bridge_at(ids: list[str], mid: str, rng: random.Random) -> tuple[set[Link], str]:
    rest = [n for n in ids if n != mid]
    rng.shuffle(rest)
    k = len(rest) // 2
    return grudges.complete([rest[:k], rest[k:]]), mid


@handler("isolate", "split", "halves", "ring", "bridge", "cut-in", "cut-out")
def _partition(ctx: Ctx, step: Step, nodes: list[str]) -> Generator[Effect, Any, None]:
    rule = _partition_rule(ctx, step, nodes, ctx.rng(step.id, "shape"))
    tag = f"step#{step.id}"
    ctx.set_rule(tag, rule)
    yield Hold(step)
    ctx.set_rule(tag, None)


@handler("lead")
def _lead(ctx: Ctx, step: Step, nodes: list[str]) -> Generator[Effect, Any, None]:
    """A star around the target: first let it catch up (its log must be as fresh as the
    voters' for it to win), then only it can reach a majority."""
    if not nodes:
        return
    x = nodes[0]
    if not ctx.world.up(x):
        yield _wait_up(ctx, [x])
    lead = ctx.leader()
    target = (ctx.world.status(lead) or {}).get("commit") if lead else None
    if target is not None:
        yield Until(lambda: (ctx.world.status(x) or {}).get("applied", 0) >= target, 5.0, 0.02)
    tag = f"step#{step.id}"
    ctx.set_rule(tag, _partition_rule(ctx, step, nodes, ctx.rng(step.id, "shape")))
    yield Hold(step)
    ctx.set_rule(tag, None)


@handler("slow-in", "slow-out", "loss", "delay", "duplicate", "reorder")
def _net(ctx: Ctx, step: Step, nodes: list[str]) -> Generator[Effect, Any, None]:
    p = step.params
    ids = list(ctx.world.ids)
    everyone = not nodes or set(nodes) == set(ids)
    a = step.action
    if a in ("slow-in", "slow-out"):
        links = ({(x, t) for t in nodes for x in ids if x != t} if a == "slow-in"
                 else {(t, x) for t in nodes for x in ids if x != t})
        rule = NetRule(delay={k: (float(p.get("ms", 100)), float(p.get("jitter", 0)))
                              for k in links})
    elif a in ("delay", "reorder"):
        rule = NetRule(delay_all=(float(p.get("ms", 20)), float(p.get("jitter", 10))))
    else:
        prob = float(p.get("p", 0.2))
        links = {(x, t) for t in nodes for x in ids if x != t} | \
                {(t, x) for t in nodes for x in ids if x != t}
        if a == "loss":
            rule = NetRule(loss_all=prob) if everyone else NetRule(loss=dict.fromkeys(links,
                                                                                       prob))
        else:
            rule = NetRule(dup_all=prob) if everyone else NetRule(dup=dict.fromkeys(links,
                                                                                     prob))
    tag = f"step#{step.id}"
    ctx.set_rule(tag, rule)
    yield Hold(step)
    ctx.set_rule(tag, None)


# ---------------------------------------------------------------------- the operator

ENABLE_TIMEOUT = 4.0
ROTATE_TIMEOUT = 3.0


def _next_leader(ctx: Ctx, avoid: set[str]) -> Generator[Effect, Any, str | None]:
    """Wait a little for a leader outside `avoid` (an operator looks again)."""
    found: list[str] = []

    def look() -> bool:
        lead = ctx.leader()
        if lead is not None and lead not in avoid:
            found.append(lead)
            return True
        return False

    yield Until(look, 0.5, 0.01)
    return found[-1] if found else None


@handler("enable")
def operator_enable(ctx: Ctx, step: Step, nodes: list[str]) -> Generator[Effect, Any, None]:
    """EnableRaftEnvelope the way an operator does it: ask; on an indeterminate answer
    (a timeout, `failed`, `not-leader`, `stale`) wait a random moment and ask again, on
    the same node or on whoever leads now; restart a node whose barrier is stuck (the only
    remedy, protocol §5) once it has been stuck a while. The `main` request (at
    `--cutover-at`) goes on until some leader answers with C, and marks the milestones."""
    main = bool(step.params.get("main"))
    retry_same = bool(step.params.get("retry_same", True))
    rng = ctx.rng(step.id, "operator")
    if main:
        ctx.milestone("cutover-requested")
    node = nodes[0] if nodes else None
    deadline = ctx.time_limit - 0.5
    tries = 0
    reflex: set[str] = set()  # nodes asked once more right after they answered `failed`
    again = False
    while ctx.world.now() < deadline and (main or tries < 3):
        if main and ctx.cutover:
            break  # learned from the nodes' events: some marker applied fresh
        if node is None or (node in ctx.stuck and not again):
            node = yield from _next_leader(ctx, set(ctx.stuck))
            if node is None:
                yield from _restart_stuck(ctx, rng)
                continue
        tries += 1
        t0 = ctx.world.now()
        ctx.world.record("start", "enable-raft-envelope", [node], step=step.id, attempt=tries)
        rep = yield Call(node, "enable-raft-envelope", ENABLE_TIMEOUT)
        if rep is None:
            status, c = "timeout", 0
        elif rep.get("ok"):
            status, c = rep["value"]["status"], int(rep["value"].get("cutover") or 0)
        else:
            status, c = str(rep.get("code")), 0
        ctx.attempts.append({"node": node, "status": status, "cutover": c, "t": t0,
                             "step": step.id})
        ctx.world.record("stop", "enable-raft-envelope", [node], status=status, cutover=c,
                         step=step.id)
        if status in ("ok", "already-active") and c:
            ctx.cutover = ctx.cutover or c
            break
        if status == "not-bootstrapped":
            break
        if status == "failed":
            ctx.stuck.setdefault(node, ctx.world.now())
        if not main and tries >= 3:
            break
        yield Sleep(rng.choice([0.0, 0.05, 0.2, 0.5, 1.0]))
        yield from _restart_stuck(ctx, rng)
        # The same node again, or the next leader. A node that just answered `failed`
        # gets one more try as an operator's reflex (the CLI run again) before it counts
        # as stuck: harmless where a stuck barrier refuses it, R2 where it does not.
        again = retry_same and rng.random() < 0.5 and (node not in ctx.stuck
                                                        or node not in reflex)
        if again and node in ctx.stuck:
            reflex.add(node)
        if not again:
            node = None  # the next leader, not this one
    if main:
        ctx.cutover_settled = True
        ctx.milestone("cutover-settled" if ctx.cutover else "cutover-failed")


def _restart_stuck(ctx: Ctx, rng: random.Random) -> Generator[Effect, Any, None]:
    """Restart the nodes whose barrier has been stuck for a while (2-4 s)."""
    now = ctx.world.now()
    for n, since in sorted(ctx.stuck.items()):
        if now - since >= 2.0 + 2.0 * rng.random():
            ctx.world.kill(n)
            ctx.world.start(n)
            del ctx.stuck[n]
            ctx.world.record("event", "restart-stuck-barrier", [n])
            yield _wait_up(ctx, [n])


@handler("rotate")
def operator_rotate(ctx: Ctx, step: Step, nodes: list[str]) -> Generator[Effect, Any, None]:
    """RotateDEK to a fresh key id, retried (same id and wrapped bytes) on the same node or
    the next leader after an indeterminate answer. With `wait_applied`, the step ends
    only once every live node applied the rotation (bounded)."""
    ctx.key_id += 1
    key_id, wrapped = ctx.key_id, ctx.world.new_dek()
    rng = ctx.rng(step.id, "operator")
    node = nodes[0] if nodes else None
    index = None
    for attempt in range(1, 4):
        if node is None:
            node = yield from _next_leader(ctx, set())
            if node is None:
                yield Sleep(0.2)
                continue
        ctx.world.record("start", "rotate", [node], key_id=key_id, step=step.id,
                         attempt=attempt)
        rep = yield Call(node, "rotate-dek", ROTATE_TIMEOUT,
                         {"key_id": key_id, "wrapped": wrapped})
        result = "timeout" if rep is None else ("ok" if rep.get("ok") else str(rep.get("code")))
        if rep is not None and result == "ok" and (rep.get("value") or {}).get("already"):
            result = "already"  # it had committed: the earlier answer was lost
        ctx.world.record("stop", "rotate", [node], key_id=key_id, result=result, step=step.id)
        if rep is not None and rep.get("ok"):
            index = rep.get("index")
            break
        if result in ("halted", "not-configured", "bad-request", "stale-key"):
            break  # asking again changes nothing
        yield Sleep(rng.choice([0.0, 0.05, 0.2, 0.5]))
        if rng.random() < 0.5:
            node = None
    if step.params.get("wait_applied") and isinstance(index, int):
        yield Until(lambda: all((ctx.world.status(n) or {}).get("applied", 0) >= index
                                for n in ctx.world.ids if ctx.world.up(n)), 3.0, 0.02)


def describe_targets(step: Step, nodes: list[str]) -> str:
    return f"{step.action} {','.join(nodes) or '-'}"
