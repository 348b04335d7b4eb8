"""One simulated run: the same `RunConfig` and nemesis plan as `cutover run`, played on a
`SimCluster` in simulated time, then judged by the same checkers (linearizability, I1-I7
with the byte scan over the simulated disks, stats, availability) and the same
coverage points.

The run's phases follow `orchestrator/run.py`: bootstrap, clients at `rate` with the
nemesis playing its plan (the same handlers, `orchestrator/faults.py`, in simulated
time), heal at the time limit, a quiet period, final reads, the optional corrupt-entry,
a clean stop, the checks. Same seed, same config: the same history, byte for byte, and
the same node files.
"""
from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checker import suite
from checker.coverage import coverage
from checker.crashes import EXITS_FILE
from checker.crashes import record as exit_record
from nemesis.plan import Plan
from nemesis.primitives import Step, When, event_matches
from node.events import EventKind
from node.wal import WalError, damage_entry
from orchestrator.config import RunConfig
from orchestrator.faults import HANDLERS, Call, Ctx, Hold, Net, Sleep, Until, choose
from orchestrator.store import fault_windows
from workloads import MODEL_OF, make_workload

from .cluster import US, SimCluster, SimSettings, Wait, WaitEvent, WaitFlag, WaitReply, WaitUntil

_WINDOWED = {"kill", "kill-power", "restart", "pause", "isolate", "split", "lead", "halves",
             "ring", "bridge", "cut-in", "cut-out", "slow-in", "slow-out", "loss", "delay",
             "duplicate", "reorder"}


def _us(seconds: float) -> int:
    return int(round(seconds * US))


@dataclass
class SimOutcome:
    """A simulated run's result and everything recorded (what `cutover run` stores)."""

    seed: int
    config: dict[str, Any]
    plan: Plan
    verdict: str
    checks: dict[str, dict[str, Any]]
    first: tuple[str, str, Any] | None
    coverage: dict[str, dict[str, Any]]
    ops: list[dict[str, Any]]
    nemesis: list[dict[str, Any]]
    events: list[dict[str, Any]]
    t0_ns: int
    sim_seconds: float
    cpu_seconds: float
    run_dir: str
    stats: dict[str, int] = field(default_factory=dict)
    log_entries: list[dict[str, Any]] = field(default_factory=list)  # the I1-I7 scan

    @property
    def failing(self) -> str | None:
        """What failed first: a checker name, or `cutover I<n>` for an invariant; for a
        cleartext entry above C (I1) also which kind of entry, `cutover I1 (lease)`:
        a lease, a second marker and a user write above C are different hazards (R1,
        R2, ...), and the shrinker keeps a candidate only if it fails the same way."""
        if self.first is None or self.verdict != "invalid":
            return None
        name = self.first[0]
        if name == "cutover":
            c = self.checks.get("cutover") or {}
            inv = c.get("failing")
            if not inv:
                return name
            v = ((c.get("invariants") or {}).get(inv) or {}).get("first_violation") or {}
            kind = v.get("opcode_name") if inv == "I1" and v.get("half") == "structural" \
                else None
            return f"cutover {inv}" + (f" ({kind})" if kind else "")
        return name


class SimWorld:
    """`faults.World` over a `SimCluster`: the handlers act in simulated time."""

    def __init__(self, run: SimRun) -> None:
        self.run = run
        self.cl = run.cl
        self.ids = list(run.cl.ids)

    def now(self) -> float:
        return (self.cl.now - self.run.t0_us) / US

    def alive(self, nid: str) -> bool:
        return self.cl.nodes[nid].host is not None

    def up(self, nid: str) -> bool:
        return self.cl.nodes[nid].up

    def kill(self, nid: str, *, power: bool = False,
             torn: random.Random | None = None) -> dict[str, Any] | None:
        lost = self.cl.kill(nid, power=power, torn=torn)
        return lost if power else None

    def start(self, nid: str) -> None:
        self.cl.start(nid)

    def pause(self, nid: str) -> None:
        self.cl.pause(nid)

    def resume(self, nid: str) -> None:
        self.cl.resume(nid)

    def status(self, nid: str) -> dict[str, Any] | None:
        return self.cl.status(nid)

    def snapshot_now(self, nid: str) -> int | None:
        return self.cl.call_on(nid, lambda h: h.take_snapshot())

    def set_net(self, net: Net) -> None:
        self.cl.net = net

    def record(self, f: str, fault: str, targets: Any, **detail: Any) -> None:
        self.run.nemesis.append({"idx": len(self.run.nemesis), "time_ns": self.cl.rel_ns(),
                                 "f": f, "fault": fault, "targets": targets,
                                 "detail": detail or None})

    def new_dek(self) -> bytes:
        return self.cl.new_dek()


