"""The run, written once: its phases over a world, real processes or the simulator.

A run is: start the cluster and wait for a leader, bootstrap encryption; clients at
`rate` over `concurrency` workers while the nemesis plays its plan (the operator's
EnableRaftEnvelope at `cutover_at` among its steps); at `time_limit` heal everything
(network, paused and dead nodes, stuck barriers); a quiet period; a final read of every
key; the optional corrupt-entry fault; a clean stop (the nodes' last digests are I4's
evidence); every checker; the rows that store the verdict. `Run.go` is that sequence,
and every phase is a method of `Run`: there is no other copy of it.

Two kinds of code make it up:

* the *top level* (`go` and what it calls directly) asks the world to do things and to
  let time pass (`World.run_for`, `World.ask`, ...); it runs on the caller's thread;
* *processes* (a client, a fault step, one final read) are generators: they yield
  effects (`Sleep`, `Until`, `Ask`, `AwaitFlag`, `AwaitEvent`) and the world performs
  each one and sends back its answer. The fault handlers of `nemesis/faults.py`
  are written the same way, and a step process forwards theirs; the kinds the run drives
  at a phase of its own (the heal, corrupt-entry) run at the top level (`Run.top`).

Why generators (and not async or threads): the simulator must run a process to its next
wait inside one event of its loop, in a fixed order, with no scheduler of its own that
could reorder two processes at one instant; a generator is exactly that, and on real
processes a thread per process drives the same generator by blocking on each effect
(`orchestrator/real/world.py`). asyncio would bring a second event loop into the
simulator's, and its ordering is not ours to fix. (FoundationDB's flow actors and
TigerBeetle's replica make the same choice: the code is written against effects, and
the simulator and the network each perform them.)

A world is `orchestrator/real/world.py: RealWorld` (node processes, ZeroMQ, the wall
clock, SQLite as it goes) or `orchestrator/sim/run.py: SimWorld` (`SimCluster`,
simulated time, lists in memory); `World` below says what a world must do.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import random
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from checker import suite
from checker.coverage import coverage
from nemesis.faults import (
    HEAL,
    KINDS,
    Call,
    Ctx,
    Hold,
    LeaderWithin,
    Sleep,
    StartAndWait,
    Until,
    WaitUp,
    choose,
)
from nemesis.faults import World as FaultWorld
from nemesis.plan import Plan
from nemesis.primitives import Step, When, event_matches
from node.events import EventKind
from orchestrator import store
from orchestrator.run.config import RunConfig, RunError
from orchestrator.run.invoke import UNREACHABLE, Ask, Route, invoke
from orchestrator.store import coverage_rows, fault_windows
from workloads import MODEL_OF, make_workload

# Actions recorded as one start/stop window by the step driver (operator calls record
# each of their attempts themselves; snapshot and compact record what they did).
WINDOWED = frozenset(k.name for k in KINDS.values() if k.windowed)

# The phases of a run, in order (`Run.phases` records the ones it went through).
PHASES = ("setup", "bootstrap", "faults", "heal", "quiet", "final", "corrupt", "check")


# ---------------------------------------------------------------------- effects


@dataclass(frozen=True)
class AwaitFlag:
    """Wait until flag `name` is set (a milestone, `done:<step>`, `applied:<step>`);
    with a `timeout`, answers whether it was set in time."""

    name: str
    timeout: float | None = None


@dataclass(frozen=True)
class AwaitEvent:
    """The first node event at position >= `since` that `pred` accepts; answers
    (event, the position after it)."""

    pred: Callable[[dict[str, Any]], bool]
    since: int


Effect = Sleep | Until | Ask | AwaitFlag | AwaitEvent
Proc = Generator[Effect, Any, Any]


class World(FaultWorld, Protocol):
    """What the run needs from a world, beyond the nemesis's (`nemesis.faults.World`:
    now, alive, up, paused, kill, start, pause, resume, status, snapshot_now, set_net,
    set_tick_factor, damage_entry, record, op, new_dek, run_tag)."""

    simultaneous: bool  # one instant's events run in order (the simulator)

    # -- the top level
    def boot(self) -> None: ...  # the cluster's processes (nothing to do in simulation)
    def settle(self, seconds: float) -> None: ...  # a leader that applied its term start
    def leader(self) -> str | None: ...
    def leader_within(self, seconds: float) -> str | None: ...
    def ask(self, node: str, req: dict[str, Any], timeout: float) -> dict[str, Any] | None: ...
    def begin(self) -> None: ...  # the workload's time 0
    def listen(self, fn: Callable[[dict[str, Any]], None]) -> None: ...
    def spawn(self, proc: Proc, group: str, label: str) -> None: ...
    def stop_group(self, group: str, grace: float) -> None: ...
    def run_for(self, seconds: float) -> None: ...
    def run_proc(self, proc: Proc, until: float) -> Any: ...  # None if not done by `until`
    def left(self) -> float: ...  # seconds before the run must be over (inf: no bound)
    def set_flag(self, name: str) -> None: ...
    def event_mark(self) -> int: ...
    def wait_up(self, nodes: list[str], seconds: float) -> dict[str, str]: ...
    def start_and_wait(self, nid: str, seconds: float) -> str | None: ...
    def stop_all(self) -> None: ...
    def evidence(self) -> Evidence: ...
    def keep(self, results: dict[str, dict[str, Any]], rows: dict[str, list[dict[str, Any]]],
             cov: dict[str, dict[str, Any]]) -> None: ...


# ---------------------------------------------------------------------- evidence


def new_run_id(results: str, seed: int) -> str:
    """A fresh id whose run directory this call created (atomically: two runs started
    in the same second with the same seed, say by two matrices, get two ids)."""
    base = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + f"-s{seed}"
    rid, k = base, 1
    while True:
        try:
            os.makedirs(os.path.join(results, rid))
            return rid
        except FileExistsError:
            k += 1
            rid = f"{base}-{k}"



@dataclass
class Evidence:
    """What a run is judged on, in the shape the results database holds it (ops and
    nemesis rows with their JSON decoded; node events with `detail`)."""

    config: dict[str, Any]  # the run's config, its plan under `plan`
    ops: list[dict[str, Any]]
    nemesis: list[dict[str, Any]]
    events: list[dict[str, Any]]  # {node, seq, time_ns, kind, detail}
    run_dir: str  # holds nodes/<id>/ (the node files) and kek
    t0_ns: int  # the workload's time 0 on the nodes' clock

    @property
    def node_dirs(self) -> dict[str, str]:
        return node_dirs(self.run_dir)


def node_dirs(run_dir: str) -> dict[str, str]:
    root = os.path.join(run_dir, "nodes")
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return {}
    return {n: os.path.join(root, n) for n in names if os.path.isdir(os.path.join(root, n))}


def judge(ev: Evidence, excused: list[tuple[str, int]], *,
          lin_timeout: float) -> tuple[dict[str, dict[str, Any]], Any,
                                       dict[str, dict[str, Any]]]:
    """Every checker of a run on its evidence: (results by checker, the invariant
    checker's scan, the coverage points reached). `cutover run`, `cutover sim` and
    `cutover check` all judge here."""
    ops, nem, events, t0_ns = ev.ops, ev.nemesis, ev.events, ev.t0_ns
    config = ev.config
    model = MODEL_OF.get(config.get("workload", "kv"), "kv")
    results: dict[str, dict[str, Any]] = {}
    results["linearizability"] = suite.check_linearizability(ops, model, timeout=lin_timeout)
    # The nodes a storage fault damaged, and since when: a start they refused after it
    # is the correct reaction (not a crash), a file of theirs that does not parse is the
    # fault's doing (not the node's); a divergence is never excused.
    damaged = suite.storage_damage(nem, t0_ns)
    dirs = ev.node_dirs
    kek_path = os.path.join(ev.run_dir, "kek")
    rep = None
    if not dirs or not os.path.exists(kek_path):
        results["cutover"] = {"valid": "unknown", "incomplete": True,
                              "error": f"the run's node data dirs or KEK are missing under "
                                       f"{ev.run_dir}"}
    else:
        results["cutover"], rep = suite.check_invariants(
            dirs, kek_path, write_tokens(ops, t0_ns), t0_ns=t0_ns, excused=excused,
            profile=config.get("profile") or "fixed", damaged=damaged)
    results["crashes"] = suite.check_crashes(
        os.path.join(ev.run_dir, "nodes"), t0_ns,
        halted={str(e["node"]) for e in events if e["kind"] == EventKind.HALT},
        refusals=damaged)
    results["stats"] = suite.stats(ops)
    end_ns = max((r["time_ns"] for r in ops), default=0)
    results["availability"] = suite.availability(ops, fault_windows(nem), end_ns)
    results["vacuity"] = suite.vacuity(config, ops, nem, [
        e for e in events if e["kind"] in (EventKind.ENCRYPTION_APPLIED, EventKind.BUGGIFY)])
    # Not a checker (it never changes the verdict): which protocol states the run
    # reached, from the nodes' events, the history and what the nemesis did.
    cov = coverage(events, ops, nem)
    return results, rep, cov


def write_tokens(ops: Iterable[dict[str, Any]], t0_ns: int) -> list[tuple[bytes, int]]:
    """Every value a write or cas put in flight, with when (the byte scan's tokens)."""
    out: list[tuple[bytes, int]] = []
    for r in ops:
        if r["type"] != "invoke":
            continue
        if r["f"] == "write" and r["value"]:
            out.append((str(r["value"]).encode(), r["time_ns"] + t0_ns))
        elif r["f"] == "cas" and isinstance(r["value"], list) and len(r["value"]) == 2:
            out.append((str(r["value"][1]).encode(), r["time_ns"] + t0_ns))
    return out


def verdict_rows(results: dict[str, dict[str, Any]], rep: Any,
                 cov: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The rows a judged run stores, by table (the `run` column is the writer's)."""
    return {
        "coverage": coverage_rows(cov),
        "checks": [{"checker": k, "valid": v["valid"], "detail": json.dumps(v, default=str)}
                   for k, v in results.items()],
        "log_entries": [] if rep is None else [
            {"node": r.node, "idx": r.index, "term": r.term, "opcode": r.opcode,
             "wrapped": int(r.wrapped), "key_id": r.key_id} for r in rep.rows],
    }


def excused_by(nemesis: Iterable[dict[str, Any]]) -> list[tuple[str, int]]:
    """The entry copies the corrupt-entry fault damaged, from the nemesis record."""
    return [(t[0], int(d["index"])) for r in nemesis
            if r["fault"] == "corrupt-entry" and r["f"] == "start"
            and (d := r["detail"] or {}).get("index") is not None
            and (t := r["targets"] or [None])[0]]


def verdict_line(verdict: str, first: tuple[str, str, Any] | None, seed: int | None,
                 bugs: list[str], profile: str = "fixed") -> str:
    """The run's one-line summary (printed last, stored in `runs.summary`); `cutover
    check` writes it again from the stored seed, bugs and profile."""
    with_bugs = f" with --bug {','.join(bugs)}" if bugs else ""
    if profile != "fixed":
        with_bugs += f" --profile {profile}"
    if verdict == "valid":
        return f"VALID: every checker passed (seed {seed}{with_bugs})"
    if first is None:
        return f"{verdict.upper()} (seed {seed}{with_bugs})"
    name, sentence, t = first
    when = f" at {t / 1e9:.1f}s" if isinstance(t, int | float) else ""
    return f"{verdict.upper()}: {name}{when}: {sentence} (seed {seed}{with_bugs})"


# ---------------------------------------------------------------------- the run


@dataclass
class Judged:
    results: dict[str, dict[str, Any]]
    verdict: str
    first: tuple[str, str, Any] | None
    coverage: dict[str, dict[str, Any]]
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class Run:
    """One run of `cfg` and `plan` over `world` (the module docstring)."""

    def __init__(self, world: World, cfg: RunConfig, plan: Plan) -> None:
        assert cfg.seed is not None and cfg.concurrency is not None
        self.w = world
        self.cfg = cfg
        self.plan = plan
        self.ctx = Ctx(world, cfg.seed, milestone=self._milestone, time_limit=cfg.time_limit)
        self.stopped = False  # the fault steps' time is up
        self.clients_stop = False
        self.milestone_pos: dict[str, int] = {}
        self.last_leader: str | None = None  # where the final reads start
        self.phases: list[str] = []
        self.phase = "setup"

    def _enter(self, name: str) -> None:
        self.phase = name
        self.phases.append(name)

    # ------------------------------------------------------------------ the run

    def go(self) -> Judged:
        c, w = self.cfg, self.w
        self._enter("setup")
        w.boot()
        w.settle(15.0)
        self._enter("bootstrap")
        try:
            self.bootstrap()
        except RunError:
            judged = self._judge_failed_setup()
            if judged is None:
                raise
            return judged
        w.begin()
        w.listen(self.ctx.on_event)
        workload = make_workload(c.workload, c.keys, c.seed or 0, run_tag=w.run_tag)
        self._enter("faults")
        for i in range(c.concurrency or 1):
            w.spawn(self.client(i, workload), "clients", f"client-{i}")
        for step in self.plan.steps:
            if not KINDS[step.action].runs_at:  # corrupt-entry: after the final reads
                w.spawn(self.step(step), "steps", f"nemesis-{step.id}")
        w.run_for(c.time_limit)
        self._enter("heal")
        self.heal()
        self._enter("quiet")
        w.run_for(min(c.quiet_period, max(0.5, w.left() - 8)))
        self.clients_stop = True
        w.stop_group("clients", c.op_timeout * 2 + 0.1)
        self._enter("final")
        self.final_reads(workload, min(8.0, max(1.0, w.left() - 6)))
        self._enter("corrupt")
        excused = self.corrupt(min(10.0, max(2.0, w.left() - 4)))
        self._enter("check")
        w.run_for(0.3)  # followers apply the last commits before their stop digests
        w.stop_all()
        return self.check(excused)

    def _judge_failed_setup(self) -> Judged | None:
        """The set-up could not bootstrap. When the nodes themselves are why (a node
        that died or refused to start on its own, as a defect that loses the node-id
        file at a power loss makes it), that is a finding: the run is judged on what
        they left, INVALID. Anything else (no verdict against the nodes) stays a harness
        error, for the caller to raise."""
        w = self.w
        try:
            w.begin()
            self._enter("check")
            w.stop_all()
            judged = self._judge([])
        except Exception:  # noqa: BLE001 - the set-up's own error is the one to report
            return None
        if judged.verdict != "invalid":
            return None
        w.keep(judged.results, judged.rows, judged.coverage)
        return judged

    def bootstrap(self) -> None:
        """The first DEK through the leader (retried while leadership settles)."""
        w = self.w
        end = w.now() + 15.0
        self._ask_leader({"op": "bootstrap", "key_id": 1, "wrapped": w.new_dek()}, end,
                         "bootstrap encryption")
        if self.cfg.profile == "elastickv":
            self.enable_storage_envelope(end)

    def enable_storage_envelope(self, end: float) -> None:
        """elastickv's §7.1 Phase 1, right after the bootstrap (Phase 0): the operator's
        `elastickv-admin encryption enable-storage-envelope` (docs/protocol.md, row 11),
        retried while leadership settles; from its apply on, values are stored sealed."""
        self._ask_leader({"op": "enable-storage-envelope"}, end, "enable the storage envelope")

    def _ask_leader(self, req: dict[str, Any], end: float, what: str) -> None:
        """An admin request to whoever leads, retried every 0.2 s until it is answered ok
        (at most 50 tries, and not past `end`); otherwise the run cannot go on."""
        w = self.w
        err = "no leader"
        for _ in range(50):
            lead = w.leader()
            if lead is not None:
                rep = w.ask(lead, req, 2.0)
                if rep and rep.get("ok"):
                    return
                err = "no answer" if rep is None else f"{rep.get('code')}: {rep.get('text')}"
            if w.now() > end:
                break
            w.run_for(0.2)
        raise RunError(f"seed {self.cfg.seed}: could not {what} ({err})")

    # ------------------------------------------------------------------ clients

    def client(self, i: int, workload: Any) -> Proc:
        """One worker: an op every `concurrency / rate` seconds (jittered), reads to its
        own node first (Jepsen binds a client to a node), writes to the leader it knows."""
        c, w = self.cfg, self.w
        rng = random.Random(f"client:{c.seed}:{i}")
        period = (c.concurrency or 1) / c.rate
        home = w.ids[i % len(w.ids)]
        route = Route(list(w.ids), leader=home)
        process = i
        yield Sleep(rng.uniform(0, period))
        while not self.clients_stop:
            t_next = w.now() + period * rng.uniform(0.5, 1.5)
            spec = workload.next_op()
            hv = spec.as_history_value()
            start = home if spec.f == "read" else None
            w.op(process, "invoke", spec.f, spec.key, hv, node=start or route.target())
            fields = ({"from": spec.value[0], "to": spec.value[1]} if spec.f == "cas"
                      else {})
            res = yield from invoke(route, spec.f, spec.key,
                                    spec.value if spec.f == "write" else None, node=start,
                                    timeout=c.op_timeout, clock=w.now, fields=fields)
            if res.type == "ok" and spec.f != "read":
                self.last_leader = res.node
            out = hv if spec.f != "read" else (res.value if res.type == "ok" else None)
            w.op(process, res.type, spec.f, spec.key, out, error=res.error, node=res.node)
            if res.type == "info":
                process += c.concurrency or 1  # Jepsen: a crashed process is retired
            left = t_next - w.now()
            if left > 0:
                yield Sleep(left)

    def final_reads(self, workload: Any, seconds: float) -> None:
        """A read of every key once the cluster is healed and quiet; a halted cluster
        answers nothing, so the whole is bounded by `seconds`."""
        w = self.w
        budget = w.now() + seconds
        route = Route(list(w.ids), leader=self.last_leader)
        for n, spec in enumerate(workload.final_reads()):
            end = min(w.now() + 3, budget)
            process = f"final-{n}"
            while True:
                w.op(process, "invoke", "read", spec.key, None, node=route.target())
                res = w.run_proc(invoke(route, "read", spec.key, timeout=self.cfg.op_timeout,
                                        clock=w.now), budget + 3)
                if res is None:
                    w.op(process, "info", "read", spec.key, None, error="timeout")
                    break
                w.op(process, res.type, "read", spec.key,
                     res.value if res.type == "ok" else None, error=res.error, node=res.node)
                if res.type == "ok" or w.now() > end:
                    break
                w.run_for(0.1)

    # ------------------------------------------------------------------ the nemesis

    def _milestone(self, name: str) -> None:
        self.milestone_pos.setdefault(name, self.w.event_mark())
        self.w.set_flag(name)
        self.w.record("event", name, None, cutover=self.ctx.cutover or None)

    def wait_when(self, when: When, since: int) -> Generator[Effect, Any, Any]:
        """Wait until `when` fires; the triggering node event, if it is one."""
        w = self.w
        if when.on == "time":
            left = when.at - w.now()
            if left > 0:
                yield Sleep(left)
            return None
        if when.on == "milestone":
            yield AwaitFlag(when.milestone)
            return None
        if when.on == "after":
            yield AwaitFlag(f"done:{when.step}")
            return None
        if when.since:
            yield AwaitFlag(when.since)
            since = max(since, self.milestone_pos.get(when.since, 0))
        seen = 0
        bindings = self.ctx.bindings

        def pred(ev: dict[str, Any]) -> bool:
            if not event_matches(when.event, ev):
                return False
            return when.node is None or ev.get("node") in bindings.get(when.node, ())

        while True:
            ev, since = yield AwaitEvent(pred, since)
            seen += 1
            if seen >= when.nth:
                return ev

    def step(self, step: Step) -> Proc:
        """One fault step: its trigger, its target, its handler's effects, its window in
        the record. Sets `applied:<id>` once its fault took hold (or it never will) and
        `done:<id>` when it is over (a step triggered `after` it starts then)."""
        w, ctx = self.w, self.ctx
        try:
            ev = yield from self.wait_when(step.when, 0)
            if self.stopped:
                return
            if step.delay:
                yield Sleep(step.delay)
            if self.stopped or w.now() > self.cfg.time_limit - 0.3:
                return
            nodes = choose(ctx, step.target, ctx.rng(step.id, "target"), ev)
            kind = KINDS[step.action]
            if w.name not in kind.worlds:  # the plan stays portable; the record says why
                w.record("event", step.action, nodes, step=step.id, skipped=(
                    f"{step.action} runs in the {' and '.join(kind.worlds)} world only, "
                    f"not on {w.name} processes" if w.name == "real" else
                    f"{step.action} does not run in the {w.name} world"))
                return
            windowed = kind.windowed
            if windowed:
                w.record("start", step.action, nodes, step=step.id, origin=step.origin,
                         trigger=step.when.describe(), **step.params)
                ctx.active[step.id] = f"{step.action} {','.join(nodes) or '-'}"
            try:
                gen = KINDS[step.action].handler(ctx, step, nodes)
                value: Any = None
                while True:
                    try:
                        eff = gen.send(value)
                    except StopIteration:
                        break
                    if self.stopped:
                        gen.close()  # the heal undoes whatever was left
                        return
                    if isinstance(eff, Hold | Sleep | Until):
                        w.set_flag(f"applied:{step.id}")  # in place; now held or waited on
                    value = yield from self.perform(eff)
            finally:
                if windowed:
                    ctx.active.pop(step.id, None)
                    w.record("stop", step.action, nodes, step=step.id)
        finally:
            w.set_flag(f"applied:{step.id}")
            w.set_flag(f"done:{step.id}")

    def perform(self, eff: Any) -> Generator[Effect, Any, Any]:
        """A handler's effect, in the run's terms."""
        if isinstance(eff, Sleep | Until):
            return (yield eff)
        if isinstance(eff, Hold):
            s = eff.step
            if s.until is not None:
                yield from self.wait_when(s.until, self.w.event_mark())
                yield from self.hand_over(s.until)
            else:
                yield Sleep(s.duration)
            return None
        if isinstance(eff, Call):
            rep = yield Ask(eff.node, {"op": eff.op, **eff.fields}, eff.timeout)
            return None if rep is UNREACHABLE else rep
        raise TypeError(f"unknown effect {eff!r}")  # pragma: no cover

    def hand_over(self, when: When, timeout: float = 0.5) -> Generator[Effect, Any, None]:
        """A window that ends on an event lets the steps that start on that same event
        take hold first, as they do at one instant in the simulator: a slow link lifted
        on marker-proposed must not let the marker's acks through before the cut that
        replaces it (they would, by tens of ms, on real processes)."""
        if self.w.simultaneous:
            return
        end = self.w.now() + timeout
        for t in self.plan.steps:
            if t.when == when and not t.delay and t.action in WINDOWED:
                yield AwaitFlag(f"applied:{t.id}", max(0.0, end - self.w.now()))

    def heal(self) -> None:
        """No more faults, then the final generator (`nemesis.faults.HEAL`): every fault
        kind's final undo (the network healed, paused nodes resumed, clocks reset, the
        dead and the nodes whose barrier is stuck restarted), and wait until they are
        up."""
        self.stopped = True
        self.w.stop_group("steps", 2.0)
        self.top(HEAL.handler(self.ctx, None, []))

    # ------------------------------------------------------------------ corruption

    def corrupt(self, seconds: float) -> list[tuple[str, int]]:
        """The kinds run after the final reads (`runs_at="final"`: corrupt-entry), the
        first step of each, within `seconds`; the entry copies they damaged (the
        invariant checker excuses exactly those)."""
        self.ctx.phase_end = self.w.now() + seconds
        for kind in KINDS.values():
            step = self.plan.step(kind.name) if kind.runs_at == "final" else None
            if step is not None:
                self.top(kind.handler(self.ctx, step, []))
        return list(self.ctx.excused)

    def top(self, gen: Generator[Any, Any, Any]) -> Any:
        """A kind the run drives itself, at its top level: each effect performed the way
        the run's phases wait (`World.run_for`, `ask`, `leader_within`, ...)."""
        w = self.w
        value: Any = None
        while True:
            try:
                eff = gen.send(value)
            except StopIteration as e:
                return e.value
            if isinstance(eff, Sleep):
                value = w.run_for(eff.seconds)
            elif isinstance(eff, Call):
                value = w.ask(eff.node, {"op": eff.op, **eff.fields}, eff.timeout)
            elif isinstance(eff, LeaderWithin):
                value = w.leader_within(eff.seconds)
            elif isinstance(eff, StartAndWait):
                value = w.start_and_wait(eff.node, eff.seconds)
            elif isinstance(eff, WaitUp):
                value = w.wait_up(list(eff.nodes), min(8.0, max(2.0, w.left() - 7)))
            else:  # pragma: no cover - a programming error in a handler
                raise TypeError(f"a handler run at the top level yielded {eff!r}")

    # ------------------------------------------------------------------ checks

    def check(self, excused: list[tuple[str, int]]) -> Judged:
        """Every checker on what the world kept (real: what the database holds), and the
        rows that store the verdict."""
        judged = self._judge(excused)
        self.w.keep(judged.results, judged.rows, judged.coverage)
        return judged

    def _judge(self, excused: list[tuple[str, int]]) -> Judged:
        ev = self.w.evidence()
        results, rep, cov = judge(ev, excused, lin_timeout=min(
            self.cfg.lin_timeout, max(3.0, self.w.left() - 1)))
        return Judged(results, suite.worst(r["valid"] for r in results.values()),
                      suite.first_violation(results), cov, verdict_rows(results, rep, cov))


def stored_evidence(db: Any, run_id: str, run_dir: str) -> Evidence:
    """A stored run's evidence, as the results database holds it."""
    row = store.resolve_run(db, run_id)
    return Evidence(config=json.loads(row["config"]) if row.get("config") else {},
                    ops=list(store.iter_ops(db, run_id)),
                    nemesis=store.nemesis_rows(db, run_id),
                    events=store.node_events(db, run_id), run_dir=run_dir,
                    t0_ns=int(row.get("t0_ns") or 0))


def run_checkers(db: Any, run_id: str, run_dir: str, rec: Any | None,
                 excused: list[tuple[str, int]] | None = None,
                 lin_timeout: float | None = None) -> dict[str, dict[str, Any]]:
    """Every checker on a stored run (`cutover check`): the history from the database,
    the invariants from the node files; the verdict's rows through `rec` when given."""
    ev = stored_evidence(db, run_id, run_dir)
    if excused is None:
        excused = excused_by(ev.nemesis)
    results, rep, cov = judge(ev, excused, lin_timeout=lin_timeout or float(
        ev.config.get("lin_timeout", 60.0)))
    if rec is not None:
        for table, rows in verdict_rows(results, rep, cov).items():
            rec.rows(table, rows)
        rec.flush()
    return results
