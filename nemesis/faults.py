"""Every kind of fault, whole: one record per kind (`FaultKind`), next to its handler.

Jepsen's nemesis package makes a fault kind one value: its generator, its final generator
and the nemesis that performs it. Here that value is `FaultKind`: the action a step names,
its family (what `--nemesis` enables it by), whether it is held for a duration and
recorded as a window, the target roles the generator draws for it and whether the
generator aims it at the leader at the cutover's moments, how the generator draws its
arguments, its handler (what it does, and its undo when its step ends) and its final
undo (what the heal does for it). Every other table is derived from `KINDS`:
`nemesis/primitives.py` (`ACTIONS`, which steps may name), `nemesis/plan.py` (the
generator's roles, the disruptive kinds, the argument draws),
`orchestrator/run/program.py` (which steps are recorded as windows, which kinds the run
drives itself) and the heal below. Adding a fault kind is a handler and a record here
(and a range in `primitives.PARAMS` for an argument no kind had), plus its tests.

The heal (`heal-all`) and `corrupt-entry` are kinds too, run by the run itself at a
phase of its own (`runs_at`) instead of as a step process: the heal is the final
generator (every kind's final undo, in stage order, then the restarts they asked for,
waited on together), corrupt-entry damages an entry after the final reads.

A handler is a generator of effects over a `World` (`nemesis/world.py`, where the effects,
the shared state `Ctx`, the network rules `Net` and the target chooser `choose` live; they
are re-exported here). Also here: the operator's habits when an admin call answers
indeterminately (`operator_enable`, `operator_rotate`): retry on the same node and on the
next leader, after random delays.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nemesis import grudges
from nemesis.storage_faults import (
    deposed_tail,
    disarm_disks,
    faulty_writes,
    minority_read,
    rotate_race,
    snapshot_restart,
    storage_damage,
)
from nemesis.world import (
    Call,
    Ctx,
    Effect,
    Handler,
    Hold,
    LeaderWithin,
    Link,
    Net,
    NetRule,
    Sleep,
    StartAndWait,
    Until,
    WaitUp,
    World,
    choose,
)

if TYPE_CHECKING:
    from nemesis.primitives import Step

__all__ = ["FAMILIES", "HANDLERS", "HEAL", "KINDS", "OPT_IN_FAMILIES", "Call", "Ctx",
           "Effect", "FaultKind", "Handler", "Healing", "Hold", "LeaderWithin", "Net",
           "NetRule", "Sleep", "StartAndWait", "Undo", "Until", "WaitUp", "World", "choose",
           "describe_targets", "final_undos", "operator_enable", "operator_rotate"]


# ---------------------------------------------------------------------- the record


@dataclass
class Healing:
    """What the heal's final undos leave for it: the nodes to start (together, then
    waited for) and what its `heal-all` record says besides."""

    restart: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Undo:
    """A final undo: what the heal does for the kinds that name it. The heal runs each
    one once, by `stage`: the network first (a resumed or restarted node finds it
    whole), then the nodes' own state, the restarts last (each is waited for)."""

    name: str
    stage: int
    fn: Callable[[Ctx, Healing], None]


def _no_args(r: random.Random) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class FaultKind:
    """One kind of fault (the module docstring)."""

    name: str  # the action a step names; the nemesis record's `fault`
    family: str  # what `--nemesis` enables it by; "" for the heal, which no plan holds
    handler: Handler
    final: Undo  # required: what the heal does for it (`NOTHING` when nothing remains)
    timed: bool = False  # held for the step's duration (or `until`), undone at its end
    windowed: bool = False  # recorded by the step driver as one start/stop window
    # The target roles the generative phases draw from (a repeat weighs more); () when
    # they never draw it (the operator's, corrupt-entry: their own code places them).
    roles: tuple[str, ...] = ()
    at_event_node: bool = True  # a triggered step may aim at its event's node
    disruptive: bool = False  # aimed at the leader at the cutover's moments
    focus_roles: tuple[str, ...] = ("leader", "event")  # ... with one of these roles
    draw: Callable[[random.Random], dict[str, Any]] = _no_args  # its arguments
    # The run drives it itself at this phase ("heal", "final": after the final reads),
    # at its top level; "" for a step process.
    runs_at: str = ""
    # The worlds that can play it: a plan stays portable, and a world that cannot (the
    # real one, for a write the disk drops) records an `event` saying why and skips it.
    worlds: tuple[str, ...] = ("real", "sim")


