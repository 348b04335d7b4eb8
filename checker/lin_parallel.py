"""Partitions scheduled in rounds, over worker processes, with one answer for any number.

P-compositionality (`kv` splits per key) makes the partitions independent, so they can
be searched anywhere. What must not depend on where, or on how many workers, is the
answer. A partition's search is deterministic, and so is the number of *rounds* it
takes (a round: seven slices of the return-order search, one of the call-order one; a
slice is `lin_search._SLICE` configurations). With `stop_early`, the answer is defined by
a rank: a partition that its first round did not settle and that `checker.lin_refute`
refutes ranks first (phase 0: it will end invalid, so the others need not go on); then
fewer rounds; then the lower index. The invalid partition of the lowest rank is the
counterexample, and a partition counts as finished only if it ranks before it; the
others are `unknown` ("not finished") with nothing kept. Workers share the best rank
found so far and stop a search as soon as it could no longer rank first, and the parent
applies the rule to whatever they sent. So verdicts and counterexamples are the same for
any `workers` (a timeout or a memory bound, which depend on the machine, are the
exception, as they always were).

Memory follows the partition, not the history: a worker makes the `Op`s of at most
`_WINDOW` partitions at a time (`Columns.ops`), and a partition still running after
`_CAP` rounds is set aside until the rest are done, so one hard key does not keep the
window from moving. A valid partition's linearization is not kept; it is searched again
if someone asks (`LazySteps`).

Workers are forked (they inherit the history and the searches already begun, nothing is
copied twice), die with the parent (PR_SET_PDEATHSIG, then a `getppid` check), and are
killed when the check ends however it ends.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from multiprocessing.connection import wait
from typing import Any

from .lin_columns import Columns, LazyOps, die_with_parent, reap
from .lin_refute import refuted
from .lin_result import (
    DEFAULT_MAX_CONFIGS,
    CheckResult,
    PartitionResult,
    Step,
    Verdict,
    _Abort,
    rss_mb,
)
from .models import Model

# Slices per round for each search order: "ret" wins far more often on real histories,
# "call" is the insurance for the ones where it does not (an eighth of the time: at 3:1
# the kv corpus took a fifth longer, at 15:1 `c50-bad` took three times as long).
ORDER_WEIGHTS = {"ret": 7, "call": 1}
SKIPPED = "not finished: another partition is already invalid"
_ROUND_SLICES = sum(ORDER_WEIGHTS.values())
_WINDOW = 256  # partitions a worker holds the ops of at once
_CAP = 8  # rounds before a partition is set aside until the window has moved on
_IN_PROCESS = 384  # slices (~100,000 configurations) before forking: the kv corpus never forks
_NO_BOUND = 1 << 62
_MAX_ROUNDS = (1 << 29) - 1

Search = Callable[..., Generator[None, None, PartitionResult]]
Emit = Callable[[int, int, PartitionResult], None]  # (partition, rank, result)


def _best_rank(phase: int, rounds: int, k: int) -> int:
    """The best rank a partition `rounds` rounds into its search can still end with: one
    not yet through its first round may yet be refuted (phase 0, ending in round 2 at
    the earliest)."""
    if phase == 1 and rounds == 0:
        return _rank(0, 2, k)
    return _rank(phase, rounds + 1, k)


def _rank(phase: int, rounds: int, k: int) -> int:
    """(phase, rounds, partition index) as one comparable int, shareable between
    processes: the order in which results count (see the module docstring)."""
    return (phase << 61) | (min(rounds, _MAX_ROUNDS) << 32) | k


def interrupt(gens: Sequence[Generator], reason: str) -> PartitionResult:
    """Stop a partition's searches; keep the deepest partial linearization found (not
    for a partition skipped because another is invalid: `check_columns` keeps nothing
    of those, so its path is not made)."""
    if reason == SKIPPED:
        for g in gens:
            g.close()
        return PartitionResult(Verdict.UNKNOWN, [], reason=reason)
    best: PartitionResult | None = None
    for g in gens:
        try:
            g.throw(_Abort(reason))
        except StopIteration as e:
            r = e.value
            if best is None or len(r.linearization) > len(best.linearization):
                best = r
        except _Abort:
            pass  # never started: nothing explored yet
    if best is None:
        best = PartitionResult(Verdict.UNKNOWN, [], reason=reason)
    best.verdict = Verdict.UNKNOWN
    best.reason = reason
    return best


def one_round(gens: dict[str, Generator]) -> PartitionResult | None:
    """Each live search order its slices; the result when one of them ends."""
    for o, g in list(gens.items()):
        try:
            for _ in range(ORDER_WEIGHTS[o]):
                next(g)
        except StopIteration as e:
            if e.value.verdict is Verdict.UNKNOWN and len(gens) > 1:
                del gens[o]  # out of memory budget: let the other one go on
                continue
            for g2 in gens.values():
                if g2 is not g:
                    g2.close()
            return e.value
    return None


class _Scheduler:
    """The rounds over a set of partitions, in one process (see the module docstring)."""

    def __init__(self, model: Model, cols: Columns, parts: list[Sequence[int]],
                 search: Search, max_configs: int, max_rss_mb: float | None,
                 paths: bool) -> None:
        self.model, self.cols, self.parts, self.search = model, cols, parts, search
        self.per_search = max(1, max_configs // 2)
        self.max_rss_mb = max_rss_mb
        self.rss_base = rss_mb() if max_rss_mb is not None else 0.0
        self.paths = paths
        self.pending: deque[int] = deque(range(len(parts)))
        self.live: list[list[Any]] = []  # [k, {order: search}, rounds, phase, ops]
        self.aside: list[list[Any]] = []
        self.capped = True

    def keep_only(self, mine: set[int]) -> None:
        """After a fork: this process carries on with these partitions only."""
        self.pending = deque(k for k in self.pending if k in mine)
        self.live = [it for it in self.live if it[0] in mine]
        self.aside = [it for it in self.aside if it[0] in mine]

    def left(self) -> list[int]:
        return [it[0] for it in self.live + self.aside] + list(self.pending)

    def _start(self, k: int) -> list[Any]:
        ops = self.cols.ops(self.parts[k], meta=False)
        return [k, self._searches(ops), 0, 1, ops]

    def _searches(self, ops: list[Any]) -> dict[str, Generator]:
        return {o: self.search(self.model, ops, o, self.per_search, self.max_rss_mb,
                               rss_base=self.rss_base, paths=self.paths)
                for o in ORDER_WEIGHTS}

    def _stop_all(self, emit: Emit, reason: str) -> None:
        for k, gens, r, phase, _ in self.live + self.aside:
            emit(k, _rank(phase, r, k), interrupt(list(gens.values()), reason))
        for k in self.pending:
            emit(k, _rank(1, 0, k), PartitionResult(Verdict.UNKNOWN, [], reason=reason))
        self.live, self.aside, self.pending = [], [], deque()

    # Kept whole on purpose: the loop's rules (window, cap, bound, deadline) read together.
    def run(self, bound: Callable[[], int], lower: Callable[[int], None], emit: Emit,
            deadline: float | None, stop_early: bool, budget: int | None = None) -> bool:
        """Rounds until every partition is emitted (True) or `budget` slices are spent
        (False: the state stays, for forked workers to carry on)."""
        slices = 0
        while True:
            while self.pending and len(self.live) < _WINDOW:
                k = self.pending.popleft()
                if stop_early and _best_rank(1, 0, k) >= bound():
                    emit(k, _best_rank(1, 0, k), PartitionResult(Verdict.UNKNOWN, [],
                                                                 reason=SKIPPED))
                    continue
                self.live.append(self._start(k))
            if not self.live:
                if not self.aside:
                    return True
                self.live, self.aside, self.capped = self.aside, [], False
            still = []
            b = bound()
            for pos, item in enumerate(self.live):
                k, gens, r, phase, ops = item
                if deadline is not None and time.monotonic() > deadline:
                    self.live = still + self.live[pos:]
                    self._stop_all(emit, "timed out")
                    return True
                if stop_early and _best_rank(phase, r, k) >= b:
                    emit(k, _best_rank(phase, r, k), interrupt(list(gens.values()), SKIPPED))
                    continue
                res = one_round(gens)
                item[2] = r = r + 1
                slices += _ROUND_SLICES
                if res is None and r == 1 and stop_early and \
                        refuted(self.model.name, ops) is not None:
                    # Refuted (`checker.lin_refute`) once a round did not settle it: phase
                    # 0, it will end invalid, so the others (phase 1) may stop now. Its
                    # search goes on (searching the refuted prefix alone, from scratch,
                    # measured slower: the round already done is lost, and proving the
                    # prefix invalid is no cheaper).
                    item[3] = 0
                    lower(_rank(0, _MAX_ROUNDS, k))
                    b = min(b, bound())
                if res is None:
                    if self.capped and r >= _CAP and self.pending:
                        self.aside.append(item)
                    else:
                        still.append(item)
                    continue
                emit(k, _rank(phase, r, k), res)
                if res.verdict is Verdict.INVALID and stop_early and _rank(phase, r, k) < b:
                    b = _rank(phase, r, k)
                    lower(b)
                b = min(b, bound())
            self.live = still
            if budget is not None and slices >= budget:
                return False


class LazySteps(Sequence):
    """A valid partition's linearization, searched again when someone reads it (the
    search is deterministic: the same one), so a valid key of a big history keeps
    nothing after its check."""

    def __init__(self, model: Model, ops: Sequence[Any], search: Search) -> None:
        self._args = (model, ops, search)
        self._steps: list[Step] | None = None

    def _get(self) -> list[Step]:
        if self._steps is None:
            model, ops, search = self._args
            ops = list(ops)
            gens = {o: search(model, ops, o) for o in ORDER_WEIGHTS}
            res = None
            while res is None:
                res = one_round(gens)
            self._steps = res.linearization
        return self._steps

    def __len__(self) -> int:
        return len(self._get())

    def __getitem__(self, i: Any) -> Any:
        return self._get()[i]

    def __iter__(self) -> Iterator[Step]:
        return iter(self._get())

    def __eq__(self, other: object) -> bool:
        return list(self) == list(other) if isinstance(other, Sequence) else NotImplemented

    __hash__ = None  # type: ignore[assignment]


def default_workers() -> int:
    """The machine's cores (those this process may run on)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# Kept whole on purpose: the in-process part, the fork and the merge share their state.
