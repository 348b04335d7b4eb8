"""The switchboard as a real process, with three fake nodes (DEALERs) on 127.0.0.1.

To know that the switchboard has dealt with everything a node sent, the tests send a
marker from the same node to a third one and wait for it: the switchboard reads one
node's frames in order, so once the marker is through, every earlier frame has been
routed, dropped or held, and the counters say which.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from orchestrator.real.switchboard import (
    SwitchboardControl,
    SwitchboardError,
    SwitchboardProcess,
    SwitchboardTimeout,
    spawn_switchboard,
)

pytestmark = pytest.mark.real

ROOT = Path(__file__).resolve().parents[2]
NODES = ("n1", "n2", "n3")


def wait_until(pred: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def recv(sock: zmq.Socket, timeout: float = 2.0) -> list[bytes] | None:
    if not sock.poll(int(timeout * 1000)):
        return None
    return sock.recv_multipart()


def recv_n(sock: zmq.Socket, n: int, timeout: float = 2.0) -> list[list[bytes]]:
    got = []
    for _ in range(n):
        frames = recv(sock, timeout)
        assert frames is not None, f"only {len(got)} of {n} messages arrived"
        got.append(frames)
    return got


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie is dead too
    except FileNotFoundError:
        return True


@pytest.fixture
def sb() -> Iterator[SwitchboardProcess]:
    proc = spawn_switchboard(seed=42)
    yield proc
    proc.stop()


@pytest.fixture
def ctl(sb: SwitchboardProcess) -> Iterator[SwitchboardControl]:
    with SwitchboardControl(sb.control, timeout=5.0) as c:
        yield c


class Net:
    """Three fake nodes connected to the switchboard and announced with hello."""

    def __init__(self, sb: SwitchboardProcess, ctl: SwitchboardControl) -> None:
        self.ctl = ctl
        self.socks: dict[str, zmq.Socket] = {}
        for name in NODES:
            s = zmq.Context.instance().socket(zmq.DEALER)
            s.setsockopt(zmq.IDENTITY, name.encode())
            s.setsockopt(zmq.LINGER, 0)
            s.connect(sb.bind)
            s.send_multipart([b"", b"hello"])
            self.socks[name] = s
        wait_until(lambda: ctl.stats()["nodes"] == list(NODES), what="hellos")

    def send(self, src: str, dst: str, body: bytes) -> None:
        self.socks[src].send_multipart([dst.encode(), body])

    def flush(self, src: str, via: str) -> None:
        """Return once the switchboard has handled everything `src` sent so far."""
        self.send(src, via, b"marker")
        assert recv(self.socks[via]) == [src.encode(), b"marker"]

    def link(self, name: str) -> dict[str, int]:
        return self.ctl.stats()["links"].get(
            name, {"sent": 0, "delivered": 0, "dropped": 0, "duplicated": 0})

    def close(self) -> None:
        for s in self.socks.values():
            s.close(0)


@pytest.fixture
def net(sb: SwitchboardProcess, ctl: SwitchboardControl) -> Iterator[Net]:
    n = Net(sb, ctl)
    yield n
    n.close()


def test_routes_both_ways_with_the_true_source(net: Net) -> None:
    net.send("n1", "n2", b"ping")
    assert recv(net.socks["n2"]) == [b"n1", b"ping"]
    net.send("n2", "n1", b"pong")
    assert recv(net.socks["n1"]) == [b"n2", b"pong"]
    net.send("n3", "n1", b"hi")
    assert recv(net.socks["n1"]) == [b"n3", b"hi"]
    links = net.ctl.stats()["links"]
    assert links["n1->n2"] == {"sent": 1, "delivered": 1, "dropped": 0, "duplicated": 0}
    assert links["n2->n1"]["delivered"] == 1
    assert links["n3->n1"]["delivered"] == 1


def test_partition_blocks_exactly_the_given_directed_links(net: Net) -> None:
    net.ctl.partition([("n1", "n2"), ("n3", "n1")])
    net.send("n1", "n2", b"cut")
    net.flush("n1", "n3")  # n1->n3 still open
    net.send("n2", "n1", b"open")  # the reverse direction is not blocked
    assert recv(net.socks["n1"]) == [b"n2", b"open"]
    net.send("n3", "n1", b"cut")
    net.flush("n3", "n2")
    assert recv(net.socks["n2"], 0.05) is None
    assert recv(net.socks["n1"], 0.05) is None
    assert net.link("n1->n2") == {"sent": 1, "delivered": 0, "dropped": 1, "duplicated": 0}
    assert net.link("n3->n1")["dropped"] == 1

    net.ctl.heal()
    net.send("n1", "n2", b"healed")
    assert recv(net.socks["n2"]) == [b"n1", b"healed"]
    net.ctl.partition([("n2", "n3")])  # replaces, does not add
    net.send("n3", "n1", b"again")
    assert recv(net.socks["n1"]) == [b"n3", b"again"]


def test_loss_one_drops_everything_on_that_link_only(net: Net) -> None:
    net.ctl.loss(1.0, links=[("n1", "n2")])
    for i in range(100):
        net.send("n1", "n2", b"%d" % i)
    net.flush("n1", "n3")
    assert recv(net.socks["n2"], 0.05) is None
    assert net.link("n1->n2") == {"sent": 100, "delivered": 0, "dropped": 100,
                                  "duplicated": 0}


def test_loss_half_drops_about_half(net: Net) -> None:
    net.ctl.loss(0.5, links=[("n1", "n2")])
    for i in range(1000):
        net.send("n1", "n2", b"%d" % i)
    net.flush("n1", "n3")
    link = net.link("n1->n2")
    assert link["sent"] == 1000
    assert 400 <= link["dropped"] <= 600
    assert link["delivered"] == 1000 - link["dropped"]
    recv_n(net.socks["n2"], link["delivered"])
    assert recv(net.socks["n2"], 0.05) is None


def test_loss_without_links_applies_to_every_link(net: Net) -> None:
    net.ctl.loss(1.0)
    net.send("n2", "n3", b"x")
    net.send("n3", "n1", b"x")
    wait_until(lambda: net.link("n2->n3")["dropped"] and net.link("n3->n1")["dropped"])
    net.ctl.loss(0.0)
    net.flush("n2", "n3")


def test_delay_holds_messages(net: Net) -> None:
    net.ctl.delay(150, 0, links=[("n1", "n2")])
    t0 = time.monotonic()
    net.send("n1", "n2", b"slow")
    net.send("n1", "n3", b"fast")
    assert recv(net.socks["n3"]) == [b"n1", b"fast"]
    fast = time.monotonic() - t0
    assert recv(net.socks["n2"]) == [b"n1", b"slow"]
    slow = time.monotonic() - t0
    assert slow >= 0.145
    assert slow < 1.0
    assert fast < slow


def test_jitter_reorders(net: Net) -> None:
    net.ctl.delay(30, 25, links=[("n1", "n2")])
    for i in range(100):
        net.send("n1", "n2", b"%d" % i)
    got = [int(frames[1]) for frames in recv_n(net.socks["n2"], 100)]
    assert sorted(got) == list(range(100))
    assert got != list(range(100))


def test_partition_applies_to_messages_already_held(net: Net) -> None:
    net.ctl.delay(200, 0, links=[("n1", "n2")])
    net.send("n1", "n2", b"in flight")
    net.flush("n1", "n3")
    assert net.ctl.stats()["held"] == 1
    net.ctl.partition([("n1", "n2")])
    wait_until(lambda: net.ctl.stats()["held"] == 0, what="release")
    assert net.link("n1->n2") == {"sent": 1, "delivered": 0, "dropped": 1, "duplicated": 0}
    assert recv(net.socks["n2"], 0.05) is None


def test_duplicate_one_doubles(net: Net) -> None:
    net.ctl.duplicate(1.0, links=[("n1", "n2")])
    for i in range(10):
        net.send("n1", "n2", b"%d" % i)
    got = sorted(int(f[1]) for f in recv_n(net.socks["n2"], 20))
    assert got == sorted(list(range(10)) * 2)
    net.flush("n1", "n3")
    assert recv(net.socks["n2"], 0.05) is None
    assert net.link("n1->n2") == {"sent": 10, "delivered": 20, "dropped": 0,
                                  "duplicated": 10}


def test_unknown_and_departed_destinations_are_dropped(net: Net) -> None:
    net.send("n1", "nx", b"to nobody")
    net.socks["n1"].send(b"one frame only")
    net.flush("n1", "n2")
    assert net.link("n1->nx") == {"sent": 1, "delivered": 0, "dropped": 1, "duplicated": 0}
    assert net.ctl.stats()["malformed"] == 1
    net.socks.pop("n3").close(0)  # a node that said hello, then died

    def dropped_to_n3() -> int:
        net.send("n1", "n3", b"x")
        return net.link("n1->n3")["dropped"]

    wait_until(dropped_to_n3, what="a drop to the departed n3")
    net.send("n1", "n2", b"still routing")
    assert recv(net.socks["n2"]) == [b"n1", b"still routing"]
    assert net.ctl.ping()["ok"]


def test_bad_control_requests_are_answered(ctl: SwitchboardControl,
                                           sb: SwitchboardProcess) -> None:
    with pytest.raises(SwitchboardError, match="unknown op"):
        ctl.request({"op": "explode"})
    with pytest.raises(SwitchboardError, match="'p'"):
        ctl.loss(1.5)
    with pytest.raises(SwitchboardError, match="pair"):
        ctl.request({"op": "partition", "blocked": [["n1"]]})
    with pytest.raises(SwitchboardError, match="'jitter'"):
        ctl.delay(10, -1)
    raw = zmq.Context.instance().socket(zmq.REQ)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(sb.control)
    raw.send(b"\xc1 not msgpack")
    assert raw.poll(2000)
    assert b"bad msgpack" in raw.recv()
    raw.close(0)
    assert ctl.ping()["pid"] == sb.pid


def test_control_client_times_out_clearly() -> None:
    ctx = zmq.Context.instance()
    spare = ctx.socket(zmq.REP)
    spare.bind("tcp://127.0.0.1:*")
    endpoint = spare.getsockopt_string(zmq.LAST_ENDPOINT)
    spare.close(0)  # nothing listens there any more
    c = SwitchboardControl(endpoint, timeout=0.1)
    for _ in range(2):  # the second call must not trip over the stuck REQ state
        with pytest.raises(TimeoutError, match="did not answer 'ping'"):
            c.ping()
    c.close()
    assert issubclass(SwitchboardTimeout, SwitchboardError)


def test_forwarding_keeps_every_message_in_order(net: Net) -> None:
    # Throughput is a benchmark's business (`cutover bench cluster`), not a test's: here
    # only that a burst is forwarded completely and in order on a fault-free link.
    n1, n2 = net.socks["n1"], net.socks["n2"]
    for i in range(5000):
        n2.send_multipart([b"n1", str(i).encode()])
    got = recv_n(n1, 5000)
    assert [int(f[-1]) for f in got] == list(range(5000))


def test_sigterm_exits_cleanly(sb: SwitchboardProcess) -> None:
    os.kill(sb.process.pid, signal.SIGTERM)
    sb.process.join(3)
    assert sb.process.exitcode == 0


def test_module_entry_point_prints_endpoints_and_stops_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.real.switchboard", "--bind", "tcp://127.0.0.1:*",
         "--control", "tcp://127.0.0.1:*", "--seed", "7"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        endpoints = json.loads(line)
        with SwitchboardControl(endpoints["control"]) as c:
            assert c.ping()["pid"] == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(3) == 0
    finally:
        proc.kill()
        proc.wait()


PARENT = textwrap.dedent("""
    import sys
    from orchestrator.real.switchboard import spawn_switchboard

    if __name__ == "__main__":
        sb = spawn_switchboard(seed=1)
        print(sb.pid, sb.control, flush=True)
        sys.stdin.read()  # live until killed