# ---------------------------------------------------------------------- handlers


def _wait_up(ctx: Ctx, nodes: Iterable[str]) -> Until:
    nodes = list(nodes)
    return Until(lambda: all(ctx.world.up(n) for n in nodes), 20.0, 0.05)


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


def _pause(ctx: Ctx, step: Step, nodes: list[str]) -> Generator[Effect, Any, None]:
    for n in nodes:
        ctx.world.pause(n)
    yield Hold(step)
    for n in nodes:
        ctx.world.resume(n)


def _snapshot(ctx: Ctx, step: Step, nodes: list[str]) -> Generator[Effect, Any, None]:
    got = {n: ctx.world.snapshot_now(n) for n in nodes}
    ctx.world.record("event", "snapshot", nodes, step=step.id, snapshot_index=got)
    yield from ()


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


def _partition(ctx: Ctx, step: Step, nodes: list[str]) -> Generator[Effect, Any, None]:
    rule = _partition_rule(ctx, step, nodes, ctx.rng(step.id, "shape"))
    tag = f"step#{step.id}"
    ctx.set_rule(tag, rule)
    yield Hold(step)
    ctx.set_rule(tag, None)


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
        if ctx.stuck.get(n) != since:
            continue  # another operator step restarted it while this one waited
        if now - since >= 2.0 + 2.0 * rng.random():
            ctx.world.kill(n)
            ctx.world.start(n)
            del ctx.stuck[n]
            ctx.world.record("event", "restart-stuck-barrier", [n])
            yield _wait_up(ctx, [n])


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


# ---------------------------------------------------------------------- clock skew


def _clock_skew(ctx: Ctx, step: Step, nodes: list[str]) -> Generator[Effect, Any, None]:
    """The targets' timers run `factor` times as fast (below 1: slower) until the step
    ends: a node counts its election timeout, heartbeats and apply wait in ticks, so a
    fast follower gives up on its leader early and a slow leader is given up on. Skews of
    one node stack: the latest one still active holds, and none leaves it at 1."""
    factor = float(step.params.get("factor", 2.0))
    for n in nodes:
        ctx.skews.setdefault(n, {})[step.id] = factor
        ctx.world.set_tick_factor(n, factor)
    yield Hold(step)
    for n in nodes:
        active = ctx.skews.get(n, {})
        active.pop(step.id, None)
        if not active:
            ctx.skews.pop(n, None)
        ctx.world.set_tick_factor(n, list(active.values())[-1] if active else 1.0)


# ---------------------------------------------------------------------- corrupt-entry


# One function: the fault is one story (probe write, victim, damage, replay, outcome),
# and its every skip is recorded where it happens.
def _corrupt_entry(ctx: Ctx, step: Step, nodes: list[str]) -> Generator[Effect, Any, None]:
    """After the final reads (the run drives it: `runs_at="final"`), once a cutover
    happened: one follower's copy of one more user entry is damaged under the WAL's
    checksum, and it replays it. A correct replica halts at exactly that entry (fail
    closed; I3 excuses exactly that copy, `ctx.excused`); one that skips entries it
    cannot open (`silent-unwrap-skip`) goes on with a different state, which I4 sees in
    the final digests."""
    if not ctx.cutover:
        return
    w = ctx.world

    def left(cap: float) -> float:
        return max(0.5, min(cap, ctx.phase_end - w.now()))

    def skipped(why: str, targets: Any = None) -> None:
        w.record("event", "corrupt-entry", targets, skipped=why)

    rng = ctx.rng(step.id)
    lead = yield LeaderWithin(left(5))
    if lead is None:
        return skipped("no leader to write the probe through")
    # One more write, through the leader: its reply names its log index.
    key, value = "k0", f"tok-{w.run_tag}-probe{step.id:03d}"
    w.op("final-w", "invoke", "write", key, value, node=lead)
    rep = yield Call(lead, "write", 2.0, {"key": key, "value": value})
    if rep is None or not rep.get("ok"):
        kind = "fail" if rep is not None and rep.get("definite") else "info"
        w.op("final-w", kind, "write", key, value,
             error="timeout" if rep is None else rep.get("code"), node=lead)
        return skipped("the probe write did not commit")
    w.op("final-w", "ok", "write", key, value, node=lead)
    index = int(rep["index"])
    yield Sleep(0.3)
    followers = [n for n in w.ids if n != lead]
    rng.shuffle(followers)
    victim = None
    end = w.now() + left(5)
    while victim is None:
        for f in followers:
            st = w.status(f) if w.up(f) else None
            if st and st["applied"] >= index and st["snapshot_index"] < index \
                    and not st.get("halted"):
                victim = f
                break
        if victim is None:
            if w.now() >= end:
                return skipped("no follower holds the probe entry outside a snapshot")
            yield Sleep(0.05)
    w.kill(victim)
    why = w.damage_entry(victim, index)
    if why is not None:
        yield StartAndWait(victim, left(20))
        return skipped(why, [victim])
    w.record("start", "corrupt-entry", [victim], index=index,
             what="one bit of the entry's data, under the WAL CRC")
    ctx.excused.append((victim, index))
    gone = yield StartAndWait(victim, left(20))
    if gone is not None:
        # The elastickv profile: the replay halts there and the process ends itself.
        w.record("stop", "corrupt-entry", [victim], index=index,
                 outcome=f"the process ended: {gone[:300]}")
        return
    outcome = "timeout"
    end = w.now() + left(10)
    while w.now() < end:
        st = w.status(victim)
        if st is not None and st.get("halted"):
            outcome = f"halted: {st['halted']}"
            break
        if st is not None and st["applied"] >= index:
            outcome = f"applied past {index} without halting"
            break
        yield Sleep(0.05)
    w.record("stop", "corrupt-entry", [victim], index=index, outcome=outcome)


