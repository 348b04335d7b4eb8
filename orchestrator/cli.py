"""The `cutover` command line: every click command, and nothing but commands.

A command parses its flags, calls the module that does the work, and turns that
module's errors into one line on stderr and an exit code (`orchestrator.errors`):
0 valid, 1 invalid, 2 unknown; 3 and above, the harness could not do its job.

Start-up time is a choice made here, on purpose: each command imports the modules it
runs when it runs. `cutover lin` on a small file must not first load ZeroMQ, SQLite,
jinja2 and the node (about 0.3 s against 0.1 s), and the tests start the CLI hundreds
of times. Those in-function imports are the only ones of the orchestrator. The one
exception is `orchestrator.config` (with `nemesis.plan`, pure Python, about 30 ms): the
flags of `run`, `sim` and `matrix` are built from it (defaults, ranges, choices), so a
default is written once, in `RunConfig`.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from .config import (
    DEFAULT_CUTOVER,
    MATRIX_DEFAULTS,
    PROFILE_NAMES,
    RANGES,
    SCENARIOS,
    SIM_DEFAULTS,
    WORKLOADS,
    default,
)
from .errors import EXIT_ABORTED, EXIT_BAD_INPUT, ReviewError, fail
from .ui import DEFAULT_MAX_OPS

if TYPE_CHECKING:
    from .config import RunConfig

RESULTS_HELP = "The results directory (holds cutover.db)."


class Group(click.Group):
    """Click's usage errors exit 2, which our contract reserves for `unknown`."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            fail("aborted", EXIT_ABORTED)
        except click.ClickException as e:
            fail(e.format_message())
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)


def _user_error(e: Exception) -> NoReturn:
    fail(str(e))


