"""A brute-force linearizability oracle for small histories (a handful of ops).

Deliberately naive and independent of `checker.linearizability`: it shares nothing with
the checker but the `Op` record and the `UNKNOWN` sentinel. Its sequential
specifications are written again here from the documented semantics, so a mistake in
`checker.models` shows up as a disagreement instead of being copied.

Definition checked (Herlihy & Wing, with Jepsen's indeterminate ops):

* every completed op (`ret` is not None) appears exactly once;
* an indeterminate op (`ret` is None: `info`, or still open at the end) appears at most
  once, anywhere after its call, or not at all;
* real time: if `a.ret < b.call` then `a` comes before `b`;
* replaying the order through the sequential specification, every op is legal.

`linearizable` enumerates orders depth-first (a permutation is built one op at a time;
a prefix that is already illegal is abandoned, which changes nothing about which full
orders are accepted). `linearizable_naive` is the literal definition: every subset of
indeterminate ops times every permutation, filtered. Both are exponential on purpose;
keep histories at ~8 ops.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from checker.history import UNKNOWN, Op

MODELS = ("register", "cas-register", "kv")


# --------------------------------------------------------------------------- specs

def initial_state(model: str) -> Any:
    """The state before any op: an absent register, or a map with no keys."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}")
    return None if model != "kv" else ()


def _register_step(cur: Any, op: Op, allow_cas: bool) -> tuple[bool, Any]:
    """Register semantics on one value: returns (legal, new value)."""
    if op.f == "read":
        if op.output is UNKNOWN:
            return True, cur
        return op.output == cur, cur
    if op.f == "write":
        return True, op.value
    if op.f == "cas" and allow_cas:
        expected, new = op.value
        if op.output is UNKNOWN:  # applies iff it matches where it is linearized
            return True, (new if cur == expected else cur)
        if op.output is True:  # happened and matched
            if cur == expected:
                return True, new
            return False, cur
        if op.output is False:  # happened and compared unequal (Porcupine's etcd)
            return cur != expected, cur
        raise ValueError(f"cas output must be True, False or UNKNOWN, not {op.output!r}")
    return False, cur


def _kv_step(state: tuple, op: Op) -> tuple[bool, tuple]:
    """A map of keys; `state` is a sorted tuple of (key, value) pairs."""
    m = dict(state)
    cur = m.get(op.key)
    if op.f == "get":
        shown = "" if cur is None else cur
        return (op.output is UNKNOWN or op.output == shown), state
    if op.f == "put":
        m[op.key] = op.value
    elif op.f == "append":
        m[op.key] = ("" if cur is None else cur) + op.value
    else:
        legal, new = _register_step(cur, op, allow_cas=True)
        if not legal:
            return False, state
        m[op.key] = new
    return True, tuple(sorted(m.items(), key=lambda kv: repr(kv[0])))


def step(model: str, state: Any, op: Op) -> tuple[bool, Any]:
    """One op applied to `state` under `model`: (legal, new state)."""
    if model == "register":
        return _register_step(state, op, allow_cas=False)
    if model == "cas-register":
        return _register_step(state, op, allow_cas=True)
    if model == "kv":
        return _kv_step(state, op)
    raise ValueError(f"unknown model {model!r}")


def replay(model: str, order: Iterable[Op]) -> bool:
    """True iff every op of `order`, applied in turn from the initial state, is legal."""
    state = initial_state(model)
    for op in order:
        legal, state = step(model, state, op)
        if not legal:
            return False
    return True


def states_after(model: str, order: Iterable[Op]) -> list[Any] | None:
    """The state after each op of `order`, or None if some op is illegal."""
    state = initial_state(model)
    out = []
    for op in order:
        legal, state = step(model, state, op)
        if not legal:
            return None
        out.append(state)
    return out


def respects_real_time(order: Sequence[Op]) -> bool:
    """No op in `order` comes after an op that was called after it returned."""
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            if b.ret is not None and b.ret < a.call:
                return False
    return True


# --------------------------------------------------------------------------- oracles

def linearizable(model: str, ops: Sequence[Op], memo: bool = False) -> list[Op] | None:
    """A witness order if `ops` is linearizable under `model`, else None.

    Depth-first over orders: at each point, any op not placed yet may come next if every
    op that returned before its call is already placed. Done when every completed op is
    placed (indeterminate ops left over simply never happened).

    With `memo`, a (set of placed ops, state) pair from which no completion was found is
    remembered and not explored again: what can still happen depends on nothing else.
    That makes ~12 ops affordable; without it the search is the plain enumeration.
    """
    ops = list(ops)
    n = len(ops)
    must_precede = [
        [j for j in range(n) if ops[j].ret is not None and ops[j].ret < ops[i].call]
        for i in range(n)
    ]
    completed = [i for i in range(n) if ops[i].ret is not None]
    placed = [False] * n
    order: list[int] = []
    dead: set[tuple[tuple[bool, ...], Any]] = set()

    def go(state: Any) -> bool:
        if all(placed[i] for i in completed):
            return True
        if memo:
            here = (tuple(placed), state)
            if here in dead:
                return False
        for i in range(n):
            if placed[i] or not all(placed[j] for j in must_precede[i]):
                continue
            legal, nxt = step(model, state, ops[i])
            if not legal:
                continue
            placed[i] = True
            order.append(i)
            if go(nxt):
                return True
            order.pop()
            placed[i] = False
        if memo:
            dead.add(here)
        return False

    if go(initial_state(model)):
        return [ops[i] for i in order]
    return None


def linearizable_naive(model: str, ops: Sequence[Op]) -> bool:
    """The definition, literally: every subset of indeterminate ops x every permutation."""
    done = [o for o in ops if o.ret is not None]
    maybe = [o for o in ops if o.ret is None]
    for k in range(len(maybe) + 1):
        for extra in itertools.combinations(maybe, k):
            for order in itertools.permutations(done + list(extra)):
                if respects_real_time(order) and replay(model, order):
                    return True
    return False


def check_witness(model: str, ops: Sequence[Op], order: Sequence[Op]) -> str | None:
    """Why `order` is not a linearization of `ops` (None if it is one).

    Ops are compared by identity. Completed reads whose output nobody saw may be left
    out (they constrain nothing), as may indeterminate ops.
    """
    ids = [id(o) for o in order]
    if len(set(ids)) != len(ids):
        return "an op appears twice"
    known = {id(o) for o in ops}
    if any(i not in known for i in ids):
        return "an op not in the history appears"
    present = set(ids)
    for o in ops:
        optional = o.ret is None or (o.f in ("read", "get") and o.output is UNKNOWN)
        if not optional and id(o) not in present:
            return f"completed op {o!r} is missing"
    if not respects_real_time(order):
        return "real-time order violated"
    if not replay(model, order):
        return "an op is illegal where it is placed"
    return None
