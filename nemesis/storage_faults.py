"""The handlers of the storage faults and of the composite primitives (their records,
one per kind, are in `nemesis/faults.py: KINDS`, with every other kind's).

Storage faults (TigerBeetle's VOPR, lazyfs): a node's files damaged at rest (a bit
flipped, a latent sector error) or its disk dropping or misplacing writes for a window
(the simulated disk only). A node must find the damage by its checksums and either
refuse to start (fail closed) or repair it; a refusal is the correct reaction, so it is
recorded in the nemesis record (`damaged_storage` on the fault's `start`, `outcome` on
its `stop`) and the `crashes` checker does not count a start refused after it
(`checker/suite.py: storage_damage`). Damage nobody detected is still judged: the
checkers never excuse a divergence. At most a minority of the nodes have their storage
damaged in one run, and one that refused stays down (`Ctx.broken`), so a majority of
intact nodes always remains.

The composite primitives are the schedules the issue asked for by name, each one step
so that a swarm draws them and a shrunk plan keeps them whole: a DEK rotation raced
against the marker (`rotate-race`), a deposed leader whose uncommitted tail the new
leader's commit index overtakes (`deposed-tail`), reads in flight on a leader left in
the minority (`minority-read`), a restart while catching up by snapshot
(`snapshot-restart`).

Kept apart from `nemesis/faults.py` for its length; it imports only `nemesis/world.py`
(the operator's rotation is handed in by the record's wrapper there).
"""
from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from nemesis import grudges
from nemesis.world import Call, Ctx, Effect, Hold, NetRule, Sleep, Until

if TYPE_CHECKING:
    from nemesis.primitives import Step

# How long a step waits for its node to come up or give up after a start.
START_WAIT = 20.0


def _room(ctx: Ctx, node: str) -> str | None:
    """Why `node` may not have its storage damaged now, or None: at most a minority of
    the nodes in a run, and never one that already refused to start."""
    if node in ctx.broken:
        return f"{node} refused its damaged disk already and stays down"
    limit = (len(ctx.world.ids) - 1) // 2
    if node not in ctx.damaged and len(ctx.damaged) >= limit:
        return (f"the storage of {len(ctx.damaged)} of {len(ctx.world.ids)} nodes is "
                f"damaged already (a minority at most)")
    return None


def _start_outcome(ctx: Ctx, step: Step, node: str) -> Generator[Effect, Any, None]:
    """Start `node` on its damaged files and record how it took them: it came up (the
    damage was repaired, not read, or not detected: the checkers judge what follows), or
    it refused to start (fail closed: expected; it stays down)."""
    w = ctx.world
    w.start(node)
    yield Until(lambda: w.up(node) or w.ended(node), START_WAIT, 0.05)
    if w.up(node):
        outcome = "started"
    elif w.ended(node):
        outcome = "refused to start (expected: the damage was detected)"
        ctx.broken.add(node)
    else:
        outcome = f"not up within {START_WAIT:g} s"
    w.record("stop", step.action, [node], step=step.id, outcome=outcome)


def storage_damage(ctx: Ctx, step: Step, nodes: list[str]) -> Generator[Effect, Any, None]:
    """`bitflip` / `sector-error`: one node's files damaged at rest. Stopped (the default)
    the node is killed, damaged, kept down for the step and started; `live`, it is
    damaged while running, runs on for the step, then is bounced so the damage is read."""
    if not nodes:
        return
    w, node = ctx.world, nodes[0]
    how = "flip" if step.action == "bitflip" else "sector"
    why = _room(ctx, node)
    if why is not None:
        w.record("event", step.action, [node], step=step.id, skipped=why)
        return
    live = bool(step.params.get("live")) and w.alive(node)
    was_alive = w.alive(node)
    if not live:
        w.kill(node)
    got = w.damage_storage(node, how, str(step.params.get("area", "wal")),
                           int(step.params.get("pick", 0)))
    if "skipped" in got:
        w.record("event", step.action, [node], step=step.id, **got)
        if was_alive and not live:
            w.start(node)
        return
    ctx.damaged.add(node)
    w.record("start", step.action, [node], step=step.id, damaged_storage=True, live=live,
             **got)
    yield Hold(step)
    w.kill(node)
    yield from _start_outcome(ctx, step, node)


def faulty_writes(ctx: Ctx, step: Step, nodes: list[str]) -> Generator[Effect, Any, None]:
    """`lost-write` / `misdirected-write`: for the step, each write of the node reports
    success and, with probability `p`, never lands (or lands elsewhere in its files);
    the page cache hides it until the node is restarted, so it is bounced at the end."""
    if not nodes:
        return
    w, node = ctx.world, nodes[0]
    why = _room(ctx, node)
    if why is None and not w.alive(node):
        why = f"{node} is down: it writes nothing"
    if why is not None:
        w.record("event", step.action, [node], step=step.id, skipped=why)
        return
    how = "lost" if step.action == "lost-write" else "misdirected"
    ctx.damaged.add(node)
    ctx.armed.add(node)
    w.arm_writes(node, how, float(step.params.get("p", 0.1)), int(step.params.get("pick", 0)))
    w.record("start", step.action, [node], step=step.id, damaged_storage=True,
             p=step.params.get("p", 0.1))
    try:
        yield Hold(step)
    finally:
        # Disarmed even when the heal closes the step: the heal's undo finds it done.
        if node in ctx.armed:
            ctx.armed.discard(node)
            done = w.arm_writes(node, None)
            w.record("event", step.action, [node], step=step.id, disarmed=True, **done)
    w.kill(node)
    yield from _start_outcome(ctx, step, node)