def check_columns(model: Model, cols: Columns, search: Search, timeout: float | None = None,
                  max_configs: int = DEFAULT_MAX_CONFIGS, workers: int | None = None,
                  stop_early: bool = True, max_rss_mb: float | None = None) -> CheckResult:
    """The check of a whole history: partitions in rounds, in this process and then in
    `workers` forked ones; the answer does not depend on `workers`."""
    t0 = time.perf_counter()
    deadline = None if timeout is None else time.monotonic() + timeout
    parts = cols.partitions(model)
    workers = max(1, default_workers() if workers is None else workers)
    lazy = cols.source is None
    sched = _Scheduler(model, cols, parts, search, max_configs, max_rss_mb, paths=not lazy)
    got: dict[int, tuple[int, PartitionResult]] = {}
    best = [_NO_BOUND]

    def emit(k: int, rank: int, res: PartitionResult) -> None:
        got[k] = (rank, res)

    def lower(b: int) -> None:
        best[0] = min(best[0], b)

    can_fork = (workers > 1 and len(parts) > 1 and "fork" in mp.get_all_start_methods()
                and not mp.current_process().daemon)  # a daemon may not have children
    done = sched.run(lambda: best[0], lower, emit, deadline, stop_early,
                     _IN_PROCESS if can_fork else None)
    if not done:
        for k, rank, res in _fork(sched, workers, best[0], deadline, stop_early):
            got[k] = (rank, res)
    # The answer: the invalid result first in rank; a result after it does not count.
    first = min((rank for rank, res in got.values() if res.verdict is Verdict.INVALID),
                default=_NO_BOUND)
    final = []
    for k, idx in enumerate(parts):
        rank, res = got.get(k, (0, None))  # type: ignore[arg-type]
        if res is None or (stop_early and rank > first) or res.reason == SKIPPED:
            res = PartitionResult(Verdict.UNKNOWN, [], reason=SKIPPED)
        ops = LazyOps(cols, idx) if lazy else cols.ops(idx)
        if lazy and res.verdict is Verdict.VALID:
            res.linearization = LazySteps(model, ops, search)  # type: ignore[assignment]
        elif lazy and (res.linearization or res.blocked) and res.ops:
            res = _expand(_compact(res, res.ops), cols.ops(idx))  # the ops with their meta
        res.ops = ops  # type: ignore[assignment]
        res.key = cols.key_of(idx[0])
        final.append(res)
    verdict = Verdict.worst([r.verdict for r in final])
    return CheckResult(verdict, final, model.name, time.perf_counter() - t0)