# ---------------------------------------------------------------------- the heal


def _heal_network(ctx: Ctx, healing: Healing) -> None:
    ctx.clear_rules()


def _resume_paused(ctx: Ctx, healing: Healing) -> None:
    for n in ctx.world.ids:
        if ctx.world.paused(n):
            ctx.world.resume(n)


def _reset_clocks(ctx: Ctx, healing: Healing) -> None:
    skewed = sorted(ctx.skews)
    for n in skewed:
        ctx.world.set_tick_factor(n, 1.0)
    ctx.skews.clear()
    if skewed:  # absent otherwise: a heal without clock faults records what it always did
        healing.detail["clock_reset"] = skewed


def _restart_dead(ctx: Ctx, healing: Healing) -> None:
    """Every node down, killed by a fault or dead of its own (the crash is evidence
    already; the final reads and digests need it up), except one that refused to start
    on the disk a storage fault damaged: it would only refuse again (fail closed), and
    the others are a majority."""
    healing.restart.extend(n for n in ctx.world.ids
                           if not ctx.world.alive(n) and n not in ctx.broken)
    if ctx.broken:  # absent otherwise: a heal without storage faults records as before
        healing.detail["left_down"] = sorted(ctx.broken)


def _disarm_disks(ctx: Ctx, healing: Healing) -> None:
    armed = disarm_disks(ctx)
    if armed:
        healing.detail["disks_disarmed"] = armed


def _clear_barriers(ctx: Ctx, healing: Healing) -> None:
    """A node whose barrier is stuck is restarted: an operator's only remedy (protocol
    §5)."""
    stuck = sorted(ctx.stuck)
    ctx.stuck.clear()
    for n in stuck:
        if n not in healing.restart:
            ctx.world.kill(n)
            healing.restart.append(n)
    healing.detail["barrier_cleared"] = stuck


NOTHING = Undo("nothing", 0, lambda ctx, healing: None)  # what it did stays (a snapshot)
NETWORK = Undo("network", 0, _heal_network)
RESUME = Undo("resume", 1, _resume_paused)
CLOCKS = Undo("clocks", 2, _reset_clocks)
DISKS = Undo("disks", 2, _disarm_disks)
RESTART = Undo("restart", 3, _restart_dead)
BARRIERS = Undo("barriers", 4, _clear_barriers)


def final_undos() -> list[Undo]:
    """Every kind's final undo, once each, in stage order."""
    return sorted(dict.fromkeys(k.final for k in KINDS.values()), key=lambda u: u.stage)


