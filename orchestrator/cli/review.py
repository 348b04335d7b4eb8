"""Reviewing what is stored: `list`, `coverage`, `show`, `check`, `report`, `serve`,
`export`.
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from orchestrator.errors import ReviewError, fail
from orchestrator.ui import DEFAULT_MAX_OPS

if TYPE_CHECKING:
    pass

from orchestrator.cli.common import Finite, _atomic_write, _user_error, main, results_option

# ---------------------------------------------------------------------------- review


@main.command("list")
@results_option
def list_cmd(results: str) -> None:
    """Stored runs, newest first, with their verdicts (first column: the run id)."""
    from orchestrator import store
    from orchestrator.ui.text import list_lines

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
    from orchestrator import store
    from orchestrator.ui.text import coverage_lines

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
    from orchestrator import store
    from orchestrator.ui.text import show_lines

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
    from orchestrator import store
    from orchestrator.run.recheck import recheck
    from orchestrator.ui.text import checker_lines

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
    from orchestrator import store
    from orchestrator.ui.data import report_data
    from orchestrator.ui.report import render_report

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
    from orchestrator import store
    from orchestrator.ui.web import make_server

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
    from orchestrator import store
    from orchestrator.store.export import export_history, history_text

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
