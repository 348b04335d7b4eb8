"""Plays a nemesis plan (`nemesis/plan.py`) against real processes.

Each step of the plan waits for its trigger in a thread of its own (a time, a node event
seen in the nodes' `events.jsonl`, a run milestone, another step's end), then its target
is chosen from what the cluster shows and its handler (`orchestrator/faults.py`, one per
action) runs: process signals, switchboard rules (the union of every active fault's, so
ending one fault never undoes another) and admin requests. Every fault is recorded as a
start and a stop entry of process `nemesis` (`targets` = the nodes hit, `detail` = what
was done and seen); operator calls record each attempt.

`RealWorld` is the handlers' view of the cluster (`faults.World`); the deterministic
simulator implements the same interface in simulated time.
"""
from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Generator
from typing import Any

from nemesis.plan import Plan
from nemesis.primitives import Step, When, event_matches

from .client import Client, ClientTimeout
from .cluster import Cluster, ClusterError
from .faults import HANDLERS, Call, Ctx, Effect, Hold, Net, Sleep, Until, choose
from .store import Recorder
from .watch import EventWatch

# Actions recorded as one start/stop window by the driver (operator calls record each of
# their attempts themselves; snapshot and compact record what they did as one event).
_WINDOWED = {"kill", "kill-power", "restart", "pause", "isolate", "split", "lead", "halves",
             "ring", "bridge", "cut-in", "cut-out", "slow-in", "slow-out", "loss", "delay",
             "duplicate", "reorder"}


class RealWorld:
    """`faults.World` over a `Cluster`, its switchboard and admin clients."""

    def __init__(self, cluster: Cluster, rec: Recorder, t0: float,
                 new_dek: Callable[[], bytes]) -> None:
        self.cl = cluster
        self.rec = rec
        self.t0 = t0
        self._new_dek = new_dek
        self.ids = list(cluster.ids)
        self.lock = threading.RLock()  # the cluster and the switchboard control
        self._local = threading.local()
        self._clients: list[Client] = []

    def _client(self) -> Client:
        c = getattr(self._local, "client", None)
        if c is None:
            c = Client(self.cl.endpoints(), timeout=1.0)
            self._local.client = c
            with self.lock:
                self._clients.append(c)
        return c

    def now(self) -> float:
        return time.monotonic() - self.t0

    def alive(self, nid: str) -> bool:
        return self.cl.nodes[nid].alive

    def up(self, nid: str) -> bool:
        h = self.cl.nodes[nid]
        return h.alive and not h.paused and self.status(nid) is not None

    def kill(self, nid: str, *, power: bool = False,
             torn: random.Random | None = None) -> dict[str, Any] | None:
        with self.lock:
            return self.cl.kill(nid, power=power, torn=torn)

    def start(self, nid: str) -> None:
        with self.lock:
            self.cl.start_node(nid, wait=None)

    def pause(self, nid: str) -> None:
        with self.lock:
            self.cl.pause(nid)

    def resume(self, nid: str) -> None:
        with self.lock:
            self.cl.resume(nid)

    def status(self, nid: str) -> dict[str, Any] | None:
        h = self.cl.nodes[nid]
        if not h.alive or h.paused:
            return None
        try:
            rep = self._client().admin(nid, "status", timeout=0.3)
        except ClientTimeout:
            return None
        return rep.get("value") if rep.get("ok") else None

    def snapshot_now(self, nid: str) -> int | None:
        rep = self.call(nid, "snapshot-now", 3.0)
        return (rep.get("value") or {}).get("snapshot_index") if rep and rep.get("ok") else None

    def call(self, nid: str, op: str, timeout: float, **fields: Any) -> dict[str, Any] | None:
        if not self.cl.nodes[nid].alive:
            return None
        try:
            return self._client().admin(nid, op, timeout=timeout, **fields)
        except ClientTimeout:
            return None

    def set_net(self, net: Net) -> None:
        with self.lock:
            ctl = self.cl.control
            if ctl is None:
                return
            ctl.set_faults(blocked=sorted(net.blocked), loss_all=net.loss_all,
                           loss=[[*k, v] for k, v in sorted(net.loss.items())],
                           dup_all=net.dup_all,
                           dup=[[*k, v] for k, v in sorted(net.dup.items())],
                           delay_all=net.delay_all,
                           delay=[[*k, *v] for k, v in sorted(net.delay.items())])

    def record(self, f: str, fault: str, targets: Any, **detail: Any) -> None:
        self.rec.fault(time.monotonic_ns(), f, fault, targets, detail or None)

    def new_dek(self) -> bytes:
        return self._new_dek()

    def close(self) -> None:
        with self.lock:
            for c in self._clients:
                c.close()
            self._clients.clear()


