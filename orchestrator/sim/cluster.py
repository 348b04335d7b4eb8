"""The deterministic simulation of a whole cluster: the node's own code (`node.host.NodeHost`:
storage, Raft, KV, the cutover, the replica logic) on a simulated disk, network and
clock, driven by one seeded event loop.

Time is an integer number of microseconds. Everything random comes from the seed. A
node is a `NodeHost` over a `SimDisk`; its ticks, the messages it sends (through a
switchboard that applies the nemesis's `faults.Net` rules), the requests of the clients
and of the operator, all are events in one queue, so a seed replays bit for bit.

Processes (the fault steps of a plan, the operator, the clients) are generators that
yield what they wait for (`Wait`, `WaitFlag`, `WaitEvent`, `WaitUntil`, `WaitReply`);
the loop resumes them.
"""
from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from nemesis.faults import Net
from node.buggify import OFF, Buggify, BuggifyCrash
from node.buggify import POINTS as BUGGIFY_POINTS
from node.events import EXIT_HALTED, EXIT_STORAGE, EventKind
from node.host import NodeExit, NodeHost, NodeOptions
from node.keystore import Kek
from node.raft import Message, Role
from node.storage import storage_failure
from orchestrator.run.config import KNOB_DEFAULTS
from orchestrator.sim import crashpoints
from orchestrator.sim.buggify import SimBuggify, draw_points
from orchestrator.sim.disk import SimDisk

US = 1_000_000  # microseconds per second


# ---------------------------------------------------------------------- waits


@dataclass(frozen=True)
class Wait:
    us: int


@dataclass(frozen=True)
class WaitFlag:
    name: str


@dataclass(frozen=True)
class WaitEvent:
    """The first node event at position >= `since` that `pred` accepts."""

    pred: Callable[[dict[str, Any]], bool]
    since: int = 0


@dataclass(frozen=True)
class WaitUntil:
    pred: Callable[[], bool]
    timeout_us: int
    poll_us: int = 10_000


@dataclass(frozen=True)
class WaitReply:
    """Send `req` to `node` and wait for its reply (None after `timeout_us`)."""

    node: str
    req: dict[str, Any]
    timeout_us: int


Proc = Generator[Any, Any, Any]


@dataclass
class SimSettings:
    """The simulated cluster's shape and timing."""

    nodes: int = 5
    tick_ms: float = 25.0
    election_ticks: int = 10
    heartbeat_ticks: int = 3
    snapshot_every: int = KNOB_DEFAULTS["snapshot_every"]
    max_msg_bytes: int = KNOB_DEFAULTS["max_msg_bytes"]
    max_inflight: int = KNOB_DEFAULTS["max_inflight"]
    enable_timeout_ticks: int = 80
    bugs: tuple[str, ...] = ()
    profile: str = "fixed"
    latency_us: tuple[int, int] = (150, 700)  # a message through the switchboard
    client_latency_us: tuple[int, int] = (80, 300)
    process_us: int = 100  # one turn of a node's loop (Python, the Ready's encoding)
    fsync_us: int = 400  # one fdatasync of a node's WAL (the loop waits for it)
    linger_us: int = 1000  # group commit: client requests share a Ready
    start_us: tuple[int, int] = (150_000, 450_000)  # spawn and recovery of a process
    # BUGGIFY (node/buggify.py): each seed arms a subset of the node's points
    buggify: bool = False
    buggify_points: int = len(BUGGIFY_POINTS)  # how many of them (`RunConfig`)
    # Crash-consistency exploration (`crashpoints.py`): count every node's durability
    # boundaries (`crash_probe`), and kill one node at one of them (`crash_point`).
    crash_probe: bool = False
    crash_point: dict[str, Any] | None = None


@dataclass
class SimNode:
    id: str
    disk: SimDisk = field(default_factory=SimDisk)
    host: NodeHost | None = None
    incarnation: int = 0
    paused: bool = False
    booting: bool = False
    held: list[tuple[str, Any]] = field(default_factory=list)  # inputs while paused
    inbox: list[tuple[str, Any]] = field(default_factory=list)  # not yet read by the loop
    ticks_due: int = 0
    process_at: int | None = None
    busy_until: int = 0  # the loop is still in its last turn (fsync included)
    failed_starts: int = 0
    ticks: int = 0
    # How many times as fast its timers run (the clock-skew fault): a property of the
    # node's machine, so it outlives a restart of the process, as on real processes.
    tick_factor: float = 1.0
    # The last loop turn: when it began, its number, its durability changes. A crash
    # before its fsyncs finished cuts it short (`cut`: turn -> syncs that completed).
    turn: int = 0
    turn_t0: int = 0
    turn_log: list[Any] = field(default_factory=list)
    cut: dict[int, int] = field(default_factory=dict)
    bug: Buggify = OFF  # its BUGGIFY hook: one per node, across its restarts

    @property
    def up(self) -> bool:
        return self.host is not None and not self.paused


