"""The client library: ZeroMQ requests to nodes, under the client's rules.

The rules (ok only on ok, fail only when it surely did not happen, info whenever it may
have, which ops may be sent again) live in `orchestrator/run/invoke.py`, written once for
both worlds; this module is their transport on real sockets. `Client.invoke` drives
`invoke.invoke` with `Client.ask` answering each attempt.

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
from typing import Any

import msgpack
import zmq

from orchestrator.run.invoke import (  # noqa: F401 - the rules' names, for the client's users
    IDEMPOTENT_OPS,
    UNREACHABLE,
    Ask,
    Result,
    ResultType,
    Route,
)
from orchestrator.run.invoke import invoke as _invoke

RECONNECT_IVL_MS = 50
RECONNECT_IVL_MAX_MS = 500


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
        # The leader last heard of, and where to start while none is known.
        self.route = Route(self.order, leader=preferred)
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

    # -- operations ------------------------------------------------------------------

    @property
    def leader(self) -> str | None:
        return self.route.leader

    @leader.setter
    def leader(self, node: str | None) -> None:
        self.route.leader = node

    def invoke(self, op: str, key: str | None = None, value: Any = None, *,
               node: str | None = None, **fields: Any) -> Result:
        """Run one operation and classify its outcome as ok, fail or info
        (`orchestrator/run/invoke.py`). Extra protocol fields go in `fields`; `from_` is
        accepted for cas's `from` (a Python keyword). `node` overrides where to start
        (default: last known leader)."""
        gen = _invoke(self.route, op, key, value, node=node, timeout=self.timeout,
                      deadline=self.deadline, max_hops=self.max_hops,
                      connect=self.connect_timeout, clock=time.monotonic, fields=fields)
        answer: Any = None
        while True:
            try:
                ask = gen.send(answer)
            except StopIteration as e:
                return e.value
            answer = self.ask(ask)

    def ask(self, ask: Ask) -> dict[str, Any] | None:
        """One attempt: the reply, None after `ask.timeout`, or `UNREACHABLE` when no
        live connection took the request within `ask.connect` seconds."""
        req_id = next(self._ids)
        if not self._send(ask.node, {"id": req_id, **ask.req}, ask.connect):
            return UNREACHABLE
        return self._recv(ask.node, req_id, time.monotonic() + ask.timeout)

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