def write_exits(events: list[dict[str, Any]], path: str) -> None:
    """The exit record a real cluster keeps (`checker.crashes`), from a simulated
    cluster's events: a node that died of an exception, ended itself (the elastickv
    profile's halt), or would not start is the same evidence as a real one."""
    with open(path, "w", encoding="utf-8") as fh:
        for ev in events:
            if ev["kind"] == EventKind.CRASH:
                fh.write(exit_record("exit", ev["node"], ev["t"], code=1,
                                     log=[str(ev.get("error"))]))
            elif ev["kind"] == EventKind.EXIT:
                fh.write(exit_record("exit", ev["node"], ev["t"], code=ev.get("code"),
                                     log=[f"exiting: {ev.get('reason')} at index "
                                          f"{ev.get('index')}"]))
            elif ev["kind"] == EventKind.START_FAILED:
                fh.write(exit_record("failed-start", ev["node"], ev["t"],
                                     reason=str(ev.get("error")), log=[str(ev.get("error"))]))


class SimRun:
    """One simulated run (see the module docstring)."""

    def __init__(self, cfg: RunConfig, plan: Plan | None = None) -> None:
        cfg = cfg.resolved()
        self.plan = plan if plan is not None else cfg.plan()
        self.cfg = cfg.with_knobs(self.plan)
        c = self.cfg
        assert c.seed is not None and c.concurrency is not None
        self.settings = SimSettings(
            nodes=c.nodes, tick_ms=c.tick_ms, election_ticks=c.election_ticks,
            snapshot_every=int(c.snapshot_every or 5000),
            max_msg_bytes=int(c.max_msg_bytes or 64 * 1024),
            max_inflight=int(c.max_inflight or 64),
            enable_timeout_ticks=c.enable_timeout_ticks, bugs=tuple(c.bugs),
            profile=c.profile)
        self.cl = SimCluster(c.seed, self.settings)
        self.t0_us = 0
        self.ops: list[dict[str, Any]] = []
        self.nemesis: list[dict[str, Any]] = []
        self.stopped = False
        self.clients_stop = False
        self.world = SimWorld(self)
        self.ctx = Ctx(self.world, c.seed, milestone=self._milestone, time_limit=c.time_limit)
        self.milestone_pos: dict[str, int] = {}
        self._leader_hint: str | None = None
        self.cl.listeners.append(self.ctx.on_event)

    # ------------------------------------------------------------------ the run

    def go(self, workdir: str | os.PathLike[str]) -> SimOutcome:
        cpu0 = time.process_time()
        c, cl = self.cfg, self.cl
        self._settle_leader(15.0)
        self._bootstrap()
        self.t0_us = cl.now
        workload = make_workload(c.workload, c.keys, c.seed or 0, run_tag=f"sim{c.seed}")
        for i in range(c.concurrency or 1):
            cl.spawn(self._client(i, workload))
        for step in self.plan.steps:
            if step.action != "corrupt-entry":
                cl.spawn(self._step(step))
        self._run_for(c.time_limit)
        # The final generator: heal, resume, restart; quiet; final reads; stop.
        self.stopped = True
        cl.cancel_processes()
        self._heal()
        self._run_for(c.quiet_period)
        self.clients_stop = True
        self._run_for(c.op_timeout * 2 + 0.1)
        self._final_reads(workload)
        excused = self._corrupt()
        cl.run_until(cl.now + 300_000)
        cl.stop_all()
        outcome = self._check(Path(workdir), excused)
        outcome.cpu_seconds = round(time.process_time() - cpu0, 3)
        return outcome

    def _run_for(self, seconds: float) -> None:
        end = self.cl.now + _us(seconds)
        self._pump(end)

    def _pump(self, end_us: int) -> None:
        self.cl.run_until(end_us)

    def _settle_leader(self, seconds: float) -> None:
        cl = self.cl
        end = cl.now + _us(seconds)

        def ready() -> bool:
            lead = cl.leader()
            host = cl.nodes[lead].host if lead else None
            return host is not None and host.applied >= host.raft.term_start_index

        while not ready() and cl.now < end:
            cl.run_until(cl.now + 10_000)

    def _bootstrap(self) -> None:
        cl = self.cl
        wrapped = cl.new_dek()
        for _ in range(50):
            lead = cl.leader()
            if lead is not None:
                box: list[Any] = []
                cl.request(lead, {"op": "bootstrap", "key_id": 1, "wrapped": wrapped},
                           box.append, 2 * US)
                cl.run_until(cl.now + 2 * US, stop=lambda box=box: bool(box))
                if box and box[0] and box[0].get("ok"):
                    return
            cl.run_until(cl.now + 200_000)
        raise RuntimeError(f"seed {self.cfg.seed}: could not bootstrap encryption")

    # ------------------------------------------------------------------ history

    def _op(self, process: Any, type_: str, f: str, key: str | None, value: Any,
            error: str | None = None, node: str | None = None) -> None:
        self.ops.append({"idx": len(self.ops), "time_ns": self.cl.rel_ns(),
                         "process": str(process), "type": type_, "f": f, "key": key,
                         "value": value, "error": error, "node": node})

    def _invoke(self, f: str, key: str, value: Any, start: str | None,
                retry_reads: bool = True) -> Generator[Any, Any, tuple[str, Any, str | None,
                                                                       str]]:
        """The client's rules (`orchestrator/client.py`): ok only on ok; fail only on a
        definite failure or an unreachable node; info whenever it may have happened.
        Follows `not-leader` hints; retries a read (never a write) after a timeout."""
        cl = self.cl
        ids = cl.ids
        target = start or self._leader_hint or ids[0]
        deadline = cl.now + _us(2 * self.cfg.op_timeout)
        indeterminate = False
        last = ("timeout", target)
        for _hop in range(6):
            if cl.now >= deadline:
                break
            if not cl.reachable(target):
                last = ("unreachable", target)
                target = ids[(ids.index(target) + 1) % len(ids)]
                continue
            req: dict[str, Any] = {"op": f, "key": key}
            if f == "write":
                req["value"] = value
            elif f == "cas":
                req["from"], req["to"] = value
            rep = yield WaitReply(target, req, min(_us(self.cfg.op_timeout), deadline - cl.now))
            if rep is None:
                if f != "read" or not retry_reads:
                    return "info", None, "timeout", target
                indeterminate, last = True, ("timeout", target)
                target = ids[(ids.index(target) + 1) % len(ids)]
                continue
            if rep.get("ok"):
                self._leader_hint = target
                return "ok", rep.get("value"), None, target
            code = str(rep.get("code"))
            if rep.get("definite") is not True:
                if f != "read":
                    return "info", None, code, target
                indeterminate, last = True, (code, target)
                target = ids[(ids.index(target) + 1) % len(ids)]
                continue
            if code != "not-leader":
                return "fail", None, code, target
            last = (code, target)
            hint = rep.get("leader")
            if isinstance(hint, str) and hint in ids and hint != target:
                self._leader_hint = target = hint
            else:
                target = ids[(ids.index(target) + 1) % len(ids)]
        return ("info" if indeterminate else "fail"), None, last[0], last[1]

    def _client(self, i: int, workload: Any) -> Generator[Any, Any, None]:
        c, cl = self.cfg, self.cl
        rng = random.Random(f"client:{c.seed}:{i}")
        period = (c.concurrency or 1) / c.rate
        home = cl.ids[i % len(cl.ids)]
        process = i
        yield Wait(_us(rng.uniform(0, period)))
        while not self.clients_stop:
            t_next = cl.now + _us(period * rng.uniform(0.5, 1.5))
            spec = workload.next_op()
            hv = spec.as_history_value()
            start = home if spec.f == "read" else None
            self._op(process, "invoke", spec.f, spec.key, hv, node=start or self._leader_hint)
            type_, value, error, node = yield from self._invoke(spec.f, spec.key, spec.value,
                                                                start)
            out = value if spec.f == "read" else hv
            if spec.f == "read" and type_ != "ok":
                out = None
            self._op(process, type_, spec.f, spec.key, out, error=error, node=node)
            if type_ == "info":
                process += c.concurrency or 1  # Jepsen: a crashed process is retired
            if cl.now < t_next:
                yield Wait(t_next - cl.now)

    def _final_reads(self, workload: Any) -> None:
        cl = self.cl
        budget = cl.now + 8 * US
        for n, spec in enumerate(workload.final_reads()):
            end = min(cl.now + 3 * US, budget)
            while True:
                box: list[Any] = []

                def proc(spec: Any = spec, box: list[Any] = box) -> Generator[Any, Any, None]:
                    box.append((yield from self._invoke("read", spec.key, None, None)))

                self._op(f"final-{n}", "invoke", "read", spec.key, None, node=self._leader_hint)
                cl.spawn(proc())
                while not box and cl.now < budget + 3 * US:
                    self._pump(cl.now + 10_000)
                type_, value, error, node = box[0] if box else ("info", None, "timeout", None)
                self._op(f"final-{n}", type_, "read", spec.key,
                         value if type_ == "ok" else None, error=error, node=node)
                if type_ == "ok" or cl.now > end:
                    break
                self._pump(cl.now + 100_000)

    # ------------------------------------------------------------------ nemesis

    def _milestone(self, name: str) -> None:
        self.milestone_pos.setdefault(name, len(self.cl.events))
        self.cl.set_flag(name)
        self.world.record("event", name, None, cutover=self.ctx.cutover or None)

    def _wait(self, when: When, since: int) -> Generator[Any, Any, dict[str, Any] | None]:
        cl = self.cl
        if when.on == "time":
            left = self.t0_us + _us(when.at) - cl.now
            if left > 0:
                yield Wait(left)
            return None
        if when.on == "milestone":
            yield WaitFlag(when.milestone)
            return None
        if when.on == "after":
            yield WaitFlag(f"done:{when.step}")
            return None
        if when.since:
            yield WaitFlag(when.since)
            since = max(since, self.milestone_pos.get(when.since, 0))
        seen = 0
        bindings = self.ctx.bindings
        while True:
            def pred(ev: dict[str, Any], when: When = when) -> bool:
                if not event_matches(when.event, ev):
                    return False
                return when.node is None or ev.get("node") in bindings.get(when.node, ())

            ev = yield WaitEvent(pred, since)
            since = ev["_i"] + 1
            seen += 1
            if seen >= when.nth:
                return ev

    def _step(self, step: Step) -> Generator[Any, Any, None]:
        ev = yield from self._wait(step.when, 0)
        if self.stopped:
            return
        if step.delay:
            yield Wait(_us(step.delay))
        if self.stopped or self.world.now() > self.cfg.time_limit - 0.3:
            return
        ctx = self.ctx
        nodes = choose(ctx, step.target, ctx.rng(step.id, "target"), ev)
        windowed = step.action in _WINDOWED
        if windowed:
            self.world.record("start", step.action, nodes, step=step.id, origin=step.origin,
                              trigger=step.when.describe(), **step.params)
        gen = HANDLERS[step.action](ctx, step, nodes)
        value: Any = None
        while True:
            try:
                eff = gen.send(value)
            except StopIteration:
                break
            if self.stopped:
                gen.close()
                return
            if isinstance(eff, Sleep):
                yield Wait(_us(eff.seconds))
                value = None
            elif isinstance(eff, Until):
                value = yield WaitUntil(eff.pred, _us(eff.timeout), max(1, _us(eff.poll)))
            elif isinstance(eff, Hold):
                if eff.step.until is not None:
                    yield from self._wait(eff.step.until, len(self.cl.events))
                else:
                    yield Wait(_us(eff.step.duration))
                value = None
            elif isinstance(eff, Call):
                value = yield WaitReply(eff.node, {"op": eff.op, **eff.fields},
                                        _us(eff.timeout))
            else:  # pragma: no cover
                raise TypeError(eff)
        if windowed:
            self.world.record("stop", step.action, nodes, step=step.id)
        self.cl.set_flag(f"done:{step.id}")

    def _heal(self) -> None:
        cl, ctx = self.cl, self.ctx
        ctx.rules.clear()
        cl.net = Net()
        down = []
        for n in cl.ids:
            node = cl.nodes[n]
            if node.paused:
                cl.resume(n)
            if node.host is None:
                down.append(n)
        stuck = sorted(ctx.stuck)
        ctx.stuck.clear()
        for n in stuck:
            if n not in down:
                cl.kill(n)
                down.append(n)
        for n in down:
            cl.start(n)
        self.world.record("event", "heal-all", sorted(down), restarted=sorted(down),
                          barrier_cleared=stuck)
        end = cl.now + 8 * US
        while cl.now < end and not all(cl.nodes[n].up for n in down):
            self._pump(cl.now + 50_000)

    def _corrupt(self) -> list[tuple[str, int]]:
        """The corrupt-entry fault (`orchestrator/corrupt.py`) in simulation."""
        step = self.plan.step("corrupt-entry")
        cl = self.cl
        if step is None or not self.ctx.cutover:
            return []
        rng = random.Random(f"nemesis:{self.cfg.seed}:{step.id}")
        lead = cl.leader()
        if lead is None:
            return []
        box: list[Any] = []
        value = f"tok-sim{self.cfg.seed}-probe{step.id:03d}"
        self._op("final-w", "invoke", "write", "k0", value, node=lead)
        cl.request(lead, {"op": "write", "key": "k0", "value": value}, box.append, 2 * US)
        self._pump(cl.now + 2 * US + 1)
        rep = box[0] if box else None
        if not rep or not rep.get("ok"):
            kind = "fail" if rep is not None and rep.get("definite") else "info"
            self._op("final-w", kind, "write", "k0", value, node=lead)
            return []
        self._op("final-w", "ok", "write", "k0", value, node=lead)
        index = int(rep["index"])
        self._pump(cl.now + 300_000)
        followers = [n for n in cl.ids if n != lead]
        rng.shuffle(followers)
        victim = None
        for f in followers:
            st = cl.status(f)
            if st and st["applied"] >= index and st["snapshot_index"] < index \
                    and not st.get("halted"):
                victim = f
                break
        if victim is None:
            return []
        cl.kill(victim)
        try:
            damage_entry(f"/sim/{victim}/wal", index, disk=cl.nodes[victim].disk)
        except WalError:
            cl.start(victim)
            self._pump(cl.now + US)
            return []
        self.world.record("start", "corrupt-entry", [victim], index=index)
        cl.start(victim)
        self._pump(cl.now + 2 * US)
        st = cl.status(victim) or {}
        self.world.record("stop", "corrupt-entry", [victim], index=index,
                          outcome=f"halted: {st['halted']}" if st.get("halted") else "?")
        return [(victim, index)]

    # ------------------------------------------------------------------ checks

    def materialize(self, root: Path) -> dict[str, str]:
        """The nodes' files and event logs, the KEK and the config, as a run dir."""
        cl = self.cl
        dirs = {}
        for n in cl.ids:
            d = root / "nodes" / n
            d.mkdir(parents=True, exist_ok=True)
            cl.nodes[n].disk.materialize(d, f"/sim/{n}")
            with open(d / "events.jsonl", "w", encoding="utf-8") as fh:
                for ev in cl.events:
                    if ev["node"] == n:
                        rec = {k: v for k, v in ev.items() if k not in ("time_ns", "_i")}
                        rec.setdefault("wall", ev["t"] / 1e9)
                        fh.write(json.dumps(rec, separators=(",", ":"), default=str) + "\n")
            dirs[n] = str(d)
        # The exit record a real cluster keeps (`checker.crashes`): a simulated node that
        # died of an exception, or would not start, is the same evidence.
        write_exits(cl.events, str(root / "nodes" / EXITS_FILE))
        kek = root / "kek"
        fd = os.open(kek, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, cl.kek_bytes)
        finally:
            os.close(fd)
        return dirs

    def _check(self, root: Path, excused: list[tuple[str, int]]) -> SimOutcome:
        c = self.cfg
        root.mkdir(parents=True, exist_ok=True)
        dirs = self.materialize(root)
        t0_ns = self.t0_us * 1000
        ops = self.ops
        model = MODEL_OF.get(c.workload, "kv")
        results: dict[str, dict[str, Any]] = {}
        results["linearizability"] = suite.check_linearizability(ops, model,
                                                                 timeout=c.lin_timeout)
        tokens = [(str(r["value"]).encode(), r["time_ns"] + t0_ns) for r in ops
                  if r["type"] == "invoke" and r["f"] == "write" and r["value"]]
        tokens += [(str(r["value"][1]).encode(), r["time_ns"] + t0_ns) for r in ops
                   if r["type"] == "invoke" and r["f"] == "cas"
                   and isinstance(r["value"], list) and len(r["value"]) == 2]
        results["cutover"], rep = suite.check_invariants(dirs, str(root / "kek"), tokens,
                                                          t0_ns=t0_ns, excused=excused,
                                                          profile=c.profile)
        results["stats"] = suite.stats(ops)
        end_ns = max((r["time_ns"] for r in ops), default=0)
        results["availability"] = suite.availability(ops, fault_windows(self.nemesis), end_ns)
        results["crashes"] = suite.check_crashes(
            str(root / "nodes"), t0_ns,
            halted={str(e["node"]) for e in self.cl.events if e["kind"] == EventKind.HALT})
        results["vacuity"] = suite.vacuity({**_asdict(c), "plan": self.plan.to_dict()}, ops,
                                           self.nemesis, self.cl.events)
        verdict = suite.worst(r["valid"] for r in results.values())
        cov = coverage([{"node": e["node"], "kind": e["kind"], "time_ns": e["time_ns"],
                         "detail": {k: v for k, v in e.items()
                                    if k not in ("t", "node", "kind", "time_ns", "_i")}}
                        for e in self.cl.events], ops, self.nemesis)
        return SimOutcome(
            seed=c.seed or 0, config={**_asdict(c), "plan": self.plan.to_dict()},
            plan=self.plan, verdict=verdict, checks=results,
            first=suite.first_violation(results), coverage=cov, ops=ops,
            nemesis=self.nemesis, events=self.cl.events, t0_ns=t0_ns,
            sim_seconds=round(self.cl.now / US, 3), cpu_seconds=0.0, run_dir=str(root),
            stats=dict(self.cl.stats),
            log_entries=[] if rep is None else [
                {"node": r.node, "idx": r.index, "term": r.term, "opcode": r.opcode,
                 "wrapped": int(r.wrapped), "key_id": r.key_id} for r in rep.rows])


def _asdict(c: RunConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(c)


def simulate(cfg: RunConfig, workdir: str | os.PathLike[str],
             plan: Plan | None = None) -> SimOutcome:
    """One simulated run of `cfg` (its plan, or `plan`), checked; files under `workdir`."""
    return SimRun(cfg, plan).go(workdir)
