"""The fault handlers (`nemesis/faults.py`) against a fake cluster: no processes,
no sockets. A tiny synchronous driver performs their effects on a fake clock."""
from __future__ import annotations

import json
import os
import random
from typing import Any

import pytest

from nemesis.faults import (
    HEAL,
    KINDS,
    Call,
    Ctx,
    Hold,
    LeaderWithin,
    Net,
    NetRule,
    Sleep,
    StartAndWait,
    Until,
    WaitUp,
    _restart_stuck,
    choose,
)
from nemesis.primitives import Step, Target, When

IDS = ["n1", "n2", "n3", "n4", "n5"]


class FakeWorld:
    def __init__(self) -> None:
        self.ids = list(IDS)
        self.t = 0.0
        self.down: set[str] = set()
        self.stopped: set[str] = set()  # paused
        self.calls: list[tuple[Any, ...]] = []
        self.run_tag = "fake"
        self.ticks: dict[str, float] = {}  # node -> tick factor (1 when absent)
        self.ops: list[tuple[Any, ...]] = []
        self.net = Net()
        self.st = {n: {"role": "follower", "term": 3, "applied": 100, "last_index": 100,
                       "commit": 100} for n in IDS}
        self.st["n1"]["role"] = "leader"
        self.records: list[tuple[str, str, Any, dict[str, Any]]] = []
        self.replies: list[dict[str, Any] | None] = []  # answers to Call, in order

    def now(self) -> float:
        return self.t

    def alive(self, nid: str) -> bool:
        return nid not in self.down

    def up(self, nid: str) -> bool:
        return nid not in self.down and nid not in self.stopped

    def paused(self, nid: str) -> bool:
        return nid in self.stopped

    def kill(self, nid: str, *, power: bool = False,
             torn: random.Random | None = None) -> dict[str, Any] | None:
        self.calls.append(("kill", nid, power))
        self.down.add(nid)
        return {"truncated": {"wal/00000001.wal": 40}, "undone": []} if power else None

    def start(self, nid: str) -> None:
        self.calls.append(("start", nid))
        self.down.discard(nid)

    def pause(self, nid: str) -> None:
        self.calls.append(("pause", nid))
        self.stopped.add(nid)

    def resume(self, nid: str) -> None:
        self.calls.append(("resume", nid))
        self.stopped.discard(nid)

    def status(self, nid: str) -> dict[str, Any] | None:
        return None if not self.up(nid) else dict(self.st[nid])

    def snapshot_now(self, nid: str) -> int | None:
        self.calls.append(("snapshot", nid))
        return self.st[nid]["applied"]

    def set_net(self, net: Net) -> None:
        self.net = net

    def set_tick_factor(self, nid: str, factor: float) -> None:
        self.calls.append(("tick", nid, factor))
        self.ticks[nid] = factor

    def damage_entry(self, nid: str, index: int) -> str | None:
        self.calls.append(("damage", nid, index))
        return None

    def op(self, process: Any, type_: str, f: str, key: str | None, value: Any,
           error: str | None = None, node: str | None = None) -> None:
        self.ops.append((process, type_, f, key, value, error, node))

    def record(self, f: str, fault: str, targets: Any, **detail: Any) -> None:
        self.records.append((f, fault, targets, detail))

    def new_dek(self) -> bytes:
        return b"wrapped-dek"


def drive(ctx: Ctx, step: Step | None, nodes: list[str], *, on_hold: Any = None,
          kind: Any = None) -> list[Any]:
    """Run a handler (the step's kind's, or `kind`'s) to its end on the fake clock;
    returns the effects it yielded."""
    w: FakeWorld = ctx.world  # type: ignore[assignment]
    gen = (kind or KINDS[step.action]).handler(ctx, step, nodes)  # type: ignore[union-attr]
    seen: list[Any] = []
    value: Any = None
    while True:
        try:
            eff = gen.send(value)
        except StopIteration:
            return seen
        seen.append(eff)
        value = None
        if isinstance(eff, Sleep):
            w.t += eff.seconds
        elif isinstance(eff, Hold):
            if on_hold is not None:
                on_hold()
            w.t += eff.step.duration
        elif isinstance(eff, Until):
            value = eff.pred()
            w.t += 0.01
        elif isinstance(eff, Call):
            w.calls.append(("call", eff.node, eff.op, tuple(sorted(eff.fields))))
            value = w.replies.pop(0) if w.replies else None
            w.t += eff.timeout if value is None else 0.01
        elif isinstance(eff, LeaderWithin):  # the run's top level: a leader, or none
            value = next((n for n in w.ids if w.st[n]["role"] == "leader" and w.up(n)),
                         None)
        elif isinstance(eff, StartAndWait):
            w.start(eff.node)
            w.t += 0.3
        elif isinstance(eff, WaitUp):
            value = {n: "down" for n in eff.nodes if not w.up(n)}


