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

This module is compiled with mypyc when the install could (`checker.compiled()`,
`docs/checker.md`, "The compiled path"): the same source, so the same answers. Hence its
shape: the search's state lives in typed locals and in small classes with declared
attributes (`_Search`, `_Frame`, `_Node`), not in closures and generators per
configuration, and nothing here is patched or extended from outside (the result types
live in `checker.lin_result`).
"""
from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from .history import UNKNOWN, Op, freeze
from .lin_result import (
    DEFAULT_MAX_CONFIGS,
    CheckResult,
    PartitionResult,
    Step,
    Verdict,
    _Abort,
    rss_mb,
)
from .models import KV, CasRegister, Model, Register

__all__ = ["DEFAULT_MAX_CONFIGS", "CheckResult", "PartitionResult", "Step", "Verdict",
           "_Abort", "rss_mb", "search_partition", "SOURCE_HASH"]

# The hash of this file's source, baked in by the build when it compiles the module
# (setup.py); "" in the source itself. `checker._native` compares it with the source
# next to the compiled module, so a stale build never runs in place of newer code.
SOURCE_HASH = ""

_REACH_LIMIT = 20_000
_SLICE = 256  # configurations a search explores before it yields to the scheduler
_INF = 1 << 62  # a frontier past every op: history positions are far below it
# Shared placeholders, never mutated: a frame's lists are replaced before they are read.
_NO_INTS: list[int] = []
_NO_OPTIONS: list[tuple[Any, int, tuple[int, ...]]] = []


class _Retro:
    """A move that puts an op right before an earlier overwrite (see `search_partition`)."""

    __slots__ = ("state_after", "before")

    def __init__(self, state_after: Any, before: _Node) -> None:
        self.state_after = state_after  # state right after it, where it really goes
        self.before = before  # the path node of the overwrite it goes in front of


class _Node:
    """A node of the search path: the move that made a configuration, and its parent.
    `chain` is the tuple of unknown ops applied right before (indices into `unk`), or a
    `_Retro` for an erasing move."""

    __slots__ = ("parent", "idxs", "state", "chain")

    def __init__(self, parent: _Node | None, idxs: list[int], state: Any,
                 chain: Any) -> None:
        self.parent = parent
        self.idxs = idxs
        self.state = state
        self.chain = chain


class _Erase:
    """The last overwrite on the path: the frontier then, the state just before it, and
    its path node (what an erasing move goes in front of)."""

    __slots__ = ("frontier", "state", "node")

    def __init__(self, frontier: int, state: Any, node: _Node) -> None:
        self.frontier = frontier
        self.state = state
        self.node = node


class _Frame:
    """One configuration on the stack and where its moves have got to.

    The moves are made lazily, in the order the search tries them (`_Search.advance`):
    the reads legal now (one move), then the erasing move, then each candidate (after
    each chain of unknown ops, when there are any). `phase` says which: 0 not started,
    1 erasing move next, 2 chains of unknown ops to find, 4 candidates, 3 done."""

    __slots__ = ("base", "rel", "used", "lo_ret", "frontier", "depth", "node", "erase",
                 "state", "phase", "cands", "ci", "options", "oi", "m_idxs", "m_state",
                 "m_used", "m_chain")

    def __init__(self, base: int, rel: int, used: int, lo_ret: int, frontier: int,
                 depth: int, node: _Node | None, erase: _Erase | None, state: Any) -> None:
        self.base = base
        self.rel = rel
        self.used = used
        self.lo_ret = lo_ret
        self.frontier = frontier
        self.depth = depth  # required ops linearized
        self.node = node
        self.erase = erase
        self.state = state
        self.phase = 0
        self.cands: list[int] = _NO_INTS  # (set by `start`: no list made per frame here)
        self.ci = 0
        self.options: list[tuple[Any, int, tuple[int, ...]]] = _NO_OPTIONS
        self.oi = 0
        # The move `advance` found: ops linearized, state after, unknowns spent, chain.
        self.m_idxs: list[int] = _NO_INTS
        self.m_state: Any = None
        self.m_used = 0
        self.m_chain: Any = ()


class _Search:
    """One partition's ops as arrays, and the moves out of a configuration."""

    def __init__(self, model: Model, ops: list[Op], by_ret_order: bool) -> None:
        # (Any, not bool: a model's own step may say legal with any true value.)
        self.step: Callable[[Any, Op], tuple[Any, Any]] = model.step
        # The built-in models, called directly (compiled: a native call, no boxing).
        self.kv: KV | None = model if isinstance(model, KV) and type(model) is KV else None
        self.reg: CasRegister | None = (
            model if isinstance(model, CasRegister) and type(model) in (CasRegister, Register)
            else None)
        readonly = model.readonly
        # Ops seen as Any here: compiled code checks a typed attribute it reads, and
        # histories may carry times that are not the ints `Op` declares (floats).
        anyops: list[Any] = ops
        # Required ops completed inside their interval; unknown ones are optional.
        req = sorted((o for o in anyops if o.ret is not None
                      and not (o.output is UNKNOWN and readonly(o))), key=_call_of)
        self.req: list[Op] = req
        anyreq: list[Any] = req
        self.unk: list[Op] = sorted((o for o in anyops if o.ret is None and not readonly(o)),
                                    key=_call_of)
        n = len(req)
        self.n = n
        # Times are only compared with each other, so their ranks serve as well: native
        # ints when compiled, whatever the history's times are (positions, or floats).
        calls: list[Any] = [_call_of(o) for o in req]
        rets: list[Any] = [_ret_of(o) for o in req]
        unk_calls: list[Any] = [_call_of(o) for o in self.unk]
        if not all(t.__class__ is int for t in calls + rets + unk_calls):
            rank = {t: r for r, t in enumerate(sorted(set(calls + rets + unk_calls)))}
            calls, rets = [rank[t] for t in calls], [rank[t] for t in rets]
            unk_calls = [rank[t] for t in unk_calls]
        self.calls: list[int] = calls
        self.rets: list[int] = rets
        self.ro: list[bool] = [bool(readonly(o)) for o in req]
        self.read_memo: list[dict[Any, bool]] = [{} for _ in req]
        overwrites = getattr(model, "overwrites", None)
        self.blind: list[bool] = [bool(overwrites and overwrites(o)) for o in req]
        self.by_ret: list[int] = sorted(range(n), key=lambda i: rets[i])
        self.rets_sorted: list[int] = [rets[i] for i in self.by_ret]
        # Each op's parts, read once, for the built-in models' `step_parts`.
        parts = self.kv is not None or self.reg is not None
        self.f_of: list[str] = [o.f for o in anyreq] if parts else []
        self.value_of: list[Any] = [o.value for o in anyreq] if parts else []
        self.output_of: list[Any] = [o.output for o in anyreq] if parts else []
        # Made by `prepare`, for a search (the one pass needs none of them).
        self.single: list[list[int]] = []
        self.pos_ret: list[int] = []
        self.cut: list[int] = []
        self.by_ret_order = by_ret_order
        # Classes of interchangeable unknown ops, each sorted by call.
        cls_index: dict[Any, int] = {}
        cls_ops: list[list[int]] = []
        for j, o in enumerate(self.unk):
            c = cls_index.setdefault((o.f, freeze(o.key), freeze(o.value)), len(cls_ops))
            if c == len(cls_ops):
                cls_ops.append([])
            cls_ops[c].append(j)
        self.cls_ops = cls_ops
        self.cls_mask: list[int] = [sum(1 << j for j in js) for js in cls_ops]
        self.cls_calls: list[list[int]] = [[unk_calls[j] for j in js] for js in cls_ops]
        self.has_unknown = bool(self.unk)

    def prepare(self) -> None:
        """What the search needs beyond the one pass."""
        n = self.n
        # The one-op moves' `idxs`, made once per op (read only, like every `idxs`).
        self.single = [[i] for i in range(n)]
        # Each op's place in return order: sorting places sorts by return, ties by index.
        self.pos_ret = [0] * n
        for p, i in enumerate(self.by_ret):
            self.pos_ret[i] = p
        # For each place in return order, the ops called before that op returned: with
        # the frontier there, the candidates are below this (at and above the base).
        calls = self.calls
        self.cut = [_bisect(calls, r, 0) for r in self.rets_sorted] + [n]

    def stepped(self, state: Any, i: int) -> tuple[bool, Any]:
        """`model.step(state, req[i])`; for the built-in models a native call on the
        op's parts, read once (`prepare`)."""
        kv = self.kv
        if kv is not None:
            return kv.step_parts(state, self.f_of[i], self.value_of[i], self.output_of[i])
        reg = self.reg
        if reg is not None:
            return reg.step_parts(state, self.f_of[i], self.value_of[i], self.output_of[i])
        legal, after = self.step(state, self.req[i])
        return bool(legal), after

    def frontier_of(self, base: int, rel: int, lo_ret: int) -> tuple[int, int]:
        """The first op by return not yet linearized (its position in return order) and
        its return: every op linearized next must be called before it."""
        n = self.n
        by_ret = self.by_ret
        while lo_ret < n:
            i = by_ret[lo_ret]
            if i < base or (rel >> (i - base)) & 1:
                lo_ret += 1
            else:
                return lo_ret, self.rets_sorted[lo_ret]
        return lo_ret, _INF

    def reach(self, state: Any, used: int,
              frontier: int) -> list[tuple[Any, int, tuple[int, ...]]]:
        """States reachable by chains of still-unused unknown ops, minimal spend each."""
        cls_ops, cls_mask, cls_calls = self.cls_ops, self.cls_mask, self.cls_calls
        step, unk = self.step, self.unk
        out: list[tuple[Any, int, tuple[int, ...]]] = [(state, 0, ())]
        avail = [c for c in range(len(cls_ops))
                 if (used & cls_mask[c]).bit_count() < len(cls_ops[c])
                 and cls_calls[c][(used & cls_mask[c]).bit_count()] < frontier]
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
                        if _covered(seen, m2):
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

    def start(self, fr: _Frame) -> bool:
        """A frame's first move: candidates are the ops not linearized, called before
        the frontier, in the order to try. Reads legal right now are linearized now, all
        at once, without branching: moving a read earlier never hurts (it changes
        nothing and only relaxes the frontier). Read legality per state is memoized:
        reads are re-tested a lot."""
        base, rel, state = fr.base, fr.rel, fr.state
        width = self.cut[fr.lo_ret] - base  # (below zero: no candidates)
        cands: list[int] = []
        ro = self.ro
        for k in range(width):
            if not (rel >> k) & 1:
                cands.append(base + k)
        if self.by_ret_order:
            # By return: an insertion sort on each op's place in return order (a few
            # ops, mostly in order already; ties are impossible, places are distinct).
            pos_ret = self.pos_ret
            for a in range(1, len(cands)):
                i = cands[a]
                p = pos_ret[i]
                b = a - 1
                while b >= 0 and pos_ret[cands[b]] > p:
                    cands[b + 1] = cands[b]
                    b -= 1
                cands[b + 1] = i
        legal_reads: list[int] | None = None  # (made when there is one: most frames)
        read_memo = self.read_memo
        for i in cands:
            if ro[i]:
                memo = read_memo[i]
                ok = memo.get(state)
                if ok is None:
                    ok = memo[state] = self.stepped(state, i)[0]
                if ok:
                    if legal_reads is None:
                        legal_reads = [i]
                    else:
                        legal_reads.append(i)
        fr.cands = cands
        if legal_reads is not None:
            fr.phase = 3
            fr.m_idxs, fr.m_state, fr.m_used, fr.m_chain = legal_reads, state, 0, ()
            return True
        fr.phase = 1
        return self.advance(fr)

    def advance(self, fr: _Frame) -> bool:
        """The frame's next move into its `m_*` fields; False when there is none left."""
        phase = fr.phase
        if phase == 0:
            return self.start(fr)
        if phase == 3:
            return False
        ro, single = self.ro, self.single
        if phase == 1:
            # The op that must be linearized now may never have been observed: try first
            # to put it right before the last overwrite (a write that ignores the state),
            # which erases it and leaves the state as it is. That is a real
            # linearization (it was pending then), and it keeps an unobserved write from
            # being tried everywhere.
            fr.phase = phase = 2
            erase = fr.erase
            if erase is not None:
                i = self.by_ret[fr.lo_ret]
                if not ro[i] and self.calls[i] < erase.frontier:
                    legal, s_after = self.stepped(erase.state, i)
                    if legal:
                        fr.m_idxs, fr.m_state, fr.m_used = self.single[i], fr.state, 0
                        fr.m_chain = _Retro(s_after, erase.node)
                        return True
        cands = fr.cands
        nc = len(cands)
        ci = fr.ci
        if not self.has_unknown:
            # No chains: reads were just found illegal here, only mutations can move.
            fr.phase = 4
            state = fr.state
            kv = self.kv
            while ci < nc:
                i = cands[ci]
                ci += 1
                if ro[i]:
                    continue
                if kv is not None:  # (`stepped`, written out: the most frequent step)
                    legal, s2 = kv.step_parts(state, self.f_of[i], self.value_of[i],
                                              self.output_of[i])
                else:
                    legal, s2 = self.stepped(state, i)
                if legal:
                    fr.ci = ci
                    fr.m_idxs, fr.m_state, fr.m_used, fr.m_chain = single[i], s2, 0, ()
                    return True
            fr.ci, fr.phase = ci, 3
            return False
        if phase == 2:
            fr.phase = 4
            fr.options = self.reach(fr.state, fr.used, fr.frontier)
        # Each candidate after each chain of unknown ops.
        options = fr.options
        no = len(options)
        oi = fr.oi
        while ci < nc:
            i = cands[ci]
            if no == 1 and ro[i]:  # illegal in the one state there is (just tested)
                ci += 1
                continue
            while oi < no:
                s1, m, chain = options[oi]
                oi += 1
                legal, s2 = self.stepped(s1, i)
                if legal:
                    fr.ci, fr.oi = ci, oi
                    fr.m_idxs, fr.m_state, fr.m_used, fr.m_chain = single[i], s2, m, chain
                    return True
            ci += 1
            oi = 0
        fr.ci, fr.oi, fr.phase = ci, oi, 3
        return False


