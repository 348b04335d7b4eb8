"""Seeded, deterministic simulator for `node.raft` alone: N Raft cores on an in-memory
network, each with a toy state machine. The Raft layer's own tests use it (election
safety, log matching, leader completeness, lost writes checked online, thousands of
schedules); whole nodes (storage, the cutover, the replica logic) are simulated by
`orchestrator.sim.cluster`, which runs `node.host.NodeHost` itself.

Why a simulator: Raft bugs live in rare interleavings (a leader crashing between two
messages, a vote reordered behind an append). Driving the pure core from one seeded
`random.Random` explores thousands of such schedules per second, and any failure replays
exactly from its seed. Nothing here sleeps or touches a socket.

What is modelled:
- Time is an integer clock; one Raft tick is `SimConfig.tick_units` units, with jitter.
- The network delivers each message after a random delay (so it reorders), may drop or
  duplicate it, and drops anything crossing a partition at delivery time.
- Each node has a `MemStorage` that holds only what the host "synced": a node's Ready is
  handled (persist, send, apply, advance) after a random sync delay, and a crash before
  that loses every state change of the Ready, exactly like losing unsynced writes.
  `crash(..., after_sync=True)` persists the pending Ready but dies before sending it.
- A state machine per node (`fsm_factory(node_id, durable)`, default `ListFSM`), rebuilt
  on restart from the stored snapshot, then fed the committed entries again. `durable`
  is a per-node dict that survives crashes (e.g. a sidecar file in the real node).
- Clients: `propose(node, data)` tracks the write; it is acknowledged when the proposing
  node applies, at the returned index, an entry with the proposal's term and payload.

What is checked online (appended to `cluster.violations` as "kind: detail"):
election-safety, leader-completeness, state-machine-safety, lost-write (an
acknowledged write's index applied with something else), stale-read (a ReadIndex
below an index committed before the read began), panic (RaftPanic from a core).
`check_log_matching()` and `check_final()` (after `heal_and_converge()`) add
log-matching, convergence and acknowledged-writes-present checks.

Plugging in a state machine: pass `fsm_factory=lambda node_id, durable: MyFSM(...)`
where MyFSM has `apply(entry)`, `snapshot() -> bytes`, `restore(data)`, `digest() -> str`
and optionally `has_payload(data) -> bool` (used for the final lost-write check).
`cluster.apply_listeners` are called as `fn(node_id, entry)` after each apply.

Scripting faults: call `crash`, `restart`, `partition`, `isolate`, `heal`, `block`,
set `drop`/`duplicate`/`message_filter`, or schedule any callable with `at(time, fn)`;
advance with `run_ticks(k)` / `run_until(pred)`. `run_random(ticks, FaultMix(...))`
drives a random workload and nemesis instead.
"""

from __future__ import annotations

import ast
import hashlib
import heapq
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from node.buggify import ACTIONS, OFF, Buggify
from node.raft import (
    Config,
    Message,
    NotLeader,
    RaftNode,
    RaftPanic,
    ReadState,
    Ready,
    Role,
)
from node.types import Entry, EntryKind, HardState, Snapshot


class StateMachine(Protocol):
    def apply(self, entry: Entry) -> None: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...

    def digest(self) -> str: ...


class ListFSM:
    """The simplest useful FSM: the ordered list of applied (index, term, payload).

    Keeping index and term (not just payloads) makes two replicas that applied the
    same values at different positions compare unequal.
    """

    def __init__(self) -> None:
        self.items: list[tuple[int, int, bytes]] = []
        self._payloads: set[bytes] = set()

    def apply(self, entry: Entry) -> None:
        if entry.kind is EntryKind.NORMAL:
            self.items.append((entry.index, entry.term, entry.data))
            self._payloads.add(entry.data)

    def snapshot(self) -> bytes:
        return repr(self.items).encode()

    def restore(self, data: bytes) -> None:
        self.items = ast.literal_eval(data.decode()) if data else []
        self._payloads = {p for _, _, p in self.items}

    def digest(self) -> str:
        return hashlib.sha256(self.snapshot()).hexdigest()

    def has_payload(self, data: bytes) -> bool:
        return data in self._payloads


