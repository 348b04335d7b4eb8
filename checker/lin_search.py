"""Linearizability checking: Wing & Gong's search with Lowe's memoization.

One call, `check(model, ops)`, in the spirit of Porcupine. What makes it fast enough in
Python is the search space, not micro-tuning:

* **Configurations are merged** on (linearized set, model state) as in Lowe's WGL. The
  linearized set is stored as (base, window bits): every op called before `base` is
  linearized, so keys stay small however long the history is.
* **Indeterminate ops are linearized lazily.** An `info` op may take effect at any
  point after its call, or never. Rather than branching on it everywhere, it is only
  applied as part of a chain right before a completed op that needs the state it
  produces (any linearization can be rearranged that way: an unknown op that nothing
  later observes may as well never happen). Equivalent unknown ops (same f, key and
  value) are interchangeable, so the earliest available one is always used, and a
  configuration is pruned when one with the same set and state but fewer unknown ops
  spent was seen before (it can do everything this one can).
* Ops that can never constrain anything (a read whose result nobody saw) are dropped;
  reads legal in the current state are linearized at once, without branching.
* **Unobserved writes are erased first.** The op that must be linearized now is first
  tried right before the last overwrite on the path, which erases it (see
  `search_partition`), so a write nobody read is not tried at every later position.
* **Two candidate orders race** (by return time and by call time), and
  **P-compositionality** splits the history per key: `checker.lin_parallel` schedules
  the partitions (in rounds, over worker processes); this module searches one.

`docs/checker.md` explains each point and why it keeps the search complete.

A check never hangs or eats the machine: a timeout and a bound on remembered
configurations turn into an `unknown` verdict with the reason.
"""
from __future__ import annotations

import os
import resource
from bisect import bisect_left
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .history import UNKNOWN, Op, freeze
from .models import Model


class Verdict(StrEnum):
    """The outcome of a check; the order of badness is invalid > unknown > valid."""

    VALID = "valid"
    INVALID = "invalid"
    UNKNOWN = "unknown"

    @property
    def rank(self) -> int:
        """Badness; the one ranking of verdicts (checks, runs, partitions, pages)."""
        return {"valid": 0, "unknown": 1, "invalid": 2}[self.value]

    @property
    def exit_code(self) -> int:
        return {"valid": 0, "invalid": 1, "unknown": 2}[self.value]

    @staticmethod
    def rank_of(value: str) -> int:
        """The rank of a stored verdict string; one this build does not know ranks as
        `unknown` (it is not a pass, and not a proven violation either)."""
        try:
            return Verdict(value).rank
        except ValueError:
            return Verdict.UNKNOWN.rank

    @staticmethod
    def worst(verdicts: list[Verdict]) -> Verdict:
        return max(verdicts, key=lambda v: v.rank, default=Verdict.VALID)


@dataclass
class Step:
    """One op placed in a linearization, with the model state right after it."""

    op: Op
    state: Any
    unknown_chain: bool = False  # an indeterminate op applied to enable the next one


@dataclass
class PartitionResult:
    """The verdict for one independent part of the history (e.g. one key)."""

    verdict: Verdict
    ops: list[Op]
    linearization: list[Step] = field(default_factory=list)  # full, or the longest prefix
    blocked: list[tuple[Op, bool]] = field(default_factory=list)  # (op, illegal right there)
    reason: str = ""
    configurations: int = 0
    key: Any = None

    @property
    def valid(self) -> bool | str:
        return _as_valid(self.verdict)


@dataclass
class CheckResult:
    """The overall verdict is the worst of the partitions."""

    verdict: Verdict
    partitions: list[PartitionResult]
    model: str
    seconds: float = 0.0

    @property
    def valid(self) -> bool | str:
        return _as_valid(self.verdict)

    def failures(self) -> list[PartitionResult]:
        return [p for p in self.partitions if p.verdict is not Verdict.VALID]


def _as_valid(v: Verdict) -> bool | str:
    return True if v is Verdict.VALID else False if v is Verdict.INVALID else "unknown"


class _Abort(Exception):
    pass


