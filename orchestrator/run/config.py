"""A run's configuration, in one home: its fields and defaults, the knobs a seed draws,
every number's range, validation, and the plan-file format with its one reader.

Every way to a run derives from `RunConfig`: the flags of `cutover run`, `sim` and
`hunt`, a stored run's config (`--replay`, `cutover check`), a plan file, a matrix's
task payload on a Dask worker. A field added here reaches all of them.

The CLI imports this module to build its flags (defaults, ranges, choices), so it
stays light: the node (`ALL_BUGS`, `PROFILES`) and the store are imported where they
are used, and `cutover lin` does not load them (orchestrator/cli.py says why).
"""
from __future__ import annotations

import json
import os
import random
import stat
from collections.abc import Iterable
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from nemesis.plan import (
    DEFAULT_INFLIGHT,
    DEFAULT_MSG_BYTES,
    DEFAULT_SCENARIO,
    PLAN_FORMAT,
    SCENARIOS,
    Plan,
    PlanError,
    check_scenario,
    make_plan,
    parse_families,
)
from nemesis.plan import KNOBS as PLAN_KNOBS
from nemesis.primitives import MAX_SECONDS, show
from node.buggify import ACTIONS as BUGGIFY_ACTIONS
from node.buggify import POINTS as BUGGIFY_POINTS


class RunError(RuntimeError):
    """The harness could not do its job (one line for the user)."""


# The node knobs a seed draws (`nemesis.plan`, `_Builder.knobs`), each with its one default:
# what a node is started with when neither the flags nor the plan say (a bare plan file,
# a plan of an older run). The draws themselves stay in `nemesis.plan` (`nemesis/` may
# not import the orchestrator), and so do their highest values (`KNOBS`, what a stored
# plan may hold); this is the one place the orchestrator reads them. The defaults are
# the values real runs and the simulator always used; the node's own defaults
# (node/host.py `NodeOptions`, node/server.py) never decide a run: the orchestrator
# passes every knob.
DEFAULT_SNAPSHOT_EVERY = 5000  # entries: the plan's rarest snapshotting


@dataclass(frozen=True)
class Knob:
    """A node knob a seed draws: a count (of entries, bytes or messages) from 1 to
    `highest`, `default` when nothing drew it."""

    default: int
    highest: int


_KNOB_DEFAULT = {"snapshot_every": DEFAULT_SNAPSHOT_EVERY,
                 "max_msg_bytes": DEFAULT_MSG_BYTES, "max_inflight": DEFAULT_INFLIGHT}
# A knob the plan draws without a default here is a KeyError on import: said at once.
NODE_KNOBS: dict[str, Knob] = {name: Knob(_KNOB_DEFAULT[name], highest)
                               for name, highest in PLAN_KNOBS.items()}
KNOB_DEFAULTS: dict[str, int] = {name: k.default for name, k in NODE_KNOBS.items()}


# The range of every number of a RunConfig: (whole number, lowest, highest, above the
# lowest only). Every path to a run goes through `RunConfig.validate` (the flags, a plan
# file's config, a stored config read back for --replay, a matrix's tasks on Dask
# workers), so a NaN or an Infinity cannot reach a run: NaN compares false with
# everything, and `--time-limit nan` once ran no workload phase, `--cutover-at nan` made
# no cutover, `--rate nan` lifted the rate limit, and `time_limit: Infinity` ran forever.
RANGES: dict[str, tuple[bool, float, float, bool]] = {
    "nodes": (True, 1, 9, False),
    "time_limit": (False, 0, MAX_SECONDS, True),
    "rate": (False, 0, 1e6, True),
    "concurrency": (True, 1, 256, False),
    "keys": (True, 1, 10_000, False),
    "nemesis_interval": (False, 0, MAX_SECONDS, True),
    "seed": (True, -(2**63), 2**63 - 1, False),
    "quiet_period": (False, 0, 3600, False),
    "op_timeout": (False, 0, 3600, True),
    "tick_ms": (False, 1, 10_000, False),
    "election_ticks": (True, 1, 10_000, False),  # the node refuses what Raft cannot use
    **{name: (True, 1, k.highest, False) for name, k in NODE_KNOBS.items()},
    "enable_timeout_ticks": (True, 1, 10**6, False),
    "lin_timeout": (False, 0, MAX_SECONDS, True),
    "finish_within": (False, 0, MAX_SECONDS, False),
}
# Fields that may be None (a default drawn or computed later).
OPTIONAL = ("concurrency", "seed", *NODE_KNOBS)
# The flags of `cutover run`, by field: an error names what the user typed.
FLAGS = {"nodes", "time_limit", "rate", "concurrency", "workload", "keys", "nemesis",
         "nemesis_interval", "cutover_at", "profile", "seed", "snapshot_every",
         "max_msg_bytes", "max_inflight", "scenario"}
