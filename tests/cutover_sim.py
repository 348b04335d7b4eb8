"""The node's protocol logic (`node.replica.Replica`, with the cutover) as the state
machine of the seeded simulator (`tests.raftsim`): the same code the node process runs,
on an in-memory network that partitions, drops, reorders, crashes and restarts.

`ReplicaFSM` is the glue: it binds to each incarnation's Raft core, keeps its sidecar in
the simulator's crash-surviving `durable` dict, records replies and events in memory.
"""
from __future__ import annotations

import random
from typing import Any

from node.cutover import CUTOVER_BUGS, Cutover, Halt, MemoryStore
from node.events import EventKind
from node.keystore import Kek, generate_dek
from node.kv import KV, snapshot_enc, snapshot_kv
from node.raft import RaftNode
from node.replica import Replica
from node.types import Snapshot
from tests.raftsim import MemStorage, SimCluster, SimConfig


class SimLog:
    """Events of one node across its incarnations (the simulator's events.jsonl)."""

    def __init__(self, node: str, sink: list[dict[str, Any]], clock: Any) -> None:
        self.node, self.sink, self.clock = node, sink, clock

    def emit(self, kind: str, **detail: Any) -> None:
        self.sink.append({"t": self.clock(), "node": self.node, "kind": kind, **detail})


class ReplicaFSM(Replica):
    """A replica inside the simulator."""

    def __init__(self, node_id: str, ids: list[str], durable: dict[str, Any], kek: Kek,
                 bugs: frozenset[str], events: list[dict[str, Any]], clock: Any,
                 snapshot_every: int = 0) -> None:
        self.id = node_id
        self._snapshot_every = snapshot_every
        self.bugs = bugs
        self.log = SimLog(node_id, events, clock)
        self.kv = KV()
        store = durable.setdefault("sidecar", MemoryStore())
        self.cut = Cutover(sorted(ids).index(node_id) + 1, store, kek,
                           frozenset(bugs & set(CUTOVER_BUGS)), on_event=self.log.emit)
        self.replies: dict[Any, dict[str, Any]] = {}
        self._booted = False

    # raftsim hooks
    def bind(self, core: RaftNode, incarnation: int, storage: MemStorage) -> None:
        self.raft = core
        self.storage = storage
        Replica.__init__(self, lease_interval=40, enable_timeout_ticks=150,
                         rng=random.Random(hash((self.id, incarnation))),
                         snapshot_every=self._snapshot_every)

    def on_tick(self, now: float) -> None:
        self.tick_logic(now)

    def after_event(self) -> None:
        if self.enable is not None:
            self._poll_enable()
        self.observe_role()
        self._answer_reads()

    def apply(self, entry: Any) -> None:
        self._booted = True
        if not self.halted:
            self._apply(entry)

    def snapshot(self) -> bytes:
        return self.snapshot_image(self.applied)[0]

    def restore(self, data: bytes) -> None:
        """Start-up restore from the node's own snapshot (divergence guard first)."""
        cutover, _ = snapshot_enc(data)
        self.cut.check_startup_snapshot(cutover)
        self.kv.restore(self.cut.open_image(snapshot_kv(data)))

    def on_read_states(self, read_states: list[Any]) -> None:
        self.after_ready(None, [], read_states)

    def install(self, snapshot: Snapshot) -> None:
        self.install_snapshot(snapshot)

    def digest(self) -> str:
        return self.kv.digest()

    # Replica's host side
    def _deliver(self, ident: Any, rep: dict[str, Any]) -> None:
        self.replies[ident] = rep

    def persist_snapshot(self, snap: Snapshot, cutover: int, encryption: bytes) -> None:
        self.storage.compact(snap)


