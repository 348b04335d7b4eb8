"""Fault primitives: what a schedule is made of.

A fault is data with four parts, so that a generator can compose them and an executor
(real processes in `orchestrator/`, the deterministic simulator in `orchestrator/sim/`)
can run them without knowing where they came from:

* a **target chooser** (`Target`): a role the cluster plays out at run time (the leader,
  a follower, the node that holds the marker logged but unapplied, a node restarted
  after the cutover, the most lagging node, the node whose event triggered the fault)
  or a random one / minority / majority; a choice can be bound to a name that later
  steps reuse (`bound`), which is how multi-step scenarios are written;
* an **action** (`ACTIONS`, from the fault kinds of `nemesis/faults.py`): what is done to
  the chosen nodes, with its undo;
* a **trigger** (`When`): a time, a node event, a run milestone, or the end of another
  step;
* a **delay** after the trigger and a **duration** (or an `until` trigger) before the undo.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .faults import (  # noqa: F401 - the families, re-exported: the primitives' names
    FAMILIES,
    KINDS,
    OPT_IN_FAMILIES,
)

# action -> (family, timed), from the fault kinds' records (`nemesis/faults.py: KINDS`,
# which says what each one is). A timed action is undone after its duration (or
# `until`); an instantaneous one does its thing and is over. The heal is a kind no plan
# holds: it has no family, and no step may name it.
ACTIONS: dict[str, tuple[str, bool]] = {k.name: (k.family, k.timed) for k in KINDS.values()
                                        if k.family}

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

# The ranges of a step's numbers. A plan may come from a file anyone wrote, and a number
# out of range does harm far from where it was read: NaN or 1e308 seconds overflow a
# thread's wait (`Event.wait` raises), Infinity holds a fault for ever, a NaN loss rate
# drops nothing. So every number is finite and bounded here, where a step is made.
MAX_SECONDS = 86_400.0  # a day: no run is longer (`RunConfig.validate`)
MAX_MS = 60_000.0  # a message delayed a minute is cut off already
MAX_NTH = 1_000_000
MAX_ID = 1_000_000_000
MAX_NAME = 200  # characters of a bound name or an origin


def show(v: Any) -> str:
    """A value in an error message, short: a bad field may hold a megabyte of text."""
    r = repr(v) if not isinstance(v, int) or abs(v) < 10**30 else f"{str(v)[:12]}..."
    return r if len(r) <= 40 else r[:37] + "..."


def number(name: str, v: Any, lo: float, hi: float) -> float:
    """`v` if it is a finite number (an int or a float, not a bool) in [lo, hi];
    ValueError naming `name` otherwise."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{name} must be a number, got {show(v)}")
    if not ((isinstance(v, int) or math.isfinite(v)) and lo <= v <= hi):
        raise ValueError(f"{name} must be a finite number from {lo:g} to {hi:g}, "
                         f"got {show(v)}")
    return float(v)