def _heal(ctx: Ctx, step: Step | None, nodes: list[str]) -> Generator[Effect, Any, None]:
    """The final generator, at the time limit once no step runs any more: every kind's
    final undo (each looks at the world, so a kind the plan never ran finds nothing to
    undo, and a node that died on its own is restarted too), then the restarts they
    asked for, waited on together; one `heal-all` record."""
    healing = Healing()
    for undo in final_undos():
        undo.fn(ctx, healing)
    for n in healing.restart:
        ctx.world.start(n)
    failed = yield WaitUp(tuple(healing.restart))
    ctx.world.record("event", "heal-all", sorted(healing.restart),
                     restarted=sorted(healing.restart), **healing.detail,
                     **({"failed_to_start": failed} if failed else {}))
    ctx.active.clear()


# ---------------------------------------------------------------------- the kinds


def _rotate_race(ctx: Ctx, step: Step, nodes: list[str]) -> Generator[Effect, Any, None]:
    yield from rotate_race(ctx, step, nodes, operator_rotate)


def _damage_args(r: random.Random) -> dict[str, Any]:
    return {"area": r.choice(["wal", "wal", "snapshot", "sidecar"]), "live": r.random() < 0.3,
            "pick": r.randrange(1 << 30)}


def _write_args(r: random.Random) -> dict[str, Any]:
    return {"p": round(r.uniform(0.02, 0.3), 3), "pick": r.randrange(1 << 30)}


_DAMAGED = ("one", "follower", "leader", "lagging")


def _delay_args(r: random.Random) -> dict[str, Any]:
    ms = r.choice([5, 20, 50, 100, 250])
    return {"ms": ms, "jitter": ms / 2}


_CUT = ("leader", "one", "follower")


def _kinds(*kinds: FaultKind) -> dict[str, FaultKind]:
    return {k.name: k for k in kinds}