@dataclass
class MemStorage:
    """What a node has durably synced; survives crashes, nothing else does."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot = field(default_factory=Snapshot)
    entries: list[Entry] = field(default_factory=list)

    def persist(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.entries = []
        if rd.entries:
            base = self.snapshot.meta.index
            first = rd.entries[0].index
            if not base < first <= base + len(self.entries) + 1:
                raise AssertionError(f"Ready entries from {first} leave a gap after {base}")
            del self.entries[first - base - 1 :]
            self.entries.extend(rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state

    def compact(self, snap: Snapshot) -> None:
        base = self.snapshot.meta.index
        if snap.meta.index <= base:
            return
        self.entries = self.entries[snap.meta.index - base :]
        self.snapshot = snap


@dataclass
class SimConfig:
    n: int = 3
    raft: Config = field(default_factory=Config)
    bugs: frozenset[str] = frozenset()
    tick_units: int = 10
    delay: tuple[int, int] = (1, 20)  # message delivery delay, time units
    sync_delay: tuple[int, int] = (0, 6)  # from a state change to its Ready being handled
    drop: float = 0.0
    duplicate: float = 0.0
    compact_every: int = 0  # snapshot once applied - snapshot_index >= this (0 = never)
    # Each `raft.*` BUGGIFY point (node/buggify.py) fires with this probability: the
    # core's legal but unusual paths (short APPs, deeper back-offs, votes asked twice).
    buggify: float = 0.0


class RaftBuggify(Buggify):
    """A core's hook that fires every `raft.*` point with probability `p`, from its own
    seeded stream (so a schedule replays), and counts what fired."""

    def __init__(self, p: float, seed: int, fired: Counter[str]) -> None:
        self.on = True
        self.p = p
        self.rng = random.Random(seed)
        self.fired = fired

    def hit(self, point: str) -> str | None:
        if not point.startswith("raft.") or self.rng.random() >= self.p:
            return None
        self.fired[point] += 1
        return ACTIONS[point][0]


@dataclass
class FaultMix:
    """Relative weights of random nemesis actions, one drawn every `interval` units."""

    interval: tuple[int, int] = (40, 250)
    crash: float = 1.0
    restart: float = 2.0
    partition: float = 1.0
    isolate_leader: float = 1.0
    crash_leader: float = 0.5
    bounce: float = 0.5  # crash a node and restart it within about an election timeout
    heal: float = 1.5
    flaky: float = 0.5  # toggle message loss/duplication on or off
    max_down: int | None = None  # default: a minority
    # Probability that an accepted write makes its leader crash or be isolated a moment
    # later, i.e. before the entry reaches a quorum (the setup of Raft's Figure 8).
    leader_fault_after_write: float = 0.0
    # Same, right after a node is first seen leading a term (its no-op stays partial).
    leader_fault_on_election: float = 0.0
    # Same, right after a leader's commit index advanced (an event-triggered fault).
    leader_fault_after_commit: float = 0.0
    # How long such a targeted fault lasts before its own heal/restart (time units).
    leader_fault_lasts: tuple[int, int] = (50, 400)
    leader_fault_crash: float = 0.5  # chance a targeted fault is a crash, not isolation
    flaky_drop: float = 0.15
    flaky_duplicate: float = 0.1


class SimNode:
    def __init__(self, node_id: str) -> None:
        self.id = node_id
        self.storage = MemStorage()
        self.durable: dict[str, Any] = {}
        self.core: RaftNode | None = None
        self.fsm: Any = None
        self.incarnation = 0
        self.ready_scheduled = False
        self.pending_ready: Ready | None = None  # taken from the core, not yet synced
        self.panicked = False
        self.writes: dict[int, tuple[int, bytes]] = {}  # index -> (term, payload), pending
        self.reads: dict[bytes, int] = {}  # ctx -> lowest acceptable read index
        self.commit_recorded = 0

    @property
    def up(self) -> bool:
        return self.core is not None


class SimCluster:
    """N simulated nodes; see the module docstring."""

    def __init__(
        self,
        cfg: SimConfig | None = None,
        *,
        seed: int = 0,
        fsm_factory: Callable[[str, dict[str, Any]], StateMachine] | None = None,
    ) -> None:
        self.cfg = cfg or SimConfig()
        self.seed = seed
        self.rng = random.Random(seed)
        self.fsm_factory = fsm_factory or (lambda _id, _durable: ListFSM())
        self.now = 0
        self._seq = 0
        self._queue: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self.ids = [f"n{i + 1}" for i in range(self.cfg.n)]
        self.nodes = {i: SimNode(i) for i in self.ids}
        self.blocked: set[tuple[str, str]] = set()
        self.drop = self.cfg.drop
        self.duplicate = self.cfg.duplicate
        self.message_filter: Callable[[Message], bool] | None = None  # False = drop
        self.apply_listeners: list[Callable[[str, Entry], None]] = []
        self.violations: list[str] = []
        self.stats: Counter[str] = Counter()
        self.fired: Counter[str] = Counter()  # BUGGIFY points fired, across nodes
        self.leaders: dict[int, str] = {}  # term -> the one leader seen in it
        self._leaders_checked: set[tuple[str, int]] = set()
        # index -> (term, kind, data, term in which a leader committed it)
        self.committed: dict[int, tuple[int, EntryKind, bytes, int]] = {}
        self.max_committed = 0
        self.applied_at: dict[int, tuple[int, EntryKind, bytes]] = {}
        self.acked: dict[int, tuple[int, bytes]] = {}  # index -> (term, payload)
        self._payload_seq = 0
        self._read_seq = 0
        self._chaos_until = 0
        self._faults: FaultMix | None = None
        for node_id in self.ids:
            self._boot(self.nodes[node_id])

    # ------------------------------------------------------------ event loop

    def at(self, time: int, fn: Callable[..., None], *args: Any) -> None:
        """Schedule `fn(*args)` at simulated `time` (for scripted faults)."""
        self._seq += 1
        heapq.heappush(self._queue, (max(time, self.now), self._seq, fn, args))

    def step(self) -> bool:
        if not self._queue:
            return False
        time, _, fn, args = heapq.heappop(self._queue)
        self.now = time
        fn(*args)
        self.stats["events"] += 1
        return True

    def run(self, until: int, *, stop: Callable[[], bool] | None = None) -> None:
        """Process events up to time `until`, or until `stop()` holds after an event."""
        while self._queue and self._queue[0][0] <= until:
            self.step()
            if stop is not None and stop():
                return
        self.now = max(self.now, until)

    def run_ticks(self, ticks: int) -> None:
        self.run(self.now + ticks * self.cfg.tick_units)

    def run_until(self, pred: Callable[[], bool], max_ticks: int = 500) -> bool:
        end = self.now + max_ticks * self.cfg.tick_units
        while not pred():
            if not self._queue or self._queue[0][0] > end:
                self.now = max(self.now, end)
                return pred()
            self.step()
        return True

    # ------------------------------------------------------------ nodes

    def core(self, node_id: str) -> RaftNode:
        core = self.nodes[node_id].core
        if core is None:
            raise RuntimeError(f"{node_id} is down")
        return core

    def _boot(self, node: SimNode) -> None:
        st = node.storage
        snap = st.snapshot if st.snapshot.meta.index > 0 else None
        node.core = RaftNode(
            node.id,
            self.ids,
            rng=random.Random(self.rng.getrandbits(64)),
            config=self.cfg.raft,
            bugs=self.cfg.bugs,
            hard_state=st.hard_state,
            snapshot=snap,
            entries=list(st.entries),
            buggify=(RaftBuggify(self.cfg.buggify, self.rng.getrandbits(64), self.fired)
                     if self.cfg.buggify else OFF),
        )
        node.fsm = self.fsm_factory(node.id, node.durable)
        if snap is not None:
            node.fsm.restore(snap.data)
        node.incarnation += 1
        node.ready_scheduled = False
        node.pending_ready = None
        node.writes = {}
        node.reads = {}
        self.at(
            self.now + self.rng.randint(1, self.cfg.tick_units),
            self._on_tick,
            node,
            node.incarnation,
        )
        self._after(node)

    def crash(self, node_id: str, *, after_sync: bool = False) -> None:
        """Kill a node: its unsynced state is lost. With `after_sync`, the pending Ready
        is persisted first but none of its messages leave (death right after fsync)."""
        node = self.nodes[node_id]
        if node.core is None:
            return
        if after_sync:
            if node.pending_ready is not None:
                node.storage.persist(node.pending_ready)
            elif node.core.has_ready():
                node.storage.persist(node.core.ready())
        node.core = None
        node.fsm = None
        node.incarnation += 1
        node.ready_scheduled = False
        node.pending_ready = None
        node.writes = {}
        node.reads = {}
        self.stats["crashes"] += 1

    def restart(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.core is None and not node.panicked:
            self._boot(node)
            self.stats["restarts"] += 1

    def _on_tick(self, node: SimNode, incarnation: int) -> None:
        if node.core is None or node.incarnation != incarnation:
            return
        node.core.tick()
        self._after(node)
        jitter = self.rng.randint(-1, 1)
        self.at(self.now + self.cfg.tick_units + jitter, self._on_tick, node, incarnation)

    def _after(self, node: SimNode) -> None:
        """Observe invariants, then make sure pending output gets handled."""
        core = node.core
        if core is None:
            return
        if core.role is Role.LEADER:
            self._observe_leader(node, core)
        if not node.ready_scheduled and core.has_ready():
            node.ready_scheduled = True
            # Taken now: what the core lets leave before the persist (a leader's appends
            # and heartbeats) leaves at once, before the sync delay, as the node process
            # sends it; the rest waits for the sync, and a crash before it loses the lot.
            rd = node.pending_ready = core.ready()
            for m in rd.messages:
                self._send(m)
            lo, hi = self.cfg.sync_delay
            self.at(self.now + self.rng.randint(lo, hi), self._on_ready, node, node.incarnation)

    def _on_ready(self, node: SimNode, incarnation: int) -> None:
        if node.core is None or node.incarnation != incarnation:
            return
        node.ready_scheduled = False
        core = node.core
        rd = node.pending_ready
        node.pending_ready = None
        assert rd is not None
        node.storage.persist(rd)
        for m in rd.messages_after_persist:
            self._send(m)
        if rd.snapshot is not None:
            node.fsm.restore(rd.snapshot.data)
            # Writes inside the snapshot can no longer be matched to their entry.
            node.writes = {i: w for i, w in node.writes.items() if i > rd.snapshot.meta.index}
            self.stats["snapshots_installed"] += 1
        for e in rd.committed_entries:
            self._apply(node, e)
        for rs in rd.read_states:
            self._read_released(node, rs)
        core.advance(rd)
        every = self.cfg.compact_every
        if every and core.applied - core.snapshot_index >= every:
            node.storage.compact(core.compact(core.applied, node.fsm.snapshot()))
            self.stats["compactions"] += 1
        self._after(node)

    # ------------------------------------------------------------ network

    def _send(self, m: Message) -> None:
        self.stats["sent"] += 1
        if self.drop and self.rng.random() < self.drop:
            return
        copies = 2 if self.duplicate and self.rng.random() < self.duplicate else 1
        lo, hi = self.cfg.delay
        for _ in range(copies):
            self.at(self.now + self.rng.randint(lo, hi), self._deliver, m)

    def _deliver(self, m: Message) -> None:
        node = self.nodes[m.dst]
        if node.core is None or (m.src, m.dst) in self.blocked:
            return
        if self.message_filter is not None and not self.message_filter(m):
            return
        self.stats["delivered"] += 1
        try:
            node.core.step(m)
        except RaftPanic as exc:
            self.violations.append(f"panic: t={self.now} {exc}")
            self.crash(node.id)
            node.panicked = True
            return
        self._after(node)

    def partition(self, *groups: list[str] | tuple[str, ...] | set[str]) -> None:
        """Cut every link between different groups; nodes in no group are alone."""
        side = {n: k for k, g in enumerate(groups) for n in g}
        lone = len(groups)
        self.blocked = set()
        for a in self.ids:
            for b in self.ids:
                if a != b and side.get(a, lone + self.ids.index(a)) != side.get(
                    b, lone + self.ids.index(b)
                ):
                    self.blocked.add((a, b))
        self.stats["partitions"] += 1

    def isolate(self, node_id: str) -> None:
        self.partition([node_id], [n for n in self.ids if n != node_id])

    def block(self, src: str, dst: str) -> None:
        """Drop messages from src to dst (one way)."""
        self.blocked.add((src, dst))

    def heal(self) -> None:
        self.blocked = set()

    # ------------------------------------------------------------ clients

    def leader(self) -> str | None:
        """The live leader with the highest term, if any."""
        best: tuple[int, str] | None = None
        for node in self.nodes.values():
            if node.core is not None and node.core.role is Role.LEADER:
                if best is None or node.core.term > best[0]:
                    best = (node.core.term, node.id)
        return best[1] if best else None

    def serving_leader(self) -> str | None:
        """The leader, once it has applied its own term's first entry."""
        lead = self.leader()
        if lead is not None and self.core(lead).term_start_applied:
            return lead
        return None

    def wait_leader(self, max_ticks: int = 300) -> str:
        if not self.run_until(lambda: self.serving_leader() is not None, max_ticks):
            raise AssertionError(f"seed={self.seed}: no leader within {max_ticks} ticks")
        lead = self.serving_leader()
        assert lead is not None
        return lead

    def next_payload(self) -> bytes:
        self._payload_seq += 1
        return b"w%d" % self._payload_seq

    def propose(self, node_id: str, data: bytes | None = None) -> int | None:
        """Client write to `node_id`; returns the index or None (down / not leader)."""
        node = self.nodes[node_id]
        if node.core is None:
            return None
        data = self.next_payload() if data is None else data
        try:
            index = node.core.propose(data)
        except NotLeader:
            return None
        node.writes[index] = (node.core.term, data)
        self.stats["proposed"] += 1
        self._after(node)
        return index

    def read(self, node_id: str) -> bytes | None:
        """Start a ReadIndex read; returns its ctx, or None (down / not leader)."""
        node = self.nodes[node_id]
        if node.core is None:
            return None
        self._read_seq += 1
        ctx = b"r%d" % self._read_seq
        try:
            node.core.read_index(ctx)
        except NotLeader:
            return None
        # Anything committed before the read began must be visible to it.
        node.reads[ctx] = self.max_committed
        self._after(node)
        return ctx

    def _read_released(self, node: SimNode, rs: ReadState) -> None:
        need = node.reads.pop(rs.ctx, None)
        if need is None:
            self.violations.append(f"stale-read: t={self.now} {node.id} released unknown {rs}")
            return
        self.stats["reads"] += 1
        if rs.index < need:
            self.violations.append(
                f"stale-read: t={self.now} {node.id} read index {rs.index} < committed {need}"
            )

    # ------------------------------------------------------------ checkers

    def _apply(self, node: SimNode, e: Entry) -> None:
        node.fsm.apply(e)
        key = (e.term, e.kind, e.data)
        first = self.applied_at.setdefault(e.index, key)
        if first != key:
            self.violations.append(
                f"state-machine-safety: t={self.now} {node.id} applied {e.index}:{key} "
                f"but another node applied {first}"
            )
        ack = self.acked.get(e.index)
        if ack is not None and ack != (e.term, e.data):
            self.violations.append(
                f"lost-write: t={self.now} acknowledged {ack} at {e.index} but {node.id} "
                f"applied {(e.term, e.data)}"
            )
        pending = node.writes.pop(e.index, None)
        if pending is not None:
            if pending == (e.term, e.data):
                self.acked[e.index] = pending
                self.stats["acked"] += 1
            else:
                self.stats["write_failed"] += 1
        for fn in self.apply_listeners:
            fn(node.id, e)

    def _observe_leader(self, node: SimNode, core: RaftNode) -> None:
        term = core.term
        holder = self.leaders.setdefault(term, node.id)
        if holder != node.id:
            self.violations.append(
                f"election-safety: t={self.now} {holder} and {node.id} both lead term {term}"
            )
        if (node.id, term) not in self._leaders_checked:
            self._leaders_checked.add((node.id, term))
            f = self._faults
            if (
                f is not None
                and f.leader_fault_on_election
                and self.rng.random() < f.leader_fault_on_election
            ):
                self.at(
                    self.now + self.rng.randint(0, self.cfg.delay[1]),
                    self._fault_leader,
                    node.id,
                    f,
                )
            for index, (t, kind, data, cterm) in self.committed.items():
                if cterm >= term or index <= core.snapshot_index:
                    continue
                have = core.entries(index, index + 1)
                if not have or (have[0].term, have[0].kind, have[0].data) != (t, kind, data):
                    self.violations.append(
                        f"leader-completeness: t={self.now} {node.id} leads term {term} "
                        f"without entry {index} (term {t}) committed in term {cterm}"
                    )
        if core.commit > node.commit_recorded:
            lo = max(node.commit_recorded, core.snapshot_index) + 1
            for e in core.entries(lo, core.commit + 1):
                rec = self.committed.setdefault(e.index, (e.term, e.kind, e.data, term))
                if rec[:3] != (e.term, e.kind, e.data):
                    self.violations.append(
                        f"leader-completeness: t={self.now} {node.id} committed {e.index} "
                        f"term {e.term}, term {rec[0]} was committed there before"
                    )
            node.commit_recorded = core.commit
            self.max_committed = max(self.max_committed, core.commit)
            f = self._faults
            if (
                f is not None
                and f.leader_fault_after_commit
                and self.rng.random() < f.leader_fault_after_commit
            ):
                self.at(
                    self.now + self.rng.randint(0, self.cfg.delay[1]),
                    self._fault_leader,
                    node.id,
                    f,
                )

    def check_log_matching(self) -> None:
        """If two logs hold an entry with the same index and term, they agree up to it."""
        cores = [n.core for n in self.nodes.values() if n.core is not None]
        for i, a in enumerate(cores):
            for b in cores[i + 1 :]:
                lo = max(a.snapshot_index, b.snapshot_index) + 1
                hi = min(a.last_index, b.last_index)
                if hi < lo:
                    continue
                ea, eb = a.entries(lo, hi + 1), b.entries(lo, hi + 1)
                k = len(ea) - 1
                while k >= 0 and ea[k].term != eb[k].term:
                    k -= 1
                if k >= 0 and ea[: k + 1] != eb[: k + 1]:
                    first = next(j for j in range(k + 1) if ea[j] != eb[j])
                    self.violations.append(
                        f"log-matching: t={self.now} {a.id}/{b.id} agree on "
                        f"({ea[k].index}, term {ea[k].term}) but differ at {ea[first].index}"
                    )

    def converged(self) -> bool:
        nodes = [n for n in self.nodes.values() if not n.panicked]
        if any(n.core is None for n in nodes):
            return False
        lead = self.leader()
        if lead is None:
            return False
        lc = self.core(lead)
        if not lc.term_start_applied:
            return False
        for n in nodes:
            c = n.core
            assert c is not None
            if (c.term, c.leader, c.applied, c.last_index) != (
                lc.term,
                lead,
                lc.last_index,
                lc.last_index,
            ):
                return False
        return True

    def heal_and_converge(self, max_ticks: int = 600) -> bool:
        """End of a run: stop faults, heal, restart everyone, run until all agree."""
        self._chaos_until = 0
        self._faults = None
        self.heal()
        self.drop = self.duplicate = 0.0
        self.message_filter = None
        for node_id in self.ids:
            self.restart(node_id)
        return self.run_until(self.converged, max_ticks)

    def check_final(self) -> list[str]:
        """After `heal_and_converge`: logs match, replicas equal, no acked write lost."""
        self.check_log_matching()
        live = [n for n in self.nodes.values() if n.core is not None]
        digests = {n.id: n.fsm.digest() for n in live}
        if len(set(digests.values())) > 1:
            self.violations.append(f"convergence: replicas differ: {digests}")
        for index, (term, payload) in sorted(self.acked.items()):
            if self.applied_at.get(index) != (term, EntryKind.NORMAL, payload):
                self.violations.append(
                    f"lost-write: acknowledged {payload!r} at {index} not applied"
                )
            for n in live:
                assert n.core is not None
                has = getattr(n.fsm, "has_payload", None)
                if n.core.applied < index or (has is not None and not has(payload)):
                    self.violations.append(
                        f"lost-write: acknowledged {payload!r} (index {index}) missing on {n.id}"
                    )
        return self.violations

    # ------------------------------------------------------------ random runs

    def run_random(
        self,
        ticks: int,
        faults: FaultMix | None = None,
        *,
        write_every: tuple[int, int] = (5, 40),
        read_every: tuple[int, int] = (30, 150),
        stop: Callable[[], bool] | None = None,
    ) -> None:
        """Random client writes/reads and (if `faults`) a random nemesis for `ticks`."""
        end = self.now + ticks * self.cfg.tick_units
        self._chaos_until = end
        self._faults = faults
        self.at(self.now + self.rng.randint(*write_every), self._writer, end, write_every, faults)
        self.at(self.now + self.rng.randint(*read_every), self._reader, end, read_every)
        if faults is not None:
            self.at(self.now + self.rng.randint(*faults.interval), self._nemesis, end, faults)
        self.run(end, stop=stop)

    def _pick_target(self) -> str:
        lead = self.leader()
        if lead is not None and self.rng.random() < 0.85:
            return lead
        return self.rng.choice(self.ids)

    def _writer(self, end: int, every: tuple[int, int], faults: FaultMix | None) -> None:
        if self.now >= end:
            return
        target = self._pick_target()
        index = self.propose(target)
        if (
            index is not None
            and faults is not None
            and faults.leader_fault_after_write
            and self.rng.random() < faults.leader_fault_after_write
        ):
            hi = self.cfg.delay[1]
            self.at(self.now + self.rng.randint(0, 2 * hi), self._fault_leader, target, faults)
        self.at(self.now + self.rng.randint(*every), self._writer, end, every, faults)

    def _reader(self, end: int, every: tuple[int, int]) -> None:
        if self.now >= end:
            return
        self.read(self._pick_target())
        self.at(self.now + self.rng.randint(*every), self._reader, end, every)

    def _fault_leader(self, node_id: str, f: FaultMix) -> None:
        if self.now >= self._chaos_until:
            return
        node = self.nodes[node_id]
        if node.core is None or node.core.role is not Role.LEADER:
            return
        until = self.now + self.rng.randint(*f.leader_fault_lasts)
        if self.rng.random() >= f.leader_fault_crash:
            self.isolate(node_id)
            self.at(until, self._end_fault, self._heal_if_isolated, node_id, self.blocked)
        else:
            self.crash(node_id, after_sync=self.rng.random() < 0.5)
            self.at(until, self._end_fault, self.restart, node_id)

    def _heal_if_isolated(self, node_id: str, blocked: set[tuple[str, str]]) -> None:
        # Only undo our own isolation: a later fault may have replaced it since.
        if self.blocked is blocked:
            self.heal()

    def _end_fault(self, fn: Callable[..., None], *args: Any) -> None:
        if self.now < self._chaos_until:
            fn(*args)

    def _nemesis(self, end: int, f: FaultMix) -> None:
        if self.now >= end:
            return
        max_down = f.max_down if f.max_down is not None else (self.cfg.n - 1) // 2
        up = [i for i in self.ids if self.nodes[i].core is not None]
        down = [i for i in self.ids if self.nodes[i].core is None and not self.nodes[i].panicked]
        lead = self.leader()
        actions: list[tuple[float, Callable[[], None]]] = []
        can_crash = len(down) < max_down and up
        if can_crash:
            actions.append(
                (
                    f.crash,
                    lambda: self.crash(self.rng.choice(up), after_sync=self.rng.random() < 0.3),
                )
            )
            if lead is not None:
                actions.append((f.crash_leader, lambda: self.crash(lead)))
            actions.append((f.bounce, lambda: self._bounce(self.rng.choice(up))))
        if down:
            actions.append((f.restart, lambda: self.restart(self.rng.choice(down))))
        actions.append((f.partition, self._random_partition))
        if lead is not None:
            actions.append((f.isolate_leader, lambda: self.isolate(lead)))
        actions.append((f.heal, self.heal))
        actions.append((f.flaky, lambda: self._toggle_flaky(f)))
        weights = [w for w, _ in actions]
        if sum(weights) > 0:
            _, action = self.rng.choices(actions, weights=weights)[0]
            action()
        self.at(self.now + self.rng.randint(*f.interval), self._nemesis, end, f)

    def _bounce(self, node_id: str) -> None:
        # A quick restart is what exposes state that should have been durable (a vote
        # forgotten across a crash lets a node vote twice in one term).
        self.crash(node_id, after_sync=self.rng.random() < 0.3)
        pause = self.rng.randint(1, 2 * self.cfg.raft.election_ticks * self.cfg.tick_units)
        self.at(self.now + pause, self._end_fault, self.restart, node_id)

    def _random_partition(self) -> None:
        ids = list(self.ids)
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) - 1)
        self.partition(ids[:cut], ids[cut:])

    def _toggle_flaky(self, f: FaultMix) -> None:
        if self.drop or self.duplicate:
            self.drop = self.duplicate = 0.0
        else:
            self.drop, self.duplicate = f.flaky_drop, f.flaky_duplicate