class SimEventLog:
    """A node's event log in the simulator: kept in memory (and written out as
    `events.jsonl` when the run is materialized), times in simulated ns."""

    def __init__(self, cl: SimCluster, node: str) -> None:
        self.cl = cl
        self.node = node

    def emit(self, kind: EventKind | str, **detail: Any) -> None:
        self.cl.add_event(self.node, str(kind), detail)


class SimCluster:
    """Nodes, the network, the clock, the event loop (see the module docstring)."""

    def __init__(self, seed: int, settings: SimSettings | None = None) -> None:
        self.seed = seed
        self.s = settings or SimSettings()
        self.rng = random.Random(f"sim:{seed}")
        self.now = 0
        self._seq = itertools.count()
        self._queue: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self.ids = [f"n{i + 1}" for i in range(self.s.nodes)]
        self.nodes = {n: SimNode(n) for n in self.ids}
        self.kek_bytes = bytes(self.rng.getrandbits(8) for _ in range(32))  # test material
        self.kek = Kek(self.kek_bytes)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._wrap_nonce = itertools.count(1)
        self.net = Net()
        # A scenario's own hook: a message it returns False for is lost in flight.
        self.message_filter: Callable[[Message], bool] | None = None
        self.events: list[dict[str, Any]] = []
        self._event_waiters: list[tuple[Callable[[dict[str, Any]], bool], int, Proc]] = []
        self.flags: dict[str, bool] = {}
        self._flag_waiters: dict[str, list[Proc]] = {}
        self._replies: dict[Any, Callable[[Any], None]] = {}  # request token -> its waiter
        self._tokens = itertools.count(1)
        self.stats: dict[str, int] = {"messages": 0, "dropped": 0, "events": 0}
        self._in_turn: str | None = None  # the node whose loop turn is running
        self.t0_us = 0
        if self.s.buggify:  # its own random stream: the seed's other draws stay as they are
            armed = draw_points(seed, BUGGIFY_POINTS[:self.s.buggify_points])
            for n in self.ids:
                self.nodes[n].bug = SimBuggify(self, n, armed, seed)
        if self.s.crash_probe or self.s.crash_point is not None:
            crashpoints.install(self.nodes, self.add_event, self.s.crash_point, seed,
                                BUGGIFY_POINTS[:self.s.buggify_points])
        for n in self.ids:
            self._boot(n)

    # ------------------------------------------------------------------ loop

    def at(self, t_us: int, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._queue, (max(t_us, self.now), next(self._seq), fn, args))

    def after(self, us: int, fn: Callable[..., None], *args: Any) -> None:
        self.at(self.now + us, fn, *args)

    def run_until(self, t_us: int, stop: Callable[[], bool] | None = None) -> None:
        q = self._queue
        while q and q[0][0] <= t_us:
            t, _, fn, args = heapq.heappop(q)
            self.now = t
            fn(*args)
            self.stats["events"] += 1
            if stop is not None and stop():
                return
        self.now = max(self.now, t_us)

    def clock(self) -> float:
        """The nodes' monotonic clock (seconds)."""
        return self.now / US

    def rel_ns(self) -> int:
        return (self.now - self.t0_us) * 1000

    # ------------------------------------------------------------------ processes

    def spawn(self, proc: Proc) -> None:
        self._resume(proc, None)

    def _resume(self, proc: Proc, value: Any) -> None:
        try:
            w = proc.send(value)
        except StopIteration:
            return
        if isinstance(w, Wait):
            self.after(max(0, w.us), self._resume, proc, None)
        elif isinstance(w, WaitFlag):
            if self.flags.get(w.name):
                self.after(0, self._resume, proc, None)
            else:
                self._flag_waiters.setdefault(w.name, []).append(proc)
        elif isinstance(w, WaitEvent):
            for i in range(w.since, len(self.events)):
                if w.pred(self.events[i]):
                    self.after(0, self._resume, proc, self.events[i])
                    return
            self._event_waiters.append((w.pred, len(self.events), proc))
        elif isinstance(w, WaitUntil):
            self._poll_until(proc, w, self.now + w.timeout_us)
        elif isinstance(w, WaitReply):
            self._request(proc, w)
        else:  # pragma: no cover - a programming error in a process
            raise TypeError(f"a process yielded {w!r}")

    def _poll_until(self, proc: Proc, w: WaitUntil, end: int) -> None:
        if w.pred():
            self._resume(proc, True)
        elif self.now >= end:
            self._resume(proc, False)
        else:
            self.after(w.poll_us, self._poll_until, proc, w, end)

    def set_flag(self, name: str) -> None:
        if self.flags.get(name):
            return
        self.flags[name] = True
        for proc in self._flag_waiters.pop(name, []):
            self.after(0, self._resume, proc, None)

    def add_event(self, node: str, kind: EventKind | str, detail: dict[str, Any]) -> None:
        n = self.nodes.get(node)
        if n is not None and self._in_turn == node and n.disk.turn_syncs:
            # Written to the event log after a sync of its turn: it exists once that
            # sync is done, and never if the process dies first (as an output).
            wait, turn, k = self._out_delay(n)
            self.after(wait, self._publish_late, node, str(kind), detail, turn, k)
            return
        self._publish(node, str(kind), detail)

    def _publish_late(self, node: str, kind: str, detail: dict[str, Any], turn: int,
                      k: int) -> None:
        if not self._cut_off(node, turn, k):
            self._publish(node, kind, detail)

    def _publish(self, node: str, kind: str, detail: dict[str, Any]) -> None:
        ev = {"t": self.now * 1000, "time_ns": self.rel_ns(), "node": node, "kind": kind,
              **detail, "_i": len(self.events)}
        self.events.append(ev)
        for fn in self.listeners:
            fn(ev)
        if self._event_waiters:
            keep = []
            for pred, since, proc in self._event_waiters:
                if pred(ev):
                    self.after(0, self._resume, proc, ev)
                else:
                    keep.append((pred, since, proc))
            self._event_waiters = keep

    def cancel_processes(self) -> list[Proc]:
        """The run's time is up: nobody waits for a flag or an event any more. The
        processes dropped, for the caller to close (their `finally` runs now, not when
        the garbage collector gets to them)."""
        dropped = [proc for _pred, _since, proc in self._event_waiters]
        for procs in self._flag_waiters.values():
            dropped.extend(procs)
        self._event_waiters = []
        self._flag_waiters = {}
        return dropped

    # ------------------------------------------------------------------ nodes

    def _opts(self, nid: str) -> NodeOptions:
        s = self.s
        return NodeOptions(node_id=nid, data_dir=f"/sim/{nid}", listen=f"sim://{nid}",
                           switchboard="sim://switchboard", peers=list(self.ids),
                           bugs=list(s.bugs), profile=s.profile, tick_ms=s.tick_ms,
                           election_ticks=s.election_ticks, heartbeat_ticks=s.heartbeat_ticks,
                           snapshot_every=s.snapshot_every,
                           enable_timeout_ticks=s.enable_timeout_ticks,
                           max_msg_bytes=s.max_msg_bytes, max_inflight=s.max_inflight,
                           kek_path="sim://kek")

    def _boot(self, nid: str) -> None:
        node = self.nodes[nid]
        node.booting = False
        if node.host is not None:
            return
        node.incarnation += 1
        inc = node.incarnation
        try:
            node.host = NodeHost(
                self._opts(nid), disk=node.disk, log=SimEventLog(self, nid), kek=self.kek,
                clock=self.clock, send=lambda msgs, n=nid, i=inc: self._send(n, i, msgs),
                deliver=lambda ident, rep, n=nid, i=inc: self._reply(n, i, ident, rep),
                rng=random.Random(f"node:{self.seed}:{nid}:{inc}"),
                start_info={"pid": inc}, buggify=node.bug)
        except BuggifyCrash as b:  # it died at a BUGGIFY point while starting
            self.buggify_crash(nid, b)
            return
        except Exception as e:  # noqa: BLE001 - a node that refuses to start (or dies trying)
            node.failed_starts += 1
            self.add_event(nid, EventKind.START_FAILED, {"error": f"{type(e).__name__}: {e}"})
            return
        node.paused = False
        node.held = []
        phase = self.rng.randrange(int(self.s.tick_ms * 1000))
        self.after(phase, self._tick, nid, inc)
        self._wake(nid)

    def _alive(self, nid: str, inc: int) -> NodeHost | None:
        node = self.nodes[nid]
        return node.host if node.host is not None and node.incarnation == inc else None

    def _tick(self, nid: str, inc: int) -> None:
        if self._alive(nid, inc) is None:
            return
        node = self.nodes[nid]
        if not node.paused:  # a stopped process does not tick (and does not burst later)
            node.ticks_due += 1
            self._wake(nid)
        period = int(self.s.tick_ms * 1000)
        if node.tick_factor != 1.0:
            period = max(1, round(period / node.tick_factor))
        self.after(period, self._tick, nid, inc)

    def set_tick_factor(self, nid: str, factor: float) -> None:
        """The node's ticks come `factor` times as often from its next one on (the
        clock-skew fault; `node/server.py` does the same on a real process)."""
        self.nodes[nid].tick_factor = factor

    def _wake(self, nid: str, linger: bool = False) -> None:
        """The node's loop runs again: after a short turn, or `linger` for group commit,
        and never before it finished the last turn (an fsync holds it up: inputs that
        arrive meanwhile are read together, as a real node reads its sockets)."""
        node = self.nodes[nid]
        t = max(self.now + (self.s.linger_us if linger else self.s.process_us),
                node.busy_until)
        if node.process_at is not None and node.process_at <= t:
            return
        node.process_at = t
        self.at(t, self._process, nid, node.incarnation)

    def _process(self, nid: str, inc: int) -> None:
        """One turn of the node's loop: read every input, tick if due, handle Readies."""
        node = self.nodes[nid]
        host = self._alive(nid, inc)
        if host is None or node.process_at != self.now:
            return
        node.process_at = None
        if node.paused:
            return
        syncs = node.disk.syncs
        inbox, node.inbox = node.inbox, []
        node.turn += 1
        node.turn_t0 = self.now
        node.disk.begin_turn()
        self._in_turn = nid
        try:
            for kind, item in inbox:
                if kind == "msgs":
                    host.on_messages(item)
                else:
                    host.on_request(*item)
            for _ in range(node.ticks_due):
                host.on_tick()
                node.ticks += 1
                if node.ticks % 20 == 0:  # the process forgets dead requests twice a second
                    host.expire()
            node.ticks_due = 0
            host.process()
        except NodeExit as e:
            # The elastickv profile's halt: the process ends itself, as designed (its
            # `halt` event is I3's evidence; the `crashes` checker does not count this).
            # A restart replays the entry and halts again. Like any process exit, the
            # page cache survives: nothing written is lost. It exits once its turn's
            # syncs are done, so its `exit` follows what it wrote after them (its halt).
            wait, _turn, _k = self._out_delay(node)
            node.disk.end_turn()
            node.turn_log = []
            self._in_turn = None
            detail = {"reason": "halt", "index": e.index, "term": e.term, "code": EXIT_HALTED}
            if wait:
                self.after(wait, self._publish, nid, str(EventKind.EXIT), detail)
            else:
                self._publish(nid, str(EventKind.EXIT), detail)
            self.kill(nid)
            return
        except BuggifyCrash as b:
            node.disk.end_turn()
            node.turn_log = []
            self._in_turn = None
            self.buggify_crash(nid, b)
            return
        except Exception as e:  # noqa: BLE001 - what a node process would die of
            # An exception the node does not handle ends its process (a traceback in its
            # log, exit code 1): the simulated process dies the same way, and it is
            # evidence (the `crashes` checker), never a harness error.
            # It died at the exception, after everything before it (its syncs included)
            # had happened: nothing of the turn is cut.
            node.disk.end_turn()
            node.turn_log = []
            self._in_turn = None
            self._died(nid, e)
            return
        node.turn_log = node.disk.end_turn()
        self._in_turn = None
        node.busy_until = self.now + self.s.process_us + \
            self.s.fsync_us * (node.disk.syncs - syncs)
        if node.inbox or node.ticks_due:
            self._wake(nid)

    def buggify_crash(self, nid: str, b: BuggifyCrash) -> None:
        """The node died at a BUGGIFY point: a process crash (`kill`: the page cache
        survives) or a power loss there (`crash`: every unsynced byte lost; `tear`: a
        prefix of each unsynced write survives). Planned, like the nemesis's kill: no
        `crash` event; its supervisor starts it again."""
        hook = self.nodes[nid].bug
        torn = getattr(hook, "rng", None) if b.action == "tear" else None
        self.kill(nid, power=b.action != "kill", torn=torn)
        self.start(nid)

    def _died(self, nid: str, e: Exception) -> None:
        """The node process ends of `e`: a crash, or (storage it cannot trust) the
        fail-stop exit the node process makes (`node/server.py`, `EXIT_STORAGE`)."""
        if storage_failure(e):
            self.add_event(nid, EventKind.EXIT, {"reason": "storage", "code": EXIT_STORAGE,
                                                 "error": f"{type(e).__name__}: {e}"})
        else:
            self.add_event(nid, EventKind.CRASH, {"error": f"{type(e).__name__}: {e}"})
        self.kill(nid)

    def call_on(self, nid: str, fn: Callable[[Any], Any]) -> Any:
        """`fn(host)` for a request the harness makes of a node outside its turns (a
        snapshot now, its status). The node's own exception there is what its process
        would die of on real machines (the request runs in its loop): the node dies the
        same way here, and the `crashes` checker counts it, never a harness error. None
        when the node is down or died of it."""
        node = self.nodes[nid]
        if not node.up or node.host is None:
            return None
        if self.now < node.busy_until:
            # Its loop is still in its last turn's fsyncs: a real process serves the
            # request only once they are done, so what the request writes can never be
            # durable before them. (A snapshot taken here while the turn's sidecar write
            # was still "in flight" survived a power loss that took the sidecar back: a
            # snapshot saying C beside a sidecar saying 0, the node refused for good;
            # `cutover sim --buggify`, seed 24510.)
            node.turn_log = []
        try:
            return fn(node.host)
        except NodeExit as e:
            self._publish(nid, str(EventKind.EXIT), {"reason": "halt", "index": e.index,
                                                     "term": e.term, "code": EXIT_HALTED})
            self.kill(nid)
        except BuggifyCrash as b:
            self.buggify_crash(nid, b)
        except Exception as e:  # noqa: BLE001 - what a node process would die of
            self._died(nid, e)
        return None

    def kill(self, nid: str, *, power: bool = False,
             torn: random.Random | None = None) -> dict[str, Any]:
        node = self.nodes[nid]
        alive = node.host is not None
        node.host = None
        node.paused = False
        node.held = []
        node.inbox = []
        node.ticks_due = 0
        node.process_at = None
        node.incarnation += 1
        if alive and self.now < node.busy_until and node.turn_log:
            # Killed while its last turn's fsyncs ran: the process never got past the
            # sync it was in, so nothing it did after that happened (writes, outputs,
            # events), and that sync made nothing durable.
            done = max(0, (self.now - node.turn_t0 - self.s.process_us) // self.s.fsync_us)
            total = sum(1 for _k, kind, *_ in node.turn_log if kind == "sync")
            if done < total:
                node.cut[node.turn] = done
                node.disk.undo(node.turn_log, done)
        node.turn_log = []
        return node.disk.crash(power=power, rng=torn)

    def _out_delay(self, node: SimNode) -> tuple[int, int, int]:
        """(delay, turn, syncs) of an output made now: it leaves once the syncs the turn
        made before it have finished (the node writes, fsyncs, then answers)."""
        k = node.disk.turn_syncs
        return ((self.s.process_us + k * self.s.fsync_us) if k else 0), node.turn, k

    def _cut_off(self, src: str, turn: int, k: int) -> bool:
        """The output waited for a sync its node never finished: it was never sent."""
        done = self.nodes[src].cut.get(turn)
        return done is not None and k > done

    def start(self, nid: str) -> None:
        node = self.nodes[nid]
        if node.host is not None or node.booting:
            return
        node.booting = True
        self.after(self.rng.randint(*self.s.start_us), self._boot, nid)

    def pause(self, nid: str) -> None:
        node = self.nodes[nid]
        if node.host is not None:
            node.paused = True

    def resume(self, nid: str) -> None:
        node = self.nodes[nid]
        if node.host is None or not node.paused:
            return
        node.paused = False
        held, node.held = node.held, []
        for kind, item in held:
            self._input(nid, kind, item)

    def stop_all(self) -> None:
        """A clean stop of every live node (their `stop` events carry the final digest)."""
        for n in self.ids:
            if self.nodes[n].bug is not OFF:
                self.nodes[n].bug.on = False  # BUGGIFY ends with the run: a clean stop
        for n in self.ids:
            node = self.nodes[n]
            if node.host is not None:
                node.paused = False
                node.host.close()
                node.host = None
                node.incarnation += 1

    # ------------------------------------------------------------------ network

    def _send(self, src: str, inc: int, msgs: list[Message]) -> None:
        if self._alive(src, inc) is None:
            return
        by_dst: dict[str, list[Message]] = {}
        for m in msgs:
            by_dst.setdefault(m.dst, []).append(m)
        net, rng = self.net, self.rng
        wait, turn, k = self._out_delay(self.nodes[src])
        bug = self.nodes[src].bug
        if bug.on and getattr(bug, "delay_us", 0):
            wait, bug.delay_us = wait + bug.delay_us, 0  # `delay` at host.send
        for dst, batch in by_dst.items():
            link = (src, dst)
            self.stats["messages"] += 1
            if link in net.blocked:
                self.stats["dropped"] += 1
                continue
            loss = net.loss.get(link, net.loss_all)
            if loss and rng.random() < loss:
                self.stats["dropped"] += 1
                continue
            dup = net.dup.get(link, net.dup_all)
            copies = 2 if dup and rng.random() < dup else 1
            ms, jitter = net.delay.get(link, net.delay_all)
            for _ in range(copies):
                us = rng.randint(*self.s.latency_us)
                if ms or jitter:
                    us += max(0, int((ms + rng.uniform(-jitter, jitter)) * 1000))
                self.after(wait + us, self._deliver, link, batch, turn, k)

    def _deliver(self, link: tuple[str, str], batch: list[Message], turn: int = 0,
                 k: int = 0) -> None:
        if k and self._cut_off(link[0], turn, k):
            self.stats["dropped"] += 1
            return
        if link in self.net.blocked:  # the switchboard checks again on release
            self.stats["dropped"] += 1
            return
        if self.message_filter is not None:
            batch = [m for m in batch if self.message_filter(m)]
            if not batch:
                return
        self._input(link[1], "msgs", batch)

    def _input(self, nid: str, kind: str, item: Any) -> None:
        node = self.nodes[nid]
        if node.host is None:
            return
        if node.paused:
            node.held.append((kind, item))
            return
        node.inbox.append((kind, item))
        self._wake(nid, linger=kind == "req")

    # ------------------------------------------------------------------ requests

    def request(self, node: str, req: dict[str, Any], on_reply: Callable[[Any], None],
                timeout_us: int) -> None:
        """Send `req` to `node`; `on_reply(reply or None)` once (None: timed out, or the
        node is down: the caller decides what that means)."""
        token = ("req", next(self._tokens))
        state = {"done": False}

        def finish(rep: Any) -> None:
            if not state["done"]:
                state["done"] = True
                self._replies.pop(token, None)
                on_reply(rep)

        self._replies[token] = finish
        lat = self.rng.randint(*self.s.client_latency_us)
        self.after(lat, self._input, node, "req", (token, {"id": token[1], **req}))
        self.after(timeout_us, finish, None)

    def reachable(self, node: str) -> bool:
        """A client connection would be accepted (ZMQ_IMMEDIATE): the process is up."""
        return self.nodes[node].host is not None

    def _request(self, proc: Proc, w: WaitReply) -> None:
        if not self.reachable(w.node):
            self.after(0, self._resume, proc, None)
            return
        self.request(w.node, w.req, lambda rep: self._resume(proc, rep), w.timeout_us)

    def _reply(self, nid: str, inc: int, ident: Any, rep: dict[str, Any]) -> None:
        if self._alive(nid, inc) is None:
            return
        got = self._replies.get(ident)
        if got is None:
            return
        lat = self.rng.randint(*self.s.client_latency_us)
        wait, turn, k = self._out_delay(self.nodes[nid])
        if k:
            self.after(wait + lat, self._reply_sent, nid, turn, k, got, rep)
        else:
            self.after(lat, got, rep)

    def _reply_sent(self, nid: str, turn: int, k: int, got: Callable[[Any], None],
                    rep: dict[str, Any]) -> None:
        if not self._cut_off(nid, turn, k):
            got(rep)

    # ------------------------------------------------------------------ queries

    def status(self, nid: str) -> dict[str, Any] | None:
        return self.call_on(nid, lambda h: h.status())

    def leader(self) -> str | None:
        best: tuple[int, str] | None = None
        for n in self.ids:
            node = self.nodes[n]
            if node.up and node.host is not None and node.host.raft.role is Role.LEADER:
                t = node.host.raft.term
                if best is None or t > best[0]:
                    best = (t, n)
        return best[1] if best else None

    def new_dek(self) -> bytes:
        """A fresh DEK, KEK-wrapped, from the seed (deterministic)."""
        dek = bytes(self.rng.getrandbits(8) for _ in range(32))
        return self.kek.wrap_dek(dek, next(self._wrap_nonce).to_bytes(12, "big"))
