"""The detection benchmark (`cutover matrix`): the fixed build and each bug switch over
K seeds with every nemesis; how often each switch was caught, how far into the run the
first violation happened, which checker caught it, and how many protocol-state coverage
points the build's runs reached together."""
from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable

from checker import suite
from checker.coverage import POINTS
from nemesis.plan import DEFAULT_SCENARIO
from node.server import ALL_BUGS

from . import store
from .run import RunConfig, RunOutcome, execute

Rows = list[tuple[str, list[RunOutcome]]]


class MatrixAborted(RuntimeError):
    """A run of the matrix was aborted (Ctrl-C, SIGTERM): the matrix stops there."""


def builds(bug_spec: str, fixed: bool = True) -> list[str]:
    """The builds to run: "fixed" (unless not `fixed`) and the switches of `bug_spec`
    ("all" or a comma list); ValueError names an unknown switch."""
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
    return (["fixed"] if fixed else []) + bugs


def run_matrix(build_names: list[str], seeds: int, first_seed: int, time_limit: float,
               nodes: int, nemesis: str, results: str,
               on_outcome: Callable[[str, int, RunOutcome], None] | None = None,
               scenario: str = DEFAULT_SCENARIO) -> Rows:
    """Every build over seeds first_seed.. (one `cutover run` each); (build, outcomes)
    in order. Raises `run.RunError` (a harness failure) or `MatrixAborted`."""
    rows: Rows = []
    for build in build_names:
        outcomes = []
        for seed in range(first_seed, first_seed + seeds):
            cfg = RunConfig(nodes=nodes, time_limit=time_limit, nemesis=nemesis,
                            bugs=[] if build == "fixed" else [build], seed=seed,
                            results=results, scenario=scenario)
            o = execute(cfg, out=None, progress=None)
            if o.verdict == "aborted":
                raise MatrixAborted(f"aborted during {build} seed {seed} (run {o.run_id})")
            outcomes.append(o)
            if on_outcome is not None:
                on_outcome(build, seed, o)
        rows.append((build, outcomes))
    return rows


def exit_code(rows: Rows) -> int:
    """Like a checker: 1 when the fixed build failed or a switch escaped every seed."""
    fixed_bad = any(o.verdict != "valid" for b, os_ in rows if b == "fixed" for o in os_)
    never = any(b != "fixed" and not any(o.verdict == "invalid" for o in os_)
                for b, os_ in rows)
    return 1 if fixed_bad or never else 0


def table(rows: Rows, seeds: int) -> str:
    """The detection table: per build, how often caught, the median time into the run
    of the first violation, and by which checker."""
    head = (f"{'build':<28} {'detected':>11} {'median s':>9} {'coverage':>8}  caught by",)
    lines = [head[0], "-" * 80]
    for build, outcomes in rows:
        bad = [o for o in outcomes if o.verdict == "invalid"]
        errs = [o for o in outcomes if o.verdict in ("error", "unknown")]
        times = [o.first[2] / 1e9 for o in bad if o.first and isinstance(o.first[2], int | float)]
        med = f"{statistics.median(times):.1f}" if times else "-"
        by = Counter(_caught_by(o) for o in bad)
        caught = ", ".join(f"{k} ({n})" for k, n in by.most_common()) or "-"
        if build == "fixed":
            col = f"{len(outcomes) - len(bad) - len(errs)}/{len(outcomes)} valid"
        else:
            col = f"{len(bad)}/{len(outcomes)}"
        if errs:
            caught += f"; {len(errs)} unknown/error"
        reached = set().union(*(o.coverage for o in outcomes)) & set(POINTS)
        cov = f"{len(reached)}/{len(POINTS)}"
        lines.append(f"{build:<28} {col:>11} {med:>9} {cov:>8}  {caught}")
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
            checks = {k: v["detail"] or {"valid": v["valid"]}
                      for k, v in store.checks(db, r["id"]).items()}
            first = suite.first_violation(checks) if r["verdict"] == "invalid" else None
            o = RunOutcome(r["id"], "", r["verdict"] or "unknown", r["exit_code"] or 0,
                           r["summary"] or "", checks, first, r["seed"],
                           float(r["duration_s"] or 0.0), store.coverage_of(db, r["id"]))
            by.setdefault(r["bugs"] or "fixed", []).append(o)
    names = (["fixed"] if "fixed" in by else []) + sorted(b for b in by if b != "fixed")
    return [(b, by[b]) for b in names]