DEFAULT_CUTOVER = -1.0  # `cutover_at`: a third of the way in (`resolved`)
WORKLOADS = ("kv", "register", "reads")  # `workloads.MODEL_OF`'s (tests/orchestrator/test_config.py checks)
# node/cutover.py `PROFILES`, by name, for the flags' choices without loading the node
# (tests/orchestrator/test_config.py checks they agree; `validate` asks the node itself).
PROFILE_NAMES = ("fixed", "elastickv")
# `cutover sim`'s own defaults where they differ from a run's: simulated seconds are
# cheap, a seed is one of many (docs/sim.md); and `cutover matrix`'s longer runs.
SIM_DEFAULTS: dict[str, Any] = {"time_limit": 30.0, "rate": 100.0}
MATRIX_DEFAULTS: dict[str, Any] = {"time_limit": 60.0}


def _name(field_name: str) -> str:
    return f"--{field_name.replace('_', '-')}" if field_name in FLAGS else field_name


def _check_number(field_name: str, v: Any) -> None:
    """RunError unless `v` is in `RANGES[field_name]` (finite, of the right kind)."""
    whole, lo, hi, open_lo = RANGES[field_name]
    if v is None and field_name in OPTIONAL:
        return
    kind = "a whole number" if whole else "a number"
    fmt = (lambda x: str(int(x))) if whole else (lambda x: f"{x:g}")
    ok = not isinstance(v, bool) and isinstance(v, int if whole else int | float)
    if ok and not whole and isinstance(v, float):
        ok = v == v and v not in (float("inf"), float("-inf"))
    if ok:
        ok = (lo < v if open_lo else lo <= v) and v <= hi
    if not ok:
        raise RunError(f"{_name(field_name)} must be {kind} "
                       f"{'above' if open_lo else 'from'} {fmt(lo)} "
                       f"{'and at most' if open_lo else 'to'} {fmt(hi)}, got {show(v)}")


