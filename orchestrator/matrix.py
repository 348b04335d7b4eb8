"""The detection benchmark (`cutover matrix`): the fixed build and each bug switch over
K seeds with every nemesis; how often each switch was caught, how far into the run the
first violation happened, whether the invariant it is expected to violate (`EXPECTED`)
caught it or another one did, and how many protocol-state coverage points the build's
runs reached together. `--profile elastickv` runs every build as elastickv behaves."""
from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable

from checker import suite
from checker.coverage import POINTS
from nemesis.plan import DEFAULT_SCENARIO
from node.server import ALL_BUGS, PROFILES

from . import store
from .run import RunConfig, RunOutcome, execute

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


def run_matrix(build_names: list[str], seeds: int, first_seed: int, time_limit: float,
               nodes: int, nemesis: str, results: str,
               on_outcome: Callable[[str, int, RunOutcome], None] | None = None,
               scenario: str = DEFAULT_SCENARIO, profile: str = "fixed") -> Rows:
    """Every build over seeds first_seed.. (one `cutover run` each, every node in
    `profile`); (build, outcomes) in order. Raises `run.RunError` (a harness failure)
    or `MatrixAborted`."""
    rows: Rows = []
    for build in build_names:
        outcomes = []
        for seed in range(first_seed, first_seed + seeds):
            cfg = RunConfig(nodes=nodes, time_limit=time_limit, nemesis=nemesis,
                            bugs=[] if build in PROFILES else [build], seed=seed,
                            results=results, scenario=scenario, profile=profile)
            o = execute(cfg, out=None, progress=None)
            if o.verdict == "aborted":
                raise MatrixAborted(f"aborted during {build} seed {seed} (run {o.run_id})")
            outcomes.append(o)
            if on_outcome is not None:
                on_outcome(build, seed, o)
        rows.append((build, outcomes))
    return rows


def exit_code(rows: Rows) -> int:
    """Like a checker: 1 when the fixed build failed or a switch (or elastickv as it
    stands) escaped every seed."""
    fixed_bad = any(o.verdict != "valid" for b, os_ in rows if b == "fixed" for o in os_)
    never = any(b != "fixed" and not any(o.verdict == "invalid" for o in os_)
                for b, os_ in rows)
    return 1 if fixed_bad or never else 0


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
        caught = caught_column(build, bad)
        if build == "fixed":
            col = f"{len(outcomes) - len(bad) - len(errs)}/{len(outcomes)} valid"
        else:
            col = f"{len(bad)}/{len(outcomes)}"
        if errs:
            caught += f"; {len(errs)} unknown/error"
        reached = set().union(*(o.coverage for o in outcomes)) & set(POINTS)
        cov = f"{len(reached)}/{len(POINTS)}"
        expects = "-" if build == "fixed" else (EXPECTED.get(build) or "any")
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
            checks = {k: v["detail"] or {"valid": v["valid"]}
                      for k, v in store.checks(db, r["id"]).items()}
            first = suite.first_violation(checks) if r["verdict"] == "invalid" else None
            o = RunOutcome(r["id"], "", r["verdict"] or "unknown", r["exit_code"] or 0,
                           r["summary"] or "", checks, first, r["seed"],
                           float(r["duration_s"] or 0.0), store.coverage_of(db, r["id"]))
            profile = store.run_config(r).get("profile") or "fixed"
            by.setdefault(r["bugs"] or profile, []).append(o)
    names = (["fixed"] if "fixed" in by else []) + sorted(b for b in by if b != "fixed")
    return [(b, by[b]) for b in names]
