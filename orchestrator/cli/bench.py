"""`cutover bench ...`: benchmarks that print figures (never timed assertions in tests).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from orchestrator.errors import fail
from orchestrator.run.config import (
    SCENARIOS,
    SIM_DEFAULTS,
    default,
)

if TYPE_CHECKING:
    pass

from orchestrator.cli.common import Finite, _ranged, _user_error, main, profile_option

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
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes checking partitions (default: the machine's cores).")
@click.option("--max-memory", type=Finite(min=50), default=400.0, show_default=True,
              help="MB a check of the generated history may grow by (as `cutover lin`).")
@click.option("--skip-corpus", is_flag=True, help="Only the generated history.")
def bench_checker(corpus: str | None, repeat: int, ops: int, keys: int, clients: int,
                  seed: int, workers: int | None, max_memory: float,
                  skip_corpus: bool) -> None:
    """Check time on the Porcupine corpus and on a generated history (read and
    checked as `cutover lin` does, in a fresh process: parse/check split, peak RSS)."""
    from orchestrator.bench import bench_corpus, bench_generated, default_corpus

    cdir = Path(corpus) if corpus else default_corpus()
    if not skip_corpus and not (cdir / "verdicts.tsv").is_file():
        fail(f"no corpus at {cdir} (expected verdicts.tsv there); pass --corpus DIR")
    from checker._native import status

    click.echo(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}")
    click.echo(f"checker: {status()}")  # compiled (mypyc) or pure Python, and why
    if not skip_corpus:
        bench_corpus(cdir, repeat, workers)
    bench_generated(ops, keys, clients, seed, workers, max_memory)


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
    from orchestrator.bench import BenchError
    from orchestrator.bench import bench_cluster as measure

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
    from orchestrator.sim import cli as simcli

    names = [] if switches == "none" else [b.strip() for b in switches.split(",") if b.strip()]
    bad = [b for b in names if b not in ALL_BUGS]
    if bad:
        fail(f"unknown bug switch {bad[0]!r}")
    simcli.bench(seeds, names, cap)


@bench.command("coverage")
@click.option("--seeds", type=click.IntRange(min=5), default=40, show_default=True)
@click.option("--first-seed", type=int, default=1, show_default=True)
@click.option("--time-limit", type=Finite(min=5), default=30.0, show_default=True)
@click.option("--scenario", type=click.Choice(list(SCENARIOS)),
              default="swarm", show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
def bench_coverage(seeds: int, first_seed: int, time_limit: float, scenario: str,
                   workers: int) -> None:
    """Protocol-state coverage of a scenario over simulated seeds of the fixed build (the
    same plans real runs play): what `cutover coverage` prints for stored runs, how a
    scenario is compared with another. Nothing is stored."""
    from orchestrator.run.config import RunConfig
    from orchestrator.sim.batch import run_batch
    from orchestrator.ui.text import coverage_lines

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
    from orchestrator.lifeline import abort_on_signals

    abort_on_signals()
    import shutil
    import tempfile

    from orchestrator import store
    from orchestrator.run.config import RunConfig, RunError
    from orchestrator.search.hunt import bench_fidelity as measure
    from orchestrator.search.hunt import fidelity_lines

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
    from orchestrator.bench import BenchError
    from orchestrator.bench import bench_edn as measure

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
@click.option("--scenario", type=click.Choice(list(SCENARIOS)),
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
@click.option("--crash-points", type=click.IntRange(0, 1000), default=0, show_default=True,
              help="With --sim or --mode hunt: the search's --crash-points (docs/sim.md).")
@click.option("--nemesis", default=None,
              help="With --sim or --mode hunt: the search's --nemesis (default: its own, "
                   "`all`; `all,clock,storage,races` adds the opt-in families).")
@click.option("--buggify/--no-buggify", default=None,
              help="With --sim or --mode hunt: the search's --buggify (default: on, the "
                   "whole search is what is measured; --no-buggify for the plain swarm).")
def bench_detection(seeds: int, first_seed: int, time_limit: float, defects_dir: str | None,
                    only: str | None, jobs: int, scenario: str | None, in_sim: bool,
                    budget: float, mode: str, confirm: int, switches: bool,
                    picked: tuple[str, ...], crash_points: int, nemesis: str | None,
                    buggify: bool | None) -> None:
    """Defects that are not bug switches (tests/defects/*.patch): each applied to a copy
    of the tree and run on N seeds; one row per defect, last line `detected=K/M`.
    `--mode hunt`: one `cutover hunt` per defect or (`--switches`) per bug switch; last
    line `found=N/M confirmed=K/N`."""
    from pathlib import Path

    from orchestrator.search import detection

    if mode == "hunt" and in_sim:
        fail("--sim and --mode hunt are two different benchmarks; give one")
    if (crash_points or buggify or nemesis) and not (in_sim or mode == "hunt"):
        fail("--crash-points, --nemesis and --buggify are the simulator's: give --sim or "
             "--mode hunt")
    if buggify is None:
        buggify = in_sim or mode == "hunt"
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
    extra += ["--crash-points", str(crash_points)] if crash_points else []
    extra += ["--buggify"] if buggify else []
    extra += ["--nemesis", nemesis] if nemesis else []
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