# ---------------------------------------------------------------- presets


def random_sim_config(seed: int, n: int) -> SimConfig:
    """Knobs drawn from the seed, so that the seed sweep also sweeps flow control,
    PreVote and compaction (tiny messages and windows stress probing and pipelining)."""
    r = random.Random(f"config-{seed}-{n}")
    raft = Config(
        election_ticks=r.choice([5, 10]),
        heartbeat_ticks=1 if r.random() < 0.5 else 2,
        max_msg_bytes=r.choice([1, 16, 64 * 1024]),
        max_inflight=r.choice([1, 4, 64]),
        pre_vote=r.random() < 0.7,
    )
    return SimConfig(
        n=n,
        raft=raft,
        delay=(1, r.choice([10, 20, 40])),
        compact_every=r.choice([0, 7, 25]),
    )


def random_faults(seed: int) -> FaultMix:
    """A fault mix drawn from the seed: some seeds are mostly network faults, some
    mostly crashes, some chase leaders (see `figure8_faults`)."""
    r = random.Random(f"faults-{seed}")
    w = [r.choice([0.0, 0.5, 1.0, 2.0]) for _ in range(8)]
    chase = r.random() < 0.4
    return FaultMix(
        interval=r.choice([(20, 100), (40, 250), (100, 400)]),
        crash=w[0],
        restart=w[1] + 1.0,
        partition=w[2],
        isolate_leader=w[3],
        crash_leader=w[4],
        bounce=w[5],
        heal=w[6] + 0.5,
        flaky=w[7],
        leader_fault_after_write=0.1 if chase else 0.0,
        leader_fault_on_election=0.4 if chase else 0.0,
        leader_fault_after_commit=0.2 if chase else 0.0,
        leader_fault_crash=r.choice([0.0, 0.5]),
    )


