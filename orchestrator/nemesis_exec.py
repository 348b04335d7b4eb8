"""Turns the nemesis plan (`nemesis/plan.py`) into signals, switchboard rules and admin
requests against a live cluster, and records every fault as a start and a stop entry of
process `nemesis` (`targets` = the nodes it hit, `detail` = what it did and saw).

Threads: the fault thread walks the timed faults; the cutover thread runs the cutover
sequence (and asks for EnableRaftEnvelope); the event watch fires the `marker-proposed`
trigger. The switchboard's rules are the union of every active fault's, so two faults
never undo each other: one lock guards them and the cluster.
"""
from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nemesis import grudges
from nemesis.plan import Fault, Plan, Trigger

from .client import Client, ClientTimeout
from .cluster import Cluster, ClusterError
from .store import Recorder
from .watch import EventWatch


@dataclass
class CutoverState:
    """What the cutover sequence learned, shared with the runner and the faults."""

    cutover: int = 0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    stuck: set[str] = field(default_factory=set)  # nodes whose barrier stays up
    settled: threading.Event = field(default_factory=threading.Event)


class NemesisExecutor:
    def __init__(self, cluster: Cluster, recorder: Recorder, watch: EventWatch, plan: Plan,
                 *, t0: float, stop: threading.Event, wrap_new_dek: Callable[[], bytes],
                 time_limit: float, cutover_at: float | None) -> None:
        self.cl = cluster
        self.rec = recorder
        self.watch = watch
        self.plan = plan
        self.t0 = t0
        self.stop = stop
        self.wrap_new_dek = wrap_new_dek
        self.time_limit = time_limit
        self.cutover_at = cutover_at
        self.lock = threading.RLock()
        self.blocked: dict[str, set[tuple[str, str]]] = {}
        self.delays: dict[str, tuple[float, float]] = {}
        self.link_delays: dict[str, tuple[list[list[str]], float, float]] = {}
        self.active: dict[int, str] = {}  # fault id -> description, for the progress bar
        self.key_id = 1  # the bootstrap DEK; rotations count up from here
        self.cut = CutoverState()
        self.replay_node: str | None = None
        self.lag_node: str | None = None
        self._restart_hook_fired = False
        self._stuck_since: dict[str, float] = {}
        # Called (once) by the event watch when a marker is proposed; see _arm_failover.
        self._marker_hook: Callable[[dict[str, Any]], None] | None = None
        self._threads: list[threading.Thread] = []
        self._admin = Client(cluster.endpoints(), timeout=1.0)
        self._admin_lock = threading.Lock()

    # ------------------------------------------------------------------ helpers

    def now_s(self) -> float:
        return time.monotonic() - self.t0

    def record(self, f: str, fault: str, targets: Any = None, **detail: Any) -> None:
        self.rec.fault(time.monotonic_ns(), f, fault, targets, detail or None)

    def sleep_until(self, t: float) -> bool:
        """Sleep until `t` seconds into the run; False if the run is stopping."""
        while not self.stop.is_set():
            left = t - self.now_s()
            if left <= 0:
                return True
            self.stop.wait(min(left, 0.1))
        return False

    def sleep(self, secs: float) -> bool:
        return self.sleep_until(self.now_s() + secs)

    def admin(self, node: str, op: str, timeout: float = 1.0, **fields: Any) -> dict[str, Any]:
        with self._admin_lock:
            return self._admin.admin(node, op, timeout=timeout, **fields)

    def leader(self) -> str | None:
        with self.lock:
            return self.cl.leader()

    def _apply_net(self) -> None:
        ctl = self.cl.control
        if ctl is None:
            return
        links = set().union(*self.blocked.values()) if self.blocked else set()
        ctl.partition([list(link) for link in sorted(links)])
        if self.delays:
            ms, jitter = max(self.delays.values())
            ctl.delay(ms, jitter)
        else:
            ctl.delay(0)
        for links_, ms, jitter in self.link_delays.values():  # after: a global resets them
            ctl.delay(ms, jitter, links=links_)

    def block(self, tag: str, links: set[tuple[str, str]]) -> None:
        with self.lock:
            self.blocked[tag] = set(links)
            self._apply_net()

    def unblock(self, *tags: str) -> None:
        with self.lock:
            for t in tags:
                self.blocked.pop(t, None)
            self._apply_net()

    def slow(self, tag: str, ms: float, jitter: float = 0.0, links: list | None = None) -> None:
        with self.lock:
            if links is not None:
                self.link_delays[tag] = (links, ms, jitter)
            else:
                self.delays[tag] = (ms, jitter)
            self._apply_net()

    def unslow(self, tag: str) -> None:
        with self.lock:
            self.delays.pop(tag, None)
            if tag in self.link_delays:
                links, _, _ = self.link_delays.pop(tag)
                if self.cl.control is not None:
                    self.cl.control.delay(0, 0.0, links=links)
            self._apply_net()

    def rng(self, salt: Any) -> random.Random:
        return random.Random(f"nemesis:{self.plan.seed}:{salt}")

    def followers(self, leader: str | None) -> list[str]:
        return [n for n in self.cl.ids if n != leader]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.watch.listen(self._on_event)
        for name, fn in (("nemesis-faults", self._fault_loop),
                         ("nemesis-cutover", self._cutover_loop)):
            t = threading.Thread(target=self._guard(fn), name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - recorded; the run goes on
                if not self.stop.is_set():
                    self.record("event", "nemesis-error", None, error=f"{type(e).__name__}: {e}")
        return run

    def join(self, timeout: float = 10.0) -> None:
        end = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))

    def heal_all(self) -> None:
        """The final generator: heal the network, resume and (re)start every node."""
        with self.lock:
            self.blocked.clear()
            self.delays.clear()
            self.link_delays.clear()
            if self.cl.control is not None:
                self.cl.control.heal()
            for nid, h in self.cl.nodes.items():
                if h.paused:
                    self.cl.resume(nid)
            down = [nid for nid, h in self.cl.nodes.items() if not h.alive]
            stuck = sorted(self.cut.stuck)
            self.cut.stuck.clear()
            for nid in stuck:
                if nid not in down:
                    self.cl.kill(nid)
                    down.append(nid)
            for nid in down:
                self.cl.start_node(nid, wait=None)
            for nid in down:
                self.cl.wait_up(nid, 20)
        self.record("event", "heal-all", sorted(down), restarted=sorted(down),
                    barrier_cleared=stuck)
        self.active.clear()

    def close(self) -> None:
        with self._admin_lock:
            self._admin.close()

    # ------------------------------------------------------------------ events

    def _on_event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("kind")
        if kind == "marker-proposed":
            fn = self._marker_hook
            if fn is not None:
                self._marker_hook = None
                fn(ev)
        elif kind == "encryption-applied" and ev.get("what") == "marker-fresh":
            if not self.cut.cutover and ev.get("cutover"):
                self.cut.cutover = int(ev["cutover"])

    # ------------------------------------------------------------------ timed faults

    def _fault_loop(self) -> None:
        for fault in self.plan.faults:
            if fault.kind == "corrupt-entry":
                continue  # the runner does it after the final reads
            if not self.sleep_until(fault.at):
                return
            if fault.at + fault.duration >= self.time_limit:
                return
            self.run_fault(fault)

    def run_fault(self, fault: Fault) -> None:
        rng = self.rng(fault.id)
        kind = fault.kind
        if kind == "rotate":
            self.rotate(f"rotate#{fault.id}")
            return
        fam = fault.family
        nodes = self.cl.ids
        desc = kind
        with self.lock:
            leader = self.cl.leader()
        undo: Callable[[], None]
        if fam in ("kill", "pause"):
            if kind.endswith("-leader"):
                targets = [leader] if leader else [rng.choice(nodes)]
            elif kind.endswith("-minority"):
                targets = sorted(rng.sample(nodes, (len(nodes) - 1) // 2))
            else:
                targets = [rng.choice(nodes)]
            self.record("start", kind, targets, leader=leader)
            if fam == "kill":
                with self.lock:
                    for n in targets:
                        self.cl.kill(n)

                def undo() -> None:
                    with self.lock:
                        for n in targets:
                            self.cl.start_node(n, wait=None)
                        for n in targets:
                            self.cl.wait_up(n, 20)
            else:
                with self.lock:
                    for n in targets:
                        self.cl.pause(n)

                def undo() -> None:
                    with self.lock:
                        for n in targets:
                            self.cl.resume(n)
        elif fam == "partition":
            tag = f"fault#{fault.id}"
            detail: dict[str, Any] = {"leader": leader}
            if kind == "partition-halves":
                links, groups = grudges.halves(nodes, rng)
                detail["groups"] = groups
                targets = groups[0]
            elif kind == "isolate-leader":
                victim = leader or rng.choice(nodes)
                links, targets = grudges.isolate(nodes, victim), [victim]
            elif kind == "isolate-one":
                victim = rng.choice(nodes)
                links, targets = grudges.isolate(nodes, victim), [victim]
            elif kind == "partition-majorities-ring":
                links, targets = grudges.majorities_ring(nodes, rng), list(nodes)
            else:
                links, mid = grudges.bridge(nodes, rng)
                targets = [mid]
                detail["bridge"] = mid
            self.record("start", kind, targets, **detail)
            self.block(tag, links)

            def undo() -> None:
                self.unblock(tag)
        else:  # net
            ctl = self.cl.control
            p = fault.params
            targets = list(nodes)
            self.record("start", kind, targets, **p)
            with self.lock:
                if ctl is not None:
                    if kind == "net-loss":
                        ctl.loss(p["p"])
                    elif kind == "net-duplicate":
                        ctl.duplicate(p["p"])
            if kind == "net-delay":
                self.slow(f"fault#{fault.id}", p["ms"], p["jitter"])

            def undo() -> None:
                with self.lock:
                    if ctl is not None:
                        if kind == "net-loss":
                            ctl.loss(0)
                        elif kind == "net-duplicate":
                            ctl.duplicate(0)
                if kind == "net-delay":
                    self.unslow(f"fault#{fault.id}")
        self.active[fault.id] = f"{desc} {','.join(targets)}"
        self.sleep(fault.duration)
        try:
            undo()
        finally:
            self.active.pop(fault.id, None)
            self.record("stop", kind, targets)
        if fam == "kill":
            self._after_restart(targets)

    def _after_restart(self, restarted: list[str]) -> None:
        """Trigger `kill-leader-after-restart`: a restarted node is then likely to lead
        (its stale in-memory state is what some defects leave behind)."""
        trig = self._trigger("kill-leader-after-restart")
        if trig is None or self._restart_hook_fired or not self.cut.settled.is_set():
            return
        self._restart_hook_fired = True
        self.sleep(float(trig.params.get("delay", 0.3)))
        with self.lock:
            leader = self.cl.leader()
        if leader is None or leader in restarted:
            return
        self.record("start", "kill-leader-after-restart", [leader], restarted=restarted)
        with self.lock:
            self.cl.kill(leader)
        self.sleep(1.0)
        with self.lock:
            self.cl.start_node(leader, wait=20)
        self.record("stop", "kill-leader-after-restart", [leader])

    def _trigger(self, kind: str) -> Trigger | None:
        return next((t for t in self.plan.triggers if t.kind == kind), None)

    # ------------------------------------------------------------------ admin faults

    def rotate(self, label: str, node: str | None = None) -> dict[str, Any]:
        """Rotate the Raft DEK through the leader (a fresh key id, KEK-wrapped)."""
        with self.lock:
            target = node or self.cl.leader()
            if target is None:
                self.record("event", "rotate", None, result="no-leader", label=label)
                return {"ok": False}
            self.key_id += 1
            key_id = self.key_id
        self.record("start", "rotate", [target], key_id=key_id, label=label)
        try:
            rep = self.admin(target, "rotate-dek", timeout=3.0, key_id=key_id,
                             wrapped=self.wrap_new_dek())
            result = "ok" if rep.get("ok") else str(rep.get("code"))
        except ClientTimeout:
            rep, result = {"ok": False}, "timeout"
        self.record("stop", "rotate", [target], key_id=key_id, result=result)
        return rep

    def _wait_applied(self, node: str, index: int, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end and not self.stop.is_set():
            try:
                st = self.admin(node, "status", timeout=0.5)["value"]
                if st.get("applied", 0) >= index or st.get("halted"):
                    return True
            except (ClientTimeout, KeyError, TypeError):
                pass
            self.stop.wait(0.02)
        return False

    def snapshot_now(self, node: str) -> int | None:
        try:
            rep = self.admin(node, "snapshot-now", timeout=3.0)
        except ClientTimeout:
            return None
        return rep.get("value", {}).get("snapshot_index") if rep.get("ok") else None

    # ------------------------------------------------------------------ the cutover

    def _cutover_loop(self) -> None:
        if self.cutover_at is None:
            return
        try:
            self._cutover_sequence()
        finally:
            self.cut.settled.set()

    def _cutover_sequence(self) -> None:
        at = self.cutover_at
        assert at is not None
        snap = self._trigger("snapshot-below-marker")
        lag = self._trigger("lag-across-cutover")
        failover = self._trigger("cutover-failover")
        replay = self._trigger("replay-leader")
        pick = self.rng("pick")
        if snap is not None:
            if not self.sleep_until(float(snap.params["lead"])):
                return
            leader = self.leader()
            x = pick.choice(self.followers(leader))
            idx = self.snapshot_now(x)
            self.replay_node = x
            self.record("event", "snapshot-below-marker", [x], snapshot_index=idx, leader=leader)
        if lag is not None:
            if not self.sleep_until(float(lag.params["lead"])):
                return
            leader = self.leader()
            cands = [n for n in self.followers(leader) if n != self.replay_node]
            if cands:
                y = pick.choice(cands)
                self.lag_node = y
                self.record("start", "lag-across-cutover", [y], leader=leader)
                self.active[-1] = f"lag {y}"
                self.block("lag", grudges.isolate(self.cl.ids, y))
        if not self.sleep_until(at - 0.15):
            return
        failover_done = threading.Event()
        if failover is None:
            failover_done.set()
        else:
            self._arm_failover(failover, failover_done)
        if not self.sleep_until(at):
            return
        self.enable_until_done()
        self.cut.settled.set()
        self.record("event", "cutover-settled", None, cutover=self.cut.cutover,
                    attempts=len(self.cut.attempts))
        failover_done.wait(15)
        self._marker_hook = None
        # The replay first: compacting for the lagger would replace X's old snapshot.
        if replay is not None and self.replay_node is not None and self.cut.cutover \
                and self.now_s() + 4.0 < self.time_limit:
            self.sleep(1.0)
            self._replay_leader(self.replay_node, float(replay.params.get("lead_for", 3.0)))
        restart = self._trigger("restart-leader")
        if restart is not None and self.cut.cutover and self.now_s() + 4.0 < self.time_limit:
            self.sleep(0.5)
            leader = self.leader()
            cands = sorted(n for n in self.cl.ids
                           if n not in (leader, self.replay_node, self.lag_node))
            if cands:
                z = cands[int(restart.params["pick"]) % len(cands)]
                self._replay_leader(z, float(restart.params.get("lead_for", 2.5)),
                                    label="restart-leader", snapshot_first=True,
                                    rotate_first=False)
        if self.lag_node is not None:
            self.sleep(0.5)
            compacted = {n: self.snapshot_now(n) for n in self.cl.ids if n != self.lag_node}
            self.unblock("lag")
            self.active.pop(-1, None)
            self.record("stop", "lag-across-cutover", [self.lag_node], compacted=compacted)
        self.restart_stuck()

    def restart_stuck(self) -> None:
        """What an operator does after a failed EnableRaftEnvelope (protocol §5: only a
        restart clears the barrier): otherwise that node refuses every write whenever it
        leads again, for the rest of the run."""
        for nid in sorted(self.cut.stuck):
            if self.stop.is_set():
                return
            self._restart_stuck_node(nid)

    def _restart_stuck_node(self, nid: str) -> None:
        with self.lock:
            self.cl.kill(nid)
            self.cl.start_node(nid, wait=20)
        self.cut.stuck.discard(nid)
        self._stuck_since.pop(nid, None)
        self.record("event", "restart-stuck-barrier", [nid])

    def enable_until_done(self) -> None:
        """Ask for EnableRaftEnvelope until some leader answers `ok`/`already-active`;
        an indeterminate outcome is retried on whoever leads next."""
        deadline = self.t0 + self.time_limit
        mark = self.watch.mark()
        while not self.stop.is_set() and time.monotonic() < deadline:
            leader = self.leader()
            if leader is None or (leader in self.cut.stuck and self.cut.cutover == 0
                                  and self._stuck_retry(leader)):
                # Ask the next leader the moment it says so in its event log: a client
                # retrying fast is part of what the protocol must survive.
                stuck = set(self.cut.stuck)
                ev = self.watch.wait_for(
                    lambda e, stuck=stuck: e.get("kind") == "role"
                    and e.get("role") == "leader" and e.get("node") not in stuck,
                    timeout=0.3, since=mark,
                    cancel=self.stop)
                mark = self.watch.mark()
                if ev is None:
                    continue
                leader = str(ev["node"])
            if self.cut.cutover:
                return  # learned from the nodes' events: some marker applied
            t = time.monotonic_ns()
            self.record("start", "enable-raft-envelope", [leader])
            try:
                rep = self.admin(leader, "enable-raft-envelope", timeout=4.0)
                if rep.get("ok"):
                    status = rep["value"]["status"]
                    c = int(rep["value"].get("cutover") or 0)
                else:
                    status, c = str(rep.get("code")), 0
            except ClientTimeout:
                status, c = "timeout", 0
            self.cut.attempts.append({"node": leader, "status": status, "cutover": c,
                                      "t_ns": t})
            self.record("stop", "enable-raft-envelope", [leader], status=status, cutover=c)
            if status in ("ok", "already-active") and c:
                self.cut.cutover = c
                return
            if status == "failed":
                # The barrier stays up on that node until it restarts (protocol §5).
                self.cut.stuck.add(leader)
                self._stuck_since.setdefault(leader, time.monotonic())
            self.stop.wait(0.05 if status in ("timeout", "not-leader") else 0.2)

    def _stuck_retry(self, leader: str) -> bool:
        """True to skip `leader` now: its barrier is stuck, so asking again only gets
        `failed`. Wait for another leader; after a while, restart it (the only remedy,
        protocol §5) so the cutover can go on."""
        since = self._stuck_since.get(leader, time.monotonic())
        if time.monotonic() - since < 3.0 or self.active.get(-3):
            return True
        self._restart_stuck_node(leader)
        return True

    def _arm_failover(self, trig: Trigger, done: threading.Event) -> None:
        """`cutover-failover`: slow acks to the leader now; cut them at marker-proposed."""
        leader = self.leader()
        if leader is None:
            done.set()
            return
        fol = self.followers(leader)
        slow_ms = float(trig.params.get("slow_ms", 200))
        self.record("start", "slow-acks", [leader], ms=slow_ms)
        self.slow("slow-acks", slow_ms, 0.0, links=[[f, leader] for f in fol])
        self.active[-2] = f"slow-acks to {leader}"
        ack_loss = float(trig.params.get("ack_loss", 2.7))
        isolate_for = float(trig.params.get("isolate", 2.5))

        def on_marker(ev: dict[str, Any]) -> None:
            node = ev.get("node")
            if node != leader:
                self._marker_hook = on_marker  # someone else's marker: keep waiting
                return
            self.block("failover-acks", {(f, leader) for f in fol})
            threading.Thread(target=self._guard(lambda: self._failover_rest(
                leader, ev, ack_loss, isolate_for, done)), daemon=True,
                name="nemesis-failover").start()

        self._marker_hook = on_marker

        def give_up() -> None:
            # No marker from that leader in time: leadership moved or the request failed.
            if not done.wait(6.0) and self._marker_hook is on_marker:
                self._marker_hook = None
                self._clear_slow_acks(leader, fol)
                self.record("stop", "slow-acks", [leader], fired=False)
                done.set()

        threading.Thread(target=self._guard(give_up), daemon=True).start()

    def _clear_slow_acks(self, leader: str, fol: list[str]) -> None:
        self.unslow("slow-acks")
        self.active.pop(-2, None)

    def _failover_rest(self, leader: str, ev: dict[str, Any], ack_loss: float,
                       isolate_for: float, done: threading.Event) -> None:
        fol = self.followers(leader)
        self._clear_slow_acks(leader, fol)
        self.record("stop", "slow-acks", [leader], fired=True)
        self.record("start", "cutover-failover", [leader], marker_index=ev.get("index"),
                    phase="acks-lost", seconds=ack_loss)
        self.active[-3] = f"acks lost to {leader}"
        self.sleep(ack_loss)
        # Now the old leader goes; every link is slow, so the next leader takes a while to
        # commit its first entry: a window where the marker sits unapplied in its log.
        self.block("failover-isolate", grudges.isolate(self.cl.ids, leader))
        self.unblock("failover-acks")
        self.slow("failover-slow", 30.0, 10.0)
        self.active[-3] = f"isolate {leader}"
        self.record("event", "cutover-failover", [leader], phase="isolated")
        self.sleep(isolate_for)
        self.unslow("failover-slow")
        self.unblock("failover-isolate")
        self.active.pop(-3, None)
        self.record("stop", "cutover-failover", [leader])
        done.set()

    def _replay_leader(self, x: str, lead_for: float, *, label: str = "replay-leader",
                       snapshot_first: bool = False, rotate_first: bool = True) -> None:
        """Restart X and make it lead. `replay-leader`: rotate first, and X restarts from
        its snapshot below the marker (it replays the marker under a newer DEK).
        `restart-leader`: X snapshots first, so it restarts above C with no marker to
        replay: what it knows of the cutover comes from its sidecar alone."""
        self.record("start", label, [x])
        self.active[-4] = f"{label} {x}"
        try:
            if snapshot_first:
                self.snapshot_now(x)
            if rotate_first:
                rep = self.rotate(label)
                # X must have *applied* the rotation before it dies: its sidecar then
                # names a newer DEK than the marker's, which is the replay's hazard.
                if rep.get("ok") and isinstance(rep.get("index"), int):
                    self._wait_applied(x, int(rep["index"]), 3.0)
            with self.lock:
                self.cl.kill(x)
            self.sleep(0.3)
            with self.lock:
                try:
                    self.cl.start_node(x, wait=20)
                except ClusterError as e:
                    self.record("event", label, [x], error=str(e))
                    return
            # Let X catch up (its log must be as fresh as the voters' for X to win).
            target = None
            leader = self.leader()
            if leader is not None:
                try:
                    target = self.admin(leader, "status")["value"]["commit"]
                except (ClientTimeout, KeyError, TypeError):
                    target = None
            if target is not None:
                self._wait_applied(x, target, 5.0)
            leader = self.leader()
            cut_off = [leader] if leader and leader != x else []
            if self.lag_node is not None and self.lag_node != x:
                cut_off.append(self.lag_node)  # still lagging: it stays cut off
            self.block("replay-star", grudges.star(self.cl.ids, x, cut_off))
            self.record("event", label, [x], phase="star", cut_off=cut_off)
            self.sleep(lead_for)
            self.unblock("replay-star")
        finally:
            self.active.pop(-4, None)
            self.record("stop", label, [x])
            if label == "replay-leader":
                self._after_restart([x])
