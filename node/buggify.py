"""BUGGIFY points (FoundationDB's idea): named places in the node's own code where it
crosses a durability or visibility boundary, and where the world may legally strike.

Why here, in the node: the same points must fire in both worlds. The node's code calls
`hook.hit(point)` at each one; the world decides what happens there. The default hook
(`OFF`) is never armed, and every call site first reads `hook.on` (one attribute check
on the hot path), so a node without BUGGIFY pays nothing else.

What an armed point may do is only what the world could do at that instant:

* `crash`: the process dies there (page cache kept; a simulator may cut the power too,
  losing exactly what was not yet synced), raised as `BuggifyCrash`;
* `tear`: a power loss there that keeps a prefix of each unsynced write (the simulator);
* `delay`: the process is slow there (a real node sleeps; the simulator holds the
  batch in flight longer);
* `dup`: the batch just handed to the network goes out twice (a duplicating network);
* `early`: a timer fires early (one extra Raft tick);
* `short`, `back`, `resend`, `skip`: the Raft core takes a legal but unusual path: a
  leader sends an APP with fewer entries than it could (none at all on a probe), backs
  off further than a rejection's hint asks, a candidate asks for votes again within its
  term (the Raft paper retries RequestVote; etcd does not), or a node campaigns without
  PreVote (etcd's default; PreVote is a liveness aid, not a safety rule). Each is what another correct
  implementation does, so a correct node survives every one; they widen the states a
  follower's log and a vote can be in (a divergent tail an APP does not reach, a
  second vote request in one term).

On real processes a point is armed only by the environment: ``CUTOVER_BUGGIFY=
"point=action:probability,..."`` with ``CUTOVER_BUGGIFY_SEED`` (`from_env`). The
simulator draws a subset per seed (`orchestrator/sim/cluster.py`).
"""
from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ACTIONS", "ENV", "ENV_SEED", "OFF", "POINTS", "Buggify", "BuggifyCrash",
           "BuggifyError", "EnvBuggify", "from_env", "parse_spec"]

# Every point, with the actions that are legal there. Order is part of the simulator's
# draw (a seed's subset), so a new point goes at the end.
POINTS: tuple[str, ...] = (
    "wal.written",        # WAL bytes written to the segment, its fsync not yet done
    "wal.synced",         # after a WAL segment's fsync
    "wal.dir.before",     # a WAL directory entry (new segment, unlink) before its dir sync
    "wal.dir.after",      # after that directory sync
    "file.written",       # a temp file (sidecar, snapshot, node-id) written, not synced
    "file.synced",        # the temp file synced, not yet renamed over the old one
    "file.renamed",       # renamed, the directory not yet synced
    "file.dir.synced",    # the directory synced: the new file is durable
    "host.sent-unsynced", # a Ready's early messages sent, its entries/hard state not persisted
    "host.send",          # a batch of messages handed to the network
    "host.tick",          # the Raft timer fires
    "host.sent-persisted", # a Ready's late messages (votes, acks) sent after its persist
    "fsm.written",        # elastickv profile: a durable-store record written, not synced
    "fsm.synced",         # after that record's fsync
    "raft.append-short",  # a leader's APP about to leave with its entries
    "raft.probe-back",    # a leader moving a follower's next back after a rejection
    "raft.vote-resend",   # a candidate's tick, its vote still open
    "raft.skip-prevote",  # an election timeout, about to campaign
    "host.sent-vote",     # a Ready's vote grant sent (it promises the vote is durable)
)
_STORAGE = ("crash", "tear", "kill")
ACTIONS: dict[str, tuple[str, ...]] = {
    **{p: _STORAGE for p in POINTS if p.startswith(("wal.", "file.", "fsm."))},
    "host.sent-unsynced": ("crash", "kill"),
    "host.sent-persisted": _STORAGE,
    "host.send": ("delay", "dup"),
    "host.tick": ("early",),
    "raft.append-short": ("short",),
    "raft.probe-back": ("back",),
    "raft.vote-resend": ("resend",),
    "raft.skip-prevote": ("skip",),
    # a vote's promise is its durability: only a power loss there can break it
    "host.sent-vote": ("crash", "tear"),
}
ENV = "CUTOVER_BUGGIFY"
ENV_SEED = "CUTOVER_BUGGIFY_SEED"


class BuggifyError(ValueError):
    """A BUGGIFY spec names an unknown point or an action that point does not allow."""


class BuggifyCrash(BaseException):  # noqa: N818 - a process death, not an error
    """The process dies at a BUGGIFY point. A BaseException, so that no `except
    Exception` in the node can survive its own death; the world catches it."""

    def __init__(self, point: str, action: str) -> None:
        super().__init__(f"buggify {action} at {point}")
        self.point = point
        self.action = action


class Buggify:
    """The hook's interface and the no-op default: never armed."""

    on = False

    def hit(self, point: str) -> str | None:
        """At `point`: None to carry on, or the action the call site performs itself
        (`dup`, `early`); a crash never returns."""
        return None


OFF = Buggify()


def parse_spec(spec: str) -> dict[str, tuple[str, float]]:
    """``"point=action:probability,..."`` to {point: (action, probability)}; strict, since
    a misspelt point that silently never fires would make a test vacuous."""
    out: dict[str, tuple[str, float]] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, _, rest = part.partition("=")
        action, _, prob = rest.partition(":")
        if point not in ACTIONS:
            raise BuggifyError(f"unknown BUGGIFY point {point!r}; known: {', '.join(POINTS)}")
        if action not in ACTIONS[point]:
            raise BuggifyError(f"BUGGIFY point {point} allows {'/'.join(ACTIONS[point])}, "
                               f"not {action!r}")
        try:
            p = float(prob) if prob else 1.0
        except ValueError:
            raise BuggifyError(f"BUGGIFY probability {prob!r} is not a number") from None
        if not 0.0 <= p <= 1.0:
            raise BuggifyError(f"BUGGIFY probability {p} is not in 0..1")
        out[point] = (action, p)
    return out


class EnvBuggify(Buggify):
    """A real process's hook: the points its environment armed. A crash there is a
    SIGKILL of itself (the page cache survives, as under the nemesis's kill); the event
    is written first, so the run's evidence says why the process died."""

    def __init__(self, armed: Mapping[str, tuple[str, float]], seed: int,
                 emit: Callable[..., None]) -> None:
        self.on = bool(armed)
        self.armed = dict(armed)
        self.rng = random.Random(seed)
        self.emit = emit
        self.reached: set[str] = set()

    def hit(self, point: str) -> str | None:
        if point not in self.reached:
            self.reached.add(point)
            self.emit("buggify", point=point, action="reached")
        arm = self.armed.get(point)
        if arm is None or self.rng.random() >= arm[1]:
            return None
        action = arm[0]
        self.emit("buggify", point=point, action=action)
        if action in ("crash", "kill", "tear"):
            os.kill(os.getpid(), signal.SIGKILL)
            raise BuggifyCrash(point, action)  # pragma: no cover - not reached
        if action == "delay":
            time.sleep(self.rng.uniform(0.001, 0.02))
            return None
        return action


def from_env(environ: Mapping[str, str], emit: Callable[..., Any]) -> Buggify:
    """The hook a real node starts with: `OFF` unless `CUTOVER_BUGGIFY` arms a point."""
    spec = environ.get(ENV, "")
    if not spec.strip():
        return OFF
    seed = environ.get(ENV_SEED, "0")
    try:
        s = int(seed)
    except ValueError:
        raise BuggifyError(f"{ENV_SEED} {seed!r} is not an integer") from None
    return EnvBuggify(parse_spec(spec), s, emit)