def _ctx() -> tuple[Ctx, FakeWorld]:
    w = FakeWorld()
    marks: list[str] = []
    ctx = Ctx(w, seed=1, milestone=marks.append, time_limit=30.0)
    ctx.marks = marks  # type: ignore[attr-defined]
    return ctx, w


def test_kill_restarts_at_the_end_and_power_loss_is_recorded() -> None:
    ctx, w = _ctx()
    drive(ctx, Step(1, "kill", duration=2.0), ["n2"])
    assert w.calls == [("kill", "n2", False), ("start", "n2")] and w.t >= 2.0
    ctx, w = _ctx()
    drive(ctx, Step(2, "kill-power", duration=1.0), ["n3"])
    assert w.calls[0] == ("kill", "n3", True)
    assert w.records[0][1] == "kill-power" and \
        w.records[0][3]["lost"] == {"n3": {"truncated_bytes": 40, "undone": 0}}


def test_pause_resumes_and_restart_bounces() -> None:
    ctx, w = _ctx()
    drive(ctx, Step(1, "pause", duration=1.0), ["n2", "n4"])
    assert w.calls == [("pause", "n2"), ("pause", "n4"), ("resume", "n2"), ("resume", "n4")]
    ctx, w = _ctx()
    effects = drive(ctx, Step(2, "restart", params={"down": 0.3}), ["n5"])
    assert w.calls == [("kill", "n5", False), ("start", "n5")]
    assert not any(isinstance(e, Hold) for e in effects)  # instantaneous: no duration


def test_overlapping_partitions_are_a_union_and_each_undoes_only_itself() -> None:
    ctx, w = _ctx()
    inner: list[Net] = []

    def second() -> None:  # while n1 is isolated, cut the links out of n3 too
        drive(ctx, Step(2, "cut-out", duration=1.0), ["n3"],
              on_hold=lambda: inner.append(w.net))

    drive(ctx, Step(1, "isolate", duration=5.0), ["n1"], on_hold=second)
    both = inner[0].blocked
    assert ("n1", "n2") in both and ("n2", "n1") in both and ("n3", "n4") in both
    assert w.net.blocked == set()  # both ended
    ctx, w = _ctx()
    seen: list[Net] = []
    drive(ctx, Step(3, "split", duration=1.0), ["n1", "n2"], on_hold=lambda: seen.append(w.net))
    assert ("n1", "n3") in seen[0].blocked and ("n1", "n2") not in seen[0].blocked


def test_lead_waits_for_the_target_to_catch_up_then_builds_a_star() -> None:
    ctx, w = _ctx()
    ctx.bindings["Y"] = ["n5"]
    seen: list[Net] = []
    w.st["n3"]["applied"] = 90  # behind the leader's commit (100): the wait fails, then
    effects = drive(ctx, Step(1, "lead", duration=2.0, params={"cut_off": ["leader", "Y"]}),
                    ["n3"], on_hold=lambda: seen.append(w.net))
    assert any(isinstance(e, Until) for e in effects)
    blocked = seen[0].blocked
    assert ("n3", "n2") not in blocked and ("n2", "n4") in blocked
    assert ("n3", "n1") in blocked and ("n3", "n5") in blocked  # the leader and Y cut off
    assert w.net.blocked == set()


@pytest.mark.parametrize("who,expect_all", [(["n1", "n2", "n3", "n4", "n5"], True),
                                            (["n2"], False)])
