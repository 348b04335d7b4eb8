"""The client library against fake nodes (real ROUTER sockets on 127.0.0.1, in threads).

The fakes answer per docs/protocol.md with scripted replies; the client's outcome
classification and retry discipline are what is under test. To check that something
was *not* sent, we first `sync` with every fake through the same connection: ZeroMQ keeps
one connection's messages in order, so once the sync is answered, every earlier request
from this client has been seen.
"""
from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import zmq

from orchestrator.real.client import Client, ClientTimeout, Result

Reply = dict[str, Any] | list[dict[str, Any]] | None
Handler = Callable[[dict[str, Any]], Reply]


class FakeNode:
    """A ROUTER in a thread; `handler(req)` returns a reply, several, or None (silence)."""

    def __init__(self, name: str, handler: Handler) -> None:
        self.name = name
        self.handler = handler
        self.requests: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._sock = zmq.Context.instance().socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._thread = threading.Thread(target=self._serve, name=f"fake-{name}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        sock = self._sock
        try:
            while not self._stop.is_set():
                if not sock.poll(20):
                    continue
                peer, raw = sock.recv_multipart()
                req = msgpack.unpackb(raw, raw=False)
                if req.get("op") == "sync":
                    replies: Reply = {"ok": True}
                else:
                    self.requests.append(req)
                    replies = self.handler(req)
                if replies is None:
                    continue
                for reply in replies if isinstance(replies, list) else [replies]:
                    sock.send_multipart([peer, msgpack.packb({"id": req["id"], **reply})])
        finally:
            sock.close(0)

    def ops(self, op: str | None = None) -> list[str]:
        return [r["op"] for r in self.requests if op is None or r["op"] == op]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


def ok(value: Any = None) -> dict[str, Any]:
    return {"ok": True, "value": value}


def not_leader(leader: str | None = None) -> dict[str, Any]:
    reply = {"ok": False, "code": "not-leader", "text": "not the leader", "definite": True}
    if leader is not None:
        reply["leader"] = leader
    return reply


def silent(req: dict[str, Any]) -> Reply:
    return None


class FakeCluster:
    def __init__(self) -> None:
        self.nodes: dict[str, FakeNode] = {}
        self.clients: list[Client] = []

    def add(self, name: str, handler: Handler) -> FakeNode:
        self.nodes[name] = FakeNode(name, handler)
        return self.nodes[name]

    def client(self, **kwargs: Any) -> Client:
        kwargs.setdefault("timeout", 0.3)
        c = Client({n: f.endpoint for n, f in self.nodes.items()}, **kwargs)
        self.clients.append(c)
        return c

    def settle(self, client: Client) -> None:
        """Wait until every fake has seen everything `client` sent before now."""
        for name in self.nodes:
            assert client.admin(name, "sync", timeout=2.0)["ok"]

    def close(self) -> None:
        for c in self.clients:
            c.close()
        for f in self.nodes.values():
            f.stop()


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    c = FakeCluster()
    yield c
    c.close()


def leader_store(name: str, leader: str, store: dict[str, Any]) -> Handler:
    """A node that serves reads/writes/cas if it is `leader`, else redirects there."""

    def handle(req: dict[str, Any]) -> Reply:
        if name != leader:
            return not_leader(leader)
        if req["op"] == "write":
            store[req["key"]] = req["value"]
            return ok()
        if req["op"] == "read":
            return ok(store.get(req["key"]))
        if req["op"] == "cas":
            if store.get(req["key"]) != req["from"]:
                return {"ok": False, "code": "cas-mismatch", "text": "mismatch",
                        "definite": True}
            store[req["key"]] = req["to"]
            return ok()
        return {"ok": False, "code": "bad-request", "text": req["op"], "definite": True}

    return handle


def test_ok_path(cluster: FakeCluster) -> None:
    store: dict[str, Any] = {}
    for n in ("n1", "n2", "n3"):
        cluster.add(n, leader_store(n, "n1", store))
    c = cluster.client()
    w = c.invoke("write", "k", 7)
    assert (w.type, w.node, w.error, w.attempts) == ("ok", "n1", None, 1)
    assert w.latency_ns > 0
    r = c.invoke("read", "k")
    assert (r.type, r.value, r.node) == ("ok", 7, "n1")
    cas = c.invoke("cas", "k", from_=7, to=8)
    assert cas.type == "ok"
    assert cluster.nodes["n1"].requests[-1] == {"id": cluster.nodes["n1"].requests[-1]["id"],
                                                "op": "cas", "key": "k", "from": 7, "to": 8}
    assert c.invoke("read", "k").value == 8


def test_not_leader_with_hint_is_followed_and_remembered(cluster: FakeCluster) -> None:
    store: dict[str, Any] = {}
    for n in ("n1", "n2", "n3"):
        cluster.add(n, leader_store(n, "n3", store))
    c = cluster.client(preferred="n1")
    w = c.invoke("write", "k", 1)
    assert (w.type, w.node, w.attempts) == ("ok", "n3", 2)
    assert c.leader == "n3"
    assert c.invoke("write", "k", 2).attempts == 1  # straight to the known leader
    cluster.settle(c)
    assert cluster.nodes["n1"].ops() == ["write"]
    assert cluster.nodes["n2"].ops() == []
    assert cluster.nodes["n3"].ops() == ["write", "write"]
    assert store == {"k": 2}


def test_hops_are_bounded(cluster: FakeCluster) -> None:
    # Two nodes that each name the other: a stale-hint loop must end, as a definite fail.
    cluster.add("n1", lambda req: not_leader("n2"))
    cluster.add("n2", lambda req: not_leader("n1"))
    r = cluster.client(max_hops=3).invoke("write", "k", 1)
    assert (r.type, r.error, r.attempts) == ("fail", "not-leader", 4)


@pytest.mark.parametrize("code", ["cas-mismatch", "cutover-in-progress", "halted"])
def test_definite_failure_is_fail_and_not_retried(cluster: FakeCluster, code: str) -> None:
    cluster.add("n1", lambda req: {"ok": False, "code": code, "text": "no", "definite": True})
    cluster.add("n2", lambda req: ok())
    c = cluster.client()
    r = c.invoke("cas", "k", from_=1, to=2)
    assert (r.type, r.error, r.node, r.text) == ("fail", code, "n1", "no")
    cluster.settle(c)
    assert cluster.nodes["n1"].ops() == ["cas"]
    assert cluster.nodes["n2"].ops() == []


def test_write_timeout_is_info_and_never_resent(cluster: FakeCluster) -> None:
    cluster.add("n1", silent)
    cluster.add("n2", lambda req: ok())
    c = cluster.client(timeout=0.2, deadline=2.0)
    r = c.invoke("write", "k", 1)
    assert (r.type, r.error, r.node, r.attempts) == ("info", "timeout", "n1", 1)
    assert 0.15e9 < r.latency_ns < 1.0e9
    cluster.settle(c)
    assert cluster.nodes["n1"].ops() == ["write"]
    assert cluster.nodes["n2"].ops() == []
    # The leader may be dead: the next op starts elsewhere instead of timing out again.
    assert c.invoke("write", "k", 2).node == "n2"


def test_indefinite_failure_is_info_and_never_resent(cluster: FakeCluster) -> None:
    cluster.add("n1", lambda req: {"ok": False, "code": "leadership-lost", "text": "?",
                                   "definite": False, "leader": "n2"})
    cluster.add("n2", lambda req: ok())
    c = cluster.client()
    r = c.invoke("cas", "k", from_=1, to=2)
    assert (r.type, r.error, r.node) == ("info", "leadership-lost", "n1")
    cluster.settle(c)
    assert cluster.nodes["n2"].ops() == []


def test_read_retried_after_not_leader_without_hint(cluster: FakeCluster) -> None:
    cluster.add("n1", lambda req: not_leader())
    cluster.add("n2", lambda req: ok("v"))
    r = cluster.client().invoke("read", "k")
    assert (r.type, r.value, r.node, r.attempts) == ("ok", "v", "n2", 2)
    assert cluster.nodes["n1"].ops() == ["read"]


def test_write_retried_after_not_leader_without_hint(cluster: FakeCluster) -> None:
    # definite: true means it did not happen, so a write may go elsewhere too.
    cluster.add("n1", lambda req: not_leader())
    cluster.add("n2", lambda req: ok())
    r = cluster.client().invoke("write", "k", 1)
    assert (r.type, r.node) == ("ok", "n2")


def test_read_retried_after_timeout(cluster: FakeCluster) -> None:
    cluster.add("n1", silent)
    cluster.add("n2", lambda req: ok("v"))
    r = cluster.client(timeout=0.2, deadline=2.0).invoke("read", "k")
    assert (r.type, r.value, r.node, r.attempts) == ("ok", "v", "n2", 2)


def test_read_that_never_gets_an_answer_is_info(cluster: FakeCluster) -> None:
    cluster.add("n1", silent)
    cluster.add("n2", lambda req: not_leader())
    r = cluster.client(timeout=0.1, deadline=0.5).invoke("read", "k")
    assert r.type == "info"


def test_stale_reply_is_discarded(cluster: FakeCluster) -> None:
    held: list[int] = []

    def handle(req: dict[str, Any]) -> Reply:
        if not held:  # the first request: answer it only after the client gave up
            held.append(req["id"])
            return None
        return [{"id": held[0], "ok": True, "value": "stale"}, ok("fresh")]

    cluster.add("n1", handle)
    c = cluster.client(timeout=0.2)
    assert c.invoke("write", "k", "stale").type == "info"
    r = c.invoke("read", "k", node="n1")
    assert (r.type, r.value, r.node) == ("ok", "fresh", "n1")


def test_unreachable_node_is_skipped_even_for_writes(cluster: FakeCluster) -> None:
    # Nothing listens on `dead`: with ZMQ_IMMEDIATE the request never leaves the client,
    # so it certainly did not happen and another node may take it.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    cluster.add("n2", lambda req: ok())
    c = Client({"n1": dead, "n2": cluster.nodes["n2"].endpoint}, timeout=0.5,
               connect_timeout=0.1)
    cluster.clients.append(c)
    r = c.invoke("write", "k", 1)
    assert (r.type, r.node, r.attempts) == ("ok", "n2", 2)
    with pytest.raises(ClientTimeout, match="n1"):
        c.admin("n1", "status", timeout=0.1)


def test_admin_returns_raw_reply_or_raises_timeout(cluster: FakeCluster) -> None:
    cluster.add("n1", lambda req: {"ok": True, "value": {"role": "leader", "term": 3}})
    cluster.add("n2", lambda req: {"ok": False, "code": "halted", "text": "h",
                                   "definite": True})
    cluster.add("n3", silent)
    c = cluster.client()
    reply = c.admin("n1", "status")
    assert reply["ok"] and reply["value"] == {"role": "leader", "term": 3}
    assert cluster.nodes["n1"].requests[-1]["op"] == "status"
    assert c.admin("n2", "rotate-dek", key_id=5)["code"] == "halted"
    assert cluster.nodes["n2"].requests[-1]["key_id"] == 5
    with pytest.raises(TimeoutError, match=r"'snapshot-now' to n3 .*no reply within 0.1s"):
        c.admin("n3", "snapshot-now", timeout=0.1)
    with pytest.raises(ValueError, match="unknown node"):
        c.admin("n9", "status")


def test_result_is_a_plain_value() -> None:
    r = Result("ok", 1, "n1")
    assert (r.type, r.value, r.node, r.error) == ("ok", 1, "n1", None)