""")


def test_dies_with_its_parent() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid_s, control = parent.stdout.readline().split()
        child = int(pid_s)
        with SwitchboardControl(control) as c:
            assert c.ping()["pid"] == child
        parent.kill()  # SIGKILL: no cleanup code runs in the parent
        parent.wait()
        wait_until(lambda: pid_gone(child), timeout=5.0, what="the orphaned switchboard")
    finally:
        parent.kill()
        parent.wait()


def test_set_replaces_every_fault_at_once(net: Net) -> None:
    net.ctl.loss(1.0)  # everything dropped...
    net.ctl.set_faults(blocked=[("n1", "n2")], loss=[("n2", "n3", 1.0)],
                       dup=[("n3", "n1", 1.0)])  # ...replaced by exactly these
    net.send("n1", "n2", b"cut")
    net.flush("n1", "n3")
    net.send("n2", "n3", b"lost")
    net.flush("n2", "n1")
    assert recv(net.socks["n3"], 0.05) is None and recv(net.socks["n2"], 0.05) is None
    net.send("n3", "n1", b"twice")
    assert recv_n(net.socks["n1"], 2) == [[b"n3", b"twice"], [b"n3", b"twice"]]
    net.ctl.set_faults(delay=[("n1", "n3", 200.0, 0.0)])
    t = time.monotonic()
    net.send("n1", "n3", b"late")
    assert recv(net.socks["n3"]) == [b"n1", b"late"]
    assert time.monotonic() - t >= 0.15
    net.send("n1", "n2", b"healed")  # the block is gone with the new set
    assert recv(net.socks["n2"]) == [b"n1", b"healed"]
    with pytest.raises(SwitchboardError, match="loss"):
        net.ctl.set_faults(loss=[("n1", "n2", 2.0)])
