"""The `cutover` command line (click).

Exit codes follow Jepsen: 0 valid, 1 invalid, 2 unknown; 3 and above mean the harness
itself could not do its job (bad input, bad flag), always with a one-line reason.
"""
from __future__ import annotations

import os
import sys
import time

import click

EXIT_BAD_INPUT = 3


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """A user's mistake: one line on stderr, never a traceback."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class Group(click.Group):
    """Click's usage errors exit 2, which our contract reserves for `unknown`."""

    def main(self, *args, **kwargs):  # type: ignore[override]
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            fail("aborted", 130)
        except click.ClickException as e:
            fail(e.format_message())
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """cutover: a Jepsen-style fault-injection lab for the raft-envelope cutover."""


@main.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--format", "fmt", required=True,
              type=click.Choice(["porcupine-etcd", "porcupine-kv", "jepsen-edn", "jsonl"]),
              help="How the history files are written.")
@click.option("--model", type=click.Choice(["register", "cas-register", "kv"]),
              help="Sequential model (default: per format).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0,
              show_default=True, help="Seconds per file before the verdict is `unknown`.")
@click.option("--html", "html_out", help="Write the visualization here (a directory when "
                                         "several files are checked).")
@click.option("--tsv", is_flag=True, help="One line per file: FILE, verdict, check seconds.")
@click.option("--all-partitions", is_flag=True,
              help="Check every partition to the end instead of stopping at the first "
                   "violation.")
def lin(files: tuple[str, ...], fmt: str, model: str | None, timeout: float,
        html_out: str | None, tsv: bool, all_partitions: bool) -> None:
    """Check histories for linearizability (Porcupine's algorithm, with extras)."""
    from checker import DEFAULT_MODEL, HistoryError, Verdict, check, get_model, read_history
    from checker.explain import explain

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
        result = check(m, ops, timeout=timeout, stop_early=not all_partitions)
        secs = time.perf_counter() - t0
        worst.append(result.verdict)
        if tsv:
            click.echo(f"{path}\t{result.verdict.value}\t{secs:.6f}")
        elif len(files) == 1:
            click.echo(explain(m, result))
        else:
            click.echo(f"{path}: {result.verdict.value} ({secs:.3f} s)")
        if html_out:
            from checker.visualize import write_html

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
    from node.server import ALL_BUGS as table
    width = max(len(k) for k in table)
    for name in sorted(table):
        click.echo(f"{name:<{width}}  {table[name]}")


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


@main.command()
@click.option("--nodes", type=click.IntRange(1, 9), default=5, show_default=True)
@click.option("--time-limit", type=click.FloatRange(min=1), default=40.0, show_default=True,
              help="Seconds of workload and faults (plus set-up, a quiet period and checks).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=200.0,
              show_default=True, help="Target client ops per second, all workers together.")
@click.option("--concurrency", type=click.IntRange(1, 256),
              help="Client workers (default: 2 per node).")
@click.option("--workload", type=click.Choice(["kv", "register"]), default="kv",
              show_default=True)
@click.option("--keys", type=click.IntRange(1, 10_000), default=8, show_default=True)
@click.option("--nemesis", default="all", show_default=True,
              help="none, all, or a comma list of kill,pause,partition,net,snapshot-replay,"
                   "rotate,corrupt.")
@click.option("--nemesis-interval", type=click.FloatRange(min=0.5), default=5.0,
              show_default=True, help="Mean seconds between faults.")
@click.option("--cutover-at", default=None,
              help="Seconds into the run to request EnableRaftEnvelope, or none "
                   "(default: a third of --time-limit).")
@click.option("--bug", "bugs", multiple=True, help="Put a known defect back (see `cutover bugs`).")
@click.option("--seed", type=int, help="Seed of the plan and the workload (default: random, "
                                       "printed first).")
@click.option("--results", default="results", show_default=True, help="Results directory.")
@click.option("--junit", "junit", help="Also write a JUnit XML summary here.")
@click.option("--replay", help="Run again with a stored run's config (a run id in --results, "
                               "`latest`, or a config.json); the other flags are ignored.")
def run(nodes: int, time_limit: float, rate: float, concurrency: int | None, workload: str,
        keys: int, nemesis: str, nemesis_interval: float, cutover_at: str | None,
        bugs: tuple[str, ...], seed: int | None, results: str, junit: str | None,
        replay: str | None) -> None:
    """Run one fault-injection test end to end and print its verdict."""
    from .run import RunConfig, RunError, execute

    if replay:
        cfg = _replay_config(replay, results)
        cfg.results = results
    else:
        cfg = RunConfig(nodes=nodes, time_limit=time_limit, rate=rate,
                        concurrency=concurrency, workload=workload, keys=keys,
                        nemesis=nemesis, nemesis_interval=nemesis_interval,
                        cutover_at=-1.0 if cutover_at is None else _cutover_at(cutover_at),
                        bugs=list(bugs), seed=seed, results=results)
    bugs = tuple(cfg.bugs)
    try:
        outcome = execute(cfg)
    except RunError as e:
        fail(str(e))
        return
    if junit:
        from .junit import write_junit

        try:
            write_junit(junit, "cutover run", [(",".join(bugs) or "fixed", outcome)])
        except OSError as e:
            fail(f"cannot write {junit}: {e.strerror}")
    sys.exit(outcome.exit_code)


def _replay_config(ref: str, results: str):  # type: ignore[no-untyped-def]
    import json

    from .run import RunConfig, RunError
    from .store import StoreError, open_db, resolve_run

    try:
        if os.path.isfile(ref):
            with open(ref, encoding="utf-8") as fh:
                doc = json.load(fh)
        else:
            db = open_db(results)
            try:
                doc = json.loads(resolve_run(db, ref)["config"] or "{}")
            finally:
                db.conn.close()
        if not isinstance(doc, dict):
            raise RunError("expected a JSON object")
        return RunConfig.from_dict(doc)
    except (OSError, ValueError, StoreError, RunError) as e:
        fail(f"cannot replay {ref}: {e}")


def _register() -> None:
    from .bench import bench
    from .matrix import matrix
    from .review import register

    main.add_command(bench)
    main.add_command(matrix)
    register(main)


_register()

if __name__ == "__main__":
    main()