def figure8_sim_config(n: int = 3, bugs: frozenset[str] = frozenset()) -> SimConfig:
    """Settings under which Raft's Figure 8 happens often: short election timeouts
    (many terms), one entry per APP and one APP in flight (old-term entries reach a
    follower one at a time, well before the new leader's no-op does)."""
    raft = Config(election_ticks=5, heartbeat_ticks=1, max_msg_bytes=1, max_inflight=1)
    return SimConfig(n=n, raft=raft, bugs=bugs)


def figure8_faults() -> FaultMix:
    """Leader churn with partial replication: leaders are isolated right after they
    are elected or advance their commit index, and each isolation lasts long enough for
    another node to take over; isolating the next leader ends the previous isolation,
    so a node holding a stale-but-higher-term tail comes back just when it can win."""
    return FaultMix(
        interval=(50, 200),
        crash=0.0,
        restart=1.0,
        partition=0.0,
        isolate_leader=0.5,
        crash_leader=0.0,
        bounce=0.5,  # quick restarts: a forgotten vote shows up here
        heal=0.0,
        flaky=0.0,
        leader_fault_after_commit=0.5,
        leader_fault_on_election=0.5,
        leader_fault_after_write=0.05,
        leader_fault_crash=0.0,
        leader_fault_lasts=(200, 800),
    )


