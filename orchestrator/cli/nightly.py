"""`cutover matrix` and `cutover trend`: the nightly's commands.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from orchestrator.errors import EXIT_ABORTED, fail
from orchestrator.run.config import (
    MATRIX_DEFAULTS,
    SCENARIOS,
    default,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from orchestrator.nightly.matrix import MatrixSpec, Rows
    from orchestrator.nightly.tasks import Task
    from orchestrator.real.run import RunOutcome

from orchestrator.cli.common import Finite, _ranged, _user_error, main, results_option


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
    from orchestrator.lifeline import abort_on_signals

    abort_on_signals()  # first: a SIGTERM ends with a line (and the resume hint), 130
    from orchestrator import store
    from orchestrator.nightly import matrix as mx
    from orchestrator.nightly.junit import write_junit
    from orchestrator.run.config import RunError

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
            mid, spec, todo = _resume_matrix(results, resume)
        else:
            spec = _new_matrix_spec(
                seeds=seeds, first_seed=first_seed, time_limit=time_limit, bug_spec=bug_spec,
                no_fixed=no_fixed, nodes=nodes, nemesis=nemesis, scenario=scenario,
                profile=profile, sim_seeds=sim_seeds, sim_batch=sim_batch,
                hunt_budget=hunt_budget, hunt_seeds=hunt_seeds, hunt_confirm=hunt_confirm,
                hunt_rare=hunt_rare, hunt_workers=hunt_workers)
            todo = spec.tasks()
            for t in {(t.kind, t.profile, t.mode): t for t in todo}.values():
                t.config(spec.base, results).validate()
            mid = mx.start_matrix(results, spec, engine)
    except (ValueError, RunError, store.StoreError) as e:
        _user_error(e)
    total = len(spec.tasks())
    click.echo(f"matrix {mid}: {len(todo)} of {total} tasks to run ({engine})", err=True)
    rows = _run_matrix(results, mid, spec, todo, engine=engine, scheduler=scheduler,
                       workers=workers)
    click.echo(mx.table(rows, seeds))
    if junit:
        write_junit(junit, "cutover matrix", [(b, o) for b, os_ in rows for o in os_])
    sys.exit(mx.exit_code(rows))


def _given(names: tuple[str, ...]) -> list[str]:
    """Which of these flags the user typed: a default must not count as asking for it."""
    ctx = click.get_current_context()
    return [p for p in names if ctx.get_parameter_source(p)
            == click.core.ParameterSource.COMMANDLINE]


def _resume_matrix(results: str, resume: str) -> tuple[str, MatrixSpec, list[Task]]:
    """The recorded matrix and its unfinished tasks. Its flags are the recorded ones, so a
    flag given again is refused rather than silently ignored; a tree at another revision
    is only warned about (the fix may be what is being resumed)."""
    from orchestrator.nightly import matrix as mx

    given = _given(MATRIX_FLAGS)
    if given:
        fail(f"--resume runs the matrix as it was recorded; drop "
             f"--{given[0].replace('_', '-')}")
    mid, spec, todo, rev = mx.pending(results, resume)
    here = mx.project_revision()
    if rev and here and rev != here:
        click.echo(f"warning: matrix {mid} was started at revision {rev[:12]}; this "
                   f"tree is at {here[:12]}", err=True)
    return mid, spec, todo


def _new_matrix_spec(*, seeds: int, first_seed: int, time_limit: float, bug_spec: str,
                     no_fixed: bool, nodes: int, nemesis: str, scenario: list[str],
                     profile: str | None, sim_seeds: int, sim_batch: int,
                     hunt_budget: float | None, hunt_seeds: int | None, hunt_confirm: int,
                     hunt_rare: int, hunt_workers: int) -> MatrixSpec:
    """The spec of a new matrix from the flags. A matrix with nothing to run, or hunt
    flags without a hunt, is refused: either would look like a clean night."""
    from orchestrator.nightly import matrix as mx

    profiles = mx.profiles(profile)
    names = mx.builds(bug_spec, fixed=not no_fixed,
                      profile=profiles[0] if len(profiles) == 1 else "fixed")
    hunting = hunt_budget is not None or hunt_seeds is not None
    if not seeds and not sim_seeds and not hunting:
        fail("nothing to run: give --seeds, --sim-seeds or --hunt-budget")
    shape = _given(HUNT_SHAPE_FLAGS)
    if shape and not hunting:
        fail(f"--{shape[0].replace('_', '-')} needs --hunt-budget or --hunt-seeds")
    return mx.MatrixSpec(builds=names, seeds=seeds, first_seed=first_seed,
                         modes=scenario, sim_seeds=sim_seeds, sim_batch=sim_batch,
                         profiles=profiles if profile else None,
                         base=mx.base_config(nodes=nodes, time_limit=time_limit,
                                             nemesis=nemesis),
                         hunt={"budget": hunt_budget, "seeds": hunt_seeds,
                               "confirm": hunt_confirm, "rare": hunt_rare,
                               "workers": hunt_workers} if hunting else None)


def _run_matrix(results: str, mid: str, spec: MatrixSpec, todo: list[Task], *,
                engine: str, scheduler: str | None, workers: int) -> Rows:
    """Run the tasks on the chosen engine, then the matrix's whole table (not just this
    invocation's tasks: a resumed matrix reports every run). An abort ends with the
    command that resumes it, since the finished tasks are already stored."""
    from orchestrator import store
    from orchestrator.nightly import matrix as mx
    from orchestrator.run.config import RunError

    def progress(task: Task, o: RunOutcome) -> None:
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
            _run_dask(results, mid, spec, todo, scheduler=scheduler, workers=workers,
                      progress=progress, hint=hint)
        mx.finish_if_complete(results, mid)
        return mx.matrix_rows(results, mid)
    except (RunError, store.StoreError) as e:
        _user_error(e)


def _run_dask(results: str, mid: str, spec: MatrixSpec, todo: list[Task], *,
              scheduler: str | None, workers: int,
              progress: Callable[[Task, RunOutcome], None], hint: str) -> None:
    """The Dask engine, imported only when asked for (loading distributed would slow
    every local matrix); its stats say where the time went across the cluster."""
    from orchestrator.nightly.dask_engine import DaskEngineError, run_dask

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


@main.command()
@click.option("--builds", help="A comma list of builds (table rows) to show (default: all).")
@click.option("--last", type=click.IntRange(min=1), help="Only the last N matrices.")
@results_option
def trend(builds: str | None, last: int | None, results: str) -> None:
    """Per build, the detection rate and median time to violation of each recorded
    matrix, oldest first; then the flakes: one build, seed and revision, two verdicts."""
    from orchestrator import store
    from orchestrator.nightly.trend import trend_data, trend_lines

    names = [b.strip() for b in builds.split(",") if b.strip()] if builds else None
    try:
        with store.opened(results) as db:
            data = trend_data(db, builds=names, last=last)
    except store.StoreError as e:
        _user_error(e)
    for ln in trend_lines(data):
        click.echo(ln)
