"""The client's rules, written once: how one operation is sent, followed and classified.

What matters here is not the transport but honesty: the history the checker judges is
only as true as the outcome each operation is given. So the rules are strict:

* `ok` only for an `ok: true` reply to this request.
* `fail` only when the op certainly did not take effect: a `definite: true` reply, or a
  request that was never handed to any connection (the node was unreachable).
* `info` whenever it may have taken effect: a timeout, or `definite: false`.

Retrying elsewhere is safe after a definite failure (nothing happened), so `not-leader`
is followed (to the hinted leader, else the next node) within a bounded number of hops
and a total deadline. A read may also be retried after a timeout (it changes nothing),
but a write or cas that may have happened must never be sent again: a second copy could
apply twice, and the history would record one operation where the system saw two.

`invoke` is a generator: it yields an `Ask` for each attempt and its world answers it
(a ZeroMQ socket in `orchestrator/real/client.py`, a simulated request in
`orchestrator/sim/run.py`), so the run's clients follow the same rules in both worlds.
No transport is imported here.
"""
from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal

ResultType = Literal["ok", "fail", "info"]

# Ops that change nothing, so they may be sent again after an indeterminate outcome.
IDEMPOTENT_OPS: frozenset[str] = frozenset({"read"})


class _Unreachable:
    """The answer to an `Ask` that never left: no live connection to the node."""

    def __repr__(self) -> str:
        return "UNREACHABLE"


UNREACHABLE: Any = _Unreachable()


@dataclass(frozen=True)
class Ask:
    """Send `req` to exactly `node` and wait up to `timeout` seconds: the world answers
    with the reply dict, None (no answer in time), or `UNREACHABLE` (it was never sent,
    waiting at most `connect` seconds for a connection)."""

    node: str
    req: dict[str, Any]
    timeout: float
    connect: float = 0.25


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one `invoke`, as the history records it."""

    type: ResultType
    value: Any = None
    node: str | None = None  # the node that answered, or the last one asked
    error: str | None = None  # the reply's code (`timeout`/`unreachable` for our own)
    latency_ns: int = 0
    text: str | None = None  # human-readable detail for `error`
    attempts: int = 0


@dataclass
class Route:
    """Where a client sends next: the leader it last heard of, else a cursor that moves
    past nodes that let it down (a dead leader is not asked again and again)."""

    order: list[str]
    leader: str | None = None
    cursor: str = field(default="")

    def __post_init__(self) -> None:
        if not self.order:
            raise ValueError("a client needs at least one node")
        if not self.cursor:
            self.cursor = self.leader or self.order[0]

    def next(self, node: str) -> str:
        return self.order[(self.order.index(node) + 1) % len(self.order)]

    def give_up_on(self, node: str) -> str:
        """Forget `node` as leader; the node to try instead."""
        if self.leader == node:
            self.leader = None
        self.cursor = self.next(node)
        return self.cursor

    def target(self) -> str:
        return self.leader or self.cursor


def invoke(route: Route, op: str, key: str | None = None, value: Any = None, *,
           node: str | None = None, timeout: float, deadline: float | None = None,
           max_hops: int = 5, connect: float = 0.25, clock: Callable[[], float],
           fields: dict[str, Any] | None = None) -> Generator[Ask, Any, Result]:
    """Run one operation and classify its outcome as ok, fail or info (module doc).

    `timeout` bounds the wait for one node's answer, `deadline` (default twice that) the
    whole operation, redirects and read retries included; `node` overrides where to
    start (default: the route's leader, else its cursor); `fields` are extra protocol
    fields (`from_` is taken for cas's `from`, a Python keyword)."""
    extra = dict(fields or {})
    if "from_" in extra:
        extra["from"] = extra.pop("from_")
    start = clock()
    end = start + (deadline if deadline is not None else 2 * timeout)
    retry_indeterminate = op in IDEMPOTENT_OPS
    target = node or route.target()
    if target not in route.order:
        raise ValueError(f"unknown node {target!r}")
    indeterminate = False
    asked = target
    last: tuple[str, str | None] = ("timeout", None)
    attempts = 0

    def done(type_: ResultType, at: str, value_: Any = None, error: str | None = None,
             text: str | None = None) -> Result:
        return Result(type_, value_, at, error, max(1, int((clock() - start) * 1e9)), text,
                      attempts)

    for _hop in range(max_hops + 1):
        now = clock()
        if now >= end:
            break
        attempts += 1
        asked = target
        req: dict[str, Any] = {"op": op, **extra}
        if key is not None:
            req["key"] = key
        if value is not None or op == "write":
            req["value"] = value
        reply = yield Ask(target, req, min(timeout, end - now), min(connect, end - now))
        if reply is UNREACHABLE:
            # Never left this process: certainly did not happen, any op may go elsewhere.
            last = ("unreachable", f"no connection to {target}")
            target = route.give_up_on(target)
            continue
        if reply is None:
            text = f"no answer from {target} within {timeout:g}s"
            nxt = route.give_up_on(target)  # maybe dead or cut off: start elsewhere
            if not retry_indeterminate:
                return done("info", target, error="timeout", text=text)
            indeterminate, last, target = True, ("timeout", text), nxt
            continue
        if reply.get("ok"):
            route.leader = target
            return done("ok", target, reply.get("value"))
        code = str(reply.get("code", "unknown"))
        text = reply.get("text")
        if reply.get("definite") is not True:
            # Missing `definite` counts as false: claiming a failure we cannot prove
            # would make the checker reason about a history that did not happen.
            if not retry_indeterminate:
                return done("info", target, error=code, text=text)
            indeterminate, last = True, (code, text)
            target = route.give_up_on(target)
            continue
        if code != "not-leader":
            return done("fail", target, error=code, text=text)
        last = (code, text)
        hint = reply.get("leader")
        if isinstance(hint, str) and hint in route.order and hint != target:
            route.leader = target = hint
        else:
            target = route.give_up_on(target)
    # Out of hops or time without an answer that settles it.
    if indeterminate:
        return done("info", asked, error=last[0], text=last[1])
    return done("fail", asked, error=last[0], text=last[1])