def disarm_disks(ctx: Ctx) -> list[str]:
    """The heal's part: every disk still dropping or misplacing writes made honest."""
    armed = sorted(ctx.armed)
    for n in armed:
        ctx.world.arm_writes(n, None)
    ctx.armed.clear()
    return armed


# ---------------------------------------------------------------------- primitives


def _cut_off(ids: list[str], node: str) -> NetRule:
    rest = [n for n in ids if n != node]
    return NetRule(blocked=grudges.complete([[node], rest]))


def rotate_race(ctx: Ctx, step: Step, nodes: list[str],
                rotate: Callable[[Ctx, Step, list[str]], Generator[Effect, Any, None]]
                ) -> Generator[Effect, Any, None]:
    """RotateDEK proposed between the marker's proposal and its apply (the plan triggers
    it on `marker-proposed` or `marker-committed`): through the leader; aimed at a
    follower, that follower's inbound links are slowed for the step first, so that it
    lags and applies the marker and the rotation late, in one batch."""
    node = nodes[0] if nodes else None
    lead = ctx.leader()
    tag = f"step#{step.id}"
    if node is not None and node != lead:
        ms = float(step.params.get("ms", 50))
        ids = list(ctx.world.ids)
        ctx.set_rule(tag, NetRule(delay={(x, node): (ms, ms / 2) for x in ids if x != node}))
    try:
        yield from rotate(ctx, step, [lead] if lead else [])
        yield Hold(step)
    finally:
        ctx.set_rule(tag, None)


def deposed_tail(ctx: Ctx, step: Step, nodes: list[str]) -> Generator[Effect, Any, None]:
    """The leader is cut off while clients still write to it (an uncommitted tail grows
    in its log), until the majority elected a leader whose commit index passed that
    tail (or the step's duration ran out); then healed, so that the old leader hears
    heartbeats whose commit index is past its divergent tail."""
    if not nodes:
        return
    w, old = ctx.world, nodes[0]
    tag = f"step#{step.id}"
    ctx.set_rule(tag, _cut_off(list(w.ids), old))
    try:
        yield Sleep(min(0.3, step.duration / 3))  # the clients' writes pile up there

        def overtaken() -> bool:
            mine = (w.status(old) or {}).get("last_index", 0)
            lead = ctx.leader()
            st = w.status(lead) if lead and lead != old else None
            return bool(st) and st.get("role") == "leader" and st.get("commit", 0) > mine

        yield Until(overtaken, max(0.5, step.duration), 0.02)
    finally:
        ctx.set_rule(tag, None)


def minority_read(ctx: Ctx, step: Step, nodes: list[str]) -> Generator[Effect, Any, None]:
    """The leader in the minority of a partition while reads keep going to it: the
    clients whose home it is, and reads this step sends it (recorded in the history,
    so linearizability judges them). A leader that cannot confirm its term with a
    quorum must not answer them."""
    if not nodes:
        return
    w, old = ctx.world, nodes[0]
    ids = list(w.ids)
    rng = ctx.rng(step.id, "minority")
    rest = [n for n in ids if n != old]
    rng.shuffle(rest)
    small = [old, *rest[:(len(ids) - 1) // 2 - 1]] if len(ids) >= 5 else [old]
    tag = f"step#{step.id}"
    ctx.set_rule(tag, NetRule(blocked=grudges.complete(
        [small, [n for n in ids if n not in small]])))
    end = w.now() + max(0.1, step.duration)
    proc, k = 0, 0
    try:
        while w.now() < end:
            key = f"k{k % 2}"
            k += 1
            name = f"minority-read-{step.id}-{proc}"
            w.op(name, "invoke", "read", key, None, node=old)
            rep = yield Call(old, "read", 1.0, {"key": key})
            if rep is not None and rep.get("ok"):
                w.op(name, "ok", "read", key, rep.get("value"), node=old)
            elif rep is not None and rep.get("definite"):
                w.op(name, "fail", "read", key, None, error=str(rep.get("code")), node=old)
            else:
                w.op(name, "info", "read", key, None,
                     error="timeout" if rep is None else str(rep.get("code")), node=old)
                proc += 1  # Jepsen: a process that got no answer is retired
            yield Sleep(0.05)
    finally:
        ctx.set_rule(tag, None)


def snapshot_restart(ctx: Ctx, step: Step, nodes: list[str]) -> Generator[Effect, Any, None]:
    """A follower cut off while the others write and compact (so it can only catch up
    by InstallSnapshot), then let back in over slow inbound links and restarted while
    the snapshot is on its way (`ms`: the links' delay; the kill lands within it)."""
    if not nodes:
        return
    w, x = ctx.world, nodes[0]
    ids = list(w.ids)
    tag = f"step#{step.id}"
    rng = ctx.rng(step.id, "catch-up")
    ctx.set_rule(tag, _cut_off(ids, x))
    try:
        yield Sleep(max(0.3, step.duration / 2))
        others = [n for n in ids if n != x and w.up(n)]
        got = {n: w.snapshot_now(n) for n in others}
        w.record("event", "compact", others, step=step.id, snapshot_index=got,
                 left_behind=[x])
        ms = float(step.params.get("ms", 50))
        ctx.set_rule(tag, NetRule(delay={(o, x): (ms, 0.0) for o in ids if o != x}))
        yield Sleep(rng.uniform(0.0, 2 * ms / 1000.0))  # the snapshot is in flight
        w.kill(x)
        w.record("event", "snapshot-restart", [x], step=step.id)
        yield Sleep(rng.choice([0.0, 0.05, 0.2]))
        w.start(x)
        yield Until(lambda: w.up(x), START_WAIT, 0.05)
        yield Hold(step)
    finally:
        ctx.set_rule(tag, None)