def test_loss_is_global_or_per_link(who: list[str], expect_all: bool) -> None:
    ctx, w = _ctx()
    seen: list[Net] = []
    drive(ctx, Step(1, "loss", duration=1.0, params={"p": 0.3}), who,
          on_hold=lambda: seen.append(w.net))
    if expect_all:
        assert seen[0].loss_all == 0.3 and not seen[0].loss
    else:
        assert seen[0].loss_all == 0 and seen[0].loss[("n1", "n2")] == 0.3
        assert seen[0].loss[("n2", "n3")] == 0.3 and ("n1", "n3") not in seen[0].loss


def test_net_union_keeps_the_worst() -> None:
    n = Net.union([NetRule(loss_all=0.1, delay={("a", "b"): (5.0, 1.0)}),
                   NetRule(loss={("a", "b"): 0.05}, delay_all=(20.0, 5.0))])
    assert n.loss[("a", "b")] == 0.1  # a per-link setting replaces the global one there
    assert n.delay[("a", "b")] == (20.0, 5.0)


def test_operator_enable_retries_after_indeterminate_answers_and_marks_milestones() -> None:
    ctx, w = _ctx()
    w.replies = [None,  # a timeout
                 {"ok": False, "code": "failed", "definite": False},  # barrier now stuck
                 {"ok": True, "value": {"status": "ok", "cutover": 42}}]
    drive(ctx, Step(1, "enable", params={"main": True, "retry_same": True}), ["n1"])
    calls = [c for c in w.calls if c[0] == "call"]
    assert [c[2] for c in calls] == ["enable-raft-envelope"] * 3
    assert ctx.cutover == 42 and ctx.marks == ["cutover-requested", "cutover-settled"]
    statuses = [a["status"] for a in ctx.attempts]
    assert statuses == ["timeout", "failed", "ok"]
    # After `failed` the operator never asks the stuck node again before restarting it.
    stuck_node = ctx.attempts[1]["node"]
    assert ctx.attempts[2]["node"] != stuck_node or ("kill", stuck_node, False) in w.calls


def test_two_operator_steps_never_restart_one_stuck_node_twice() -> None:
    """Two EnableRaftEnvelope steps share the stuck-barrier list; one restarting a node
    while the other waits for its own restart must not make the other restart it again
    (it once raised KeyError, a harness error: seed 447 of an elastickv hunt)."""
    ctx, w = _ctx()
    w.t = 10.0
    ctx.stuck.update({"n1": 1.0, "n2": 1.0})
    first = _restart_stuck(ctx, random.Random(1))
    assert isinstance(next(first), Until)  # n1 restarted; it waits for n1 to come up
    list(_restart_stuck(ctx, random.Random(2)))  # the other step restarts n2 meanwhile
    list(first)  # resumes: n2 is no longer stuck
    kills = [c for c in w.calls if c[0] == "kill"]
    assert kills == [("kill", "n1", False), ("kill", "n2", False)] and not ctx.stuck


def test_operator_rotate_retries_with_the_same_key() -> None:
    ctx, w = _ctx()
    w.replies = [None, {"ok": True, "value": None, "index": 120}]
    drive(ctx, Step(1, "rotate", params={"wait_applied": True}), ["n1"])
    calls = [c for c in w.calls if c[0] == "call"]
    assert len(calls) == 2 and all(c[2] == "rotate-dek" for c in calls)
    starts = [r[3]["key_id"] for r in w.records if r[1] == "rotate" and r[0] == "start"]
    assert starts == [2, 2]  # the same key id both times (and the same wrapped bytes)


def test_target_roles_follow_what_the_cluster_shows() -> None:
    ctx, w = _ctx()
    rng = random.Random(1)
    assert choose(ctx, Target("leader"), rng) == ["n1"]
    assert choose(ctx, Target("follower"), rng)[0] != "n1"
    ctx.marker_index = 105
    w.st["n4"]["last_index"] = 106  # holds the marker, has not applied it
    assert choose(ctx, Target("marker-holder"), rng) == ["n4"]
    w.st["n2"]["applied"] = 7
    assert choose(ctx, Target("lagging", bind="lag"), rng) == ["n2"]
    assert choose(ctx, Target("bound", ref="lag"), rng) == ["n2"]
    assert choose(ctx, Target("one", avoid=("leader", "lag")), rng)[0] not in ("n1", "n2")
    pair = choose(ctx, Target("leader-pair"), rng)
    assert "n1" in pair and len(pair) == 2
    assert choose(ctx, Target("event"), rng, {"node": "n5"}) == ["n5"]
    assert len(choose(ctx, Target("minority"), rng)) == 2
    assert len(choose(ctx, Target("majority"), rng)) == 3
    ctx.cutover = 50
    ctx.on_event({"kind": "start", "node": "n3"})
    assert choose(ctx, Target("restarted"), rng) == ["n3"]


