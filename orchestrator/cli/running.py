"""`cutover run`, `cutover sim` and `cutover hunt`: a run on processes, a search in the
simulator, and both in one.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from orchestrator.errors import fail
from orchestrator.run.config import (
    DEFAULT_CUTOVER,
    SCENARIOS,
    SIM_DEFAULTS,
    WORKLOADS,
    default,
)

if TYPE_CHECKING:
    from orchestrator.run.config import RunConfig

from orchestrator.cli.common import (
    Finite,
    _ranged,
    _user_error,
    main,
    profile_option,
    results_option,
)

# ------------------------------------------------------------------------------- run


def _cutover_at(value: str) -> float | None:
    if value == "none":
        return None
    try:
        v = float(value)
    except ValueError:
        raise click.BadParameter(f"expected SECONDS or none, got {value!r}") from None
    if v < 0:
        raise click.BadParameter("must be >= 0")
    return v


def _plan_file_config(cfg: RunConfig, plan_file: str) -> RunConfig:
    """A plan file that carries its run's config (a shrunk plan from `cutover sim`, a
    run's config.json) replays that config: its nodes, time limit, bugs, seed and cutover
    time belong to the schedule. A flag given on the command line still wins, whichever
    field it sets (`config.config_for_plan_file`): a flag's parameter name is its field's
    (tests/orchestrator/test_config.py checks `run`'s)."""
    from dataclasses import fields

    from orchestrator.run.config import RunConfig as _RC
    from orchestrator.run.config import RunError, config_for_plan_file

    ctx = click.get_current_context()
    names = {f.name for f in fields(_RC)}
    given = {name for name in ctx.params if name in names
             and getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"}
    try:  # the whole file, plan included, is checked here: before any run row exists
        return config_for_plan_file(plan_file, cfg, given)
    except RunError as e:
        _user_error(e)


# The parameters of `run` that are not RunConfig fields: every other one is the field
# of its name, and `run` builds its config from them.
RUN_NOT_CONFIG = ("junit", "replay")


@main.command()
@click.option("--nodes", type=_ranged("nodes"), default=default("nodes"), show_default=True)
@click.option("--time-limit", type=_ranged("time_limit", 1, upper=False),
              default=default("time_limit"), show_default=True,
              help="Seconds of workload and faults (plus set-up, a quiet period and checks).")
@click.option("--rate", type=_ranged("rate", upper=False), default=default("rate"),
              show_default=True, help="Target client ops per second, all workers together.")
@click.option("--concurrency", type=_ranged("concurrency"),
              help="Client workers (default: 2 per node).")
@click.option("--workload", type=click.Choice(list(WORKLOADS)), default=default("workload"),
              show_default=True)
@click.option("--keys", type=_ranged("keys"), default=default("keys"), show_default=True)
@click.option("--nemesis", default=default("nemesis"), show_default=True,
              help="none, all, or a comma list of kill,power,pause,partition,net,snapshot,"
                   "rotate,enable,corrupt,clock,storage,races (the fault families the plan "
                   "may use; clock, storage and races are not in all: all,clock,storage,races "
                   "adds them).")
@click.option("--scenario", type=click.Choice(list(SCENARIOS)), default=default("scenario"),
              show_default=True,
              help="How the plan is made: swarm (generative, the scripted cutover sequence "
                   "on some seeds), generative, sequence (the script), churn (Figure 8).")
@click.option("--nemesis-interval", type=_ranged("nemesis_interval", 0.5, upper=False),
              default=default("nemesis_interval"),
              show_default=True, help="Scale of the gaps between timed faults (seconds).")
@click.option("--cutover-at", default=None,
              help="Seconds into the run to request EnableRaftEnvelope, or none "
                   "(default: a third of --time-limit).")
@click.option("--bug", "bugs", multiple=True, help="Put a known defect back (see `cutover bugs`).")
@profile_option
@click.option("--snapshot-every", type=_ranged("snapshot_every", upper=False),
              help="Entries between a node's automatic snapshots (default: drawn from the "
                   "seed, from a few dozen to a few thousand).")
@click.option("--max-msg-bytes", type=_ranged("max_msg_bytes", upper=False),
              help="Payload bytes per Raft append message; 1 sends one entry per message "
                   "(default: drawn from the seed).")
@click.option("--max-inflight", type=_ranged("max_inflight", upper=False),
              help="Append messages in flight per follower (default: drawn from the seed).")
@click.option("--seed", type=int, help="Seed of the plan and the workload (default: random, "
                                       "printed first).")
@click.option("--results", default=default("results"), show_default=True,
              help="Results directory.")
@click.option("--junit", "junit", help="Also write a JUnit XML summary here.")
@click.option("--replay", help="Run again with a stored run's config (a run id in --results, "
                               "`latest`, or a config.json); the other flags are ignored.")
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False),
              help="Play this nemesis plan (a plan file, e.g. a shrunk one from `cutover sim`, "
                   "or a run's config.json) instead of making one from the seed.")