@dataclass
class RunConfig:
    """Everything that defines a run; stored with it, so it can be replayed."""

    nodes: int = 5
    time_limit: float = 40.0
    rate: float = 200.0
    concurrency: int | None = None  # default: 2 per node
    workload: str = WORKLOADS[0]
    keys: int = 8
    nemesis: str = "all"
    nemesis_interval: float = 5.0
    cutover_at: float | None = DEFAULT_CUTOVER  # a third of the way in; None: no cutover
    bugs: list[str] = field(default_factory=list)
    # Which system the nodes behave as: "fixed" (the protocol with this lab's fixes) or
    # "elastickv" (elastickv as it stands; node/cutover.py PROFILES, docs/protocol.md).
    profile: str = PROFILE_NAMES[0]
    seed: int | None = None
    results: str = "results"
    quiet_period: float = 2.0
    op_timeout: float = 1.0
    tick_ms: float = 25.0
    election_ticks: int = 10
    # Node knobs: None means drawn from the seed by the plan (`NODE_KNOBS`).
    snapshot_every: int | None = None
    max_msg_bytes: int | None = None
    max_inflight: int | None = None
    enable_timeout_ticks: int = 80  # 2 s at 25 ms ticks: the marker's apply wait
    lin_timeout: float = 60.0
    # Seconds past --time-limit by which the run is over and checked (set-up included):
    # the phases after the workload share what is left.
    finish_within: float = 15.0
    scenario: str = DEFAULT_SCENARIO
    plan_file: str | None = None  # play this stored plan instead of making one
    # BUGGIFY (node/buggify.py): the simulator arms a subset of the node's points per
    # seed. Off by default: a seed's history must not change under those who replay it.
    buggify: bool = False
    # How many of the node's points (`node/buggify.py` POINTS, in order) a seed's draw
    # and the crash points' count know. A stored config keeps the number it ran with,
    # so a point added later leaves its replay as it was; a config stored before the
    # field existed knew `BUGGIFY_LEGACY_POINTS`. None: all of them (`resolved`).
    buggify_points: int | None = None
    # Crash-consistency exploration (`orchestrator/sim/crashpoints.py`): kill node `node`
    # at its `k`-th durability boundary (`action`: crash, tear or kill), and with `again`
    # once more that many boundaries later. The simulator's only (`check_crash_point`).
    crash_point: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """The config a run stored (`config.json` or `runs.config`): same seed, so the
        same plan and op stream; the timing, of course, is new."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(k for k in d if k not in names and k != "plan")
        if unknown:
            raise RunError(f"not a run config: unknown field(s) {', '.join(unknown)}")
        d = {"buggify_points": BUGGIFY_LEGACY_POINTS, **d}
        try:
            cfg = cls(**{k: v for k, v in d.items() if k in names})
        except TypeError as e:
            raise RunError(f"not a run config: {e}") from None
        cfg.validate()  # a stored config is read as carefully as the flags
        return cfg

    def resolved(self) -> RunConfig:
        c = RunConfig(**asdict(self))
        if c.seed is None:
            c.seed = random.SystemRandom().randrange(1, 1_000_000)
        if c.concurrency is None:
            c.concurrency = 2 * c.nodes
        if c.buggify_points is None:
            c.buggify_points = len(BUGGIFY_POINTS)
        if c.cutover_at is not None and c.cutover_at < 0:
            c.cutover_at = round(c.time_limit / 3, 3)
        return c

    def plan(self) -> Plan:
        """The nemesis plan of this (resolved) config: a pure function of it, or the plan
        of `plan_file` (a plan as `Plan.to_dict` writes it, or a run's config.json)."""
        assert self.seed is not None
        if self.plan_file:
            return read_plan_file(self.plan_file)[1]
        return make_plan(self.seed, parse_families(self.nemesis), time_limit=self.time_limit,
                         interval=self.nemesis_interval, cutover_at=self.cutover_at,
                         nodes=self.nodes,
                         enable_timeout=self.enable_timeout_ticks * self.tick_ms / 1000,
                         scenario=self.scenario)

    def with_knobs(self, plan: Plan) -> RunConfig:
        """The knobs the config leaves open, as the plan drew them: some runs snapshot
        every few dozen entries, some every few thousand; some send one entry per
        append message."""
        c = RunConfig(**asdict(self))
        for name, default_value in KNOB_DEFAULTS.items():
            if getattr(c, name) is None:
                setattr(c, name, plan.knobs.get(name, default_value))
        return c

    def validate(self) -> None:
        """RunError (one line, naming the flag or field) unless every field has its type
        and every number is finite and in its range (`RANGES`). Every way to a run
        calls it: `execute`, `cutover sim`, `from_dict` (a stored config, a plan file's,
        a matrix task's on a Dask worker)."""
        from node.host import ALL_BUGS, PROFILES  # the node's own lists (module docstring)

        for name in RANGES:
            _check_number(name, getattr(self, name))
        for name, choices in (("workload", WORKLOADS), ("profile", PROFILES),
                              ("scenario", None), ("nemesis", None)):
            v = getattr(self, name)
            if not isinstance(v, str):
                raise RunError(f"{_name(name)} must be a name, got {show(v)}")
            if choices is not None and v not in choices:
                raise RunError(f"unknown {name} {show(v)}; expected one of "
                               f"{', '.join(sorted(choices))}")
        if not isinstance(self.bugs, list | tuple):
            raise RunError(f"bugs must be a list of bug switches, got {show(self.bugs)}")
        for b in self.bugs:
            if not isinstance(b, str) or b not in ALL_BUGS:
                raise RunError(f"unknown bug switch {show(b)}; valid names: "
                               f"{', '.join(sorted(ALL_BUGS))}")
        if not isinstance(self.buggify, bool):
            raise RunError(f"buggify must be true or false, got {show(self.buggify)}")
        k = self.buggify_points
        if k is not None and (isinstance(k, bool) or not isinstance(k, int)
                              or not 1 <= k <= len(BUGGIFY_POINTS)):
            raise RunError(f"buggify_points must be a whole number from 1 to "
                           f"{len(BUGGIFY_POINTS)}, got {show(k)}")
        if self.crash_point is not None:
            self.crash_point = check_crash_point(self.crash_point, self.nodes)
        if not isinstance(self.results, str) or not self.results:
            raise RunError(f"results must be a directory name, got {show(self.results)}")
        if self.plan_file is not None and (not isinstance(self.plan_file, str)
                                           or not self.plan_file):
            raise RunError(f"plan_file must be a file name, got {show(self.plan_file)}")
        c = self.cutover_at
        if c is not None and c != DEFAULT_CUTOVER:
            if isinstance(c, bool) or not isinstance(c, int | float) or not 0 <= c <= c:
                raise RunError(f"--cutover-at must be none or a number of seconds from 0 to "
                               f"below --time-limit {self.time_limit:g}, got {show(c)}")
            if c >= self.time_limit:  # Infinity included
                raise RunError(f"--cutover-at {f'{c:g}' if isinstance(c, float) else show(c)} "
                               f"is not before --time-limit "
                               f"{self.time_limit:g}")
        try:
            parse_families(self.nemesis)
            check_scenario(self.scenario)
        except PlanError as e:
            raise RunError(str(e)) from None


# Where a node crosses a durability boundary (the BUGGIFY points a power loss may strike
# at) and how a crash point kills it there: a power loss (what was not synced is lost), a
# torn one (a prefix of each unsynced write survives), a process crash (the page cache
# survives).
# The points a config stored before `buggify_points` existed knew (the Raft core's and
# `host.sent-vote` came after them).
BUGGIFY_LEGACY_POINTS = 14
CRASH_BOUNDARIES: tuple[str, ...] = tuple(p for p in BUGGIFY_POINTS
                                          if "crash" in BUGGIFY_ACTIONS[p])
CRASH_DEATHS = ("crash", "tear", "kill")
_MAX_BOUNDARY = 1 << 40


def check_crash_point(cp: Any, nodes: int) -> dict[str, Any]:
    """A config's crash point, checked (a RunError of one line otherwise): {"node":
    "n<i>", "k": the boundary's number on that node, from 1, "action": one of
    CRASH_DEATHS, "again": 0 or how many boundaries later a second power loss strikes,
    "point": the boundary the base run crossed there (optional, for the record)}."""
    if not isinstance(cp, dict):
        raise RunError(f"crash_point must be an object, got {show(cp)}")
    unknown = sorted(str(k) for k in set(cp) - {"node", "k", "action", "again", "point"})
    if unknown:
        raise RunError(f"crash_point has unknown field(s) {', '.join(unknown)}")
    if cp.get("node") not in {f"n{i + 1}" for i in range(nodes)}:
        raise RunError(f"crash_point node must be one of n1..n{nodes}, got "
                       f"{show(cp.get('node'))}")
    k, again = cp.get("k"), cp.get("again", 0)
    for name, v, lo in (("k", k, 1), ("again", again, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= _MAX_BOUNDARY:
            raise RunError(f"crash_point {name} must be a whole number from {lo}, got "
                           f"{show(v)}")
    if cp.get("action") not in CRASH_DEATHS:
        raise RunError(f"crash_point action must be one of {', '.join(CRASH_DEATHS)}, got "
                       f"{show(cp.get('action'))}")
    if "point" in cp and cp["point"] not in CRASH_BOUNDARIES:
        raise RunError(f"crash_point point must be one of {', '.join(CRASH_BOUNDARIES)}, "
                       f"got {show(cp['point'])}")
    return {"node": cp["node"], "k": k, "action": cp["action"], "again": again,
            **({"point": cp["point"]} if "point" in cp else {})}


MAX_PLAN_FILE = 16 << 20  # bytes: a shrunk plan is a few KB, a long run's config.json MBs


def read_plan_file(path: str) -> tuple[dict[str, Any] | None, Plan, dict[str, Any]]:
    """A plan file read and checked in full, before any run row or process exists: (the
    run config it carries, or None; its plan; the whole document). It is `cutover sim`'s
    plan file (`{"format": "cutover-plan", "plan": {...}, "config": {...}}`, the config
    optional), a run's config.json (its config, the plan under `plan`), or a bare plan
    (`Plan.to_dict`). Anything else is a RunError of one line: `{}` once played an empty
    plan, no fault and no cutover, while `show` said nemesis=all. The config is returned
    unchecked: `RunConfig.from_dict` checks it when it is used."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block us
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise RunError(f"cannot use {path}: not a regular file")
            raw = fh.read(MAX_PLAN_FILE + 1)
    except OSError as e:
        raise RunError(f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) > MAX_PLAN_FILE:
        raise RunError(f"{path} is over {MAX_PLAN_FILE >> 20} MB: not a plan file")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RunError(f"{path} is not UTF-8 text (byte {e.start} is not)") from None
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not JSON: {e.msg} (line {e.lineno})") from None
    except (ValueError, RecursionError) as e:  # a 5000-digit number; nesting 100,000 deep
        raise RunError(f"{path} is not JSON this reads: {str(e)[:80]}") from None
    if not isinstance(doc, dict):
        raise RunError(f"{path} is not a plan file: a JSON {type(doc).__name__}, not an "
                       f"object")
    config: Any = None
    if "format" in doc:
        if doc["format"] != PLAN_FORMAT:
            raise RunError(f"{path}: unknown format {show(doc['format'])} (expected "
                           f"{PLAN_FORMAT})")
        plan_doc, config = doc.get("plan"), doc.get("config")
        if config is not None and not isinstance(config, dict):
            raise RunError(f"{path}: `config` must be an object, got {show(config)}")
    elif "plan" in doc:  # a run's config.json
        plan_doc = doc["plan"]
        config = {k: v for k, v in doc.items() if k != "plan"}
    elif "steps" in doc:  # a bare plan
        plan_doc = doc
    else:
        raise RunError(f"{path} is not a plan file: no `format`, `plan` or `steps` (a plan "
                       f"file from `cutover sim`, a run's config.json, or a plan)")
    if not isinstance(plan_doc, dict):
        raise RunError(f"{path}: `plan` must be an object, got {show(plan_doc)}")
    try:
        plan = Plan.from_dict(plan_doc)
    except ValueError as e:
        raise RunError(f"{path}: {e}") from None
    if config is not None:
        config = {k: v for k, v in config.items() if k != "plan"}
    return config, plan, doc


def replay_config(ref: str, results: str) -> RunConfig:
    """The config of a stored run (`ref`: a run id in `results`, `latest`, or a
    config.json): same seed, so the same plan and op stream."""
    from orchestrator import store  # SQLite: not for a CLI start-up (module docstring)

    try:
        if os.path.isfile(ref):
            with open(ref, encoding="utf-8") as fh:
                doc = json.load(fh)
        else:
            with store.opened(results) as db:
                doc = json.loads(store.resolve_run(db, ref)["config"] or "{}")
    except (OSError, ValueError, store.StoreError) as e:
        raise RunError(str(e)) from None
    if not isinstance(doc, dict):
        raise RunError("expected a JSON object")
    return RunConfig.from_dict(doc)


# Fields a plan file's config never sets: where this run stores its results is this
# invocation's, and the plan file is the one being played.
_OWN_FIELDS = ("results", "plan_file")


def config_for_plan_file(path: str, cfg: RunConfig, given: Iterable[str]) -> RunConfig:
    """The config `cutover run --plan FILE` plays: a plan file that carries its run's
    config (a shrunk plan from `cutover sim`, a run's config.json) replays it, since its
    nodes, time limit, bugs, seed and cutover time belong to the schedule; a field the
    user gave on the command line (`given`, by field name) is `cfg`'s. Every field of
    `RunConfig` may be given, none by a hand-kept list: that list once left out
    `--profile`, and the plan file's profile silently won. `results` is always `cfg`'s
    and `plan_file` is `path`. A plan without a config is played with `cfg`.

    The whole file, plan included, is read and checked here, before any run row exists:
    RunError (one line) if it is not a plan file or its config is not a run's. A name
    in `given` that is not a field is a ValueError: the caller mapped a flag wrong."""
    names = {f.name for f in fields(RunConfig)}
    given = set(given)
    unknown = sorted(given - names)
    if unknown:
        raise ValueError(f"not RunConfig fields: {', '.join(unknown)}")
    base, _plan, _doc = read_plan_file(path)
    if base is None:
        out = RunConfig(**asdict(cfg))
    else:
        try:
            out = RunConfig.from_dict({k: v for k, v in base.items() if k not in _OWN_FIELDS})
        except RunError as e:
            raise RunError(f"cannot use {path}: {e}") from None
        for name in sorted(given - set(_OWN_FIELDS)):
            setattr(out, name, getattr(cfg, name))
        out.results = cfg.results
    out.plan_file = path
    return out


def default(name: str) -> Any:
    """The default of RunConfig field `name` (a fresh copy of a list): what a flag of
    that field shows and uses, so a default is written once, in the dataclass.
    KeyError for a name that is not a field."""
    for f in fields(RunConfig):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            assert f.default_factory is not MISSING
            return f.default_factory()
    raise KeyError(name)


__all__ = ["DEFAULT_CUTOVER", "DEFAULT_SNAPSHOT_EVERY", "FLAGS", "KNOB_DEFAULTS",
           "MATRIX_DEFAULTS", "MAX_PLAN_FILE", "NODE_KNOBS", "OPTIONAL", "PROFILE_NAMES",
           "RANGES", "SCENARIOS", "SIM_DEFAULTS", "WORKLOADS", "Knob", "RunConfig",
           "RunError", "config_for_plan_file", "default", "read_plan_file",
           "replay_config"]