def test_every_action_has_a_handler_and_a_final_undo() -> None:
    from nemesis.faults import HANDLERS
    from nemesis.primitives import ACTIONS

    assert set(ACTIONS) == set(HANDLERS) == {k for k in KINDS if KINDS[k].family}
    assert all(callable(KINDS[a].handler) and callable(KINDS[a].final.fn) for a in ACTIONS)
    assert When("event", event="marker-proposed").describe() == "on marker-proposed"


def test_clock_skew_speeds_the_targets_up_and_undoes_only_itself() -> None:
    ctx, w = _ctx()
    seen: list[dict[str, float]] = []

    def second() -> None:  # while n2 runs 4x, skew it (and n3) to a quarter
        drive(ctx, Step(2, "clock-skew", duration=1.0, params={"factor": 0.25}),
              ["n2", "n3"], on_hold=lambda: seen.append(dict(w.ticks)))
        seen.append(dict(w.ticks))

    drive(ctx, Step(1, "clock-skew", duration=5.0, params={"factor": 4.0}), ["n2"],
          on_hold=second)
    assert seen[0] == {"n2": 0.25, "n3": 0.25}  # the latest skew holds
    assert seen[1] == {"n2": 4.0, "n3": 1.0}  # its end: the earlier one again, n3 as it was
    assert w.ticks == {"n2": 1.0, "n3": 1.0} and ctx.skews == {}


def test_the_heal_undoes_every_active_kind_once_in_stage_order() -> None:
    """Partitioned, paused, skewed, killed and stuck at once: one heal undoes each,
    restarts the dead and the stuck together and says so in one record."""
    ctx, w = _ctx()
    ctx.set_rule("step#1", NetRule(blocked={("n1", "n2")}))
    w.pause("n2")
    w.kill("n3")
    ctx.skews = {"n4": {5: 3.0}}
    w.ticks["n4"] = 3.0
    ctx.stuck = {"n5": 1.0, "n3": 2.0}  # n3 is down already: started once
    w.calls.clear()
    effects = drive(ctx, None, [], kind=HEAL)
    assert w.net.blocked == set() and not ctx.rules
    assert w.calls == [("resume", "n2"), ("tick", "n4", 1.0), ("kill", "n5", False),
                       ("start", "n3"), ("start", "n5")]
    assert effects == [WaitUp(("n3", "n5"))]
    [(f, fault, targets, detail)] = w.records
    assert (f, fault, targets) == ("event", "heal-all", ["n3", "n5"])
    assert list(detail) == ["restarted", "clock_reset", "barrier_cleared"]
    assert detail["clock_reset"] == ["n4"] and detail["barrier_cleared"] == ["n3", "n5"]
    assert not ctx.stuck and not ctx.skews
    # With nothing active it records what it always did: no clock_reset among it.
    ctx, w = _ctx()
    drive(ctx, None, [], kind=HEAL)
    assert w.calls == [] and w.records == [("event", "heal-all", [], {
        "restarted": [], "barrier_cleared": []})]


def test_corrupt_entry_damages_a_follower_copy_and_waits_for_its_replay() -> None:
    ctx, w = _ctx()
    step = Step(9, "corrupt-entry", Target("follower"), When("milestone", milestone="final"),
                params={"pick": 1})
    assert drive(ctx, step, [], kind=KINDS["corrupt-entry"]) == []  # no cutover: nothing
    ctx.cutover = 50
    for n in IDS:
        w.st[n].update(snapshot_index=0, applied=120, halted=None)
    w.replies = [{"ok": True, "index": 110}]
    halted = {"halted": "entry 110 cannot be opened"}
    real_status = w.status

    def status(nid: str) -> dict[str, Any] | None:
        st = real_status(nid)
        return st if st is None or ("damage", nid, 110) not in w.calls else {**st, **halted}

    w.status = status  # type: ignore[method-assign]
    drive(ctx, step, [], kind=KINDS["corrupt-entry"])
    [victim] = [c[1] for c in w.calls if c[0] == "damage"]
    assert victim != "n1" and ctx.excused == [(victim, 110)]
    assert ("call", "n1", "write", ("key", "value")) in w.calls
    assert [o[1] for o in w.ops] == ["invoke", "ok"] and w.ops[0][4] == "tok-fake-probe009"
    stop = [r for r in w.records if r[0] == "stop"][0]
    assert stop[3]["outcome"] == "halted: entry 110 cannot be opened"


