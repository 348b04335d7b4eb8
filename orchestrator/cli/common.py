"""What every command shares: the group (usage errors exit 3, not 2), the checked
number types, the shared options and the atomic write of a report.
"""
from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click

from orchestrator.errors import EXIT_ABORTED, ReviewError, fail
from orchestrator.run.config import (
    PROFILE_NAMES,
    RANGES,
    default,
)

if TYPE_CHECKING:
    pass



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