def run(nodes: int, time_limit: float, rate: float, concurrency: int | None, workload: str,
        keys: int, nemesis: str, scenario: str, nemesis_interval: float,
        cutover_at: str | None, bugs: tuple[str, ...], profile: str,
        snapshot_every: int | None, max_msg_bytes: int | None, max_inflight: int | None,
        seed: int | None, results: str, junit: str | None, replay: str | None,
        plan_file: str | None) -> None:
    """Run one fault-injection test end to end and print its verdict."""
    from orchestrator.lifeline import abort_on_signals

    abort_on_signals()  # first: a SIGTERM from here on ends with a line and exit 130
    from orchestrator.nightly.junit import write_junit
    from orchestrator.real.run import execute
    from orchestrator.run.config import RunConfig, RunError, replay_config

    if replay:
        try:
            cfg = replay_config(replay, results)
        except RunError as e:
            fail(f"cannot replay {replay}: {e}")
        cfg.results = results
    else:  # every parameter but RUN_NOT_CONFIG is the field of its name
        params = click.get_current_context().params
        cfg = RunConfig(**{**{k: v for k, v in params.items() if k not in RUN_NOT_CONFIG},
                           "bugs": list(bugs),
                           "cutover_at": DEFAULT_CUTOVER if cutover_at is None
                           else _cutover_at(cutover_at)})
        if plan_file:
            cfg = _plan_file_config(cfg, plan_file)
    try:
        outcome = execute(cfg)
    except RunError as e:
        _user_error(e)
    for line in _next_lines(outcome.run_id, cfg.results, outcome.verdict):
        click.echo(line)
    if junit:
        try:
            write_junit(junit, "cutover run",
                        [(",".join(cfg.bugs) or cfg.profile, outcome)])
        except OSError as e:
            fail(f"cannot write {junit}: {e.strerror}")
    sys.exit(outcome.exit_code)


def _next_lines(run_id: str, results: str, verdict: str) -> list[str]:
    """What to type next, after the verdict: the run by its id (not `latest`, which a
    later run changes), its report, and the browser of all runs."""
    if not run_id or verdict not in ("valid", "invalid", "unknown"):
        return []  # refused, aborted or a harness error: its line stays the last
    opt = "" if results == default("results") else f" --results {results}"
    lines = [f"run {run_id}", "next:", f"  cutover show {run_id}{opt}"]
    if verdict in ("invalid", "unknown"):
        lines.append(f"  cutover report {run_id}{opt} -o {run_id}.html")
    lines += [f"  cutover run --replay {run_id}{opt}", f"  cutover serve{opt}"]
    return lines


def search_options(f: Any) -> Any:
    """The simulated search's own flags, the same on `sim` and `hunt` (docs/sim.md)."""
    f = click.option("--crash-points", type=click.IntRange(0, 1000), default=0,
                     show_default=True,
                     help="Re-run each seed that held N times, each crashed at one "
                          "durability boundary it crossed (crash-consistency exploration, "
                          "docs/sim.md).")(f)
    f = click.option("--guided/--no-guided", default=False, show_default=True,
                     help="Keep a corpus of plans that reached new protocol states and run "
                          "about half the seeds as mutants of them (docs/sim.md).")(f)
    return click.option("--buggify/--no-buggify", default=False, show_default=True,
                        help="Arm a seed-drawn subset of the node's BUGGIFY points "
                             "(docs/sim.md).")(f)