def test_a_window_ending_on_an_event_hands_over_to_the_steps_starting_on_it(tmp_path) -> None:
    """slow-in until marker-proposed, then cut-in from marker-proposed: on real processes
    the two run in their own threads, and the links into the leader must never be open
    between them (the marker's acks would slip through). The real driver, a fake world,
    a real event watch on files."""
    import threading

    from nemesis.plan import Plan
    from orchestrator.real.watch import EventWatch
    from orchestrator.real.world import RealWorld
    from orchestrator.run.config import RunConfig
    from orchestrator.run.program import Run

    class Timeline(RealWorld):
        """The real driver (a thread per step, the event watch on files) over a fake
        cluster: what reaches the switchboard is recorded, nothing else happens."""

        def __init__(self, cfg: RunConfig) -> None:
            super().__init__(cfg, "r-test", str(tmp_path), None, None)  # type: ignore[arg-type]
            self.fake = FakeWorld()
            self.states: list[Net] = []
            self.state_lock = threading.Lock()

        def alive(self, nid: str) -> bool:
            return True

        def up(self, nid: str) -> bool:
            return True

        def status(self, nid: str) -> dict[str, Any] | None:
            return self.fake.status(nid)

        def record(self, f: str, fault: str, targets: Any, **detail: Any) -> None:
            self.fake.record(f, fault, targets, **detail)

        def set_net(self, net: Net) -> None:
            with self.state_lock:
                self.states.append(net)

    proposed = When(on="event", event="marker-proposed", node="L")
    slow = Step(1, "slow-in", Target("leader", bind="L"), When(at=0.0), until=proposed,
                params={"ms": 200, "jitter": 0})
    cut = Step(2, "cut-in", Target("bound", ref="L"), proposed, duration=0.3)
    into_n1 = {(x, "n1") for x in IDS if x != "n1"}
    plan = Plan(seed=1, families=("partition", "net"), scenario="swarm", steps=(slow, cut))
    cfg = RunConfig(seed=1, nodes=len(IDS), time_limit=30).resolved()
    for attempt in range(5):  # the old driver lost the race most of the time, not always
        dirs = {n: str(tmp_path / f"{attempt}-{n}") for n in IDS}
        for d in dirs.values():
            os.makedirs(d)
        world = Timeline(cfg)
        world.watch = EventWatch(dirs).start()
        run = Run(world, cfg, plan)
        world.listen(run.ctx.on_event)
        for step in plan.steps:
            world.spawn(run.step(step), "steps", f"nemesis-{step.id}")
        try:
            assert wait_until(lambda w=world: any(s.delay for s in w.states))
            with open(os.path.join(dirs["n1"], "events.jsonl"), "a") as fh:
                fh.write(json.dumps({"t": 1, "node": "n1", "kind": "marker-proposed",
                                     "index": 9}) + "\n")
            assert wait_until(lambda w=world: any(s.blocked for s in w.states))
            for t in world.threads["steps"]:
                t.join(2.0)
        finally:
            world.stops["steps"].set()
            world.watch.stop()
        held = [s for s in world.states if into_n1 <= set(s.delay) or into_n1 <= s.blocked]
        first = world.states.index(held[0])
        last_cut = max(i for i, s in enumerate(world.states) if into_n1 <= s.blocked)
        gaps = [s for s in world.states[first:last_cut]
                if not (into_n1 <= set(s.delay) or into_n1 <= s.blocked)]
        assert not gaps, (attempt, world.states)


def wait_until(pred: Any, timeout: float = 5.0) -> bool:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.005)
    return False