# ---------------------------------------------------------------- lockstep driver


class Lockstep:
    """Zero-delay driver for hand-written scenarios: no clock, no randomness in the
    network; messages are delivered in send order unless `deliver` (a predicate) says
    no, in which case they wait in `held` until the test releases them.

    Hosts follow the Ready contract with in-memory storage, so cores can be "restarted"
    with `restart(node_id)` from what they persisted.
    """

    def __init__(
        self,
        ids: tuple[str, ...] = ("n1", "n2", "n3"),
        *,
        config: Config | None = None,
        bugs: frozenset[str] = frozenset(),
        seed: int = 0,
        storages: dict[str, MemStorage] | None = None,
    ) -> None:
        self.ids = ids
        self.config = config or Config()
        self.bugs = bugs
        self.rng = random.Random(seed)
        self.storage = {i: MemStorage() for i in ids}
        if storages:
            self.storage.update(storages)
        self.cores: dict[str, RaftNode] = {}
        self.applied: dict[str, list[Entry]] = {i: [] for i in ids}
        self.read_states: dict[str, list[ReadState]] = {i: [] for i in ids}
        self.inflight: list[Message] = []
        self.held: list[Message] = []
        self.log: list[Message] = []  # every message handed to the network
        self.deliver: Callable[[Message], bool] | None = None
        for i in ids:
            self.restart(i)

    def restart(self, node_id: str) -> RaftNode:
        st = self.storage[node_id]
        self.cores[node_id] = RaftNode(
            node_id,
            self.ids,
            rng=random.Random(self.rng.getrandbits(64)),
            config=self.config,
            bugs=self.bugs,
            hard_state=st.hard_state,
            snapshot=st.snapshot if st.snapshot.meta.index else None,
            entries=list(st.entries),
        )
        return self.cores[node_id]

    def process(self, node_id: str) -> Ready:
        """Handle one Ready of `node_id` (persist, queue messages, apply, advance)."""
        core = self.cores[node_id]
        rd = core.ready()
        self.storage[node_id].persist(rd)
        # Persisting is synchronous here, so both lists may go now, the early one first.
        sent = rd.messages + rd.messages_after_persist
        self.inflight.extend(sent)
        self.log.extend(sent)
        self.applied[node_id].extend(rd.committed_entries)
        self.read_states[node_id].extend(rd.read_states)
        core.advance(rd)
        return rd

    def settle(self, max_steps: int = 100_000) -> None:
        """Process Readies and deliver messages until nothing moves."""
        for _ in range(max_steps):
            busy = [i for i in self.ids if self.cores[i].has_ready()]
            for i in busy:
                self.process(i)
            if not self.inflight:
                if not busy:
                    return
                continue
            batch, self.inflight = self.inflight, []
            for m in batch:
                if self.deliver is None or self.deliver(m):
                    self.cores[m.dst].step(m)
                else:
                    self.held.append(m)
        raise AssertionError("lockstep did not settle")

    def release(self) -> None:
        """Deliver the held messages (and stop holding new ones)."""
        self.deliver = None
        self.inflight.extend(self.held)
        self.held = []
        self.settle()

    def tick(self, node_id: str, n: int = 1) -> None:
        for _ in range(n):
            self.cores[node_id].tick()
        self.settle()

    def tick_all(self, n: int = 1) -> None:
        for _ in range(n):
            for i in self.ids:
                self.cores[i].tick()
            self.settle()

    def elect(self, node_id: str) -> RaftNode:
        """Make `node_id` time out and campaign; it must win."""
        core = self.cores[node_id]
        for _ in range(10 * self.config.election_ticks):
            if core.role is not Role.FOLLOWER:
                break
            core.tick()
        self.settle()
        if core.role is not Role.LEADER:
            raise AssertionError(f"{node_id} did not win: {core.status()}")
        return core