@main.command()
@click.option("--seeds", type=click.IntRange(min=1), help="Simulate seeds first..first+N-1.")
@click.option("--budget", type=Finite(min=0, min_open=True),
              help="Simulate seeds until this many seconds of wall time are spent.")
@click.option("--first-seed", type=int, default=1, show_default=True)
@click.option("--nodes", type=_ranged("nodes"), default=default("nodes"), show_default=True)
@click.option("--time-limit", type=_ranged("time_limit", 1, upper=False),
              default=SIM_DEFAULTS["time_limit"], show_default=True,
              help="Simulated seconds of workload and faults per seed.")
@click.option("--rate", type=_ranged("rate", upper=False), default=SIM_DEFAULTS["rate"],
              show_default=True, help="Client ops per simulated second.")
@click.option("--nemesis", default=default("nemesis"), show_default=True)
@click.option("--scenario", type=click.Choice(list(SCENARIOS)), default=default("scenario"),
              show_default=True)
@click.option("--cutover-at", default=None, help="Seconds, or none (default: a third).")
@click.option("--bug", "bugs", multiple=True, help="Put a known defect back.")
@profile_option
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--results", default=default("results"), show_default=True)
@click.option("--shrink/--no-shrink", default=True, show_default=True,
              help="Shrink the first failing seed of each kind to a minimal plan.")
@search_options
@click.option("--replay", "replay_file", type=click.Path(dir_okay=False),
              help="Reproduce a plan file (a shrunk one) exactly, and nothing else.")
def sim(seeds: int | None, budget: float | None, first_seed: int, nodes: int, time_limit: float,
        rate: float, nemesis: str, scenario: str, cutover_at: str | None,
        bugs: tuple[str, ...], profile: str, workers: int, results: str, shrink: bool,
        buggify: bool, guided: bool, crash_points: int, replay_file: str | None) -> None:
    """The node's own code in a deterministic simulation: many seeds, failing ones
    stored as runs and shrunk to a minimal plan. Exit 0: no seed failed; 1: one did;
    2: every seed was vacuous (no cutover, fault or operation it was asked for)."""
    from orchestrator.lifeline import abort_on_signals

    abort_on_signals()  # first: a SIGTERM ends the pool's workers, a line, exit 130
    from orchestrator.run.config import RunConfig, RunError
    from orchestrator.sim import cli as simcli

    if replay_file:
        # A replay is exact: the file's config, not the flags. A flag that would have
        # changed the run (once `--profile fixed`, silently played on elastickv) is named.
        ctx = click.get_current_context()
        ignored = sorted(p.opts[0] for p in ctx.command.params
                         if p.name not in ("replay_file", "results", "workers")
                         and getattr(ctx.get_parameter_source(p.name or ""), "name", None)
                         == "COMMANDLINE")
        if ignored:
            fail(f"--replay plays the file's own config exactly; {', '.join(ignored)} would "
                 f"not be used (to play its plan with other flags: cutover run --plan FILE)")
        sys.exit(simcli.replay(replay_file, results))
    if (seeds is None) == (budget is None):
        fail("give exactly one of --seeds N and --budget SECONDS")
    cfg = RunConfig(nodes=nodes, time_limit=time_limit, rate=rate, nemesis=nemesis,
                    scenario=scenario,
                    cutover_at=DEFAULT_CUTOVER if cutover_at is None
                    else _cutover_at(cutover_at),
                    bugs=list(bugs), profile=profile, results=results, seed=first_seed,
                    buggify=buggify)
    try:
        cfg.validate()
    except RunError as e:
        _user_error(e)
    sys.exit(simcli.run(cfg, seeds=seeds, budget=budget, first_seed=first_seed,
                        workers=workers, results=results, shrink=shrink, guided=guided,
                        crash_points=crash_points))