class CutoverSim:
    """A simulated cluster of replicas, one KEK, and a way to talk to them."""

    def __init__(self, seed: int, n: int = 3, bugs: tuple[str, ...] = (),
                 config: SimConfig | None = None) -> None:
        self.kek = Kek.generate()
        self.events: list[dict[str, Any]] = []
        bugset = frozenset(bugs)
        cfg = config or SimConfig(n=n, compact_every=0)
        ids = [f"n{i + 1}" for i in range(cfg.n)]
        self.cl: SimCluster = SimCluster(
            cfg, seed=seed,
            fsm_factory=lambda nid, durable: ReplicaFSM(
                nid, ids, durable, self.kek, bugset, self.events, self._now,
                snapshot_every=cfg.compact_every))
        self._tokens = 0
        self._open: dict[Any, dict[str, Any]] = {}  # user requests without a recorded answer
        from checker.history import EventPairer

        self.history = EventPairer("simulated history")

    def _now(self) -> float:
        cl = getattr(self, "cl", None)
        return cl.now if cl is not None else 0

    def fsm(self, nid: str) -> ReplicaFSM:
        return self.cl.nodes[nid].fsm

    def call(self, nid: str, req: dict[str, Any], max_ticks: int = 300) -> dict[str, Any] | None:
        """Send a request to `nid` and run until it answers (None: no answer in time).
        Reads, writes and cas go into the client history (`linearizable()`)."""
        handle = self.submit(nid, req)
        fsm, token = handle
        self.cl.run_until(lambda: token in self.fsm(nid).replies
                          if self.cl.nodes[nid].fsm is fsm else True, max_ticks)
        rep = self.reply(handle)
        self._complete(handle, rep)
        return rep

    def submit(self, nid: str, req: dict[str, Any]) -> tuple[ReplicaFSM, Any]:
        """Send a request without waiting; `reply(handle)` looks for the answer (and
        records it in the history the first time it is there)."""
        self._tokens += 1
        token = ("sim", self._tokens)
        fsm = self.fsm(nid)
        if req.get("op") in ("read", "write", "cas"):
            value = [req.get("from"), req.get("to")] if req["op"] == "cas" else req.get("value")
            self.history.invoke(self._tokens, self._tokens, req["op"], req.get("key"), value)
            self._open[token] = req
        fsm._handle(token, {"id": self._tokens, **req})
        self.cl._after(self.cl.nodes[nid])
        return fsm, token

    def reply(self, handle: tuple[ReplicaFSM, Any]) -> dict[str, Any] | None:
        fsm, token = handle
        rep = fsm.replies.get(token)
        if rep is not None:
            self._complete(handle, rep)
        return rep

    def _complete(self, handle: tuple[ReplicaFSM, Any], rep: dict[str, Any] | None) -> None:
        """Record a user op's completion once: no answer or an indefinite failure is
        `info`, a definite failure `fail`."""
        token = handle[1]
        req = self._open.pop(token, None)
        if req is None:
            return
        n = token[1]
        if rep is None or (not rep["ok"] and not rep.get("definite", False)):
            self.history.complete(n, n, "info")
        elif rep["ok"]:
            out = rep.get("value") if req["op"] == "read" else True
            self.history.complete(n, n, "ok", out)
        else:
            self.history.complete(n, n, "fail")

    def linearizable(self) -> str:
        """The linearizability checker's verdict on the client history so far (requests
        still unanswered count as `info`)."""
        from checker import check, get_model

        for token in list(self._open):
            self._complete((None, token), None)
        ops = self.history.finish()
        return check(get_model("kv"), ops).verdict.value

    def compact(self, nid: str) -> int:
        """Snapshot `nid`'s state machine at its applied index and compact its log."""
        return self.cl.nodes[nid].fsm.take_snapshot()

    def make_leader(self, nid: str, attempts: int = 12) -> None:
        """Crash whoever leads until `nid` wins an election (deterministic per seed)."""
        for _ in range(attempts):
            lead = self.cl.wait_leader()
            if lead == nid and self.fsm(nid).applied >= self.cl.nodes[nid].core.term_start_index:
                return
            if lead == nid:
                self.cl.run_ticks(5)
                continue
            self.cl.crash(lead)
            self.cl.run_ticks(40)
            self.cl.restart(lead)
        raise AssertionError(f"{nid} never became a ready leader")

    def new_dek(self) -> bytes:
        return self.kek.wrap_dek(generate_dek())

    def halts(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == "halt"]

    def check(self) -> Any:
        """The offline invariant checker (I1-I6) on what the nodes hold right now."""
        from checker.invariants import NodeState, check_cutover_state

        states = {}
        for nid in self.cl.ids:
            node = self.cl.nodes[nid]
            store = node.durable.get("sidecar")
            snap = node.storage.snapshot
            _, enc = snapshot_enc(snap.data) if snap.meta.index else (0, b"")
            events = [e for e in self.events if e["node"] == nid]
            if node.fsm is not None:  # what a node's stop event records
                events.append({"node": nid, "kind": EventKind.STOP, "applied": node.fsm.applied,
                               "digest": node.fsm.digest()})
            states[nid] = NodeState(
                entries=list(node.storage.entries),
                sidecar=store.load() if store is not None else None,
                events=events,
                snapshot_index=snap.meta.index, snapshot_encryption=enc,
                snapshot_term=snap.meta.term, snapshot_data=snap.data,
                commit=node.storage.hard_state.commit)
        return check_cutover_state(states, self.kek)

    def durable_entries(self, nid: str) -> list[Any]:
        return list(self.cl.nodes[nid].storage.entries)


__all__ = ["CutoverSim", "ReplicaFSM", "Halt"]
