"""Exit codes, and the one way a command gives up on a user's mistake.

Jepsen's contract: 0 valid, 1 invalid, 2 unknown. Those three are the verdict's own
(`checker.Verdict.exit_code`, `checker.suite.EXIT_CODES`), so a verdict and its exit
code cannot drift apart. The harness's own codes are here: 3 and above mean it could
not do its job (a bad file, a bad flag, a node that would not start), always with one
line on stderr and never a traceback; 130 is a run aborted by Ctrl-C or SIGTERM.

Modules below the CLI raise `ReviewError` (or `store.StoreError`, `run.RunError`) with a
sentence for the user; only `orchestrator.cli` turns those into `fail`. That keeps the
CLI at the top of the import graph: nothing imports it.
"""
from __future__ import annotations

import sys
from typing import NoReturn

import click

EXIT_HARNESS = 3  # the harness could not do its job
EXIT_BAD_INPUT = EXIT_HARNESS  # a user's mistake is the harness not doing its job too
EXIT_ABORTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT, as shells report it)


class ReviewError(RuntimeError):
    """A stored run cannot be reviewed as asked (a missing run directory, an empty
    window, a KEK that cannot be used); the message is for the user."""


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """A user's mistake: one line on stderr, never a traceback."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