def _groups(sched: _Scheduler, workers: int) -> list[set[int]]:
    """The partitions left, dealt out by size (biggest first, to the least loaded): the
    same deal for the same history and number of workers."""
    left = sorted(sched.left(), key=lambda k: (-len(sched.parts[k]), k))
    groups: list[set[int]] = [set() for _ in range(min(workers, len(left)))]
    loads = [0] * len(groups)
    for k in left:
        w = loads.index(min(loads))
        groups[w].add(k)
        loads[w] += len(sched.parts[k])
    return groups


def _compact(r: PartitionResult, ops: Sequence[Any]) -> tuple:
    """A result without `Op` objects (positions in the partition), cheap to send."""
    pos = {id(o): i for i, o in enumerate(ops)} if r.linearization or r.blocked else {}
    return (r.verdict.value, [(pos[id(s.op)], s.state, s.unknown_chain)
                              for s in r.linearization],
            [(pos[id(o)], ill) for o, ill in r.blocked], r.reason, r.configurations)


def _expand(c: tuple, ops: list[Any]) -> PartitionResult:
    verdict, lin, blocked, reason, configs = c
    return PartitionResult(Verdict(verdict), ops, [Step(ops[i], st, ch) for i, st, ch in lin],
                           [(ops[i], ill) for i, ill in blocked], reason, configs)


