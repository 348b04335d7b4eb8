"""Early refutation: partitions that cannot be linearizable, seen in one pass.

Searching every partition round by round until one fails costs the work of all of them
up to that round; on Porcupine's c50-bad most keys are invalid, one is hard, and the
search is most of the check. Some violations need no search at all:

* a read returns a value no operation invoked before it returned could have written
  (nothing writes it, or only ops that had not started yet);
* a read returns v, v has exactly one writer W1, and a write W2 of another value ran
  entirely after W1 and entirely before the read (a stale read: nothing can bring v back);
* with appends only (Porcupine's kv), a get misses the value of an append that returned
  before the get was invoked (it must be a segment of what the get saw).

Each rule only ever says "invalid" when every linearization fails, so it changes no
verdict. The scheduler (`checker.lin_parallel`) ranks a refuted partition first, so the
others stop while refuted ones race for the counterexample (the search's). Models other
than the three built in are never refuted here.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import Any

from .history import UNKNOWN, Op

# The hash of this file's source, baked in by the build when it compiles the module
# (setup.py); "" in the source itself (see `checker._native`).
SOURCE_HASH = ""

_INF = 1 << 62
_RECENT = 64  # appends checked per get: the latest ones, where a stale get shows


def refuted(model_name: str, ops: Sequence[Op]) -> int | None:
    """When the partition is certainly not linearizable, how many of its first ops (in
    call order) already are not: those called before the refuting read returned (the
    ones after it can only go after it, so they change nothing). Else None."""
    if model_name not in ("kv", "register", "cas-register"):
        return None
    # Ops seen as Any: compiled code checks a typed attribute it reads, and histories
    # may carry times that are not the ints `Op` declares (floats).
    anyops: Sequence[Any] = ops
    fs = {o.f for o in anyops}
    if fs <= {"get", "append", "put"}:
        bad = _appends(anyops)
    elif fs <= {"read", "write", "cas"}:
        bad = _registers(anyops)
    else:
        return None
    if bad is None or bad.ret is None:  # (a refuting read has returned)
        return None
    return bisect_left([o.call for o in anyops], bad.ret)


def _appends(ops: Sequence[Any]) -> Any:
    done = sorted((o.ret, o.value, o.call) for o in ops
                  if o.f == "append" and o.ret is not None)
    if not done or any(v.__class__ is not str for _, v, _ in done):
        return None
    rets = [r for r, _, _ in done]
    # A put erases what came before it: an append A may be missing from a get R when a
    # put can go between them (called before R returned, not returned before A began).
    puts = sorted((o.call, _INF if o.ret is None else o.ret) for o in ops if o.f == "put")
    put_calls = [c for c, _ in puts]
    latest_ret = []  # the latest return among the puts called so far
    m = -1
    for _, r in puts:
        m = max(m, r)
        latest_ret.append(m)
    for o in ops:
        out = o.output
        if o.f != "get" or o.ret is None or out.__class__ is not str:
            continue
        j = bisect_right(put_calls, o.ret - 1)
        erasable_after = latest_ret[j - 1] if j else -1
        end = bisect_right(rets, o.call - 1)  # the appends that returned before it
        for k in range(max(0, end - _RECENT), end):  # (the latest: a pass, not a square)
            _, value, call = done[k]
            if value not in out and erasable_after < call:
                return o
    return None


def _registers(ops: Sequence[Any]) -> Any:
    writers: dict[Any, list[Any]] = {}
    for o in ops:
        if o.f == "write":
            writers.setdefault(o.value, []).append(o)
        elif o.f == "cas" and o.output is not False:
            writers.setdefault(o.value[1], []).append(o)
    # Ok writes by call, with the earliest return among those called later.
    ws = sorted((o.call, o.ret) for o in ops if o.f == "write" and o.ret is not None)
    calls = [c for c, _ in ws]
    min_ret_after = [0] * (len(ws) + 1)
    min_ret_after[len(ws)] = 1 << 62
    for k in range(len(ws) - 1, -1, -1):
        min_ret_after[k] = min(ws[k][1], min_ret_after[k + 1])
    for o in ops:
        out = o.output
        if o.f != "read" or o.ret is None or out is UNKNOWN or out is None:
            continue
        try:
            who = writers.get(out)
        except TypeError:  # an unhashable output: judged by the search
            continue
        if not who or all(w.call > o.ret for w in who):
            return o  # nothing that could have written it had begun
        if len(who) == 1 and who[0].ret is not None:
            k = bisect_right(calls, who[0].ret)
            if min_ret_after[k] < o.call:
                return o  # overwritten, start to end, before the read began
    return None