class Finite(click.FloatRange):
    """A FloatRange that refuses NaN and the infinities too: click lets them through (NaN
    compares false with every bound), and `--time-limit nan` once ran no workload phase,
    `--rate nan` lifted the rate limit. A usage error like any other bad value."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if rv != rv or rv in (float("inf"), float("-inf")):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


def _ranged(name: str, lowest: float | None = None, *, upper: bool = True
            ) -> click.ParamType:
    """The click type of the flag of RunConfig number `name`, built from its range
    (`config.RANGES`): a whole number, or a finite one, from the field's lowest (or a
    stricter `lowest` the command asks: a run of under a second is no test) to its
    highest. `upper=False` leaves the highest to `RunConfig.validate` (its one line names
    the range), as these flags always did: their help shows no highest."""
    whole, lo, hi, open_lo = RANGES[name]
    if lowest is not None:
        assert lowest >= lo, (name, lowest)  # a flag may ask more than the field, not less
        lo, open_lo = lowest, False
    top = hi if upper else None
    if whole:
        return click.IntRange(int(lo), None if top is None else int(top), min_open=open_lo)
    return Finite(min=lo, max=top, min_open=open_lo)


results_option = click.option("--results", default=default("results"), show_default=True,
                              help=RESULTS_HELP)
profile_option = click.option(
    "--profile", type=click.Choice(list(PROFILE_NAMES)), default=default("profile"),
    show_default=True,
    help="What the nodes behave as: the fixed protocol, or elastickv as it stands "
         "(its halts exit the process, snapshots without keys, ...; docs/protocol.md).")


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """cutover: a Jepsen-style fault-injection lab for the raft-envelope cutover."""


# --------------------------------------------------------------------------- checker


@main.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--format", "fmt", required=True,
              type=click.Choice(["porcupine-etcd", "porcupine-kv", "jepsen-edn", "jsonl"]),
              help="How the history files are written.")
@click.option("--model", type=click.Choice(["register", "cas-register", "kv"]),
              help="Sequential model (default: per format).")
@click.option("--timeout", type=Finite(min=0, min_open=True), default=60.0,
              show_default=True, help="Seconds per file before the verdict is `unknown`.")
@click.option("--html", "html_out", help="Write the visualization here (a directory when "
                                         "several files are checked).")
@click.option("--tsv", is_flag=True, help="One line per file: FILE, verdict, check seconds.")
@click.option("--all-partitions", is_flag=True,
              help="Check every partition to the end instead of stopping at the first "
                   "violation.")
@click.option("--max-memory", type=Finite(min=50), default=400.0,
              show_default=True,
              help="MB of memory (RSS) a check may hold before its verdict is `unknown`.")
def lin(files: tuple[str, ...], fmt: str, model: str | None, timeout: float,
        html_out: str | None, tsv: bool, all_partitions: bool, max_memory: float) -> None:
    """Check histories for linearizability (Porcupine's algorithm, with extras)."""
    from checker import DEFAULT_MODEL, HistoryError, Verdict, check, get_model, read_history
    from checker.explain import explain
    from checker.visualize import write_html

    model_name = model or DEFAULT_MODEL[fmt]
    worst: list[Verdict] = []
    errors = 0
    if html_out and len(files) > 1:
        os.makedirs(html_out, exist_ok=True)
    for path in files:
        try:
            ops = read_history(path, fmt, model_name)
        except HistoryError as e:
            click.echo(f"error: {e}", err=True)
            errors += 1
            continue
        m = get_model(model_name)
        t0 = time.perf_counter()
        result = check(m, ops, timeout=timeout, stop_early=not all_partitions,
                       max_rss_mb=max_memory)
        secs = time.perf_counter() - t0
        worst.append(result.verdict)
        if tsv:
            click.echo(f"{path}\t{result.verdict.value}\t{secs:.6f}")
        elif len(files) == 1:
            click.echo(explain(m, result))
        else:
            click.echo(f"{path}: {result.verdict.value} ({secs:.3f} s)")
        if html_out:
            out = html_out if len(files) == 1 else os.path.join(
                html_out, os.path.basename(path) + ".html")
            try:
                write_html(out, m, result, title=os.path.basename(path))
            except OSError as e:
                fail(f"cannot write {out}: {e.strerror}")
    if errors:
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(Verdict.worst(worst).exit_code)


@main.command()
def bugs() -> None:
    """List the bug switches: real historical defects a node can be started with."""
    from node.server import ALL_BUGS

    width = max(len(k) for k in ALL_BUGS)
    for name in sorted(ALL_BUGS):
        click.echo(f"{name:<{width}}  {ALL_BUGS[name]}")


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
    (tests/test_config.py checks `run`'s)."""
    from dataclasses import fields

    from .config import RunConfig as _RC
    from .config import RunError, config_for_plan_file

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
                   "rotate,enable,corrupt (the fault families the plan may use).")
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
    from .lifeline import abort_on_signals

    abort_on_signals()  # first: a SIGTERM from here on ends with a line and exit 130
    from .config import RunConfig, RunError, replay_config
    from .junit import write_junit
    from .run import execute

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
    if junit:
        try:
            write_junit(junit, "cutover run",
                        [(",".join(cfg.bugs) or cfg.profile, outcome)])
        except OSError as e:
            fail(f"cannot write {junit}: {e.strerror}")
    sys.exit(outcome.exit_code)


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
@click.option("--replay", "replay_file", type=click.Path(dir_okay=False),
              help="Reproduce a plan file (a shrunk one) exactly, and nothing else.")
def sim(seeds: int | None, budget: float | None, first_seed: int, nodes: int, time_limit: float,
        rate: float, nemesis: str, scenario: str, cutover_at: str | None,
        bugs: tuple[str, ...], profile: str, workers: int, results: str, shrink: bool,
        replay_file: str | None) -> None:
    """The node's own code in a deterministic simulation: many seeds, failing ones
    stored as runs and shrunk to a minimal plan. Exit 0: no seed failed; 1: one did;
    2: every seed was vacuous (no cutover, fault or operation it was asked for)."""
    from .lifeline import abort_on_signals

    abort_on_signals()  # first: a SIGTERM ends the pool's workers, a line, exit 130
    from .config import RunConfig, RunError
    from .sim import cli as simcli

    if replay_file:
        sys.exit(simcli.replay(replay_file, results))
    if (seeds is None) == (budget is None):
        fail("give exactly one of --seeds N and --budget SECONDS")
    cfg = RunConfig(nodes=nodes, time_limit=time_limit, rate=rate, nemesis=nemesis,
                    scenario=scenario,
                    cutover_at=DEFAULT_CUTOVER if cutover_at is None
                    else _cutover_at(cutover_at),
                    bugs=list(bugs), profile=profile, results=results, seed=first_seed)
    try:
        cfg.validate()
    except RunError as e:
        _user_error(e)
    sys.exit(simcli.run(cfg, seeds=seeds, budget=budget, first_seed=first_seed,
                        workers=workers, results=results, shrink=shrink))


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
@results_option
def hunt(budget: float | None, seeds: int | None, first_seed: int, workers: int, confirm: int,
         rare: int, profile: str, bugs: tuple[str, ...], nemesis: str, scenario: str,
         nodes: int, time_limit: float, rate: float, results: str) -> None:
    """Search where it is cheap, confirm where it is real: simulated seeds within the
    budget, each failure kind shrunk once (inside the budget), each shrunk plan replayed
    on real processes --confirm times, a few real runs of rare-coverage seeds; one
    summary and a hunt record (`list`, `show`, `serve`, `trend`). Exit 0: nothing found
    (something tested); 1: a finding; 2: every seed vacuous or undecided; 3: harness
    error."""
    from .lifeline import abort_on_signals

    abort_on_signals()  # first: a SIGTERM ends the pool and the real run, a line, 130
    from . import store
    from .config import RunConfig, RunError
    from .hunt import hunt as run_hunt
    from .hunt import summary_lines
    from .ui.report import write_report

    if budget is None and seeds is None:
        budget = 60.0
    cfg = RunConfig(nodes=nodes, time_limit=time_limit, rate=rate, nemesis=nemesis,
                    scenario=scenario, bugs=list(bugs), profile=profile, results=results,
                    seed=first_seed)
    try:
        cfg.validate()
        res = run_hunt(cfg, results=results, budget=budget, seeds=seeds,
                       first_seed=first_seed, workers=workers, confirm=confirm, rare=rare,
                       say=lambda m: click.echo(m, err=True),
                       report=lambda rid: write_report(results, rid),
                       config_doc={"budget": budget, "seeds": seeds, "first_seed": first_seed,
                                   "workers": workers, "confirm": confirm, "rare": rare})
    except (RunError, store.StoreError) as e:
        _user_error(e)
    for ln in summary_lines(res):
        click.echo(ln)
    sys.exit(res.exit_code)


def _scenarios(_ctx: Any, _param: Any, value: str) -> list[str]:
    modes = [m.strip() for m in value.split(",") if m.strip()]
    bad = [m for m in modes if m not in SCENARIOS]
    if bad or not modes:
        raise click.BadParameter(f"expected a comma list of {', '.join(SCENARIOS)}")
    return modes


# The flags that define a matrix; `--resume` takes them from the recorded matrix.
MATRIX_FLAGS = ("seeds", "first_seed", "time_limit", "bug_spec", "no_fixed", "nodes",
                "nemesis", "scenario", "profile", "sim_seeds", "sim_batch", "hunt_budget",
                "hunt_seeds", "hunt_confirm", "hunt_rare", "hunt_workers")
# The hunt flags that only shape a hunt asked for by --hunt-budget or --hunt-seeds.
HUNT_SHAPE_FLAGS = ("hunt_confirm", "hunt_rare", "hunt_workers")


@main.command()
@click.option("--seeds", type=click.IntRange(0, 1000), default=10, show_default=True,
              help="Seeds per build (1..K) of real runs.")
@click.option("--first-seed", type=int, default=1, show_default=True)
@click.option("--time-limit", type=_ranged("time_limit", 5, upper=False),
              default=MATRIX_DEFAULTS["time_limit"], show_default=True)
@click.option("--bugs", "bug_spec", default="all", show_default=True,
              help="all, none (the fixed build only), or a comma list of switch names.")
@click.option("--no-fixed", is_flag=True, help="Skip the build without switches.")
@click.option("--nodes", type=_ranged("nodes", 3), default=default("nodes"), show_default=True)
@click.option("--nemesis", default=default("nemesis"), show_default=True)
@click.option("--scenario", default=default("scenario"), show_default=True,
              callback=_scenarios,
              help="How each run's plan is made (swarm, generative, sequence, churn); a "
                   "comma list makes each one a nemesis mode of the matrix.")
@click.option("--profile", help="fixed (default) or elastickv (elastickv as it stands: "
                                "docs/findings.md), or a comma list of both, each a mode of "
                                "the matrix. The build without switches is named after it.")
@click.option("--sim-seeds", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also simulate this many seeds per build and mode (`cutover sim`).")
@click.option("--sim-batch", type=click.IntRange(min=1), default=25, show_default=True,
              help="Simulated seeds per task.")
@click.option("--hunt-budget", type=Finite(min=0, min_open=True), metavar="SECONDS",
              help="Also hunt each build (and mode): one `cutover hunt` task per build with "
                   "this budget for its search and shrinking in simulation; its real runs "
                   "(--hunt-confirm, --hunt-rare) come after it. With --seeds 0: hunts only.")
@click.option("--hunt-seeds", type=click.IntRange(min=1), metavar="N",
              help="Each hunt searches seeds --first-seed.. of this count (with "
                   "--hunt-budget: those that fit); alone, it asks for the hunts too.")
@click.option("--hunt-confirm", type=click.IntRange(0, 100), default=3, show_default=True,
              help="Real runs of each shrunk finding of a hunt.")
@click.option("--hunt-rare", type=click.IntRange(0, 100), default=1, show_default=True,
              help="Real runs of a hunt's rare-coverage seeds.")
@click.option("--hunt-workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Simulation processes of each hunt (a hunt task's cores).")
@click.option("--engine", type=click.Choice(["local", "dask"]), default="local",
              show_default=True, help="local: one run at a time here; dask: tasks on a Dask "
                                      "cluster (--scheduler, or --workers local processes).")
@click.option("--scheduler", help="With --engine dask: the scheduler, tcp://HOST:PORT "
                                  "(default: a local cluster of --workers processes).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="With --engine dask and no --scheduler: local worker processes.")
@click.option("--resume", "resume", metavar="MATRIX",
              help="Finish a recorded matrix (an id, a prefix, or latest): run only its "
                   "tasks that never finished, then print its whole table.")
@click.option("--results", default=default("results"), show_default=True)
@click.option("--junit", "junit", help="Write a JUnit XML summary here.")
@click.option("--summarize", is_flag=True,
              help="Run nothing: print the table (and --junit) from the runs stored in "
                   "--results, with their stored verdicts (e.g. after `cutover check`).")
def matrix(seeds: int, first_seed: int, time_limit: float, bug_spec: str, no_fixed: bool,
           nodes: int, nemesis: str, scenario: list[str], profile: str | None,
           sim_seeds: int, sim_batch: int, hunt_budget: float | None, hunt_seeds: int | None,
           hunt_confirm: int, hunt_rare: int, hunt_workers: int, engine: str,
           scheduler: str | None, workers: int, resume: str | None, results: str,
           junit: str | None, summarize: bool) -> None:
    """Detection table: every bug switch over K seeds, and the build without switches
    (the fixed build; with --profile elastickv, elastickv as it stands)."""
    from .lifeline import abort_on_signals

    abort_on_signals()  # first: a SIGTERM ends with a line (and the resume hint), 130
    from . import matrix as mx
    from . import store
    from .config import RunError
    from .junit import write_junit

    if summarize:
        try:
            rows = mx.stored_rows(results)
        except Exception as e:  # noqa: BLE001 - StoreError or a damaged row: one line
            _user_error(e)
        click.echo(mx.table(rows, seeds))
        if junit:
            write_junit(junit, "cutover matrix", [(b, o) for b, os_ in rows for o in os_])
        return
    if scheduler and engine != "dask":
        fail("--scheduler needs --engine dask")
    try:
        if resume:
            ctx = click.get_current_context()
            given = [p for p in MATRIX_FLAGS if ctx.get_parameter_source(p)
                     == click.core.ParameterSource.COMMANDLINE]
            if given:
                fail(f"--resume runs the matrix as it was recorded; drop "
                     f"--{given[0].replace('_', '-')}")
            mid, spec, todo, rev = mx.pending(results, resume)
            here = mx.project_revision()
            if rev and here and rev != here:
                click.echo(f"warning: matrix {mid} was started at revision {rev[:12]}; this "
                           f"tree is at {here[:12]}", err=True)
        else:
            profiles = mx.profiles(profile)
            names = mx.builds(bug_spec, fixed=not no_fixed,
                              profile=profiles[0] if len(profiles) == 1 else "fixed")
            hunting = hunt_budget is not None or hunt_seeds is not None
            if not seeds and not sim_seeds and not hunting:
                fail("nothing to run: give --seeds, --sim-seeds or --hunt-budget")
            ctx = click.get_current_context()
            shape = [p for p in HUNT_SHAPE_FLAGS if ctx.get_parameter_source(p)
                     == click.core.ParameterSource.COMMANDLINE]
            if shape and not hunting:
                fail(f"--{shape[0].replace('_', '-')} needs --hunt-budget or --hunt-seeds")
            spec = mx.MatrixSpec(builds=names, seeds=seeds, first_seed=first_seed,
                                 modes=scenario, sim_seeds=sim_seeds, sim_batch=sim_batch,
                                 profiles=profiles if profile else None,
                                 base=mx.base_config(nodes=nodes, time_limit=time_limit,
                                                     nemesis=nemesis),
                                 hunt={"budget": hunt_budget, "seeds": hunt_seeds,
                                       "confirm": hunt_confirm, "rare": hunt_rare,
                                       "workers": hunt_workers} if hunting else None)
            todo = spec.tasks()
            for t in {(t.kind, t.profile, t.mode): t for t in todo}.values():
                t.config(spec.base, results).validate()
            mid = mx.start_matrix(results, spec, engine)
    except (ValueError, RunError, store.StoreError) as e:
        _user_error(e)
    total = len(spec.tasks())
    click.echo(f"matrix {mid}: {len(todo)} of {total} tasks to run ({engine})", err=True)

    def progress(task: Any, o: Any) -> None:
        click.echo(f"  {spec.label(task):<28} seed {o.seed:<4} {o.verdict:<8} "
                   f"{o.seconds:5.1f}s  {o.summary[:150]}", err=True)

    hint = f"resume with: cutover matrix --resume {mid} --results {results}"
    try:
        if not todo:
            pass
        elif engine == "local":
            try:
                mx.run_local(results, mid, spec, todo, on_outcome=progress)
            except mx.MatrixAborted as e:
                fail(f"{e}; {hint}", EXIT_ABORTED)
        else:
            from .dask_engine import DaskEngineError, run_dask

            try:
                stats = run_dask(results, mid, spec, todo, scheduler=scheduler,
                                 workers=workers, on_outcome=progress,
                                 on_note=lambda m: click.echo(f"  {m}", err=True))
            except DaskEngineError as e:
                _user_error(e)
            click.echo(stats.line(), err=True)
            click.echo(stats.parts(), err=True)
            if stats.aborted:
                fail(f"aborted: {stats.tasks} tasks finished and stored; {hint}", EXIT_ABORTED)
        mx.finish_if_complete(results, mid)
        rows = mx.matrix_rows(results, mid)
    except (RunError, store.StoreError) as e:
        _user_error(e)
    click.echo(mx.table(rows, seeds))
    if junit:
        write_junit(junit, "cutover matrix", [(b, o) for b, os_ in rows for o in os_])
    sys.exit(mx.exit_code(rows))


@main.command()
@click.option("--builds", help="A comma list of builds (table rows) to show (default: all).")
@click.option("--last", type=click.IntRange(min=1), help="Only the last N matrices.")
@results_option
def trend(builds: str | None, last: int | None, results: str) -> None:
    """Per build, the detection rate and median time to violation of each recorded
    matrix, oldest first; then the flakes: one build, seed and revision, two verdicts."""
    from . import store
    from .trend import trend_data, trend_lines

    names = [b.strip() for b in builds.split(",") if b.strip()] if builds else None
    try:
        with store.opened(results) as db:
            data = trend_data(db, builds=names, last=last)
    except store.StoreError as e:
        _user_error(e)
    for ln in trend_lines(data):
        click.echo(ln)


# ---------------------------------------------------------------------------- bench


@main.group()
def bench() -> None:
    """Benchmarks that print figures."""


@bench.command("checker")
@click.option("--corpus", type=click.Path(file_okay=False), default=None,
              help="Porcupine corpus directory (default: the one vendored in "
                   "tests/data/porcupine).")
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True,
              help="Median of this many checks per corpus file.")
@click.option("--ops", type=click.IntRange(min=1), default=100_000, show_default=True)
@click.option("--keys", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--clients", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
def bench_checker(corpus: str | None, repeat: int, ops: int, keys: int, clients: int,
                  seed: int) -> None:
    """Check time on the Porcupine corpus and on a generated history."""
    from .bench import bench_corpus, bench_generated, default_corpus

    cdir = Path(corpus) if corpus else default_corpus()
    if not (cdir / "verdicts.tsv").is_file():
        fail(f"no corpus at {cdir} (expected verdicts.tsv there); pass --corpus DIR")
    click.echo(f"cpus={os.cpu_count()}")
    bench_corpus(cdir, repeat)
    bench_generated(ops, keys, clients, seed)


@bench.command("cluster")
@click.option("--nodes", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--clients", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--seconds", type=Finite(min=1), default=10.0, show_default=True)
@click.option("--keys", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--kills", type=click.IntRange(min=0), default=10, show_default=True,
              help="Leader kills for the election figure.")
@click.option("--seed", type=int, default=1, show_default=True)
def bench_cluster(nodes: int, clients: int, seconds: float, keys: int, kills: int,
                  seed: int) -> None:
    """Throughput, latency and election time of a real cluster (fsync on, no faults)."""
    from .bench import BenchError
    from .bench import bench_cluster as measure

    try:
        measure(nodes, clients, seconds, keys, kills, seed)
    except BenchError as e:
        _user_error(e)


@bench.command("sim")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Default 5-node schedules to time.")
@click.option("--switches", default="no-barrier,stale-check-first,duplicate-marker,"
              "leader-unapplied-marker", show_default=True,
              help="Switches to time the first violation of (comma list, or none).")
@click.option("--cap", type=Finite(min=1), default=60.0, show_default=True,
              help="CPU seconds per switch before giving up.")
def bench_sim(seeds: int, switches: str, cap: float) -> None:
    """Simulated seconds per CPU second of the default schedule (last line
    `sim_per_cpu=X`), and the time to the first violation of a few switches."""
    from node.server import ALL_BUGS

    from .sim import cli as simcli

    names = [] if switches == "none" else [b.strip() for b in switches.split(",") if b.strip()]
    bad = [b for b in names if b not in ALL_BUGS]
    if bad:
        fail(f"unknown bug switch {bad[0]!r}")
    simcli.bench(seeds, names, cap)


@bench.command("coverage")
@click.option("--seeds", type=click.IntRange(min=5), default=40, show_default=True)
@click.option("--first-seed", type=int, default=1, show_default=True)
@click.option("--time-limit", type=Finite(min=5), default=30.0, show_default=True)
@click.option("--scenario", type=click.Choice(["swarm", "generative", "sequence", "churn"]),
              default="swarm", show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
def bench_coverage(seeds: int, first_seed: int, time_limit: float, scenario: str,
                   workers: int) -> None:
    """Protocol-state coverage of a scenario over simulated seeds of the fixed build (the
    same plans real runs play): what `cutover coverage` prints for stored runs, how a
    scenario is compared with another. Nothing is stored."""
    from .config import RunConfig
    from .sim.batch import run_batch
    from .ui.text import coverage_lines

    cfg = RunConfig(seed=first_seed, time_limit=time_limit, rate=100.0, scenario=scenario)
    b = run_batch(cfg, seeds=list(range(first_seed, first_seed + seeds)), workers=workers,
                  keep=False)
    bad = [r for r in b.results if r.verdict != "valid"]
    for r in bad:
        click.echo(f"seed {r.seed}: {r.verdict}: {r.failing or r.error}: {r.sentence[:200]}")
    for ln in coverage_lines({str(r.seed): set(r.coverage) for r in b.results}):
        click.echo(ln)


@bench.command("fidelity")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Plans (of seeds first..first+N-1) played in both worlds.")
@click.option("--first-seed", type=int, default=1, show_default=True)
@click.option("--nodes", type=_ranged("nodes"), default=3, show_default=True)
@click.option("--time-limit", type=_ranged("time_limit", 1, upper=False), default=10.0,
              show_default=True, help="Seconds of workload and faults per plan.")
@click.option("--rate", type=_ranged("rate", upper=False), default=SIM_DEFAULTS["rate"],
              show_default=True)
@click.option("--nemesis", default=default("nemesis"), show_default=True)
@click.option("--scenario", type=click.Choice(list(SCENARIOS)), default=default("scenario"),
              show_default=True)
@click.option("--bug", "bugs", multiple=True, help="Put a known defect back.")
@profile_option
@click.option("--results", default=None,
              help="Keep the real runs here (default: a temporary directory, removed).")
def bench_fidelity(seeds: int, first_seed: int, nodes: int, time_limit: float, rate: float,
                   nemesis: str, scenario: str, bugs: tuple[str, ...], profile: str,
                   results: str | None) -> None:
    """The same N plans simulated and on real processes: the share whose protocol-event
    sequence (role changes, the marker, snapshots, restarts, halts) matches, and the
    mismatch kinds. Last line `fidelity=K/N`. About time-limit + 10 s per plan."""
    from .lifeline import abort_on_signals

    abort_on_signals()
    import shutil
    import tempfile

    from . import store
    from .config import RunConfig, RunError
    from .hunt import bench_fidelity as measure
    from .hunt import fidelity_lines

    cfg = RunConfig(nodes=nodes, time_limit=time_limit, rate=rate, nemesis=nemesis,
                    scenario=scenario, bugs=list(bugs), profile=profile, seed=first_seed)
    where = results or tempfile.mkdtemp(prefix="cutover-fidelity-")
    try:
        cfg.validate()
        rows = measure(cfg, list(range(first_seed, first_seed + seeds)), where,
                       say=click.echo)
    except (RunError, store.StoreError) as e:
        _user_error(e)
    finally:
        if results is None:
            shutil.rmtree(where, ignore_errors=True)
    for ln in fidelity_lines(rows):
        click.echo(ln)


@bench.command("edn")
@click.option("--ops", type=click.IntRange(min=1), default=100_000, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
def bench_edn(ops: int, seed: int) -> None:
    """Our EDN reader and writer against the edn_format package, on one history."""
    from .bench import BenchError
    from .bench import bench_edn as measure

    try:
        measure(ops, seed)
    except BenchError as e:
        _user_error(e)


@bench.command("detection")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Seeds per defect (1..N).")
@click.option("--first-seed", type=int, default=1, show_default=True)
@click.option("--time-limit", type=Finite(min=5), default=30.0, show_default=True)
@click.option("--defects", "defects_dir", type=click.Path(file_okay=False),
              help="Directory of defect patches (default: tests/defects in the repository).")
@click.option("--only", help="Comma list of defect names to run (default: all).")
@click.option("--jobs", type=click.IntRange(min=1), default=2, show_default=True,
              help="Runs at a time.")
@click.option("--scenario", type=click.Choice(["swarm", "generative", "sequence", "churn"]),
              default=None, help="Plan scenario of every run (default: run's default).")
@click.option("--sim", "in_sim", is_flag=True,
              help="In the simulator: `cutover sim --budget` per defect instead of real runs.")
@click.option("--budget", type=Finite(min=1), default=60.0, show_default=True,
              help="With --sim or --mode hunt: wall seconds of simulation (and, for a "
                   "hunt, shrinking) per defect.")
@click.option("--mode", type=click.Choice(["run", "hunt"]), default="run",
              show_default=True,
              help="run: real `cutover run`s per seed; hunt: one `cutover hunt --budget B "
                   "--confirm K --rare 0` per defect (or switch), one at a time.")
@click.option("--confirm", type=click.IntRange(0, 100), default=3, show_default=True,
              help="With --mode hunt: real replays of each finding's shrunk plan.")
@click.option("--switches", is_flag=True,
              help="With --mode hunt: the bug switches (`cutover bugs`, each `--bug NAME` "
                   "on the unpatched tree) instead of the defect patches.")
@click.option("--defect", "picked", multiple=True, metavar="NAME",
              help="Only this defect (or, with --switches, this switch); repeatable.")
def bench_detection(seeds: int, first_seed: int, time_limit: float, defects_dir: str | None,
                    only: str | None, jobs: int, scenario: str | None, in_sim: bool,
                    budget: float, mode: str, confirm: int, switches: bool,
                    picked: tuple[str, ...]) -> None:
    """Defects that are not bug switches (tests/defects/*.patch): each applied to a copy
    of the tree and run on N seeds; one row per defect, last line `detected=K/M`.
    `--mode hunt`: one `cutover hunt` per defect or (`--switches`) per bug switch; last
    line `found=N/M confirmed=K/N`."""
    from pathlib import Path

    from . import detection

    if mode == "hunt" and in_sim:
        fail("--sim and --mode hunt are two different benchmarks; give one")
    if switches and mode != "hunt":
        fail("--switches needs --mode hunt (real runs of the switches: `cutover matrix`)")
    try:
        defects = (detection.switch_targets() if switches else
                   detection.load_defects(Path(defects_dir) if defects_dir
                                          else detection.default_defects_dir()))
    except (OSError, ValueError) as e:
        _user_error(e)
    if only or picked:
        names = {n.strip() for n in (only or "").split(",") if n.strip()} | set(picked)
        unknown = names - {d.name for d in defects}
        if unknown:
            fail(f"unknown {'switch' if switches else 'defect'}(s) "
                 f"{', '.join(sorted(unknown))}; known: {', '.join(d.name for d in defects)}")
        defects = [d for d in defects if d.name in names]
    if not defects:
        fail("no defect patches found")
    seed_list = list(range(first_seed, first_seed + seeds))
    extra = ["--scenario", scenario] if scenario else []
    if mode == "hunt":
        def said(row: detection.HuntRow) -> None:
            click.echo(f"  {row.defect.name}: exit {row.exit_code}, "
                       f"{row.wall_s if row.wall_s is not None else '-'} s"
                       + (f", error: {row.error}" if row.error else ""), err=True)
            for ln in row.lines:
                click.echo(f"    {ln}", err=True)

        rows_h = detection.run_detection_hunt(
            defects, budget, confirm, time_limit=time_limit,
            extra=extra + ["--workers", str(jobs), "--first-seed", str(first_seed)],
            progress=said)
        for line in detection.hunt_table(rows_h, budget, confirm):
            click.echo(line)
        return

    def progress(name: str, seed: int, verdict: str, first: str | None) -> None:
        what = f"{seed} seeds" if in_sim else f"seed {seed}"
        click.echo(f"  {name:<28} {what:<10} {verdict:<8} {first or ''}", err=True)

    if in_sim:
        rows = detection.run_detection_sim(
            defects, budget, extra + ["--time-limit", str(time_limit), "--workers",
                                      str(jobs)], progress=progress)
        for line in detection.table(rows, 1, sim_budget=budget):
            click.echo(line)
        return
    rows = detection.run_detection(defects, seed_list, time_limit, jobs=jobs, extra=extra,
                                   progress=progress)
    for line in detection.table(rows, len(seed_list)):
        click.echo(line)


# ---------------------------------------------------------------------------- review


@main.command("list")
@results_option
def list_cmd(results: str) -> None:
    """Stored runs, newest first, with their verdicts (first column: the run id)."""
    from . import store
    from .ui.text import list_lines

    try:
        with store.opened(results) as db:
            lines = list_lines(db)
    except store.StoreError as e:
        _user_error(e)
    for ln in lines:
        click.echo(ln)


@main.command()
@results_option
def coverage(results: str) -> None:
    """Protocol-state coverage over the stored runs: each point with how many runs reached
    it, the points never reached, and a last line `coverage: K/M points reached in N runs`."""
    from . import store
    from .ui.text import coverage_lines

    try:
        with store.opened(results) as db:
            lines = coverage_lines(store.coverage_by_run(db))
    except store.StoreError as e:
        _user_error(e)
    for ln in lines:
        click.echo(ln)


@main.command()
@click.argument("run")
@results_option
def show(run: str, results: str) -> None:
    """Config, verdict per checker, the first violation and the per-node cutover table."""
    from . import store
    from .ui.text import show_lines

    try:  # read everything first, then print: a bad database prints one error line only
        with store.opened(results) as db:
            lines = show_lines(db, store.resolve_run(db, run))
    except store.StoreError as e:
        _user_error(e)
    for ln in lines:
        click.echo(ln)


@main.command()
@click.argument("run")
@results_option
def check(run: str, results: str) -> None:
    """Re-run every checker on a stored run from its artifacts; store the new verdicts.

    Exit code like `run`: 0 valid, 1 invalid, 2 unknown.
    """
    from . import store
    from .recheck import recheck
    from .ui.text import checker_lines

    try:
        res, code, summary = recheck(results, run)
    except (ReviewError, store.StoreError) as e:
        _user_error(e)
    for ln in checker_lines(res):
        click.echo(ln)
    click.echo(summary)
    sys.exit(code)


@main.command()
@click.argument("run")
@results_option
@click.option("-o", "--output", "output", help="Where to write (default "
              "RESULTS/<run-id>/report.html).")
@click.option("--from", "from_s", type=Finite(), help="Window start, seconds into the run.")
@click.option("--to", "to_s", type=Finite(), help="Window end, seconds into the run.")
@click.option("--max-ops", type=click.IntRange(min=1), default=DEFAULT_MAX_OPS,
              show_default=True, help="Ops drawn per page; longer windows are paged.")
def report(run: str, results: str, output: str | None, from_s: float | None,
           to_s: float | None, max_ops: int) -> None:
    """One self-contained HTML report of a stored run (opens offline, fetches nothing)."""
    from . import store
    from .ui.data import report_data
    from .ui.report import render_report

    try:
        with store.opened(results) as db:
            row = store.resolve_run(db, run)

            def page_ref(a: int, b: int) -> dict[str, str]:
                return {"command": f"cutover report {row['id']} --from {a / 1e9:.9f} "
                                   f"--to {b / 1e9:.9f}"
                                   + (f" --max-ops {max_ops}" if max_ops != DEFAULT_MAX_OPS
                                      else "")}

            text = render_report(report_data(db, row, from_s=from_s, to_s=to_s,
                                             max_ops=max_ops, page_ref=page_ref))
        if output is None:
            rd = store.run_dir_of(results, row)
            if not os.path.isdir(rd):
                raise ReviewError(f"run {row['id']}: its directory {rd} is missing; "
                                  f"pass -o FILE")
            output = os.path.join(rd, "report.html")
        _atomic_write(output, text)
    except (ReviewError, store.StoreError) as e:
        _user_error(e)
    click.echo(output)


@main.command()
@results_option
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (the default keeps it on this machine).")
def serve(results: str, port: int, host: str) -> None:
    """Browse the stored runs: index, reports, the run files (never the KEK), zips."""
    from . import store
    from .ui.web import make_server

    try:
        with store.opened(results):
            pass
        httpd = make_server(results, host, port, verbose=True)
    except store.StoreError as e:
        _user_error(e)
    except OSError as e:
        fail(f"cannot listen on {host}:{port}: {e.strerror}")
    h, p = httpd.server_address[:2]
    click.echo(f"serving {results} at http://{h}:{p}/ (Ctrl-C to stop)")
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


@main.command()
@click.argument("run")
@results_option
@click.option("--format", "fmt", required=True, type=click.Choice(["jepsen-edn", "jsonl"]))
@click.option("-o", "--output", "output", help="Write here instead of stdout.")
def export(run: str, results: str, fmt: str, output: str | None) -> None:
    """The stored history for Jepsen's tools or `cutover lin` (use `--model kv`)."""
    from . import store
    from .export import export_history, history_text

    try:
        with store.opened(results) as db:
            row = store.resolve_run(db, run)
            if output is None:
                try:
                    export_history(db, row, fmt, sys.stdout)
                    sys.stdout.flush()
                except BrokenPipeError:
                    # `| head`: the reader has what it wanted; not a verdict (exit 1 would
                    # read as "invalid")
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return
            text = history_text(db, row, fmt)
        _atomic_write(output, text)
    except (ReviewError, store.StoreError) as e:
        _user_error(e)


def _atomic_write(path: str, text: str) -> None:
    """A reader (a browser with the report open, a CI job) never sees half a file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise ReviewError(f"cannot write {path}: {e.strerror}") from None


if __name__ == "__main__":
    main()