def _fork(sched: _Scheduler, workers: int, bound0: int, deadline: float | None,
          stop_early: bool) -> Iterator[tuple[int, int, PartitionResult]]:
    """The rest of the rounds in forked workers; yields (partition, rounds, result)."""
    ctx = mp.get_context("fork")
    shared = ctx.RawValue("q", bound0)
    lock = ctx.Lock()
    parent = os.getpid()
    procs, conns = [], []
    groups = _groups(sched, workers)
    for mine in groups:
        rd, wr = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, daemon=True,
                        args=(sched, mine, shared, lock, wr, parent, deadline, stop_early))
        p.start()
        wr.close()
        procs.append(p)
        conns.append(rd)
    for it in sched.live + sched.aside:  # the workers own these searches now
        for g in it[1].values():
            g.close()
    sched.live, sched.aside, sched.pending = [], [], deque()
    try:
        open_ = {c: p for c, p in zip(conns, procs, strict=True)}
        while open_:
            for c in wait(list(open_)):
                try:
                    msg = c.recv()
                except EOFError:
                    p = open_.pop(c)
                    p.join(timeout=5)
                    if p.exitcode != 0:
                        raise RuntimeError(f"checker worker died (exit {p.exitcode})") from None
                    continue
                if msg[0] == "error":
                    raise RuntimeError(f"checker worker failed: {msg[1]}")
                for k, rank, comp in msg[1]:
                    ops = sched.cols.ops(sched.parts[k]) if comp[1] or comp[2] else []
                    yield k, rank, _expand(comp, ops)
    finally:
        reap(procs, conns)


def _worker(sched: _Scheduler, mine: set[int], shared: Any, lock: Any, conn: Any,
            parent: int, deadline: float | None, stop_early: bool) -> None:
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    batch: list[tuple[int, int, tuple]] = []

    def emit(k: int, rank: int, res: PartitionResult) -> None:
        ops = res.ops if res.linearization or res.blocked else []
        batch.append((k, rank, _compact(res, ops)))
        if len(batch) >= 64 or res.verdict is not Verdict.VALID:
            conn.send(("results", batch[:]))
            batch.clear()

    def lower(b: int) -> None:
        with lock:
            if b < shared.value:
                shared.value = b

    try:
        sched.keep_only(mine)
        sched.run(lambda: shared.value, lower, emit, deadline, stop_early)
        if batch:
            conn.send(("results", batch))
    except BaseException as e:  # noqa: BLE001 - report to the parent, never hang it
        try:
            conn.send(("error", repr(e)))
        except OSError:
            pass
    finally:
        conn.close()
        os._exit(0)