# ------------------------------------------------------------------------------ hunt


@main.command()
@click.option("--budget", type=Finite(min=0, min_open=True),
              help="Wall seconds for the search in simulation AND the shrinking of what it "
                   "finds (default 60 unless --seeds is given). The real runs come after "
                   "it, on their own wall time: --confirm runs of each shrunk plan (its "
                   "time limit plus ~10 s each) and --rare runs of --time-limit.")
@click.option("--seeds", type=click.IntRange(min=1),
              help="Search seeds first..first+N-1 (with --budget: those that fit).")
@click.option("--first-seed", type=int, default=1, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Simulation worker processes.")
@click.option("--confirm", type=click.IntRange(0, 100), default=3, show_default=True,
              help="Real runs of each finding's shrunk plan.")
@click.option("--rare", type=click.IntRange(0, 100), default=1, show_default=True,
              help="Real runs of passing seeds that reached rare coverage points.")
@profile_option
@click.option("--bug", "bugs", multiple=True, help="Put a known defect back (see `cutover bugs`).")
@click.option("--nemesis", default=default("nemesis"), show_default=True)
@click.option("--scenario", type=click.Choice(list(SCENARIOS)), default=default("scenario"),
              show_default=True)
@click.option("--nodes", type=_ranged("nodes"), default=default("nodes"), show_default=True)
@click.option("--time-limit", type=_ranged("time_limit", 1, upper=False),
              default=SIM_DEFAULTS["time_limit"], show_default=True,
              help="Seconds of workload and faults per seed.")
@click.option("--rate", type=_ranged("rate", upper=False), default=SIM_DEFAULTS["rate"],
              show_default=True, help="Client ops per second.")
@search_options
@results_option
def hunt(budget: float | None, seeds: int | None, first_seed: int, workers: int, confirm: int,
         rare: int, profile: str, bugs: tuple[str, ...], nemesis: str, scenario: str,
         nodes: int, time_limit: float, rate: float, buggify: bool, guided: bool,
         crash_points: int, results: str) -> None:
    """Search where it is cheap, confirm where it is real: simulated seeds within the
    budget, each failure kind shrunk once (inside the budget), each shrunk plan replayed
    on real processes --confirm times, a few real runs of rare-coverage seeds; one
    summary and a hunt record (`list`, `show`, `serve`, `trend`). Exit 0: nothing found
    (something tested); 1: a finding; 2: every seed vacuous or undecided; 3: harness
    error."""
    from orchestrator.lifeline import abort_on_signals

    abort_on_signals()  # first: a SIGTERM ends the pool and the real run, a line, 130
    from orchestrator import store
    from orchestrator.run.config import RunConfig, RunError
    from orchestrator.search.hunt import hunt as run_hunt
    from orchestrator.search.hunt import summary_lines
    from orchestrator.ui.report import write_report

    if budget is None and seeds is None:
        budget = 60.0
    cfg = RunConfig(nodes=nodes, time_limit=time_limit, rate=rate, nemesis=nemesis,
                    scenario=scenario, bugs=list(bugs), profile=profile, results=results,
                    seed=first_seed, buggify=buggify)
    try:
        cfg.validate()
        res = run_hunt(cfg, results=results, budget=budget, seeds=seeds,
                       first_seed=first_seed, workers=workers, confirm=confirm, rare=rare,
                       guided=guided, crash_points=crash_points,
                       say=lambda m: click.echo(m, err=True),
                       report=lambda rid: write_report(results, rid),
                       config_doc={"budget": budget, "seeds": seeds, "first_seed": first_seed,
                                   "workers": workers, "confirm": confirm, "rare": rare,
                                   "guided": guided, "crash_points": crash_points})
    except (RunError, store.StoreError) as e:
        _user_error(e)
    for ln in summary_lines(res):
        click.echo(ln)
    sys.exit(res.exit_code)
