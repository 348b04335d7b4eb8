"""The network switchboard: every node-to-node message crosses this one process.

Why a process in the middle rather than iptables/netem: the nemesis can cut, drop, delay,
reorder and duplicate traffic between real node processes without root, per directed
link, with seeded randomness, and with a counter for every decision (so a report can
show what the network actually did). The wire contract is `docs/protocol.md`.

Routing: a ROUTER socket; each node connects a DEALER whose identity is its node id and
sends `[dest, body]`. We receive `[src, dest, body]` (the source is the identity, so a node
cannot lie about it) and forward `[dest, src, body]`. `[b"", b"hello"]` (empty dest) only
announces a node. A destination that is not connected (never started, killed, or a typo)
is dropped and counted, never an error: ROUTER_MANDATORY turns it into EHOSTUNREACH,
which we catch, and every send is non-blocking so a paused (SIGSTOPped) node whose queue
is full cannot stall the network for everybody else.

Faults, in the order a message meets them: the partition (blocked directed links), loss,
duplication, then delay (each copy draws its own delay, `ms ± jitter`, so jitter reorders).
Held messages wait in a heap released by the poll timeout, and the partition is checked
again on release: once `partition` has answered, nothing crosses a cut link, not even
a message that was already in flight.

Lifetime: the process must never outlive the orchestrator (no orphans holding ports), so
`run_switchboard` asks the kernel for SIGTERM when its parent dies (PR_SET_PDEATHSIG),
also polls `os.getppid()` in case prctl is unavailable, and exits cleanly on SIGTERM. A
spawned switchboard does the first before anything else and exits at once if its parent
is already gone (`orchestrator.lifeline`).
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import heapq
import json
import math
import multiprocessing
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

import msgpack
import zmq

from orchestrator.lifeline import die_with_parent

Link = tuple[bytes, bytes]

# How many frames we take from one socket before looking at the clock and the other
# socket again: big enough to amortise the poll, small enough that held messages and
# control requests are not starved under a flood.
BATCH = 512
# Longest we sleep in poll with nothing to do: bounds how late we notice a SIGTERM or a
# dead parent when prctl is not available.
IDLE_POLL_MS = 100
PARENT_CHECK_S = 0.2
HWM = 100_000
PR_SET_PDEATHSIG = 1


class SwitchboardError(RuntimeError):
    """The switchboard answered `ok: false` (the message is its error text)."""


class SwitchboardTimeout(SwitchboardError, TimeoutError):
    """The switchboard did not answer in time: it is dead, hung or not started yet."""


class _Counters:
    """Per-link counters; a class with slots because it is touched for every message."""

    __slots__ = ("sent", "delivered", "dropped", "duplicated")

    def __init__(self) -> None:
        self.sent = 0
        self.delivered = 0
        self.dropped = 0
        self.duplicated = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "duplicated": self.duplicated,
        }


def _link_name(link: Link) -> str:
    return f"{link[0].decode(errors='replace')}->{link[1].decode(errors='replace')}"


def _parse_links(raw: Any, what: str) -> list[Link]:
    if not isinstance(raw, list | tuple):
        raise ValueError(f"{what} must be a list of [src, dst] pairs")
    links: list[Link] = []
    for pair in raw:
        if (not isinstance(pair, list | tuple) or len(pair) != 2
                or not all(isinstance(x, str | bytes) and x for x in pair)):
            raise ValueError(f"{what}: {pair!r} is not a [src, dst] pair of node ids")
        src, dst = (x.encode() if isinstance(x, str) else x for x in pair)
        links.append((src, dst))
    return links


def _number(req: dict, name: str, lo: float, hi: float = math.inf) -> float:
    value = req.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name!r} must be a number")
    if not lo <= value <= hi or math.isnan(value):
        raise ValueError(f"{name!r} must be in [{lo}, {hi}], got {value}")
    return float(value)


class Switchboard:
    """The routing table, the fault configuration and the event loop.

    Kept separate from `run_switchboard` so the process plumbing (signals, parent watch)
    stays apart from the logic; it is not meant to be shared between threads.
    """

    def __init__(self, router: zmq.Socket, control: zmq.Socket, seed: int = 0) -> None:
        self.router = router
        self.control = control
        self.rng = random.Random(seed)
        self.nodes: set[bytes] = set()
        self.stats: dict[Link, _Counters] = {}
        self.malformed = 0
        self.held: list[tuple[float, int, bytes, bytes, bytes]] = []
        self._seq = 0
        self._reset_faults()

    # -- configuration ---------------------------------------------------------------

    def _reset_faults(self) -> None:
        self.blocked: set[Link] = set()
        self.loss_all = 0.0
        self.loss: dict[Link, float] = {}
        self.delay_all: tuple[float, float] = (0.0, 0.0)
        self.delay: dict[Link, tuple[float, float]] = {}
        self.dup_all = 0.0
        self.dup: dict[Link, float] = {}
        self._faulty = False

    def _refresh(self) -> None:
        # The no-fault fast path skips every lookup and random draw.
        self._faulty = bool(self.blocked or self.loss_all or self.loss or self.dup_all
                            or self.dup or self.delay_all != (0.0, 0.0) or self.delay)

    def handle_control(self, req: Any) -> dict[str, Any]:
        """Apply one control request; a bad request is answered, never raised."""
        try:
            if not isinstance(req, dict):
                raise ValueError("request must be a map")
            op = req.get("op")
            links = _parse_links(req["links"], "links") if req.get("links") is not None \
                else None
            if op == "ping":
                return {"ok": True, "pid": os.getpid()}
            if op == "stats":
                return {
                    "ok": True,
                    "links": {_link_name(k): v.as_dict() for k, v in self.stats.items()},
                    "nodes": sorted(n.decode(errors="replace") for n in self.nodes),
                    "held": len(self.held),
                    "malformed": self.malformed,
                }
            if op == "set":
                self._set_all(req)
            elif op == "partition":
                self.blocked = set(_parse_links(req.get("blocked", []), "blocked"))
            elif op == "heal":
                self._reset_faults()
            elif op == "loss":
                self._set(self.loss, "loss_all", _number(req, "p", 0.0, 1.0), links)
            elif op == "duplicate":
                self._set(self.dup, "dup_all", _number(req, "p", 0.0, 1.0), links)
            elif op == "delay":
                ms = _number(req, "ms", 0.0)
                jitter = _number(req, "jitter", 0.0) if "jitter" in req else 0.0
                self._set(self.delay, "delay_all", (ms, jitter), links)
            else:
                raise ValueError(f"unknown op {op!r}")
        except (ValueError, KeyError, TypeError) as e:
            return {"ok": False, "error": str(e)}
        self._refresh()
        return {"ok": True}

    def _set_all(self, req: dict) -> None:
        """Replace the whole fault configuration at once (the nemesis's union of every
        active fault), so no message slips through between two partial updates."""
        blocked = set(_parse_links(req.get("blocked", []), "blocked"))

        def per_link(name: str, lo: float, hi: float, width: int) -> dict[Link, Any]:
            out: dict[Link, Any] = {}
            for row in req.get(name) or []:
                if not isinstance(row, list | tuple) or len(row) != 2 + width:
                    raise ValueError(f"{name}: {row!r} is not [src, dst, value...]")
                (link,) = _parse_links([row[:2]], name)
                vals = [_number({name: v}, name, lo, hi) for v in row[2:]]
                out[link] = vals[0] if width == 1 else tuple(vals)
            return out

        loss = per_link("loss", 0.0, 1.0, 1)
        dup = per_link("dup", 0.0, 1.0, 1)
        delay = per_link("delay", 0.0, math.inf, 2)
        loss_all = _number(req, "loss_all", 0.0, 1.0) if "loss_all" in req else 0.0
        dup_all = _number(req, "dup_all", 0.0, 1.0) if "dup_all" in req else 0.0
        d = req.get("delay_all") or [0.0, 0.0]
        if not isinstance(d, list | tuple) or len(d) != 2:
            raise ValueError("delay_all must be [ms, jitter]")
        delay_all = (_number({"delay_all": d[0]}, "delay_all", 0.0),
                     _number({"delay_all": d[1]}, "delay_all", 0.0))
        self.blocked, self.loss, self.dup, self.delay = blocked, loss, dup, delay
        self.loss_all, self.dup_all, self.delay_all = loss_all, dup_all, delay_all

    def _set(self, per_link: dict, attr: str, value: Any, links: list[Link] | None) -> None:
        # Without `links` the setting is for every link, present and future, so any
        # per-link override is forgotten; with `links` only those links change.
        if links is None:
            per_link.clear()
            setattr(self, attr, value)
        else:
            for link in links:
                per_link[link] = value

    # -- data path -------------------------------------------------------------------

    def _counters(self, link: Link) -> _Counters:
        c = self.stats.get(link)
        if c is None:
            c = self.stats[link] = _Counters()
        return c

    def _deliver(self, src: bytes, dst: bytes, body: bytes, c: _Counters) -> None:
        try:
            self.router.send_multipart((dst, src, body), zmq.NOBLOCK)
        except zmq.ZMQError as e:
            # EHOSTUNREACH: not connected (ROUTER_MANDATORY); EAGAIN: its queue is full.
            if e.errno not in (errno.EHOSTUNREACH, zmq.EAGAIN):
                raise
            c.dropped += 1
        else:
            c.delivered += 1

    def route(self, frames: Sequence[bytes]) -> None:
        """Decide the fate of one frame received on the ROUTER."""
        if len(frames) != 3:
            self.malformed += 1
            return
        src, dst, body = frames
        if not dst:
            self.nodes.add(src)  # hello
            return
        link = (src, dst)
        c = self._counters(link)
        c.sent += 1
        if not self._faulty:
            self._deliver(src, dst, body, c)
            return
        if link in self.blocked:
            c.dropped += 1
            return
        rng = self.rng
        loss = self.loss.get(link, self.loss_all)
        if loss and rng.random() < loss:
            c.dropped += 1
            return
        copies = 1
        dup = self.dup.get(link, self.dup_all)
        if dup and rng.random() < dup:
            copies = 2
            c.duplicated += 1
        ms, jitter = self.delay.get(link, self.delay_all)
        for _ in range(copies):
            held_ms = ms + rng.uniform(-jitter, jitter) if jitter else ms
            if held_ms <= 0:
                self._deliver(src, dst, body, c)
            else:
                self._seq += 1
                heapq.heappush(self.held, (time.monotonic() + held_ms / 1000.0,
                                           self._seq, src, dst, body))

    def release_due(self, now: float) -> None:
        held = self.held
        while held and held[0][0] <= now:
            _, _, src, dst, body = heapq.heappop(held)
            c = self._counters((src, dst))
            if (src, dst) in self.blocked:
                c.dropped += 1
            else:
                self._deliver(src, dst, body, c)

    def poll_timeout_ms(self, now: float) -> int:
        if not self.held:
            return IDLE_POLL_MS
        # ceil: rounding down would spin with timeout 0 until the deadline passes.
        return max(0, min(IDLE_POLL_MS, math.ceil((self.held[0][0] - now) * 1000.0)))

    def run(self, should_stop: Callable[[], bool]) -> None:
        """Serve until `should_stop()` is true (checked at least every IDLE_POLL_MS)."""
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.control, zmq.POLLIN)
        router, control = self.router, self.control
        while not should_stop():
            events = dict(poller.poll(self.poll_timeout_ms(time.monotonic())))
            if router in events:
                for _ in range(BATCH):
                    try:
                        frames = router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.route(frames)
            if control in events:
                self._serve_control()
            if self.held:
                self.release_due(time.monotonic())

    def _serve_control(self) -> None:
        while True:
            try:
                frames = self.control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                req = msgpack.unpackb(frames[0], raw=False)
            except Exception as e:  # any garbage must still get a reply
                reply: dict[str, Any] = {"ok": False, "error": f"bad msgpack: {e}"}
            else:
                reply = self.handle_control(req)
            self.control.send(msgpack.packb(reply, use_bin_type=True))


# -- process plumbing --------------------------------------------------------------------


def _set_pdeathsig(sig: int) -> bool:
    """Ask Linux to signal us when our parent dies; False where that is not possible.

    Caveat (documented by prctl(2)): the signal fires when the parent *thread* that
    forked us exits, so start the switchboard from a long-lived thread.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _parent_alive_check(parent_pid: int | None) -> Callable[[], bool]:
    """A cheap predicate that turns False once the parent is gone.

    When the parent is our real parent, a change of `getppid()` is exact (no pid-reuse
    race); otherwise (a pid handed down through a launcher) fall back to kill(pid, 0).
    """
    ppid = os.getppid()
    if parent_pid is None:
        if ppid <= 1:
            return lambda: True  # already adopted by init: nothing to watch
        parent_pid = ppid
    if parent_pid == ppid:
        _set_pdeathsig(signal.SIGTERM)
        return lambda: os.getppid() == parent_pid

    def alive() -> bool:
        try:
            os.kill(parent_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    return alive


def run_switchboard(bind: str, control: str, seed: int = 0, parent_pid: int | None = None,
                    ready: Any = None) -> None:
    """Run the switchboard until SIGTERM or until the parent process dies.

    `parent_pid` defaults to our parent at start. Endpoints may use port `*` (ephemeral);
    the bound endpoints are then sent as `{"bind", "control", "pid"}` over `ready` (a
    multiprocessing Connection, or anything with `send(dict)`), or `{"error": text}` if
    binding failed, so a caller never has to guess ports or race for them.
    """
    stop = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    parent_alive = _parent_alive_check(parent_pid)
    next_check = 0.0

    def should_stop() -> bool:
        nonlocal next_check
        if stop:
            return True
        now = time.monotonic()
        if now >= next_check:
            next_check = now + PARENT_CHECK_S
            return not parent_alive()
        return False

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    rep = ctx.socket(zmq.REP)
    try:
        for sock in (router, rep):
            sock.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A restarted node reconnects with the same identity: it must take the route over.
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        router.setsockopt(zmq.SNDHWM, HWM)
        router.setsockopt(zmq.RCVHWM, HWM)
        try:
            router.bind(bind)
            rep.bind(control)
        except zmq.ZMQError as e:
            if ready is not None:
                ready.send({"error": f"cannot bind: {e}"})
            raise
        endpoints = {
            "bind": router.getsockopt_string(zmq.LAST_ENDPOINT),
            "control": rep.getsockopt_string(zmq.LAST_ENDPOINT),
            "pid": os.getpid(),
        }
        if ready is not None:
            ready.send(endpoints)
        Switchboard(router, rep, seed).run(should_stop)
    except KeyboardInterrupt:
        pass
    finally:
        router.close(0)
        rep.close(0)
        ctx.term()


def _switchboard_child(bind: str, control: str, seed: int, parent_pid: int,
                       ready: Any) -> None:
    """The spawned child's entry: the lifeline to `parent_pid` before anything else (a
    parent killed while we were importing has handed us to init: exit, do not bind),
    then the switchboard. SIGTERM, as `run_switchboard` asks: it exits cleanly on it."""
    die_with_parent(parent_pid, signal.SIGTERM)
    run_switchboard(bind, control, seed, parent_pid, ready)


@dataclass
class SwitchboardProcess:
    """A running switchboard process and the endpoints it actually bound."""

    process: BaseProcess
    bind: str
    control: str

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def stop(self, timeout: float = 2.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not gone after `timeout`; returns the exit code."""
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(timeout)
        return self.process.exitcode


def spawn_switchboard(seed: int = 0, bind: str = "tcp://127.0.0.1:*",
                      control: str = "tcp://127.0.0.1:*",
                      start_timeout: float = 10.0) -> SwitchboardProcess:
    """Start a switchboard in a spawn-context child and wait until it is serving.

    Spawn rather than fork: forking a process that holds ZeroMQ contexts or threads is
    undefined behaviour. Raises SwitchboardError if it cannot bind or does not start.
    """
    mp = multiprocessing.get_context("spawn")
    reader, writer = mp.Pipe(duplex=False)
    proc = mp.Process(target=_switchboard_child,
                      args=(bind, control, seed, os.getpid(), writer),
                      name="switchboard", daemon=True)
    proc.start()
    writer.close()
    try:
        msg: Any = None
        deadline = time.monotonic() + start_timeout
        while msg is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if reader.poll(min(remaining, 0.1)):
                msg = reader.recv()
            elif not proc.is_alive():
                break
    except EOFError:
        msg = None
    finally:
        reader.close()
    if not isinstance(msg, dict) or "error" in msg:
        handle = SwitchboardProcess(proc, bind, control)
        handle.stop()
        why = msg["error"] if isinstance(msg, dict) else "did not start"
        raise SwitchboardError(f"switchboard ({bind}, {control}): {why}")
    return SwitchboardProcess(proc, msg["bind"], msg["control"])


# -- control client ----------------------------------------------------------------------


def _links_arg(links: Iterable[Sequence[str]] | None) -> list[list[str]] | None:
    return None if links is None else [[str(s), str(d)] for s, d in links]


class SwitchboardControl:
    """The nemesis's handle on the switchboard (a REQ socket).

    A REQ socket that missed a reply is stuck (it may not send again), so after a timeout
    the socket is thrown away and the next call starts on a fresh one. Not thread-safe.
    """

    def __init__(self, endpoint: str, timeout: float = 2.0,
                 context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            sock = self._ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def request(self, req: dict[str, Any]) -> dict[str, Any]:
        """Send one request; raises SwitchboardError on `ok: false`, a timeout on silence."""
        sock = self._socket()
        sock.send(msgpack.packb(req, use_bin_type=True))
        if not sock.poll(int(self.timeout * 1000), zmq.POLLIN):
            sock.close(0)
            self._sock = None
            raise SwitchboardTimeout(
                f"switchboard at {self.endpoint} did not answer {req.get('op')!r} "
                f"within {self.timeout:g}s (dead, hung, or not started?)")
        reply = msgpack.unpackb(sock.recv(), raw=False)
        if not reply.get("ok"):
            raise SwitchboardError(f"switchboard refused {req.get('op')!r}: "
                                   f"{reply.get('error', reply)}")
        return reply

    def partition(self, blocked: Iterable[Sequence[str]]) -> None:
        """Replace the set of blocked directed links ([src, dst] pairs)."""
        self.request({"op": "partition", "blocked": _links_arg(blocked)})

    def set_faults(self, *, blocked: Iterable[Sequence[str]] = (), loss_all: float = 0.0,
                   loss: Iterable[Sequence[Any]] = (), dup_all: float = 0.0,
                   dup: Iterable[Sequence[Any]] = (),
                   delay_all: tuple[float, float] = (0.0, 0.0),
                   delay: Iterable[Sequence[Any]] = ()) -> None:
        """Replace every fault at once: blocked links, loss / duplication (all links and
        per `[src, dst, p]`) and delay (all links and per `[src, dst, ms, jitter]`)."""
        self.request({"op": "set", "blocked": _links_arg(blocked), "loss_all": loss_all,
                      "loss": [list(r) for r in loss], "dup_all": dup_all,
                      "dup": [list(r) for r in dup], "delay_all": list(delay_all),
                      "delay": [list(r) for r in delay]})

    def heal(self) -> None:
        """Clear partitions, loss, delay and duplication (held messages still arrive)."""
        self.request({"op": "heal"})

    def loss(self, p: float, links: Iterable[Sequence[str]] | None = None) -> None:
        """Drop with probability `p` on `links` (None: every link, overriding per-link)."""
        self.request(self._with_links({"op": "loss", "p": p}, links))

    def delay(self, ms: float, jitter: float = 0.0,
              links: Iterable[Sequence[str]] | None = None) -> None:
        """Hold each message `ms ± jitter` (a nonzero jitter is what reorders)."""
        self.request(self._with_links({"op": "delay", "ms": ms, "jitter": jitter}, links))

    def duplicate(self, p: float, links: Iterable[Sequence[str]] | None = None) -> None:
        """Deliver a second copy with probability `p` (Raft must tolerate replays)."""
        self.request(self._with_links({"op": "duplicate", "p": p}, links))

    def stats(self) -> dict[str, Any]:
        """`{"links": {"n1->n2": {sent, delivered, dropped, duplicated}}, "nodes", ...}`."""
        return self.request({"op": "stats"})

    def ping(self) -> dict[str, Any]:
        """Liveness; the reply carries the switchboard's pid."""
        return self.request({"op": "ping"})

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def __enter__(self) -> SwitchboardControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _with_links(req: dict[str, Any],
                    links: Iterable[Sequence[str]] | None) -> dict[str, Any]:
        if links is not None:
            req["links"] = _links_arg(links)
        return req


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m orchestrator.real.switchboard`: prints the bound endpoints as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True, help="ROUTER endpoint for nodes")
    parser.add_argument("--control", required=True, help="REP endpoint for the nemesis")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="exit when this process dies (default: our parent)")
    args = parser.parse_args(argv)
    try:
        run_switchboard(args.bind, args.control, args.seed, args.parent_pid,
                        ready=_PrintReady())
    except zmq.ZMQError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)


class _PrintReady:
    """Stands in for the ready pipe on the command line: one JSON line on stdout."""

    def send(self, msg: dict[str, Any]) -> None:
        print(json.dumps(msg), flush=True)


if __name__ == "__main__":
    main()