def integer(name: str, v: Any, lo: int, hi: int) -> int:
    """`v` if it is an int (not a bool) in [lo, hi]; ValueError naming `name` otherwise."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{name} must be a whole number, got {show(v)}")
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be from {lo} to {hi}, got {show(v)}")
    return v


def text(name: str, v: Any, *, empty: bool = True) -> str:
    """`v` if it is a short string (non-empty unless `empty`)."""
    if not isinstance(v, str) or len(v) > MAX_NAME or (not empty and not v):
        raise ValueError(f"{name} must be {'a' if empty else 'a non-empty'} string of at "
                         f"most {MAX_NAME} characters, got {show(v)}")
    return v


def _flag(name: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be true or false, got {show(v)}")


# "fsm": the elastickv profile's durable KV store (`node/fsmstore.py`); a plan names it,
# the generator does not draw it (its draw, and so every seed's plan, stays as it was).
STORAGE_AREAS = ("wal", "snapshot", "sidecar", "fsm")


def _one_of(name: str, v: Any, choices: tuple[str, ...]) -> str:
    if v not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {show(v)}")
    return str(v)


def _names(name: str, v: Any) -> None:
    if not isinstance(v, list | tuple) or len(v) > 100:
        raise ValueError(f"{name} must be a list of names, got {show(v)}")
    for x in v:
        text(name, x, empty=False)


# A step's `params`, each with its check: the handlers in `nemesis/faults.py` read
# them, and the executors record them as keyword arguments (so an unknown name could
# collide with `step` or `origin` there): a name not listed is refused.
PARAMS: dict[str, Callable[[str, Any], Any]] = {
    "p": lambda n, v: number(n, v, 0.0, 1.0),  # loss, duplicate: a probability
    "ms": lambda n, v: number(n, v, 0.0, MAX_MS),  # net delays
    "jitter": lambda n, v: number(n, v, 0.0, MAX_MS),
    "down": lambda n, v: number(n, v, 0.0, MAX_SECONDS),  # restart: seconds down
    "times": lambda n, v: integer(n, v, 1, 1000),  # restart: bounces
    "torn": _flag,  # kill-power: tear the last unsynced write
    "main": _flag,  # enable: the run's own EnableRaftEnvelope
    "retry_same": _flag,
    "wait_applied": _flag,  # rotate
    "pick": lambda n, v: integer(n, v, 0, 2**63 - 1),  # corrupt-entry: which entry
    "cut_off": _names,  # lead: who else is cut off
    # bitflip, sector-error: which of a node's files (`STORAGE_AREAS`), and whether it
    # keeps running on them until the step ends (then bounced, so that they are read)
    "area": lambda n, v: _one_of(n, v, STORAGE_AREAS),
    "live": _flag,
    # clock-skew: how many times as fast the targets' timers run (drawn from 1/4 to 4)
    "factor": lambda n, v: number(n, v, 0.1, 10.0),
}


def check_params(params: Any) -> None:
    """ValueError unless `params` is an object of known names with values in range."""
    if not isinstance(params, dict):
        raise ValueError(f"params must be an object, got {show(params)}")
    for k, v in params.items():
        if k not in PARAMS:
            raise ValueError(f"unknown param {show(k)}; known: {', '.join(sorted(PARAMS))}")
        PARAMS[k](f"params.{k}", v)


def _fields_of(what: str, d: Any, names: set[str]) -> dict[str, Any]:
    """`d` as keyword arguments of `what`: an object with only the fields it has."""
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be an object, got {show(d)}")
    unknown = sorted(str(k) for k in d if k not in names)
    if unknown:
        raise ValueError(f"{what}: unknown field(s) {', '.join(show(k) for k in unknown)}")
    return dict(d)


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
        if not isinstance(self.role, str) or self.role not in ROLES:
            raise ValueError(f"unknown target role {show(self.role)}; expected one of "
                             f"{', '.join(ROLES)}")
        for name in ("bind", "ref"):
            if getattr(self, name) is not None:
                text(f"target.{name}", getattr(self, name), empty=False)
        if not isinstance(self.avoid, tuple):
            raise ValueError(f"target.avoid must be a list of names, got {show(self.avoid)}")
        _names("target.avoid", self.avoid)
        if self.role == "bound" and not self.ref:
            raise ValueError("a bound target needs `ref`")

    @classmethod
    def from_dict(cls, d: Any) -> Target:
        """A stored target (`{}` or null: the default); ValueError if malformed."""
        kw = _fields_of("target", d if d is not None else {}, {f.name for f in fields(cls)})
        if "avoid" in kw:
            _names("target.avoid", kw["avoid"])
            kw["avoid"] = tuple(kw["avoid"])
        return cls(**kw)


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
        if not isinstance(self.on, str) or self.on not in ("time", "event", "milestone",
                                                           "after"):
            raise ValueError(f"unknown trigger {show(self.on)}; expected time, event, "
                             f"milestone or after")
        number("at", self.at, -MAX_SECONDS, MAX_SECONDS)
        integer("nth", self.nth, 1, MAX_NTH)
        integer("step", self.step, 0, MAX_ID)
        for name in ("event", "since", "milestone"):
            text(name, getattr(self, name))
        if self.node is not None:
            text("node", self.node, empty=False)
        if self.on == "event" and self.event not in TRIGGER_EVENTS:
            raise ValueError(f"unknown trigger event {show(self.event)}")
        for m in (self.milestone, self.since):
            if m and m not in MILESTONES + ("final",):
                raise ValueError(f"unknown milestone {show(m)}")
        if self.on == "milestone" and not self.milestone:
            raise ValueError("a milestone trigger needs `milestone`")

    @classmethod
    def from_dict(cls, d: Any, what: str = "when") -> When:
        """A stored trigger; ValueError (naming `what`) if malformed."""
        kw = _fields_of(what, d, {f.name for f in fields(cls)})
        try:
            return cls(**kw)
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None

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
        integer("id", self.id, 0, MAX_ID)
        if not isinstance(self.action, str) or self.action not in ACTIONS:
            raise ValueError(f"unknown action {show(self.action)}")
        if not isinstance(self.target, Target) or not isinstance(self.when, When) or not (
                self.until is None or isinstance(self.until, When)):
            raise ValueError("a step's target, when and until are a Target and Whens")
        number("delay", self.delay, 0.0, MAX_SECONDS)
        number("duration", self.duration, 0.0, MAX_SECONDS)
        check_params(self.params)
        text("origin", self.origin)

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
    def from_dict(cls, d: Any) -> Step:
        """A stored step (`to_dict`'s shape; `id` and `action` required, null for the
        rest means the default); ValueError naming the field if it is not one."""
        kw = _fields_of("step", d, {f.name for f in fields(cls)})
        for need in ("id", "action"):
            if need not in kw:
                raise ValueError(f"a step needs `{need}`")
        when = kw.get("when")
        until = kw.get("until")
        params = kw.get("params")
        return cls(id=kw["id"], action=kw["action"], target=Target.from_dict(kw.get("target")),
                   when=When.from_dict({} if when is None else when),
                   delay=number("delay", _or(kw.get("delay"), 0.0), 0.0, MAX_SECONDS),
                   duration=number("duration", _or(kw.get("duration"), 0.0), 0.0,
                                   MAX_SECONDS),
                   until=None if until is None else When.from_dict(until, "until"),
                   params={} if params is None else params,
                   origin=_or(kw.get("origin"), ""))

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


def _or(v: Any, default: Any) -> Any:
    """A stored optional field: null reads as its default."""
    return default if v is None else v
