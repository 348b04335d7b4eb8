"""Linearizability checking, Porcupine's shape in Python: one call, `check(model, ops)`.

Three modules do the work, and this one is the call (and the names the rest of the
project imports): `checker.lin_search` searches one partition (Wing & Gong with Lowe's
memoization, and the pruning `docs/checker.md` lists); `checker.lin_parallel` schedules
the partitions in rounds over worker processes, with the same answer for any number of
them; `checker.lin_columns` holds a big history as columns, so that memory follows the
partition being checked (`check_history`). `checker.lin_refute` refutes a partition at
sight when it can.

A check never hangs or eats the machine: a timeout and bounds on remembered
configurations and on memory turn into an `unknown` verdict with the reason.
"""
from __future__ import annotations

import time
from typing import Any

from . import lin_parallel
from .history import Op
from .lin_columns import Columns
from .lin_parallel import ORDER_WEIGHTS, SKIPPED, default_workers, one_round
from .lin_search import (
    DEFAULT_MAX_CONFIGS,
    CheckResult,
    PartitionResult,
    Step,
    Verdict,
    rss_mb,
    search_partition,
)
from .models import Model

__all__ = ["DEFAULT_MAX_CONFIGS", "CheckResult", "ORDER_WEIGHTS", "PartitionResult",
           "SKIPPED", "Step", "Verdict", "check", "check_history", "check_partition",
           "default_workers", "rss_mb", "search_partition"]


def _search(*args: Any, **kwargs: Any) -> Any:
    """The search, looked up here at each call (a test may stand in for it)."""
    return search_partition(*args, **kwargs)


def check(model: Model, ops: list[Op], timeout: float | None = None,
          max_configs: int = DEFAULT_MAX_CONFIGS, workers: int | None = None,
          stop_early: bool = True, max_rss_mb: float | None = None) -> CheckResult:
    """Is `ops` linearizable with respect to `model`? One call, like Porcupine's.

    The model splits the history into independent partitions, each checked alone; the
    verdict is the worst. With `stop_early` (the default), the first invalid partition
    (in rounds, see `checker.lin_parallel`) ends the check and partitions not finished
    by then are `unknown` with a reason. Work left after a short in-process start is
    split over `workers` forked processes (default: the machine's cores, at most two:
    this is the call a run or a simulator worker makes, many at a time on a big machine;
    `cutover lin` asks for all of them); the verdict and the counterexample are the same
    for any number. `max_rss_mb` bounds what each process grows by: a search that would
    grow past it gives up with `unknown` (as a timeout does).
    """
    if workers is None:
        workers = min(default_workers(), 2)
    return check_history(model, Columns.from_ops(ops), timeout, max_configs, workers,
                         stop_early, max_rss_mb)


def check_history(model: Model, cols: Columns, timeout: float | None = None,
                  max_configs: int = DEFAULT_MAX_CONFIGS, workers: int | None = None,
                  stop_early: bool = True, max_rss_mb: float | None = None) -> CheckResult:
    """`check` on a history read as columns (`checker.lin_columns.read_columns`): the
    ops of a partition are made while it is checked, and dropped after."""
    return lin_parallel.check_columns(model, cols, _search, timeout, max_configs, workers,
                                      stop_early, max_rss_mb)


def check_partition(model: Model, ops: list[Op], timeout: float | None = None,
                    max_configs: int = DEFAULT_MAX_CONFIGS) -> PartitionResult:
    """Check one partition alone (both candidate orders raced), in this process."""
    deadline = None if timeout is None else time.monotonic() + timeout
    per = max(1, max_configs // 2)
    gens = {o: _search(model, ops, o, per) for o in ORDER_WEIGHTS}
    res = None
    while res is None:
        if deadline is not None and time.monotonic() > deadline:
            res = lin_parallel.interrupt(list(gens.values()), "timed out")
            break
        res = one_round(gens)
    res.ops = ops
    return res
