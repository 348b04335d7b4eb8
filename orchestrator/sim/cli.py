"""What `cutover sim` prints and stores (the click command is in `orchestrator/cli.py`)."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import asdict
from typing import Any

import click

from checker.coverage import POINTS
from nemesis.plan import Plan
from orchestrator import store
from orchestrator.config import RunConfig, RunError, read_plan_file
from orchestrator.errors import EXIT_HARNESS

from .batch import BatchResult, SeedResult, run_batch, store_run
from .run import simulate
from .shrink import shrink


def _progress(r: SeedResult, b: BatchResult, t0: float) -> None:
    import time

    n = len(b.results)
    rate = n / max(1e-9, time.monotonic() - t0)
    cov = set().union(*(set(x.coverage) for x in b.results)) & set(POINTS)
    line = (f"[seed {r.seed}] {n} seeds, {rate:.2f} seeds/s, violations {len(b.failed)}, "
            f"coverage {len(cov)}/{len(POINTS)}")
    if sys.stderr.isatty():
        click.echo("\r\x1b[K" + line, err=True, nl=False)
    elif n % 10 == 0:
        click.echo(line, err=True)


def run(cfg: RunConfig, *, seeds: int | None, budget: float | None, first_seed: int,
        workers: int, results: str, shrink: bool) -> int:
    import time

    try:
        store.check_writable(results)
    except store.StoreError as e:
        click.echo(f"error: {e}", err=True)
        return EXIT_HARNESS
    t0 = time.monotonic()
    seed_list = list(range(first_seed, first_seed + seeds)) if seeds is not None else None
    b = run_batch(cfg, seeds=seed_list, budget=budget, first_seed=first_seed,
                  workers=workers, on_result=lambda r, b: _progress(r, b, t0))
    if sys.stderr.isatty():
        click.echo("", err=True)
    shrunk_kinds: set[str] = set()
    for r in b.failed:
        assert r.record is not None
        run_id = store_run(results, r.record)
        b.stored[r.seed] = run_id
        click.echo(f"seed {r.seed}: {r.verdict.upper()}: {r.failing}: {r.sentence[:200]} "
                   f"(run {run_id})")
        if shrink and r.verdict == "invalid" and r.failing and r.failing not in shrunk_kinds:
            shrunk_kinds.add(r.failing)
            _shrink_one(r, cfg, results, run_id, workers)
    for r in b.errors:
        click.echo(f"seed {r.seed}: harness error: {r.error}", err=True)
    cov = set().union(*(set(x.coverage) for x in b.results)) & set(POINTS)
    sim_s = sum(x.sim_seconds for x in b.results)
    cpu_s = sum(x.cpu_seconds for x in b.results)
    click.echo(f"sim: {len(b.results)} seeds in {b.wall_seconds:.1f} s "
               f"({len(b.results) / max(b.wall_seconds, 1e-9):.2f} seeds/s, "
               f"{sim_s / max(cpu_s, 1e-9):.1f} simulated s per CPU s), "
               f"{len(b.failed)} failed"
               + (f" (the first after {b.first_failure_s:.1f} s)" if b.failed else "")
               + (f", {len(b.vacuous)} vacuous (no cutover, fault or operation they "
                  f"were asked for)" if b.vacuous else "")
               + f", coverage {len(cov)}/{len(POINTS)}")
    if b.errors:
        return EXIT_HARNESS
    if b.failed:
        return 1
    # Seeds that tested nothing are no pass: a batch of only those is unknown (2).
    return 2 if b.results and len(b.vacuous) == len(b.results) else 0


def _shrink_one(r: SeedResult, cfg: RunConfig, results: str, run_id: str,
                workers: int) -> None:
    assert r.record is not None and r.failing is not None
    doc = dict(r.record["config"])
    plan = Plan.from_dict(doc.pop("plan"))
    full = RunConfig.from_dict(doc)
    click.echo(f"  shrinking seed {r.seed} ({len(plan.steps)} steps, fails {r.failing})...",
               err=True)
    s = shrink(full, plan, r.failing, workers=workers,
               log=lambda m: click.echo(f"  {m}", err=True))
    path = os.path.join(results, run_id, "shrunk-plan.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(s.to_file_doc(r.seed), fh, indent=2, default=str)
    faults = [x for x in s.plan.describe()[1:]]
    click.echo(f"  shrunk to {len(s.plan.steps) - 1} fault(s), time limit "
               f"{s.config.time_limit:g} s, {s.config.nodes} nodes, "
               f"{s.simulations} simulations: {path}")
    for line in faults:
        click.echo(f"    {line}")


def load_plan_file(path: str) -> tuple[RunConfig, Plan, dict[str, Any]]:
    """(config, plan, the whole document) of a plan file that carries its run's config
    (`orchestrator.run.read_plan_file` reads and checks it: the same reader as `cutover
    run --plan`); RunError, one line, if it is not one. A replay is exact, so the config
    must name its seed."""
    config, plan, doc = read_plan_file(path)
    if config is None:
        raise RunError(f"{path} has no run config to replay (a plan alone: `cutover run "
                       f"--plan` plays it with the flags' config)")
    try:  # where the run stored its results is no part of it (as for `run --plan`)
        cfg = RunConfig.from_dict({k: v for k, v in config.items()
                                   if k not in ("results", "plan_file")})
    except RunError as e:
        raise RunError(f"cannot use {path}: {e}") from None
    if cfg.seed is None:
        raise RunError(f"cannot use {path}: its config has no seed, so it cannot be "
                       f"replayed exactly")
    return cfg, plan, doc


def replay(path: str, results: str) -> int:
    """`cutover sim --replay FILE`: the same simulation, verdict and all."""
    try:  # read and checked in full before anything is simulated
        cfg, plan, doc = load_plan_file(path)
    except RunError as e:
        click.echo(f"error: {e}", err=True)
        return EXIT_HARNESS
    with tempfile.TemporaryDirectory(prefix="cutover-replay-") as tmp:
        o = simulate(cfg, tmp, plan)
    click.echo(f"seed {cfg.seed}: {o.verdict.upper()}"
               + (f": {o.failing}: {(o.first or ('', '', None))[1][:300]}" if o.failing else ""))
    for line in plan.describe():
        click.echo(f"  {line}")
    expected = doc.get("failing")
    if expected and o.failing != expected:
        click.echo(f"note: the plan file was shrunk for {expected}", err=True)
    return {"valid": 0, "invalid": 1}.get(o.verdict, 2)


__all__ = ["asdict", "load_plan_file", "replay", "run"]


def bench(seeds: int, switches: list[str], cap_seconds: float) -> None:
    """`cutover bench sim`: how fast the simulator runs the default 5-node schedule
    (simulated seconds per CPU second, checks included), and how soon it finds a few
    switches. Last line: `sim_per_cpu=X`."""
    import time

    for bug in switches:
        cpu0 = time.process_time()
        found = None
        seed = 0
        while time.process_time() - cpu0 < cap_seconds:
            seed += 1
            with tempfile.TemporaryDirectory(prefix="cutover-bench-") as tmp:
                o = simulate(RunConfig(seed=seed, time_limit=30, rate=100, bugs=[bug]), tmp)
            if o.verdict == "invalid":
                found = o
                break
        cpu = time.process_time() - cpu0
        if found is None:
            click.echo(f"{bug:<28} not found in {cpu:.1f} CPU s ({seed} seeds)")
        else:
            click.echo(f"{bug:<28} found by seed {seed} after {cpu:.1f} CPU s: "
                       f"{found.failing}")
    sim = cpu = 0.0
    for seed in range(1, seeds + 1):
        c0 = time.process_time()
        with tempfile.TemporaryDirectory(prefix="cutover-bench-") as tmp:
            o = simulate(RunConfig(seed=seed, time_limit=30, rate=100), tmp)
        c = time.process_time() - c0
        sim += o.sim_seconds
        cpu += c
        click.echo(f"seed {seed}: {o.verdict}, {o.sim_seconds:.1f} simulated s "
                   f"(30 s of workload) in {c:.2f} CPU s, {len(o.ops) // 2} ops")
    click.echo(f"sim_per_cpu={sim / max(cpu, 1e-9):.1f}")