def rss_mb() -> float:
    """This process's resident memory now, in MB (its peak where /proc is missing).
    The search's memory grows with the depth of its path (a frame per linearized op),
    so a bound on configurations alone does not bound memory; this does."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE / 1e6
    except (OSError, ValueError, IndexError):  # not Linux: the peak is the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


DEFAULT_MAX_CONFIGS = 3_000_000
_REACH_LIMIT = 20_000
_SLICE = 256  # configurations a search explores before it yields to the scheduler


class _Retro:
    """A move that puts an op right before an earlier overwrite (see `search_partition`)."""

    __slots__ = ("state_after", "before")

    def __init__(self, state_after: Any, before: Any) -> None:
        self.state_after = state_after  # state right after it, where it really goes
        self.before = before  # the path node of the overwrite it goes in front of


# Kept whole on purpose: the search's inner loop holds its state in locals, where a helper per step would cost a call each time (the kv corpus is measured against Go).
def search_partition(model: Model, ops: list[Op], order: str = "call",
                     max_configs: int = DEFAULT_MAX_CONFIGS,
                     max_rss_mb: float | None = None, rss_base: float = 0.0,
                     paths: bool = True) -> Generator[None, None, PartitionResult]:
    """The search for one partition as a generator: it yields every few hundred
    configurations, so a scheduler can interleave partitions and strategies, stop
    when one partition is invalid, and enforce a deadline; it returns the result.

    `order` is the order candidates are tried in: by call ("call", Porcupine's order)
    or by return ("ret", closer to when a real server applied them). Each is much
    faster than the other on some histories, so `check` races both.

    Erasing moves: when the op whose return comes first (the one that must go now) is a
    mutation that was already invoked when the last overwrite B on the path was
    linearized, and is legal in the state just before B, it is first tried right
    before B. B overwrites whatever it did, so the state stays as it is; the order
    "..., op, B, ..." is a real linearization, and every ordinary move is still tried
    afterwards, so the search stays complete. A model opts in with `overwrites(op)`:
    true for ops that are always legal and whose result ignores the prior state.

    `max_rss_mb` bounds what the process grows past `rss_base` (the history it holds is
    the reader's to bound); with `paths` off, a valid result carries no linearization.
    """
    step = model.step
    readonly = model.readonly
    # Required ops completed inside their interval; unknown ones are optional.
    req = sorted((o for o in ops if o.ret is not None
                  and not (o.output is UNKNOWN and readonly(o))), key=lambda o: o.call)
    unk = sorted((o for o in ops if o.ret is None and not readonly(o)), key=lambda o: o.call)
    n = len(req)
    calls = [o.call for o in req]
    rets = [o.ret for o in req]
    ro = [readonly(o) for o in req]
    read_memo: list[dict[Any, bool]] = [{} for _ in req]
    overwrites = getattr(model, "overwrites", None)
    blind = [bool(overwrites and overwrites(o)) for o in req]
    by_ret = sorted(range(n), key=rets.__getitem__)
    rets_sorted = [rets[i] for i in by_ret]
    by_ret_order = order == "ret"
    if by_ret_order:
        # One pass first: the completed ops in the order they returned (an order real
        # time allows; indeterminate ops left out, as if they never happened). When each
        # is legal so, that is a linearization and no search is needed: most keys of a
        # long, lightly contended history end here, at a model step per op.
        s = model.init()
        states = []
        for i in by_ret:
            legal, s = step(s, req[i])
            if not legal:
                break
            states.append(s)
        else:
            return PartitionResult(Verdict.VALID, ops, [Step(req[i], st) for i, st in zip(
                by_ret, states, strict=True)] if paths else [], configurations=n)

    # Classes of interchangeable unknown ops, each sorted by call.
    cls_index: dict[Any, int] = {}
    cls_ops: list[list[int]] = []
    for j, o in enumerate(unk):
        c = cls_index.setdefault((o.f, freeze(o.key), freeze(o.value)), len(cls_ops))
        if c == len(cls_ops):
            cls_ops.append([])
        cls_ops[c].append(j)
    cls_mask = [sum(1 << j for j in js) for js in cls_ops]
    cls_calls = [[unk[j].call for j in js] for js in cls_ops]
    has_unknown = bool(unk)

    def reach(state: Any, used: int, frontier: float) -> Any:
        """States reachable by chains of still-unused unknown ops, minimal spend each."""
        out: list[tuple[Any, int, tuple[int, ...]]] = [(state, 0, ())]
        avail = [c for c in range(len(cls_ops))
                 if (k := (used & cls_mask[c]).bit_count()) < len(cls_ops[c])
                 and cls_calls[c][k] < frontier]
        if not avail:
            return out
        best: dict[Any, list[int]] = {state: [0]}
        layer = out[:]
        while layer:
            nxt: list[tuple[Any, int, tuple[int, ...]]] = []
            for s, m, chain in layer:
                um = used | m
                for c in avail:
                    k = (um & cls_mask[c]).bit_count()
                    if k >= len(cls_ops[c]) or cls_calls[c][k] >= frontier:
                        continue
                    j = cls_ops[c][k]
                    legal, s2 = step(s, unk[j])
                    if not legal or s2 == s:
                        continue
                    m2 = m | (1 << j)
                    seen = best.get(s2)
                    if seen is not None:
                        if any(x & ~m2 == 0 for x in seen):
                            continue
                        seen.append(m2)
                    else:
                        best[s2] = [m2]
                    item = (s2, m2, chain + (j,))
                    nxt.append(item)
                    out.append(item)
                    if len(out) > _REACH_LIMIT:
                        raise _Abort(f"more than {_REACH_LIMIT} states reachable through "
                                     "indeterminate operations")
            layer = nxt
        return out

    INF = float("inf")

    def frontier_of(base: int, rel: int, lo_ret: int) -> tuple[int, float]:
        while lo_ret < n:
            i = by_ret[lo_ret]
            if i < base or (rel >> (i - base)) & 1:
                lo_ret += 1
            else:
                return lo_ret, rets_sorted[lo_ret]
        return lo_ret, INF

    def successors(base: int, rel: int, state: Any, used: int, frontier: float,
                   erase: tuple | None, lo_ret: int) -> Iterator[tuple[Any, Any, int, Any]]:
        # Candidates: unlinearized ops called before the frontier, in the order to try.
        width = bisect_left(calls, frontier, base) - base
        free = ~rel & ((1 << width) - 1)
        cands = []
        while free:
            low = free & -free
            cands.append(base + low.bit_length() - 1)
            free ^= low
        if by_ret_order:
            cands.sort(key=rets.__getitem__)
        # Reads legal right now are linearized now, all at once, without branching:
        # moving a read earlier never hurts (it changes nothing and only relaxes the
        # frontier). Read legality per state is memoized: reads are re-tested a lot.
        legal_reads = []
        for i in cands:
            if ro[i]:
                memo = read_memo[i]
                ok = memo.get(state)
                if ok is None:
                    ok = memo[state] = step(state, req[i])[0]
                if ok:
                    legal_reads.append(i)
        if legal_reads:
            yield legal_reads, state, 0, ()
            return
        # The op that must be linearized now may never have been observed: try first to
        # put it right before the last overwrite (a write that ignores the state), which
        # erases it and leaves the state as it is. That is a real linearization (it was
        # pending then), and it keeps an unobserved write from being tried everywhere.
        if erase is not None:
            i = by_ret[lo_ret]
            if not ro[i] and calls[i] < erase[0]:
                legal, s_after = step(erase[1], req[i])
                if legal:
                    yield (i,), state, 0, _Retro(s_after, erase[2])
        if not has_unknown:
            # No chains: reads were just found illegal here, only mutations can move.
            for i in cands:
                if not ro[i]:
                    legal, s2 = step(state, req[i])
                    if legal:
                        yield (i,), s2, 0, ()
            return
        options = reach(state, used, frontier)
        for i in cands:
            op = req[i]
            for s1, m, chain in options:
                legal, s2 = step(s1, op)
                if legal:
                    yield (i,), s2, m, chain

    root_state = model.init()
    result = PartitionResult(Verdict.VALID, ops)
    lo_ret, frontier = frontier_of(0, 0, 0)
    if lo_ret == n:
        return result
    # A path node: (parent, op index, state after, chain of unknown ops before it).
    # A frame: (moves, base, rel, spent unknowns, lo_ret, path node, erase, state) where
    # erase = (frontier then, state just before, path node) of the last overwrite.
    stack: list[tuple[Iterator, int, int, int, int, Any, Any, Any]] = [
        (successors(0, 0, root_state, 0, frontier, None, lo_ret), 0, 0, 0, lo_ret, None, None,
         root_state)]
    seen_plain: set[tuple[int, int, Any]] = set()
    seen_unknown: dict[tuple[int, int, Any], list[int]] = {}
    configs = 0
    best_depth = -1
    best_node: Any = None
    best_cfg = (0, 0, root_state, 0)
    ticks = 0
    try:
        while stack:
            gen, base, rel, used, lo_ret, node, erase, state = stack[-1]
            here = rets_sorted[lo_ret] if lo_ret < n else INF
            for idxs, s2, m, chain in gen:
                rel2 = rel
                for i in idxs:
                    rel2 |= 1 << (i - base)
                tz = (rel2 ^ (rel2 + 1)).bit_length() - 1
                base2 = base + tz
                rel2 >>= tz
                used2 = used | m
                key = (base2, rel2, s2)
                if has_unknown:
                    prev = seen_unknown.get(key)
                    if prev is not None:
                        if any(x & ~used2 == 0 for x in prev):
                            continue
                        prev.append(used2)
                    else:
                        seen_unknown[key] = [used2]
                else:
                    if key in seen_plain:
                        continue
                    seen_plain.add(key)
                configs += 1
                child = (node, idxs, s2, chain)
                lo2, fr2 = frontier_of(base2, rel2, lo_ret)
                if lo2 == n:
                    if paths:  # else made again on demand (`checker.lin_parallel`)
                        result.linearization = _path(model, child, req, unk)
                    result.configurations = configs
                    return result
                depth = base2 + rel2.bit_count()
                if depth > best_depth:
                    best_depth, best_node, best_cfg = depth, child, (base2, rel2, s2, used2)
                ticks += 1
                if ticks >= _SLICE:
                    ticks = 0
                    if configs > max_configs:
                        raise _Abort(f"explored more than {max_configs} configurations "
                                     "(memory bound)")
                    if max_rss_mb is not None and rss_mb() - rss_base > max_rss_mb:
                        raise _Abort(f"the check grew past {max_rss_mb:g} MB of memory "
                                     "(memory bound)")
                    yield
                erase2 = erase
                if chain.__class__ is _Retro:
                    erase2 = (erase[0], chain.state_after, erase[2])
                elif not chain and blind[idxs[0]]:  # multi-op moves are reads
                    # Ops pending now could have gone right before this overwrite.
                    erase2 = (here, state, child)
                stack.append((successors(base2, rel2, s2, used2, fr2, erase2, lo2), base2,
                              rel2, used2, lo2, child, erase2, s2))
                break
            else:
                stack.pop()
    except _Abort as e:
        result.verdict = Verdict.UNKNOWN
        result.reason = str(e)
        result.configurations = configs
        result.linearization = _path(model, best_node, req, unk)
        return result

    result.verdict = Verdict.INVALID
    result.configurations = configs
    result.linearization = _path(model, best_node, req, unk)
    base, rel, state, used = best_cfg
    _, frontier = frontier_of(base, rel, 0)
    options = reach(state, used, frontier) if has_unknown else [(state, 0, ())]
    width = bisect_left(calls, frontier, base) - base
    for i in (base + k for k in range(width) if not (rel >> k) & 1):
        legal_somewhere = any(step(s, req[i])[0] for s, _, _ in options)
        result.blocked.append((req[i], not legal_somewhere))
    return result


def _path(model: Model, node: Any, req: list[Op], unk: list[Op]) -> list[Step]:
    nodes = []
    while node is not None:
        nodes.append(node)
        node = node[0]
    steps: list[Step] = []
    placed: dict[int, Step] = {}  # path node -> the Step of its (last) op
    state = model.init()
    for nd in reversed(nodes):
        _, idxs, s2, chain = nd
        if chain.__class__ is _Retro:
            # It goes right before the overwrite that erased it.
            k = steps.index(placed[id(chain.before)])
            steps.insert(k, Step(req[idxs[0]], chain.state_after))
            continue
        for j in chain:
            state = model.step(state, unk[j])[1]
            steps.append(Step(unk[j], state, unknown_chain=True))
        for i in idxs:
            steps.append(Step(req[i], s2))
        placed[id(nd)] = steps[-1]
        state = s2
    return steps
