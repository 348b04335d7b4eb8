"""Fault primitives: what a schedule is made of.

A fault is data with four parts, so that a generator can compose them and an executor
(real processes in `orchestrator/`, the deterministic simulator in `orchestrator/sim/`)
can run them without knowing where they came from:

* a **target chooser** (`Target`): a role the cluster plays out at run time (the leader,
  a follower, the node that holds the marker logged but unapplied, a node restarted
  after the cutover, the most lagging node, the node whose event triggered the fault)
  or a random one / minority / majority; a choice can be bound to a name that later
  steps reuse (`bound`), which is how multi-step scenarios are written;
* an **action** (`ACTIONS`): what is done to the chosen nodes, with its undo;
* a **trigger** (`When`): a time, a node event, a run milestone, or the end of another
  step;
* a **delay** after the trigger and a **duration** (or an `until` trigger) before the undo.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# action -> (family, timed). A timed action is undone after its duration (or `until`);
# an instantaneous one does its thing and is over.
ACTIONS: dict[str, tuple[str, bool]] = {
    # processes
    "kill": ("kill", True),  # SIGKILL; restarted when the step ends
    "restart": ("kill", False),  # SIGKILL and start again at once (a bounce)
    "kill-power": ("power", True),  # SIGKILL, lose what was not durable, restart at the end
    "pause": ("pause", True),  # SIGSTOP, SIGCONT at the end
    # the log
    "snapshot": ("snapshot", False),  # snapshot-now on the targets
    "compact": ("snapshot", False),  # snapshot-now everywhere but the targets
    # partitions
    "isolate": ("partition", True),  # each target alone
    "split": ("partition", True),  # the targets on one side, everyone else on the other
    "lead": ("partition", True),  # a star around one target: only it can win an election
    "halves": ("partition", True),  # random halves (the target, if any, in the minority)
    "ring": ("partition", True),  # majorities ring
    "bridge": ("partition", True),  # two halves joined by one node (the target)
    "cut-in": ("partition", True),  # every link into the targets
    "cut-out": ("partition", True),  # every link out of the targets
    # the network
    "slow-in": ("net", True),  # delay the links into the targets
    "slow-out": ("net", True),  # delay the links out of the targets
    "loss": ("net", True),  # drop a share of messages (all links, or the targets')
    "delay": ("net", True),  # delay every message, with jitter
    "duplicate": ("net", True),  # deliver a share of messages twice
    "reorder": ("net", True),  # a small delay with a large jitter
    # the operator
    "rotate": ("rotate", False),  # RotateDEK through the leader, retried like an operator
    "enable": ("enable", False),  # EnableRaftEnvelope, retried like an operator
    # after the final reads: damage one replica's copy of an entry above C, replay it
    "corrupt-entry": ("corrupt", False),
}

FAMILIES: tuple[str, ...] = ("kill", "power", "pause", "partition", "net", "snapshot",
                             "rotate", "enable", "corrupt")
# Names older runs stored, still accepted.
FAMILY_ALIASES = {"snapshot-replay": "snapshot"}

ROLES = ("leader", "follower", "marker-holder", "restarted", "lagging", "event", "one",
         "minority", "majority", "all", "leader-pair", "bound", "none")

# Node events a step can be triggered by, and what in a node's event log they are.
# (kind, field filters); `role` with role=leader is "a leader was elected", etc.
TRIGGER_EVENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "marker-proposed": ("marker-proposed", {}),
    "marker-committed": ("marker-committed", {}),
    "marker-applied": ("encryption-applied", {"what": ("marker-fresh",
                                                       "marker-already-active",
                                                       "marker-stale")}),
    "leader-elected": ("role", {"role": ("leader",)}),
    "snapshot-installed": ("snapshot-installed", {}),
    "snapshot-taken": ("snapshot-taken", {}),
    "barrier-up": ("barrier", {"up": (True,)}),
    "apply-wait-timeout": ("apply-wait-timeout", {}),
    "restarted": ("start", {}),
    "rotation-applied": ("encryption-applied", {"what": ("rotate",)}),
    "log-truncated": ("log-truncated", {}),
}

# Milestones of the run itself (emitted by the executor and the runner).
MILESTONES = ("cutover-requested", "cutover-settled", "cutover-failed")


def event_matches(trigger_event: str, ev: dict[str, Any]) -> bool:
    """Whether a node event `ev` is an occurrence of `trigger_event`."""
    kind, filters = TRIGGER_EVENTS[trigger_event]
    if ev.get("kind") != kind:
        return False
    return all(ev.get(k) in allowed for k, allowed in filters.items())


@dataclass(frozen=True)
class Target:
    """Which nodes a step hits; chosen when the step fires, from what the cluster shows."""

    role: str = "one"
    bind: str | None = None  # remember the choice under this name
    ref: str | None = None  # role "bound": the name of an earlier choice
    avoid: tuple[str, ...] = ()  # names of earlier choices (or "leader") not to pick

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown target role {self.role!r}")
        if self.role == "bound" and not self.ref:
            raise ValueError("a bound target needs `ref`")


@dataclass(frozen=True)
class When:
    """A trigger: `time` (seconds into the run), `event` (a node event, the nth time it
    happens, optionally only on a bound node), `milestone`, or `after` (another step's end)."""

    on: str = "time"
    at: float = 0.0
    event: str = ""
    nth: int = 1
    node: str | None = None  # event: only from the node bound under this name
    since: str = ""  # event: count only occurrences after this milestone
    milestone: str = ""
    step: int = 0

    def __post_init__(self) -> None:
        if self.on not in ("time", "event", "milestone", "after"):
            raise ValueError(f"unknown trigger {self.on!r}")
        if self.on == "event" and self.event not in TRIGGER_EVENTS:
            raise ValueError(f"unknown trigger event {self.event!r}")
        for m in (self.milestone, self.since):
            if m and m not in MILESTONES + ("final",):
                raise ValueError(f"unknown milestone {m!r}")

    def describe(self) -> str:
        if self.on == "time":
            return f"at {self.at:g}s"
        if self.on == "event":
            nth = "" if self.nth == 1 else f" #{self.nth}"
            on = f" on {self.node}" if self.node else ""
            since = f" after {self.since}" if self.since else ""
            return f"on {self.event}{nth}{on}{since}"
        if self.on == "milestone":
            return f"on {self.milestone}"
        return f"after step {self.step}"


@dataclass(frozen=True)
class Step:
    """One fault of a plan."""

    id: int
    action: str
    target: Target = field(default_factory=Target)
    when: When = field(default_factory=When)
    delay: float = 0.0
    duration: float = 0.0
    until: When | None = None  # instead of `duration`: undo when this fires
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)
    origin: str = ""  # which generator feature or scenario made it

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}")

    @property
    def family(self) -> str:
        return ACTIONS[self.action][0]

    @property
    def timed(self) -> bool:
        return ACTIONS[self.action][1]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target"] = {k: v for k, v in asdict(self.target).items() if v not in (None, ())}
        d["when"] = {k: v for k, v in asdict(self.when).items()
                     if v not in (None, "", 0, 0.0) or k == "on"}
        if self.when.on == "event":
            d["when"]["nth"] = self.when.nth
        d["until"] = None if self.until is None else {
            k: v for k, v in asdict(self.until).items() if v not in (None, "", 0, 0.0)
            or k == "on"}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Step:
        t = d.get("target") or {}
        w = d.get("when") or {}
        u = d.get("until")
        return cls(id=int(d["id"]), action=str(d["action"]),
                   target=Target(**{**t, "avoid": tuple(t.get("avoid", ()))}),
                   when=When(**w), delay=float(d.get("delay", 0.0)),
                   duration=float(d.get("duration", 0.0)),
                   until=When(**u) if u else None, params=dict(d.get("params") or {}),
                   origin=str(d.get("origin", "")))

    def describe(self) -> str:
        """One short line: what, to whom, when."""
        tgt = self.target
        who = f"{tgt.role}" + (f" {tgt.ref}" if tgt.ref else "") + (
            f" as {tgt.bind}" if tgt.bind else "")
        when = self.when.describe() + (f" +{self.delay:g}s" if self.delay else "")
        span = ""
        if self.timed:
            span = (f" until {self.until.describe()}" if self.until is not None
                    else f" for {self.duration:g}s")
        extra = "".join(f" {k}={v}" for k, v in sorted(self.params.items())
                        if k not in ("pick",))
        return f"#{self.id} {self.action} {who} {when}{span}{extra}"
