"""The client library the workers use to talk to nodes (`docs/protocol.md`, client <-> node).

What matters here is not the transport but honesty: the history the checker judges is
only as true as the outcome each operation is given. So the retry rules are strict:

* `ok` only for an `ok: true` reply carrying this request's id.
* `fail` only when the op certainly did not take effect: a `definite: true` reply, or a
  request that was never handed to any connection (the node was unreachable).
* `info` whenever it may have taken effect: a timeout, or `definite: false`.

Retrying elsewhere is safe after a definite failure (nothing happened), so `not-leader`
is followed (to the hinted leader, else the next node) within a bounded number of hops
and a total deadline. A read may also be retried after a timeout (it changes nothing),
but a write or cas that may have happened must never be sent again: a second copy could
apply twice, and the history would record one operation where the system saw two.

Every attempt carries a fresh request id, and replies are matched by id: a late answer to
an earlier, timed-out request is dropped instead of being taken for the current answer.

Sockets are DEALERs with ZMQ_IMMEDIATE, so a request is only queued on a live connection:
a request to a dead node is refused at once (and is a definite failure), instead of being
parked in a queue and delivered to the node after it restarts, long after we gave up.

Thread-safety: ZeroMQ sockets must not be shared between threads, so use one Client per
thread (or per worker process). The ZeroMQ context may be shared.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgpack
import zmq

ResultType = Literal["ok", "fail", "info"]

# Ops that change nothing, so they may be sent again after an indeterminate outcome.
IDEMPOTENT_OPS: frozenset[str] = frozenset({"read"})

RECONNECT_IVL_MS = 50
RECONNECT_IVL_MAX_MS = 500


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


class ClientTimeout(TimeoutError):
    """An `admin` request got no answer in time (or the node could not be reached)."""


class Client:
    """Invokes operations on a cluster, following leaders and retrying only when safe.

    `timeout` bounds the wait for one node's answer; `deadline` (default twice that)
    bounds a whole `invoke`, redirects and read retries included. One Client per thread.
    """

    def __init__(self, nodes: Mapping[str, str], timeout: float = 1.0,
                 context: zmq.Context | None = None, *, preferred: str | None = None,
                 max_hops: int = 5, deadline: float | None = None,
                 connect_timeout: float | None = None) -> None:
        if not nodes:
            raise ValueError("a Client needs at least one node")
        if preferred is not None and preferred not in nodes:
            raise ValueError(f"preferred node {preferred!r} is not one of {sorted(nodes)}")
        self.nodes = dict(nodes)
        self.order = sorted(self.nodes)
        self.timeout = timeout
        self.deadline = deadline if deadline is not None else 2 * timeout
        # A live node on loopback connects within a reconnect interval or two.
        self.connect_timeout = (connect_timeout if connect_timeout is not None
                                else min(timeout, 0.25))
        self.max_hops = max_hops
        self.leader: str | None = preferred
        # Where to start while no leader is known; moves past nodes that let us down.
        self._cursor = preferred or self.order[0]
        self._ctx = context or zmq.Context.instance()
        self._socks: dict[str, zmq.Socket] = {}
        self._ids = itertools.count(1)

    # -- sockets ---------------------------------------------------------------------

    def _socket(self, node: str) -> zmq.Socket:
        sock = self._socks.get(node)
        if sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
            sock.connect(self.nodes[node])
            self._socks[node] = sock
        return sock

    def _send(self, node: str, req: dict[str, Any], wait: float) -> bool:
        """Hand `req` to a live connection to `node`; False means it was surely not sent."""
        sock = self._socket(node)
        if wait > 0 and not sock.poll(int(wait * 1000), zmq.POLLOUT):
            return False
        try:
            sock.send(msgpack.packb(req, use_bin_type=True), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def _recv(self, node: str, req_id: int, until: float) -> dict[str, Any] | None:
        """The reply to `req_id`, or None at `until`; other ids are stale and dropped."""
        sock = self._socks[node]
        while True:
            remaining = until - time.monotonic()
            if remaining <= 0 or not sock.poll(max(1, int(remaining * 1000)), zmq.POLLIN):
                return None
            try:
                reply = msgpack.unpackb(sock.recv(zmq.NOBLOCK), raw=False)
            except zmq.Again:
                continue
            except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
                continue  # garbage is nobody's answer
            if isinstance(reply, dict) and reply.get("id") == req_id:
                return reply

    def _next(self, node: str) -> str:
        return self.order[(self.order.index(node) + 1) % len(self.order)]

    def _give_up_on(self, node: str) -> str:
        """Forget `node` as leader and return the node to try instead."""
        if self.leader == node:
            self.leader = None
        self._cursor = self._next(node)
        return self._cursor

    # -- operations ------------------------------------------------------------------

    def invoke(self, op: str, key: str | None = None, value: Any = None, *,
               node: str | None = None, **fields: Any) -> Result:
        """Run one operation and classify its outcome as ok, fail or info.

        Extra protocol fields go in `fields`; `from_` is accepted for cas's `from`
        (a Python keyword). `node` overrides where to start (default: last known leader).
        """
        if "from_" in fields:
            fields["from"] = fields.pop("from_")
        start_ns = time.monotonic_ns()
        end = time.monotonic() + self.deadline
        retry_indeterminate = op in IDEMPOTENT_OPS
        target = node or self.leader or self._cursor
        if target not in self.nodes:
            raise ValueError(f"unknown node {target!r}")
        indeterminate = False
        asked = target
        last: tuple[str, str | None] = ("timeout", None)
        attempts = 0

        def done(type_: ResultType, at: str, value_: Any = None, error: str | None = None,
                 text: str | None = None) -> Result:
            return Result(type_, value_, at, error, time.monotonic_ns() - start_ns, text,
                          attempts)

        for _hop in range(self.max_hops + 1):
            now = time.monotonic()
            if now >= end:
                break
            attempts += 1
            asked = target
            req_id = next(self._ids)
            req: dict[str, Any] = {"id": req_id, "op": op, **fields}
            if key is not None:
                req["key"] = key
            if value is not None or op == "write":
                req["value"] = value
            if not self._send(target, req, min(self.connect_timeout, end - now)):
                # Never left this process: certainly did not happen, any op may go elsewhere.
                last = ("unreachable", f"no connection to {target} ({self.nodes[target]})")
                target = self._give_up_on(target)
                continue
            reply = self._recv(target, req_id, min(time.monotonic() + self.timeout, end))
            if reply is None:
                text = f"no answer from {target} within {self.timeout:g}s"
                nxt = self._give_up_on(target)  # maybe dead or cut off: start elsewhere
                if not retry_indeterminate:
                    return done("info", target, error="timeout", text=text)
                indeterminate, last, target = True, ("timeout", text), nxt
                continue
            if reply.get("ok"):
                self.leader = target
                return done("ok", target, reply.get("value"))
            code = str(reply.get("code", "unknown"))
            text = reply.get("text")
            if reply.get("definite") is not True:
                # Missing `definite` counts as false: claiming a failure we cannot prove
                # would make the checker reason about a history that did not happen.
                if not retry_indeterminate:
                    return done("info", target, error=code, text=text)
                indeterminate, last = True, (code, text)
                target = self._give_up_on(target)
                continue
            if code != "not-leader":
                return done("fail", target, error=code, text=text)
            last = (code, text)
            hint = reply.get("leader")
            if isinstance(hint, str) and hint in self.nodes and hint != target:
                self.leader = target = hint
            else:
                target = self._give_up_on(target)
        # Out of hops or time without an answer that settles it.
        if indeterminate:
            return done("info", asked, error=last[0], text=last[1])
        return done("fail", asked, error=last[0], text=last[1])

    def admin(self, node: str, op: str, timeout: float | None = None,
              **fields: Any) -> dict[str, Any]:
        """Send one request to exactly `node` and return its raw reply (no retries, no
        redirects: admin ops such as `status` or `rotate-dek` are about that node)."""
        if node not in self.nodes:
            raise ValueError(f"unknown node {node!r}; known: {sorted(self.nodes)}")
        wait = self.timeout if timeout is None else timeout
        end = time.monotonic() + wait
        req_id = next(self._ids)
        if not self._send(node, {"id": req_id, "op": op, **fields}, wait):
            raise ClientTimeout(f"{op!r} to {node}: no connection to {self.nodes[node]} "
                                f"within {wait:g}s (node down?)")
        reply = self._recv(node, req_id, end)
        if reply is None:
            raise ClientTimeout(f"{op!r} to {node} ({self.nodes[node]}): no reply within "
                                f"{wait:g}s")
        return reply

    def close(self) -> None:
        """Close the sockets (not a context we were given, nor the shared instance)."""
        for sock in self._socks.values():
            sock.close(0)
        self._socks.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
