"""`cutover lin` and `cutover bugs`: the checker on history files, and the switches.
"""
from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

import click

from orchestrator.errors import EXIT_BAD_INPUT, fail

if TYPE_CHECKING:
    pass

from orchestrator.cli.common import Finite, main

# --------------------------------------------------------------------------- checker


@main.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--format", "fmt", default=None,
              type=click.Choice(["porcupine-etcd", "porcupine-kv", "jepsen-edn", "jsonl"]),
              help="How the history files are written (default: told from each file's "
                   "first bytes when that leaves no doubt).")
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
              help="MB of memory (RSS) a check may grow by, beyond the history it reads, "
                   "in each process, before its verdict is `unknown`.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes reading and checking (per key partition); default: the "
                   "machine's cores. The verdict and counterexample do not depend on it.")
def lin(files: tuple[str, ...], fmt: str | None, model: str | None, timeout: float,
        html_out: str | None, tsv: bool, all_partitions: bool, max_memory: float,
        workers: int | None) -> None:
    """Check histories for linearizability (Porcupine's algorithm, with extras)."""
    from checker import (
        DEFAULT_MODEL,
        FORMATS,
        HistoryError,
        Verdict,
        get_model,
        infer_format,
    )
    from checker.explain import explain
    from checker.lin_columns import read_columns
    from checker.linearizability import check_history, default_workers
    from checker.visualize import write_html

    n_workers = workers or default_workers()

    worst: list[Verdict] = []
    errors = 0
    if html_out and len(files) > 1:
        os.makedirs(html_out, exist_ok=True)
    for path in files:
        sniffed = (fmt, DEFAULT_MODEL[fmt]) if fmt else infer_format(path)
        if sniffed is None:
            click.echo(f"error: {path}: cannot tell its format from its first bytes; give "
                       f"--format ({', '.join(FORMATS)})", err=True)
            errors += 1
            continue
        file_fmt, default_model = sniffed
        model_name = model or default_model
        try:
            ops = read_columns(path, file_fmt, model_name, workers=n_workers)
        except HistoryError as e:
            click.echo(f"error: {e}", err=True)
            errors += 1
            continue
        m = get_model(model_name)
        t0 = time.perf_counter()
        result = check_history(m, ops, timeout=timeout, stop_early=not all_partitions,
                               max_rss_mb=max_memory, workers=n_workers)
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
