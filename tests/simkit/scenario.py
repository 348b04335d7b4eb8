"""Scripted scenarios on the simulated cluster: the API the protocol tests use.

A test builds a `Scenario` (the node's own code on `SimCluster`), talks to nodes
(`call`, `submit`/`reply`), shapes the network (`partition`, `isolate`, `block`, a
`message_filter` predicate), crashes and restarts nodes (with or without a power loss),
runs time forward (`run_ticks`, `run_until`) and finally asks the same checkers a real
run gets (`check`: I1-I7 on the materialized node files; `linearizable`: the client
history). Everything is seeded: a failing scenario replays from its seed.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from typing import Any

from checker.history import EventPairer
from node.host import NodeHost
from node.raft import Message, Role
from node.types import Entry
from node.wal import RecordKind, iter_records
from orchestrator.sim.cluster import US, SimCluster, SimSettings


class Scenario:
    """A simulated cluster for hand-written protocol scenarios (module docstring)."""

    def __init__(self, seed: int, n: int = 3, bugs: tuple[str, ...] = (),
                 **settings: Any) -> None:
        """`settings` are `SimSettings` fields, e.g. `profile="elastickv"`."""
        self.seed = seed
        self.cl = SimCluster(seed, SimSettings(nodes=n, bugs=tuple(bugs), **settings))
        self.ids = self.cl.ids
        self.history = EventPairer("simulated history")
        self._open: dict[Any, tuple[int, dict[str, Any]]] = {}
        self._n = 0
        self._replies: dict[Any, dict[str, Any] | None] = {}
        self.tick_us = int(self.cl.s.tick_ms * 1000)

    # ------------------------------------------------------------------ time

    def run_for(self, seconds: float) -> None:
        self.cl.run_until(self.cl.now + int(seconds * US))

    def run_ticks(self, k: int) -> None:
        self.cl.run_until(self.cl.now + k * self.tick_us)

    def run_until(self, pred: Callable[[], bool], max_ticks: int = 500) -> bool:
        end = self.cl.now + max_ticks * self.tick_us
        while not pred():
            if self.cl.now >= end:
                return False
            self.cl.run_until(min(end, self.cl.now + 1000), stop=pred)
        return True

    # ------------------------------------------------------------------ nodes

    def host(self, nid: str) -> NodeHost:
        h = self.cl.nodes[nid].host
        if h is None:
            raise RuntimeError(f"{nid} is down")
        return h

    def leader(self) -> str | None:
        return self.cl.leader()

    def serving_leader(self) -> str | None:
        lead = self.cl.leader()
        if lead is None:
            return None
        h = self.host(lead)
        return lead if h.applied >= h.raft.term_start_index else None

    def wait_leader(self, max_ticks: int = 400) -> str:
        if not self.run_until(lambda: self.serving_leader() is not None, max_ticks):
            raise AssertionError(f"seed={self.seed}: no leader within {max_ticks} ticks")
        lead = self.serving_leader()
        assert lead is not None
        return lead

    def crash(self, nid: str, *, power: bool = False) -> dict[str, Any]:
        return self.cl.kill(nid, power=power)

    def restart(self, nid: str, max_ticks: int = 100) -> None:
        """Start a crashed node and run until its process is up."""
        self.cl.start(nid)
        if not self.run_until(lambda: self.cl.nodes[nid].host is not None
                              or self.cl.nodes[nid].failed_starts > 0, max_ticks):
            raise AssertionError(f"seed={self.seed}: {nid} did not start")

    def make_leader(self, nid: str, attempts: int = 12) -> None:
        """Make `nid` the serving leader: cut the current leader off and let the others
        elect; whoever else wins is restarted, until `nid` leads (deterministic for a
        seed). Heals at the end."""
        for _ in range(attempts):
            self.run_until(lambda: self._caught_up(nid), 200)
            lead = self.wait_leader()
            if lead == nid:
                return
            self.crash(lead)
            self.run_ticks(40)
            self.restart(lead)
        raise AssertionError(f"seed={self.seed}: {nid} never became a ready leader")

    def _caught_up(self, nid: str) -> bool:
        lead = self.cl.leader()
        if lead is None or self.cl.nodes[nid].host is None:
            return False
        return self.host(nid).applied >= self.host(lead).raft.commit

    def writable(self, nid: str) -> bool:
        """Would `nid`'s wrap seal a write now? Always, except in the elastickv profile
        between a wrap install (a restart, a rotation) and this load's registration
        committing (row 9's gate)."""
        cut = self.host(nid).cut
        return cut is None or not cut.gated or cut.wrap is None or cut.registered(cut.wrap)

    def until_writable(self, nid: str, max_ticks: int = 600) -> bool:
        """Run until `nid`'s registration gate lets writes through (see `writable`)."""
        return self.run_until(lambda: self.writable(nid), max_ticks)

    def compact(self, nid: str) -> int:
        """Snapshot `nid`'s state machine now and compact its log (snapshot-now)."""
        return self.host(nid).take_snapshot()

    def new_dek(self) -> bytes:
        return self.cl.new_dek()

    # ------------------------------------------------------------------ network

    def partition(self, *groups: list[str] | tuple[str, ...] | set[str]) -> None:
        side = {n: k for k, g in enumerate(groups) for n in g}
        self.cl.net.blocked = {(a, b) for a in self.ids for b in self.ids
                               if a != b and side.get(a, f"alone-{a}") != side.get(
                                   b, f"alone-{b}")}

    def isolate(self, nid: str) -> None:
        self.partition([nid], [n for n in self.ids if n != nid])

    def slow(self, ms: float, jitter: float = 0.0) -> None:
        """Every message takes `ms` (± `jitter`) longer (0 lifts it)."""
        self.cl.net.delay_all = (float(ms), float(jitter))

    def block(self, src: str, dst: str) -> None:
        self.cl.net.blocked.add((src, dst))

    def heal(self) -> None:
        self.cl.net.blocked = set()
        self.cl.message_filter = None

    @property
    def message_filter(self) -> Callable[[Message], bool] | None:
        return self.cl.message_filter

    @message_filter.setter
    def message_filter(self, fn: Callable[[Message], bool] | None) -> None:
        self.cl.message_filter = fn

    # ------------------------------------------------------------------ requests

    def submit(self, nid: str, req: dict[str, Any]) -> Any:
        """Send a request without waiting; `reply(handle)` is its answer (recorded in the
        history, for reads, writes and cas, the first time it is seen)."""
        self._n += 1
        handle = ("call", self._n)
        user = req.get("op") in ("read", "write", "cas")
        if user:
            value = [req.get("from"), req.get("to")] if req["op"] == "cas" else req.get("value")
            self.history.invoke(self._n, self._n, req["op"], req.get("key"), value)
            self._open[handle] = (self._n, req)
        self._replies[handle] = None

        def got(rep: Any, handle: Any = handle) -> None:
            self._replies[handle] = rep

        self.cl.request(nid, req, got, 3600 * US)
        return handle

    def reply(self, handle: Any) -> dict[str, Any] | None:
        rep = self._replies.get(handle)
        if rep is not None:
            self._complete(handle, rep)
        return rep

    def call(self, nid: str, req: dict[str, Any], max_ticks: int = 300) -> dict[str, Any] | None:
        """Send a request and run until it is answered (None: no answer in time)."""
        h = self.submit(nid, req)
        self.run_until(lambda: self._replies.get(h) is not None, max_ticks)
        rep = self.reply(h)
        if rep is None:
            self._complete(h, None)
        return rep

    def _complete(self, handle: Any, rep: dict[str, Any] | None) -> None:
        got = self._open.pop(handle, None)
        if got is None:
            return
        n, req = got
        if rep is None or (not rep["ok"] and not rep.get("definite", False)):
            self.history.complete(n, n, "info")
        elif rep["ok"]:
            self.history.complete(n, n, "ok", rep.get("value") if req["op"] == "read" else True)
        else:
            self.history.complete(n, n, "fail")

    # ------------------------------------------------------------------ evidence

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.cl.events

    def halts(self) -> list[dict[str, Any]]:
        return [e for e in self.cl.events if e["kind"] == "halt"]

    def durable_entries(self, nid: str) -> list[Entry]:
        """The entries `nid`'s WAL holds (the durable log, truncations applied)."""
        disk = self.cl.nodes[nid].disk
        log: dict[int, Entry] = {}
        for rec in iter_records(f"/sim/{nid}/wal", disk=disk):
            if rec.kind is RecordKind.ENTRY:
                e = rec.value
                assert isinstance(e, Entry)
                log[e.index] = e
            elif rec.kind is RecordKind.TRUNCATE:
                assert isinstance(rec.value, int)
                for i in [i for i in log if i >= rec.value]:
                    del log[i]
        return [log[i] for i in sorted(log)]

    def digests(self) -> dict[str, str]:
        return {n: self.host(n).kv.digest() for n in self.ids if self.cl.nodes[n].host}

    def linearizable(self) -> str:
        """The linearizability checker's verdict on the history so far (unanswered
        requests count as `info`)."""
        from checker import check, get_model

        for h in list(self._open):
            self._complete(h, None)
        return check(get_model("kv"), self.history.finish()).verdict.value

    def check(self, tokens: Iterable[tuple[bytes, int]] = ()) -> Any:
        """I1-I7 (with the byte scan) on the nodes' files as they are now, exactly as a
        real run's are checked: the disks are written out and read back. `tokens`:
        (plaintext, simulated time_ns it was written) for the byte scan (none: the
        scan has nothing to look for)."""
        from checker.invariants import check_cutover

        with tempfile.TemporaryDirectory(prefix="cutover-scenario-") as tmp:
            from pathlib import Path

            root = Path(tmp)
            dirs = {}
            for n in self.ids:
                d = root / "nodes" / n
                d.mkdir(parents=True)
                self.cl.nodes[n].disk.materialize(d, f"/sim/{n}")
                import json

                with open(d / "events.jsonl", "w", encoding="utf-8") as fh:
                    for ev in self.cl.events:
                        if ev["node"] == n:
                            rec = {k: v for k, v in ev.items() if k not in ("time_ns", "_i")}
                            fh.write(json.dumps(rec, default=str) + "\n")
                    h = self.cl.nodes[n].host
                    if h is not None:  # what a clean stop would record
                        fh.write(json.dumps({"t": self.cl.now * 1000, "node": n,
                                             "kind": "stop", "applied": h.applied,
                                             "digest": h.kv.digest()}) + "\n")
                dirs[n] = str(d)
            kek = root / "kek"
            kek.write_bytes(self.cl.kek_bytes)
            kek.chmod(0o600)
            # Both profiles' snapshot data is scanned: elastickv's values are the storage
            # envelope's ciphertext (row 11), the fixed profile seals its image above C.
            return check_cutover(dirs, kek, list(tokens))

    # ------------------------------------------------------------------ endings

    def converged(self) -> bool:
        lead = self.serving_leader()
        if lead is None:
            return False
        lh = self.host(lead)
        for n in self.ids:
            node = self.cl.nodes[n]
            if node.host is None:
                return False
            h = node.host
            if (h.raft.term, h.raft.leader, h.applied) != (lh.raft.term, lead, lh.raft.last_index):
                return False
        return True

    def heal_and_converge(self, max_ticks: int = 800) -> bool:
        """Heal the network, restart every node, run until they all agree."""
        self.heal()
        for n in self.ids:
            if self.cl.nodes[n].host is None:
                self.cl.start(n)
        return self.run_until(self.converged, max_ticks)

    def roles(self) -> dict[str, str]:
        return {n: str(self.host(n).raft.role) for n in self.ids if self.cl.nodes[n].host}

    def is_leader(self, nid: str) -> bool:
        h = self.cl.nodes[nid].host
        return h is not None and h.raft.role is Role.LEADER
