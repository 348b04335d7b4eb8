"""`cutover matrix`: the detection benchmark. Runs the fixed build and each bug switch
over K seeds with every nemesis, and prints how often each switch was caught, how far
into the run the first violation happened, and which checker caught it."""
from __future__ import annotations

import statistics
import sys
from collections import Counter

import click


def _all_bugs() -> list[str]:
    from node.server import ALL_BUGS

    return sorted(ALL_BUGS)


@click.command()
@click.option("--seeds", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="Seeds per build (1..K).")
@click.option("--first-seed", type=int, default=1, show_default=True)
@click.option("--time-limit", type=click.FloatRange(min=5), default=60.0, show_default=True)
@click.option("--bugs", "bug_spec", default="all", show_default=True,
              help="all, or a comma list of switch names.")
@click.option("--no-fixed", is_flag=True, help="Skip the fixed build.")
@click.option("--nodes", type=click.IntRange(3, 9), default=5, show_default=True)
@click.option("--nemesis", default="all", show_default=True)
@click.option("--results", default="results", show_default=True)
@click.option("--junit", "junit", help="Write a JUnit XML summary here.")
@click.option("--summarize", is_flag=True,
              help="Run nothing: print the table (and --junit) from the runs stored in "
                   "--results, with their stored verdicts (e.g. after `cutover check`).")
def matrix(seeds: int, first_seed: int, time_limit: float, bug_spec: str, no_fixed: bool,
           nodes: int, nemesis: str, results: str, junit: str | None,
           summarize: bool) -> None:
    """Detection table: every bug switch over K seeds, and the fixed build."""
    from .cli import fail
    from .run import RunConfig, RunError, execute

    if summarize:
        try:
            rows = stored_rows(results)
        except Exception as e:  # noqa: BLE001 - StoreError or a damaged row: one line
            fail(str(e))
            return
        click.echo(table(rows, seeds))
        if junit:
            from .junit import write_junit

            write_junit(junit, "cutover matrix", [(b, o) for b, os_ in rows for o in os_])
        return

    known = _all_bugs()
    if bug_spec == "all":
        bugs = known
    else:
        bugs = [b.strip() for b in bug_spec.split(",") if b.strip()]
        bad = [b for b in bugs if b not in known]
        if bad:
            fail(f"unknown bug switch {bad[0]!r}; valid names: {', '.join(known)}")
    builds = ([] if no_fixed else ["fixed"]) + bugs
    cases = []
    rows = []
    for build in builds:
        outcomes = []
        for seed in range(first_seed, first_seed + seeds):
            cfg = RunConfig(nodes=nodes, time_limit=time_limit, nemesis=nemesis,
                            bugs=[] if build == "fixed" else [build], seed=seed,
                            results=results)
            try:
                o = execute(cfg, out=None, progress=None)
            except RunError as e:
                fail(str(e))
                return
            if o.verdict == "aborted":
                fail(f"aborted during {build} seed {seed} (run {o.run_id})", 130)
            outcomes.append(o)
            cases.append((build, o))
            click.echo(f"  {build:<28} seed {seed:<4} {o.verdict:<8} {o.seconds:5.1f}s  "
                       f"{o.summary[:150]}", err=True)
        rows.append((build, outcomes))
    click.echo(table(rows, seeds))
    if junit:
        from .junit import write_junit

        write_junit(junit, "cutover matrix", cases)
    # Exit like a checker: 1 when the fixed build failed or a switch escaped every seed.
    fixed_bad = any(o.verdict != "valid" for b, os_ in rows if b == "fixed" for o in os_)
    never = any(b != "fixed" and not any(o.verdict == "invalid" for o in os_)
                for b, os_ in rows)
    sys.exit(1 if fixed_bad or never else 0)


def table(rows: list, seeds: int) -> str:
    head = (f"{'build':<28} {'detected':>11} {'median s':>9}  caught by",)
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
        lines.append(f"{build:<28} {col:>11} {med:>9}  {caught}")
    return "\n".join(lines)


def _caught_by(o) -> str:  # type: ignore[no-untyped-def]
    if not o.first:
        return "?"
    name = o.first[0]
    if name == "cutover":
        inv = (o.checks.get("cutover") or {}).get("failing")
        return f"cutover {inv}" if inv else "cutover"
    return name


def stored_rows(results: str) -> list:
    """(build, [RunOutcome]) for every finished run in `results`, fixed build first."""
    from checker import suite

    from . import store
    from .run import RunOutcome

    db = store.open_db(results)
    try:
        by: dict[str, list] = {}
        for r in sorted(store.runs(db), key=lambda r: (r["bugs"] or "", r["seed"] or 0)):
            if r["status"] not in ("done", "error"):
                continue
            checks = {k: v["detail"] or {"valid": v["valid"]}
                      for k, v in store.checks(db, r["id"]).items()}
            first = suite.first_violation(checks) if r["verdict"] == "invalid" else None
            o = RunOutcome(r["id"], "", r["verdict"] or "unknown", r["exit_code"] or 0,
                           r["summary"] or "", checks, first, r["seed"],
                           float(r["duration_s"] or 0.0))
            by.setdefault(r["bugs"] or "fixed", []).append(o)
    finally:
        db.conn.close()
    builds = (["fixed"] if "fixed" in by else []) + sorted(b for b in by if b != "fixed")
    return [(b, by[b]) for b in builds]
