"""One simulated run: the run program (`orchestrator/run/program.py`) over a `SimWorld`, the
same `RunConfig`, plan, phases and checkers as `cutover run`, played on a `SimCluster` in
simulated time. Same seed, same config: the same history, byte for byte, and the same
node files.
"""
from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from checker.crashes import EXITS_FILE
from checker.crashes import record as exit_record
from nemesis.faults import Net, Sleep, Until
from nemesis.plan import Plan
from node.buggify import POINTS as BUGGIFY_POINTS
from node.events import EventKind
from node.wal import WalError, damage_entry
from orchestrator.run.config import KNOB_DEFAULTS, RunConfig
from orchestrator.run.invoke import UNREACHABLE, Ask
from orchestrator.run.program import AwaitEvent, AwaitFlag, Evidence, Proc, Run
from orchestrator.run.storage import described, locate
from orchestrator.sim.cluster import (
    US,
    SimCluster,
    SimSettings,
    Wait,
    WaitEvent,
    WaitFlag,
    WaitReply,
    WaitUntil,
)
from orchestrator.sim.crashpoints import CrashPoint


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
    phases: list[str] = field(default_factory=list)  # the run program's, in order
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # the verdict's
    # Each node's durability boundaries in order (`crashpoints.py`), when counted.
    boundaries: dict[str, bytes] = field(default_factory=dict)

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
    """The run's world in simulation (`orchestrator/run/program.py: World`): a `SimCluster`
    and its clock; the history, the nemesis record and the node events kept in memory;
    the node files materialized under `root` when the run is judged."""

    simultaneous = True
    name = "sim"

    def __init__(self, cfg: RunConfig, root: Path, config_doc: dict[str, Any],
                 probe: bool = False) -> None:
        c = cfg
        assert c.seed is not None
        self.cfg = cfg
        self.root = root
        self.config_doc = config_doc  # what the run stores as its config (plan included)
        self.settings = SimSettings(
            nodes=c.nodes, tick_ms=c.tick_ms, election_ticks=c.election_ticks,
            snapshot_every=int(c.snapshot_every or KNOB_DEFAULTS["snapshot_every"]),
            max_msg_bytes=int(c.max_msg_bytes or KNOB_DEFAULTS["max_msg_bytes"]),
            max_inflight=int(c.max_inflight or KNOB_DEFAULTS["max_inflight"]),
            enable_timeout_ticks=c.enable_timeout_ticks, bugs=tuple(c.bugs),
            profile=c.profile, buggify=c.buggify,
            buggify_points=c.buggify_points or len(BUGGIFY_POINTS), crash_probe=probe,
            crash_point=c.crash_point)
        self.cl = SimCluster(c.seed, self.settings)
        self.ids = list(self.cl.ids)
        self.run_tag = f"sim{c.seed}"
        self.ops: list[dict[str, Any]] = []
        self.nemesis: list[dict[str, Any]] = []
        self.results: dict[str, dict[str, Any]] = {}
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.coverage: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ the nemesis's view

    def now(self) -> float:
        return (self.cl.now - self.cl.t0_us) / US

    def alive(self, nid: str) -> bool:
        return self.cl.nodes[nid].host is not None

    def up(self, nid: str) -> bool:
        return self.cl.nodes[nid].up

    def paused(self, nid: str) -> bool:
        return self.cl.nodes[nid].paused

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

    def set_tick_factor(self, nid: str, factor: float) -> None:
        self.cl.set_tick_factor(nid, factor)

    def record(self, f: str, fault: str, targets: Any, **detail: Any) -> None:
        self.nemesis.append({"idx": len(self.nemesis), "time_ns": self.cl.rel_ns(),
                             "f": f, "fault": fault, "targets": targets,
                             "detail": detail or None})

    def new_dek(self) -> bytes:
        return self.cl.new_dek()

    # ------------------------------------------------------------------ the top level

    def boot(self) -> None:
        """The simulated nodes booted with the cluster."""

    def settle(self, seconds: float) -> None:
        cl = self.cl
        end = cl.now + _us(seconds)

        def ready() -> bool:
            lead = cl.leader()
            host = cl.nodes[lead].host if lead else None
            return host is not None and host.applied >= host.raft.term_start_index

        while not ready() and cl.now < end:
            cl.run_until(cl.now + 10_000)

    def leader(self) -> str | None:
        return self.cl.leader()

    def leader_within(self, seconds: float) -> str | None:
        cl = self.cl
        end = cl.now + _us(seconds)
        while True:
            lead = cl.leader()
            if lead is not None or cl.now >= end:
                return lead
            cl.run_until(cl.now + 10_000)

    def ask(self, node: str, req: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        cl = self.cl
        box: list[Any] = []
        cl.request(node, req, box.append, _us(timeout))
        cl.run_until(cl.now + _us(timeout), stop=lambda: bool(box))
        return box[0] if box else None

    def begin(self) -> None:
        """Time 0 of the workload: every time recorded is relative to it (the events
        before it, of the start and the bootstrap, at negative times, as on real
        processes)."""
        cl = self.cl
        cl.t0_us = cl.now
        for e in cl.events:
            e["time_ns"] -= cl.t0_us * 1000

    def listen(self, fn: Callable[[dict[str, Any]], None]) -> None:
        self.cl.listeners.append(fn)

    def left(self) -> float:
        return float("inf")

    def run_for(self, seconds: float) -> None:
        self.cl.run_until(self.cl.now + _us(seconds))

    def spawn(self, proc: Proc, group: str, label: str) -> None:
        self.cl.spawn(self._drive(proc))

    def stop_group(self, group: str, grace: float) -> None:
        """The steps' waits for flags and events are dropped (closed: their windows end
        now); the clients see their flag and end after their op, within `grace`."""
        if group == "steps":
            for proc in self.cl.cancel_processes():
                proc.close()
        else:
            self.run_for(grace)

    def run_proc(self, proc: Proc, until: float) -> Any:
        box: list[Any] = []
        cl = self.cl
        cl.spawn(self._drive(proc, box))
        end = cl.t0_us + _us(until)
        while not box and cl.now < end:
            cl.run_until(cl.now + 10_000)
        return box[0] if box else None

    def _drive(self, proc: Proc, box: list[Any] | None = None) -> Generator[Any, Any, None]:
        """A run process as a `SimCluster` process: each effect becomes a wait of the
        event loop (an unreachable node answers at once, as ZMQ_IMMEDIATE does)."""
        cl = self.cl
        value: Any = None
        try:
            while True:
                try:
                    eff = proc.send(value)
                except StopIteration as e:
                    if box is not None:
                        box.append(e.value)
                    return
                if isinstance(eff, Sleep):
                    yield Wait(_us(eff.seconds))
                    value = None
                elif isinstance(eff, Ask):
                    if not cl.reachable(eff.node):
                        value = UNREACHABLE
                        continue
                    value = yield WaitReply(eff.node, eff.req, _us(eff.timeout))
                elif isinstance(eff, Until):
                    value = yield WaitUntil(eff.pred, _us(eff.timeout), max(1, _us(eff.poll)))
                elif isinstance(eff, AwaitFlag):
                    if eff.timeout is None:
                        yield WaitFlag(eff.name)
                        value = True
                    else:
                        value = yield WaitUntil(lambda n=eff.name: bool(cl.flags.get(n)),
                                                _us(eff.timeout), 10_000)
                elif isinstance(eff, AwaitEvent):
                    ev = yield WaitEvent(eff.pred, eff.since)
                    value = (ev, ev["_i"] + 1)
                else:  # pragma: no cover - a programming error in a process
                    raise TypeError(f"a process yielded {eff!r}")
        finally:
            proc.close()

    def op(self, process: Any, type_: str, f: str, key: str | None, value: Any,
           error: str | None = None, node: str | None = None) -> None:
        self.ops.append({"idx": len(self.ops), "time_ns": self.cl.rel_ns(),
                         "process": str(process), "type": type_, "f": f, "key": key,
                         "value": value, "error": error, "node": node})

    def set_flag(self, name: str) -> None:
        self.cl.set_flag(name)

    def event_mark(self) -> int:
        return len(self.cl.events)

    def wait_up(self, nodes: list[str], seconds: float) -> dict[str, str]:
        cl = self.cl
        end = cl.now + _us(seconds)
        while cl.now < end and not all(cl.nodes[n].up for n in nodes):
            cl.run_until(cl.now + 50_000)
        return {n: f"not up within {seconds:g} s" for n in nodes if not cl.nodes[n].up}

    def damage_entry(self, nid: str, index: int) -> str | None:
        try:
            damage_entry(f"/sim/{nid}/wal", index, disk=self.cl.nodes[nid].disk)
        except (WalError, OSError) as e:  # OSError: a sector error got there first
            return str(e)
        return None

    def damage_storage(self, nid: str, how: str, area: str, pick: int) -> dict[str, Any]:
        disk, root = self.cl.nodes[nid].disk, f"/sim/{nid}"
        place = locate(disk, root, area, pick, how)
        if "skipped" in place:
            return place
        if how == "flip":
            old = disk.read_bytes(place["path"])[place["offset"]]
            disk.damage(place["path"], place["offset"], bytes([old ^ (1 << place["bit"])]))
        else:
            disk.sector_error(place["path"], place["offset"], place["length"])
        return described(place, root, how)

    def arm_writes(self, nid: str, how: str | None, p: float = 0.0,
                   seed: int = 0) -> dict[str, Any]:
        rng = random.Random(f"disk:{self.cfg.seed}:{nid}:{seed}")
        return self.cl.nodes[nid].disk.arm_writes(how, p, rng)

    def ended(self, nid: str) -> bool:
        node = self.cl.nodes[nid]
        return node.host is None and not node.booting

    def start_and_wait(self, nid: str, seconds: float) -> str | None:
        cl = self.cl
        seen = len(cl.events)
        cl.start(nid)
        end = cl.now + _us(seconds)
        while cl.now < end:
            node = cl.nodes[nid]
            if node.up:
                return None
            if node.host is None and not node.booting:  # it ended (not: not yet booted)
                why = [e for e in cl.events[seen:] if e["node"] == nid and e["kind"] in (
                    EventKind.EXIT, EventKind.CRASH, EventKind.START_FAILED)]
                last = why[-1] if why else {}
                return (f"node {nid} ended while starting: {last.get('kind', 'exit')} "
                        f"{last.get('reason') or last.get('error') or ''}").strip()
            cl.run_until(cl.now + 10_000)
        return f"node {nid} did not come up within {seconds:g} s"

    def stop_all(self) -> None:
        self.cl.stop_all()

    # ------------------------------------------------------------------ evidence

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

    def event_rows(self) -> list[dict[str, Any]]:
        """The node events as the results database holds them (`store.node_events`)."""
        seqs: dict[str, int] = {}
        rows = []
        for e in self.cl.events:
            node = str(e["node"])
            seqs[node] = seqs.get(node, -1) + 1
            rows.append({"node": node, "seq": seqs[node], "time_ns": e["time_ns"],
                         "kind": e["kind"],
                         "detail": {k: v for k, v in e.items()
                                    if k not in ("t", "node", "kind", "time_ns", "_i")}})
        return rows

    def evidence(self) -> Evidence:
        self.root.mkdir(parents=True, exist_ok=True)
        self.materialize(self.root)
        return Evidence(config=self.config_doc, ops=self.ops, nemesis=self.nemesis,
                        events=self.event_rows(), run_dir=str(self.root),
                        t0_ns=self.cl.t0_us * 1000)

    def keep(self, results: dict[str, dict[str, Any]], rows: dict[str, list[dict[str, Any]]],
             cov: dict[str, dict[str, Any]]) -> None:
        self.results, self.rows, self.coverage = results, rows, cov


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
                why = (f"stopping on its storage: {ev.get('error')}"
                       if ev.get("reason") == "storage" else
                       f"exiting: {ev.get('reason')} at index {ev.get('index')}")
                fh.write(exit_record("exit", ev["node"], ev["t"], code=ev.get("code"),
                                     log=[why]))
            elif ev["kind"] == EventKind.START_FAILED:
                fh.write(exit_record("failed-start", ev["node"], ev["t"],
                                     reason=str(ev.get("error")), log=[str(ev.get("error"))]))



def simulate(cfg: RunConfig, workdir: str | os.PathLike[str],
             plan: Plan | None = None, probe: bool = False) -> SimOutcome:
    """One simulated run of `cfg` (its plan, or `plan`), checked; files under `workdir`.
    `probe`: count every node's durability boundaries (`SimOutcome.boundaries`), for the
    crash points a crash-consistency exploration picks."""
    cpu0 = time.process_time()
    cfg = cfg.resolved()
    plan = plan if plan is not None else cfg.plan()
    cfg = cfg.with_knobs(plan)
    world = SimWorld(cfg, Path(workdir), {**asdict(cfg), "plan": plan.to_dict()}, probe)
    run = Run(world, cfg, plan)
    judged = run.go()
    rows = world.rows
    return SimOutcome(
        seed=cfg.seed or 0, config=world.config_doc, plan=plan, verdict=judged.verdict,
        checks=judged.results, first=judged.first, coverage=judged.coverage, ops=world.ops,
        nemesis=world.nemesis, events=world.cl.events, t0_ns=world.cl.t0_us * 1000,
        sim_seconds=round(world.cl.now / US, 3),
        cpu_seconds=round(time.process_time() - cpu0, 3), run_dir=str(workdir),
        stats=dict(world.cl.stats), log_entries=rows.get("log_entries", []),
        phases=list(run.phases), rows=rows,
        boundaries={n: bytes(b.trace) for n, nd in world.cl.nodes.items()
                    if isinstance(b := nd.bug, CrashPoint)})
