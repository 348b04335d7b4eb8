"""The detection benchmark (`cutover matrix`): the fixed build and each bug switch over
K seeds with every nemesis; how often each switch was caught, how far into the run the
first violation happened, whether the invariant it is expected to violate (`EXPECTED`)
caught it or another one did, and how many protocol-state coverage points the build's
runs reached together. `--profile elastickv` runs every build as elastickv behaves, and
names the row without a switch `elastickv`. With a hunt per build (`--hunt-budget`,
`--hunt-seeds`), each build's `cutover hunt` is a row of its own, `<build> (hunt)`:
one outcome per hunt, invalid when it found something (judged like a run: a finding
on the fixed build fails the matrix, on a bug build it is the expected detection).

A matrix is recorded (`matrices`, `matrix_tasks`): its config, the project's git
revision, and each task as it finishes, so an interrupted matrix can be finished
(`--resume`) and nights compared (`cutover trend`). Its tasks (`orchestrator.nightly.tasks`)
run here one at a time (the local engine, below) or on a Dask cluster
(`orchestrator.nightly.dask_engine`); either way the table is read back from what was stored.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from checker import suite
from checker.coverage import POINTS
from nemesis.plan import DEFAULT_SCENARIO
from nemesis.primitives import integer, number, show
from node.server import ALL_BUGS, PROFILES
from orchestrator import store
from orchestrator.errors import EXIT_HARNESS
from orchestrator.nightly.config_check import (
    MAX_SIM_SEEDS,
    MAX_TASKS,
    DamagedRecord,
    check_matrix_row,
    matrix_config,
    task_records,
)
from orchestrator.nightly.tasks import (
    AXES,
    HuntParams,
    Task,
    hunt_runs,
    make_tasks,
    run_hunt,
    run_sim_batch,
)
from orchestrator.real.run import RunOutcome, execute
from orchestrator.run.config import RunConfig

Rows = list[tuple[str, list[RunOutcome]]]


# What each switch is expected to violate: an invariant of the cutover checker ("I1"..)
# or a checker ("linearizability"). A run caught by something else is shown apart (a
# switch caught only by a side effect says little about the invariant it targets).
# The elastickv profile with no switch is expected to fail by any of them (its open
# hazards: docs/findings.md), hence None.
EXPECTED: dict[str, str | None] = {
    "nonstrict-dispatch": "I3",  # the cleartext marker is "unwrapped": every replica halts
    "silent-unwrap-skip": "I4",  # a skipped entry: the replica diverges silently
    "no-barrier": "I1",
    "raw-admin-proposer": "I1",
    "no-apply-installer": "I1",
    "stale-check-first": "I1",
    "no-startup-wrap": "I1",
    "barrier-release-on-timeout": "I1",
    "leader-unapplied-marker": "I1",
    "duplicate-marker": "I1",  # a second raw marker above C
    "snapshot-install-no-cutover": "I2",  # applied past C with a sidecar that says C = 0
    "stale-read": "linearizability",
    "commit-old-term": "linearizability",  # an acknowledged write lost
    "elastickv": None,
}


class MatrixAborted(RuntimeError):
    """A run of the matrix was aborted (Ctrl-C, SIGTERM): the matrix stops there."""


def profiles(spec: str | None) -> list[str]:
    """The profiles of `--profile` (a comma list; none given: the fixed one);
    ValueError names an unknown one."""
    out = [p.strip() for p in (spec or "").split(",") if p.strip()] or ["fixed"]
    bad = [p for p in out if p not in PROFILES]
    if bad:
        raise ValueError(f"unknown profile {bad[0]!r}; valid: {', '.join(PROFILES)}")
    return list(dict.fromkeys(out))


def builds(bug_spec: str, fixed: bool = True, profile: str = "fixed") -> list[str]:
    """The builds to run: the profile with no switch ("fixed" or "elastickv"; unless not
    `fixed`) and the switches of `bug_spec` ("all" or a comma list); ValueError names
    an unknown switch."""
    known = sorted(ALL_BUGS)
    if bug_spec == "all":
        bugs = known
    elif bug_spec in ("none", ""):
        bugs = []
    else:
        bugs = [b.strip() for b in bug_spec.split(",") if b.strip()]
        bad = [b for b in bugs if b not in known]
        if bad:
            raise ValueError(f"unknown bug switch {bad[0]!r}; valid names: {', '.join(known)}")
    return ([profile] if fixed else []) + bugs


# ------------------------------------------------------------------ a matrix's record


def base_config(**kw: Any) -> dict[str, Any]:
    """The part of a RunConfig every task of a matrix shares (the axes are the task's)."""
    return {k: v for k, v in asdict(RunConfig(**kw)).items() if k not in AXES}


@dataclass
class MatrixSpec:
    """A matrix's config: what `matrices.config` stores and its tasks are made from."""

    builds: list[str]
    seeds: int
    first_seed: int = 1
    modes: list[str] = field(default_factory=lambda: [DEFAULT_SCENARIO])
    profiles: list[str] | None = None
    sim_seeds: int = 0
    sim_batch: int = 25
    base: dict[str, Any] = field(default_factory=base_config)
    # One `cutover hunt` per build, profile and mode (HuntParams' fields), or None.
    hunt: dict[str, Any] | None = None

    def tasks(self) -> list[Task]:
        # Checked (and the count bounded) before a list is made: `config_check`, and
        # `hunt_config` for the hunts.
        d = self.to_dict()
        kw = matrix_config(d, "matrix")
        kw["hunt"] = hunt_config(d, "matrix")
        return make_tasks(kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MatrixSpec:
        names = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in matrix_config(d).items() if k in names}
        return cls(**kw, hunt=hunt_config(d))

    def label(self, task: Task) -> str:
        return task.label(len(self.modes), len(self.profiles or [None]))


ENGINES = ("local", "dask")  # `cutover matrix --engine`: here, or tasks on a Dask cluster
MAX_HUNT_BUDGET = 7 * 24 * 3600.0  # seconds: a week per hunt is already no nightly
MAX_REAL_RUNS = 100  # --hunt-confirm, --hunt-rare (as `cutover hunt`'s flags)
MAX_HUNT_WORKERS = 256


def hunt_config(d: Any, where: str = "a recorded matrix's config is damaged"
                ) -> dict[str, Any] | None:
    """The `hunt` of a matrix config (`HuntParams`' fields), each checked: a budget
    (seconds, above 0) and/or a number of seeds, `confirm` and `rare` real runs,
    `workers`; None when the matrix has no hunts. With the other tasks, at most
    `MAX_TASKS`. DamagedRecord, prefixed with `where`, if not (`config_check` reads
    the rest of the config and leaves this key out)."""
    try:
        return _hunt_config(d)
    except ValueError as e:
        raise DamagedRecord(f"{where}: {e}") from None


def _hunt_config(d: Any) -> dict[str, Any] | None:
    h = d.get("hunt") if isinstance(d, Mapping) else None
    if h is None:
        return None
    if not isinstance(h, Mapping):
        raise ValueError(f"hunt must be an object, got {show(h)}")
    names = {f.name for f in dataclasses.fields(HuntParams)}
    extra = sorted(str(k) for k in h if k not in names)
    if extra:
        raise ValueError(f"hunt has an unknown field {show(extra[0])}")
    out = asdict(HuntParams())
    if h.get("budget") is not None:
        out["budget"] = number("hunt.budget", h["budget"], 0, MAX_HUNT_BUDGET)
        if out["budget"] <= 0:
            raise ValueError(f"hunt.budget must be above 0 seconds, got {show(h['budget'])}")
    if h.get("seeds") is not None:
        out["seeds"] = integer("hunt.seeds", h["seeds"], 1, MAX_SIM_SEEDS)
    if out["budget"] is None and out["seeds"] is None:
        raise ValueError("hunt needs a budget or a number of seeds")
    for name, lo, hi in (("confirm", 0, MAX_REAL_RUNS), ("rare", 0, MAX_REAL_RUNS),
                         ("workers", 1, MAX_HUNT_WORKERS)):
        if name in h:
            out[name] = integer(f"hunt.{name}", h[name], lo, hi)
    kw = matrix_config(d)  # the other tasks' count (checked there)
    rows = len(kw["builds"]) * len(kw.get("profiles") or [None]) * len(kw.get("modes", [None]))
    per = kw["seeds"] + math.ceil(kw.get("sim_seeds", 0) / kw.get("sim_batch", 25)) + 1
    if rows * per > MAX_TASKS:
        raise ValueError(f"{rows * per} tasks; a matrix has at most {MAX_TASKS}")
    return out


def project_revision() -> str | None:
    """The git commit of the source tree this cutover runs from (`+dirty` when tracked
    files differ from it), or None outside a git checkout: a flake is only a flake
    between runs of the same code."""
    root = str(Path(__file__).resolve().parents[2])
    try:
        rev = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def start_matrix(results: str, spec: MatrixSpec, engine: str) -> str:
    """Record a new matrix; its id."""
    store.check_writable(results)
    db = store.open_db(results, create=True)
    try:
        base = "mx-" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        return store.create_matrix(db, base, project_revision(),
                                   {**spec.to_dict(), "engine": engine}, _now())
    finally:
        db.conn.close()


def pending(results: str, ref: str) -> tuple[str, MatrixSpec, list[Task], str | None]:
    """A recorded matrix (`ref`: id, prefix or `latest`): its id, config, the tasks
    without a `done` record (an error is run again), and its revision."""
    with store.opened(results) as db:
        row = store.resolve_matrix(db, ref)
        check_matrix_row(row)
        store.lock_matrix(results, row["id"])  # one resume at a time: held until we exit
        done = {k for k, t in task_records(db, row["id"]).items() if t["status"] == "done"}
    spec = MatrixSpec.from_dict(row["config"])
    todo = [t for t in spec.tasks() if t.key not in done]
    for t in {(t.kind, t.profile, t.mode): t for t in todo}.values():
        t.config(spec.base, results)  # its stored numbers checked now (RunError), not at its turn
    return row["id"], spec, todo, row["revision"]


def finish_if_complete(results: str, matrix_id: str) -> bool:
    """Mark the matrix finished once every task has a record; whether it is."""
    db = store.open_db(results, create=True)
    try:
        row = store.resolve_matrix(db, matrix_id)
        spec = MatrixSpec.from_dict(row["config"])
        have = task_records(db, matrix_id)
        if all(t.key in have for t in spec.tasks()):
            store.finish_matrix(db, matrix_id, _now())
            return True
        return False
    finally:
        db.conn.close()


def task_row(task: Task, status: str, runs: list[str], detail: Mapping[str, Any],
             worker: str = "local", seconds: float = 0.0) -> dict[str, Any]:
    """A `matrix_tasks` row, less its matrix."""
    return {"task": task.key, "kind": task.kind, "build": task.build,
            "seed": task.first_seed, "status": status, "runs": runs, "detail": dict(detail), "worker": worker,
            "seconds": round(seconds, 3), "finished": _now()}


def sim_outcomes(seeds: list[Mapping[str, Any]]) -> list[RunOutcome]:
    """A sim batch's seeds as outcomes of the table (a valid seed stores no run)."""
    out = []
    for d in seeds:
        v = d.get("verdict") or "unknown"
        first = (d.get("failing") or "?", d.get("sentence") or "", d.get("t_ns")) \
            if v in ("invalid", "unknown") and d.get("failing") else None
        summary = (f"SIMULATED {v.upper()}: {d.get('failing') or ''}: {d.get('sentence')}"
                   if first else d.get("error") or f"SIMULATED {v.upper()} (seed {d.get('seed')})")
        out.append(RunOutcome(d.get("run") or "", "", v, suite.EXIT_CODES.get(v, EXIT_HARNESS),
                              summary, {}, first,
                              d.get("seed"), 0.0,
                              {p: {"count": 1, "first_ns": None} for p in d.get("coverage")
                               or []}))
    return out


def harness_error(task: Task, why: str) -> RunOutcome:
    """A task that produced no verdict: an error in the table and the JUnit file."""
    return RunOutcome("-", "", "error", EXIT_HARNESS, f"HARNESS ERROR: {why}",
                      seed=task.first_seed)


HUNT_VERDICTS = {0: "valid", 1: "invalid", 2: "unknown"}  # a hunt's exit code (hunt.py)


def hunt_outcome(db: Any, task: Task, rec: Mapping[str, Any],
                 hunts: Mapping[str, Mapping[str, Any]]) -> RunOutcome:
    """A recorded hunt task as the table's one outcome: valid (nothing found, something
    tested), invalid (a finding: its first violation and checks are those of the
    finding's simulated run), unknown (nothing judged), or an error; its coverage is
    the hunt's in both worlds. `hunts`: the stored hunts by id (`store.hunts`)."""
    hid = rec["detail"].get("hunt")
    h = hunts.get(hid) if isinstance(hid, str) else None
    if rec["status"] != "done" or h is None:
        why = rec["detail"].get("error") or (f"hunt {hid} is not stored" if isinstance(
            hid, str) else "no hunt recorded")
        return harness_error(task, str(why))
    code = h.get("exit_code")
    verdict = HUNT_VERDICTS.get(code, "error") if h.get("status") == "done" else "error"  # type: ignore[arg-type]
    detail = h.get("detail") if isinstance(h.get("detail"), dict) else {}
    findings = store.hunt_findings(db, hid)
    checks: dict[str, dict[str, Any]] = {}
    first = None
    seed = task.first_seed
    if findings:
        seed = findings[0].get("seed") if isinstance(findings[0].get("seed"), int) else seed
        sim = store.runs_by_id(db, [findings[0].get("sim_run") or ""])
        if sim:
            o = stored_outcome(db, next(iter(sim.values())))
            checks, first = o.checks, o.first
    cov = detail.get("coverage") if isinstance(detail.get("coverage"), dict) else {}
    points = {p for w in ("sim", "real") if isinstance(cov.get(w), list)
              for p in cov[w] if isinstance(p, str)}
    search = detail.get("search") if isinstance(detail.get("search"), dict) else {}
    parts = [search.get("wall_s"), detail.get("shrink_s"), detail.get("confirm_s")]
    seconds = sum(x for x in parts if isinstance(x, int | float)) or float(
        rec.get("seconds") or 0.0)
    return RunOutcome(hid, "", verdict, int(code) if isinstance(code, int) else EXIT_HARNESS,
                      f"HUNT {hid}: {h.get('summary') or ''}", checks, first, seed,
                      float(seconds), {p: {"count": 1, "first_ns": None} for p in points})


def recorded_outcomes(results: str, matrix_id: str, task: Task) -> list[RunOutcome]:
    """A recorded hunt task's outcome (what the progress line of a merged one prints)."""
    with store.opened(results) as db:
        rec = task_records(db, matrix_id).get(task.key)
        if rec is None:
            return []
        return [hunt_outcome(db, task, rec, _hunts_by_id(db))]


def _hunts_by_id(db: Any) -> dict[str, dict[str, Any]]:
    return {h["id"]: h for h in store.hunts(db)}


# ------------------------------------------------------------------ the local engine


def run_local(results: str, matrix_id: str, spec: MatrixSpec, tasks: list[Task],
              on_outcome: Callable[[Task, RunOutcome], None] | None = None) -> None:
    """The tasks one at a time in this process, straight into `results` (no scratch
    directory, no merge: nothing here needs Dask). Raises `MatrixAborted` on Ctrl-C or
    SIGTERM (the aborted run stays stored, the task stays pending) and `run.RunError`.

    A run handles the signal itself (`run.execute`); anywhere else (a sim batch,
    recording a task, between tasks) it arrives as KeyboardInterrupt (SIGTERM too, by
    the command's `lifeline.abort_on_signals`) and is the same abort: the caller prints
    one line with the resume hint, never a traceback or nothing at all."""
    started: list[Task] = []
    try:
        _run_local(results, matrix_id, spec, tasks, on_outcome, started)
    except KeyboardInterrupt as e:
        what = "before its first task"
        if started:
            t = started[-1]
            what = f"during {spec.label(t)} " + (
                f"seed {t.seed}" if t.kind == "run" else "its hunt" if t.kind == "hunt"
                else f"seeds {t.key.rsplit('/', 1)[1]}")
        raise MatrixAborted(f"aborted by {e or 'SIGINT'} {what}") from None


def _run_local(results: str, matrix_id: str, spec: MatrixSpec, tasks: list[Task],
               on_outcome: Callable[[Task, RunOutcome], None] | None,
               started: list[Task]) -> None:
    for task in tasks:
        started.append(task)
        if task.kind == "run":
            o = execute(task.config(spec.base, results), out=None, progress=None)
            if o.verdict == "aborted":
                _record(results, matrix_id, None, [o.run_id])
                raise MatrixAborted(f"aborted during {spec.label(task)} seed {task.seed} "
                                    f"(run {o.run_id})")
            status = "error" if o.verdict == "error" else "done"
            detail = {"error": o.summary} if status == "error" else {}
            _record(results, matrix_id, task_row(task, status, [o.run_id], detail,
                                                 seconds=o.seconds), [o.run_id])
            outs = [o]
        elif task.kind == "hunt":
            t0 = time.monotonic()
            h = run_hunt(task, spec.base, results, matrix=matrix_id)
            runs = hunt_runs(results, h.hunt_id)
            detail = h.detail()
            _record(results, matrix_id, task_row(task, "error" if "error" in detail else "done",
                                                 runs, detail, seconds=time.monotonic() - t0),
                    runs)
            outs = recorded_outcomes(results, matrix_id, task)
        else:
            t0 = time.monotonic()
            seeds, stored = run_sim_batch(task, spec.base, results)
            _record(results, matrix_id,
                    task_row(task, "done", stored, {"seeds": seeds},
                             seconds=time.monotonic() - t0), stored)
            outs = sim_outcomes(seeds)
        if on_outcome is not None:
            for o in outs:
                on_outcome(task, o)


def _record(results: str, matrix_id: str, row: Mapping[str, Any] | None,
            runs: list[str]) -> None:
    """Tag the task's runs with the matrix and record the task, in one transaction."""
    db = store.open_db(results, create=True)
    try:
        with store.write_transaction(db):
            for rid in runs:
                store.tag_run(db, rid, matrix_id)
            if row is not None:
                store.record_task(db, {"matrix": matrix_id, **row})
    finally:
        db.conn.close()


def matrix_rows(results: str, matrix_id: str) -> Rows:
    """The detection table's rows of a recorded matrix, from what is stored: per row
    (build, and mode/profile when they vary), the outcomes of its finished tasks in
    seed order."""
    with store.opened(results) as db:
        return rows_of(db, store.resolve_matrix(db, matrix_id))


def rows_of(db: Any, row: Mapping[str, Any]) -> Rows:
    """`matrix_rows` of a `matrices` row, on an open database."""
    check_matrix_row(row)  # a damaged row is one line (`config_check`), not a traceback
    spec = MatrixSpec.from_dict(row["config"])
    done = task_records(db, row["id"])
    runs = store.runs_by_id(db, [r for t in done.values() for r in t["runs"]])
    hunts = _hunts_by_id(db) if spec.hunt else {}
    by: dict[str, list[RunOutcome]] = {}
    for task in spec.tasks():
        label = spec.label(task)
        rec = done.get(task.key)
        if rec is None:
            continue
        outs = by.setdefault(label, [])
        if task.kind == "hunt":
            outs.append(hunt_outcome(db, task, rec, hunts))
        elif task.kind == "sim" and rec["status"] == "done":
            outs += sim_outcomes(rec["detail"].get("seeds") or [])
        elif rec["runs"] and rec["runs"][0] in runs:
            outs.append(stored_outcome(db, runs[rec["runs"][0]]))
        else:
            outs.append(harness_error(task, rec["detail"].get("error") or "no run stored"))
    return [(label, sorted(os_, key=lambda o: o.seed or 0)) for label, os_ in by.items()]


def stored_outcome(db: Any, r: Mapping[str, Any]) -> RunOutcome:
    """A stored run as the table's outcome (verdicts as stored, e.g. after `check`)."""
    checks = {k: v["detail"] or {"valid": v["valid"]}
              for k, v in store.checks(db, r["id"]).items()}
    first = suite.first_violation(checks) if r["verdict"] == "invalid" else None
    # A damaged row is shown as what it is (an unknown outcome), never a traceback.
    verdict = r["verdict"] if isinstance(r["verdict"], str) else "unknown"
    code = r["exit_code"] if isinstance(r["exit_code"], int) else 2
    try:
        seconds = float(r["duration_s"] or 0.0)
    except (TypeError, ValueError):
        seconds = 0.0
    seed = r["seed"] if isinstance(r["seed"], int) else None
    return RunOutcome(r["id"], "", verdict, code, str(r["summary"] or ""), checks, first, seed,
                      seconds, store.coverage_of(db, r["id"]))


def is_fixed(label: str) -> bool:
    """Whether a table row is the fixed build (its label may name a mode or profile)."""
    return label.split(" ")[0] == "fixed"


def exit_code(rows: Rows) -> int:
    """Like a checker: 1 when the fixed build failed or a switch (or elastickv as it stands) escaped every seed it
    was judged on; else 3 when a task produced no verdict (a harness error is never
    read as a verdict); else 0."""
    def judged(os_: list[RunOutcome]) -> list[RunOutcome]:
        return [o for o in os_ if o.verdict not in ("error", "aborted")]

    fixed_bad = any(o.verdict != "valid" for b, os_ in rows if is_fixed(b) for o in judged(os_))
    never = any(not is_fixed(b) and judged(os_)
                and not any(o.verdict == "invalid" for o in os_) for b, os_ in rows)
    if fixed_bad or never:
        return 1
    return EXIT_HARNESS if any(len(judged(os_)) < len(os_) for _b, os_ in rows) else 0


def violated(o: RunOutcome) -> set[str]:
    """What a run violated: each failing invariant of the cutover checker ("I1", ...)
    and each other failing checker by name."""
    out: set[str] = set()
    for name, r in o.checks.items():
        if r.get("valid") != "invalid":
            continue
        if name == "cutover":
            invs = r.get("invariants") or {}
            out |= {k for k, v in invs.items() if isinstance(v, dict) and not v.get("valid")}
            if not invs and r.get("failing"):
                out.add(str(r["failing"]))
        else:
            out.add(name)
    return out


def caught_column(build: str, bad: list[RunOutcome]) -> str:
    """Who caught the build's invalid runs: the expected invariant's count first, then
    the runs it missed, by what failed first there ("other: cutover I3 (1)")."""
    expected = EXPECTED.get(build)
    if expected is None:
        by = Counter(_caught_by(o) for o in bad)
        return ", ".join(f"{k} ({n})" for k, n in by.most_common()) or "-"
    hit = [o for o in bad if expected in violated(o)]
    other = Counter(_caught_by(o) for o in bad if o not in hit)
    parts = [f"{expected} ({len(hit)})"] if hit else []
    if other:
        parts.append("other: " + ", ".join(f"{k} ({n})" for k, n in other.most_common()))
    return ", ".join(parts) or "-"


def table(rows: Rows, seeds: int) -> str:
    """The detection table: per build, how often caught, the median time into the run
    of the first violation, the invariant it is expected to violate, and what caught
    it: that invariant, or (shown apart) another."""
    head = (f"{'build':<28} {'detected':>11} {'median s':>9} {'coverage':>8}  "
            f"{'expects':<16} caught by",)
    lines = [head[0], "-" * 96]
    for build, outcomes in rows:
        bad = [o for o in outcomes if o.verdict == "invalid"]
        errs = [o for o in outcomes if o.verdict in ("error", "unknown")]
        times = [o.first[2] / 1e9 for o in bad if o.first and isinstance(o.first[2], int | float)]
        med = f"{statistics.median(times):.1f}" if times else "-"
        caught = caught_column(build.split(" ")[0], bad)
        if is_fixed(build):
            col = f"{len(outcomes) - len(bad) - len(errs)}/{len(outcomes)} valid"
        else:
            col = f"{len(bad)}/{len(outcomes)}"
        if errs:
            caught += f"; {len(errs)} unknown/error"
        reached = set().union(*(o.coverage for o in outcomes)) & set(POINTS)
        cov = f"{len(reached)}/{len(POINTS)}"
        expects = "-" if is_fixed(build) else (EXPECTED.get(build.split(" ")[0]) or "any")
        lines.append(f"{build:<28} {col:>11} {med:>9} {cov:>8}  {expects:<16} {caught}")
    return "\n".join(lines)


def _caught_by(o: RunOutcome) -> str:
    if not o.first:
        return "?"
    name = o.first[0]
    if name == "cutover":
        inv = (o.checks.get("cutover") or {}).get("failing")
        return f"cutover {inv}" if inv else "cutover"
    return name


def stored_rows(results: str) -> Rows:
    """(build, [RunOutcome]) for every finished run in `results`, fixed build first."""
    with store.opened(results) as db:
        by: dict[str, list[RunOutcome]] = {}
        for r in sorted(store.runs(db), key=lambda r: (r["bugs"] or "", r["seed"] or 0)):
            if r["status"] not in ("done", "error"):
                continue
            profile = store.run_config(r).get("profile") or "fixed"
            by.setdefault(r["bugs"] or profile, []).append(stored_outcome(db, r))
    names = (["fixed"] if "fixed" in by else []) + sorted(b for b in by if b != "fixed")
    return [(b, by[b]) for b in names]