# The order is the generator's: its pool of actions is drawn in this order.
KINDS: dict[str, FaultKind] = _kinds(
    # processes
    FaultKind("kill", "kill", _kill, RESTART, timed=True, windowed=True, disruptive=True,
              roles=("one", "leader", "follower", "minority", "lagging", "marker-holder",
                     "restarted")),  # SIGKILL; restarted when the step ends
    FaultKind("restart", "kill", _restart, RESTART, windowed=True, disruptive=True,
              roles=("one", "leader", "follower", "restarted", "lagging"),
              draw=lambda r: {"down": r.choice([0.0, 0.05, 0.3]),
                              "times": r.choice([1, 1, 2, 3])}),  # a bounce
    FaultKind("kill-power", "power", _kill, RESTART, timed=True, windowed=True,
              disruptive=True,
              roles=("one", "leader", "follower", "minority", "marker-holder", "majority",
                     "all"),
              draw=lambda r: {"torn": r.random() < 0.5}),  # lose what was not durable
    FaultKind("pause", "pause", _pause, RESUME, timed=True, windowed=True, disruptive=True,
              roles=("one", "leader", "follower", "minority", "marker-holder")),
    # the log
    FaultKind("snapshot", "snapshot", _snapshot, NOTHING,
              roles=("one", "follower", "leader", "all", "lagging")),
    FaultKind("compact", "snapshot", _compact, NOTHING, at_event_node=False,
              roles=("one", "lagging", "follower")),  # everyone but the targets
    # partitions
    FaultKind("isolate", "partition", _partition, NETWORK, timed=True, windowed=True,
              disruptive=True,
              roles=("one", "leader", "follower", "marker-holder", "lagging")),
    FaultKind("split", "partition", _partition, NETWORK, timed=True, windowed=True,
              disruptive=True, roles=("leader-pair", "minority", "leader-pair"),
              focus_roles=("leader-pair", "leader")),
    FaultKind("lead", "partition", _lead, NETWORK, timed=True, windowed=True,
              roles=("one", "follower", "restarted", "lagging", "marker-holder")),
    FaultKind("halves", "partition", _partition, NETWORK, timed=True, windowed=True,
              roles=("none",), at_event_node=False),
    FaultKind("ring", "partition", _partition, NETWORK, timed=True, windowed=True,
              roles=("none",), at_event_node=False),  # majorities ring
    FaultKind("bridge", "partition", _partition, NETWORK, timed=True, windowed=True,
              roles=("one", "leader")),
    FaultKind("cut-in", "partition", _partition, NETWORK, timed=True, windowed=True,
              disruptive=True, roles=_CUT),
    FaultKind("cut-out", "partition", _partition, NETWORK, timed=True, windowed=True,
              disruptive=True, roles=_CUT),
    # the network
    FaultKind("slow-in", "net", _net, NETWORK, timed=True, windowed=True, disruptive=True,
              roles=_CUT, draw=_delay_args),
    FaultKind("slow-out", "net", _net, NETWORK, timed=True, windowed=True,
              roles=("leader", "one"), draw=_delay_args),
    FaultKind("loss", "net", _net, NETWORK, timed=True, windowed=True, at_event_node=False,
              roles=("all", "all", "one"),
              draw=lambda r: {"p": round(r.uniform(0.05, 0.4), 3)}),
    FaultKind("delay", "net", _net, NETWORK, timed=True, windowed=True, at_event_node=False,
              roles=("all",), draw=_delay_args),
    FaultKind("duplicate", "net", _net, NETWORK, timed=True, windowed=True,
              at_event_node=False, roles=("all", "all", "one"),
              draw=lambda r: {"p": round(r.uniform(0.1, 0.5), 3)}),
    FaultKind("reorder", "net", _net, NETWORK, timed=True, windowed=True,
              at_event_node=False, roles=("all",),
              draw=lambda r: {"ms": 2, "jitter": r.choice([10, 30, 60])}),
    # the clock: disruptive, as a slow leader loses its followers and a fast one ends
    # its apply wait early; fast and slow equally likely (a factor from 1/4 to 4)
    FaultKind("clock-skew", "clock", _clock_skew, CLOCKS, timed=True, windowed=True,
              disruptive=True, roles=("one", "follower", "leader", "minority"),
              draw=lambda r: {"factor": round(2.0 ** r.uniform(-2.0, 2.0), 3)}),
    # storage (opt-in): a node's files damaged at rest, in both worlds; writes its disk
    # drops or misplaces, in the simulated disk only (a real one cannot be told to)
    FaultKind("bitflip", "storage", storage_damage, DISKS, timed=True, roles=_DAMAGED,
              draw=_damage_args),
    FaultKind("sector-error", "storage", storage_damage, DISKS, timed=True, roles=_DAMAGED,
              draw=_damage_args),
    FaultKind("lost-write", "storage", faulty_writes, DISKS, timed=True, roles=_DAMAGED,
              draw=_write_args, worlds=("sim",)),
    FaultKind("misdirected-write", "storage", faulty_writes, DISKS, timed=True,
              roles=_DAMAGED, draw=_write_args, worlds=("sim",)),
    # composite primitives (opt-in): each one schedule the issue named, whole in a step
    FaultKind("deposed-tail", "races", deposed_tail, NETWORK, timed=True, windowed=True,
              disruptive=True, roles=("leader",), focus_roles=("leader",)),
    FaultKind("minority-read", "races", minority_read, NETWORK, timed=True, windowed=True,
              roles=("leader",)),
    FaultKind("snapshot-restart", "races", snapshot_restart, NETWORK, timed=True,
              windowed=True, roles=("lagging", "follower"), at_event_node=False,
              draw=lambda r: {"ms": r.choice([10, 30, 80])}),
    # placed by the generator on the marker's events (`plan.races`), not drawn at random
    FaultKind("rotate-race", "races", _rotate_race, NETWORK, timed=True,
              draw=lambda r: {"ms": r.choice([20, 50, 150])}),
    # the operator (the generator's own code places them)
    FaultKind("rotate", "rotate", operator_rotate, NOTHING),
    FaultKind("enable", "enable", operator_enable, BARRIERS),
    # after the final reads: damage one replica's copy of an entry above C, replay it
    FaultKind("corrupt-entry", "corrupt", _corrupt_entry, NOTHING, runs_at="final"),
    # the run's own: no plan holds it
    FaultKind("heal-all", "", _heal, NOTHING, runs_at="heal"),
)
HEAL = KINDS["heal-all"]

# The families `--nemesis all` enables, in the order a plan stores them.
FAMILIES: tuple[str, ...] = ("kill", "power", "pause", "partition", "net", "snapshot",
                             "rotate", "enable", "corrupt")
# Families a run has only when it names them (`--nemesis all,clock`): `all` keeps meaning
# what it meant when every stored seed was drawn, so those seeds replay the same plan.
OPT_IN_FAMILIES: tuple[str, ...] = ("clock", "storage", "races")

# What a step of each action runs (the heal and corrupt-entry are driven by the run).
HANDLERS: dict[str, Handler] = {k.name: k.handler for k in KINDS.values() if k.family}