def _bisect(a: list[int], x: int, lo: int) -> int:
    """`bisect.bisect_left(a, x, lo)`, written out: compiled, it runs on native ints."""
    hi = len(a)
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _call_of(o: Any) -> Any:
    return o.call


def _ret_of(o: Any) -> Any:
    return o.ret


def _covered(prev: list[int], used: int) -> bool:
    """Whether a configuration seen with one of `prev` (unknown ops spent) can do all
    that one with `used` can: it spent a subset."""
    for x in prev:
        if x & ~used == 0:
            return True
    return False


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
    by_ret_order = order == "ret"
    sr = _Search(model, ops, by_ret_order)
    step = sr.step
    req, unk, n = sr.req, sr.unk, sr.n
    if by_ret_order:
        # One pass first: the completed ops in the order they returned (an order real
        # time allows; indeterminate ops left out, as if they never happened). When each
        # is legal so, that is a linearization and no search is needed: most keys of a
        # long, lightly contended history end here, at a model step per op.
        s = model.init()
        states = []
        for i in sr.by_ret:
            legal, s = sr.stepped(s, i)
            if not legal:
                break
            states.append(s)
        else:
            return PartitionResult(Verdict.VALID, ops, [Step(req[i], st) for i, st in zip(
                sr.by_ret, states, strict=True)] if paths else [], configurations=n)

    sr.prepare()
    has_unknown = sr.has_unknown
    blind = sr.blind
    root_state = model.init()
    result = PartitionResult(Verdict.VALID, ops)
    lo_ret, frontier = sr.frontier_of(0, 0, 0)
    if lo_ret == n:
        return result
    stack: list[_Frame] = [_Frame(0, 0, 0, lo_ret, frontier, 0, None, None, root_state)]
    seen_plain: set[tuple[int, int, Any]] = set()
    seen_unknown: dict[tuple[int, int, Any], list[int]] = {}
    configs = 0
    best_depth = -1
    best_node: _Node | None = None
    best_cfg: tuple[int, int, Any, int] = (0, 0, root_state, 0)
    ticks = 0
    try:
        while stack:
            fr = stack[-1]
            if not (sr.start(fr) if fr.phase == 0 else sr.advance(fr)):
                stack.pop()
                continue
            idxs = fr.m_idxs
            s2 = fr.m_state
            chain = fr.m_chain
            base = fr.base
            rel2 = fr.rel
            for i in idxs:
                rel2 |= 1 << (i - base)
            base2 = base
            while rel2 & 1:  # every op below the new base is linearized
                rel2 >>= 1
                base2 += 1
            used2 = fr.used | fr.m_used
            key = (base2, rel2, s2)
            if has_unknown:
                prev = seen_unknown.get(key)
                if prev is not None:
                    if _covered(prev, used2):
                        continue
                    prev.append(used2)
                else:
                    seen_unknown[key] = [used2]
            else:
                if key in seen_plain:
                    continue
                seen_plain.add(key)
            configs += 1
            child = _Node(fr.node, idxs, s2, chain)
            lo2, fr2 = sr.frontier_of(base2, rel2, fr.lo_ret)
            if lo2 == n:
                if paths:  # else made again on demand (`checker.lin_parallel`)
                    result.linearization = _path(model, child, req, unk)
                result.configurations = configs
                return result
            depth = fr.depth + len(idxs)
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
            erase2 = fr.erase
            if isinstance(chain, _Retro):
                assert erase2 is not None
                erase2 = _Erase(erase2.frontier, chain.state_after, erase2.node)
            elif not chain and blind[idxs[0]]:  # multi-op moves are reads
                # Ops pending now could have gone right before this overwrite.
                erase2 = _Erase(fr.frontier, fr.state, child)
            stack.append(_Frame(base2, rel2, used2, lo2, fr2, depth, child, erase2, s2))
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
    _, frontier = sr.frontier_of(base, rel, 0)
    options = sr.reach(state, used, frontier) if has_unknown else [(state, 0, ())]
    width = _bisect(sr.calls, frontier, base) - base
    for i in (base + k for k in range(width) if not (rel >> k) & 1):
        legal_somewhere = any(step(s, req[i])[0] for s, _, _ in options)
        result.blocked.append((req[i], not legal_somewhere))
    return result


def _path(model: Model, node: _Node | None, req: list[Op], unk: list[Op]) -> list[Step]:
    """The linearization a path node ends, from the root."""
    nodes: list[_Node] = []
    while node is not None:
        nodes.append(node)
        node = node.parent
    steps: list[Step] = []
    placed: dict[int, Step] = {}  # path node -> the Step of its (last) op
    state = model.init()
    for nd in nodes[::-1]:
        chain = nd.chain
        if isinstance(chain, _Retro):
            # It goes right before the overwrite that erased it.
            k = steps.index(placed[id(chain.before)])
            steps.insert(k, Step(req[nd.idxs[0]], chain.state_after))
            continue
        for j in chain:
            state = model.step(state, unk[j])[1]
            steps.append(Step(unk[j], state, unknown_chain=True))
        for i in nd.idxs:
            steps.append(Step(req[i], nd.state))
        placed[id(nd)] = steps[-1]
        state = nd.state
    return steps