class Nemesis:
    """The driver: one thread per step, effects performed by waiting for real."""

    def __init__(self, world: RealWorld, plan: Plan, watch: EventWatch, *, seed: int,
                 time_limit: float, stop: threading.Event) -> None:
        self.world = world
        self.plan = plan
        self.watch = watch
        self.time_limit = time_limit
        self.stop = stop
        self.ctx = Ctx(world, seed, milestone=self._milestone, time_limit=time_limit)
        self._milestones: dict[str, threading.Event] = defaultdict(threading.Event)
        self._milestone_pos: dict[str, int] = {}
        self._done: dict[int, threading.Event] = {s.id: threading.Event() for s in plan.steps}
        # Set once a step's first effect took hold (or once it will never fire): a window
        # that ends on an event waits for the steps that start on that same event.
        self._applied: dict[int, threading.Event] = {s.id: threading.Event()
                                                     for s in plan.steps}
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.watch.listen(self.ctx.on_event)
        for step in self.plan.steps:
            if step.action == "corrupt-entry":
                continue  # the runner does it after the final reads
            t = threading.Thread(target=self._guard(step), name=f"nemesis-{step.id}",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def join(self, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))

    @property
    def active(self) -> dict[int, str]:
        return self.ctx.active

    def heal_all(self, wait: float = 20.0) -> None:
        """The final generator: heal the network, resume, restart the dead and the nodes
        whose barrier is stuck (an operator's remedy), and wait (up to `wait` seconds in
        all) until they are up."""
        w, cl = self.world, self.world.cl
        with w.lock:
            self.ctx.rules.clear()
            if cl.control is not None:
                cl.control.heal()
            for nid, h in cl.nodes.items():
                if h.paused:
                    cl.resume(nid)
            down = [nid for nid, h in cl.nodes.items() if not h.alive]
            stuck = sorted(self.ctx.stuck)
            self.ctx.stuck.clear()
            for nid in stuck:
                if nid not in down:
                    cl.kill(nid)
                    down.append(nid)
            for nid in down:
                cl.start_node(nid, wait=None)
            end = time.monotonic() + wait
            failed = {}
            for nid in down:
                try:
                    cl.wait_up(nid, max(0.5, end - time.monotonic()))
                except ClusterError as e:  # evidence, not a harness failure: recorded
                    failed[nid] = str(e)
        w.record("event", "heal-all", sorted(down), restarted=sorted(down),
                 barrier_cleared=stuck, **({"failed_to_start": failed} if failed else {}))
        self.ctx.active.clear()

    def close(self) -> None:
        self.world.close()

    # ------------------------------------------------------------------ milestones

    def _milestone(self, name: str) -> None:
        if name not in self._milestone_pos:
            self._milestone_pos[name] = self.watch.mark()
        self._milestones[name].set()
        self.world.record("event", name, None, cutover=self.ctx.cutover or None)

    def milestone(self, name: str) -> None:
        """Mark a run milestone from outside (the runner)."""
        self._milestone(name)

    # ------------------------------------------------------------------ steps

    def _guard(self, step: Step) -> Callable[[], None]:
        def run() -> None:
            try:
                self._run_step(step)
            except Exception as e:  # noqa: BLE001 - recorded; the run goes on
                if not self.stop.is_set():
                    self.world.record("event", "nemesis-error", None, step=step.id,
                                      error=f"{type(e).__name__}: {e}")
            finally:
                self._applied[step.id].set()
                self._done[step.id].set()
        return run

    def _run_step(self, step: Step) -> None:
        fired, ev = self._wait_for(step.when, since=0)
        if not fired:
            return
        if step.delay and self.stop.wait(step.delay):
            return
        if self.stop.is_set() or self.world.now() > self.time_limit - 0.3:
            return
        rng = self.ctx.rng(step.id, "target")
        nodes = choose(self.ctx, step.target, rng, ev)
        windowed = step.action in _WINDOWED
        if windowed:
            self.world.record("start", step.action, nodes, step=step.id, origin=step.origin,
                              trigger=step.when.describe(), **step.params)
            self.ctx.active[step.id] = f"{step.action} {','.join(nodes) or '-'}"
        try:
            self._drive(HANDLERS[step.action](self.ctx, step, nodes), self._applied[step.id])
        finally:
            if windowed:
                self.ctx.active.pop(step.id, None)
                self.world.record("stop", step.action, nodes, step=step.id)

    def _drive(self, gen: Generator[Effect, Any, None],
               applied: threading.Event | None = None) -> None:
        value: Any = None
        while True:
            try:
                eff = gen.send(value)
            except StopIteration:
                return
            if self.stop.is_set():
                gen.close()  # the runner heals whatever was left undone
                return
            if applied is not None and isinstance(eff, Hold | Sleep | Until):
                applied.set()  # the fault is in place; it is now held or waited on
            value = self._perform(eff)

    def _perform(self, eff: Effect) -> Any:
        if isinstance(eff, Sleep):
            self.stop.wait(eff.seconds)
            return None
        if isinstance(eff, Until):
            end = time.monotonic() + eff.timeout
            while not self.stop.is_set():
                if eff.pred():
                    return True
                if time.monotonic() >= end:
                    return False
                self.stop.wait(eff.poll)
            return False
        if isinstance(eff, Hold):
            s = eff.step
            if s.until is not None:
                self._wait_for(s.until, since=self.watch.mark())
                self._hand_over(s.until)
            else:
                self.stop.wait(s.duration)
            return None
        if isinstance(eff, Call):
            return self.world.call(eff.node, eff.op, eff.timeout, **eff.fields)
        raise TypeError(f"unknown effect {eff!r}")  # pragma: no cover

    def _hand_over(self, when: When, timeout: float = 0.5) -> None:
        """A window that ends on an event lets the steps that start on that same event
        take hold first, as they do at one instant in the simulator: a slow link lifted
        on marker-proposed must not let the marker's acks through before the cut that
        replaces it (they would, by tens of ms, on real processes)."""
        end = time.monotonic() + timeout
        for t in self.plan.steps:
            if t.when == when and not t.delay and t.action in _WINDOWED:
                self._applied[t.id].wait(max(0.0, end - time.monotonic()))

    def _wait_for(self, when: When, since: int) -> tuple[bool, dict[str, Any] | None]:
        """Block until `when` fires: (True, the triggering event if any), or (False,
        None) when the run stops first."""
        if when.on == "time":
            while not self.stop.is_set():
                left = when.at - self.world.now()
                if left <= 0:
                    return True, None
                self.stop.wait(min(left, 0.1))
            return False, None
        if when.on == "milestone":
            return self._wait_event(self._milestones[when.milestone]), None
        if when.on == "after":
            done = self._done.get(when.step)
            if done is None:
                return False, None
            return self._wait_event(done), None
        if when.since:
            if not self._wait_event(self._milestones[when.since]):
                return False, None
            since = max(since, self._milestone_pos.get(when.since, 0))
        seen = 0

        def match(ev: dict[str, Any]) -> bool:
            nonlocal seen
            if not event_matches(when.event, ev):
                return False
            if when.node is not None and ev.get("node") not in self.ctx.bindings.get(
                    when.node, ()):
                return False
            seen += 1
            return seen >= when.nth

        while not self.stop.is_set():
            ev, since = self.watch.scan(match, 0.2, since, self.stop)
            if ev is not None:
                return True, ev
        return False, None

    def _wait_event(self, flag: threading.Event) -> bool:
        while not self.stop.is_set():
            if flag.wait(0.1):
                return True
        return False
