"""What a matrix stored, read back with care: its `matrices` row and `matrix_tasks` rows.

`cutover trend`, `cutover matrix --resume` (and `--summarize`'s table) and serve's
`/trend` build tasks, labels and outcomes from these rows. A damaged row (not JSON, a
wrong type, a NULL) ended each of them in a traceback, and a stored number was trusted
as a size: `sim_seeds: 1e9` made a list of forty million tasks (3 GB) before `trend`
printed a line, and `/trend` never answered. Here every field is checked and every
count bounded *before* anything is built from it (the number of tasks is computed, not
counted); a damaged row is a `DamagedRecord`, a `store.StoreError` (and a ValueError),
which every command already prints as one line with exit 3 and serve answers as a page.

The matrix's own config is checked the same way when a matrix is made from the flags
(`MatrixSpec.tasks`): a matrix that could not be read back is never recorded.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import sqlite_utils

from nemesis.primitives import integer, number, show, text
from orchestrator import store

MAX_SEEDS = 1000  # real-run seeds per build and mode (`--seeds`)
MAX_SIM_SEEDS = 1_000_000  # simulated seeds per build and mode
MAX_TASKS = 200_000  # tasks of one matrix: a few tens of MB of `Task`s at most
MAX_LIST = 100  # builds, modes, profiles
MAX_SEED = 2**62  # a first seed, with room for the seeds after it


class DamagedRecord(store.StoreError, ValueError):
    """A matrix's stored config or task record that cannot be used as it is; the
    message names the matrix or task and the field."""


def _names(what: str, v: Any, *, empty: bool = False) -> list[str]:
    if not isinstance(v, list) or len(v) > MAX_LIST or (not v and not empty):
        raise ValueError(f"{what} must be a list of 1 to {MAX_LIST} names, got {show(v)}")
    for x in v:
        text(what, x, empty=False)
    return list(v)


def matrix_config(d: Any, where: str = "a recorded matrix's config is damaged") -> dict[str, Any]:
    """The keyword arguments of `matrix.MatrixSpec` in a matrix config, each checked:
    `builds` and `seeds` present, every field of its type, every count in range, and
    the matrix's number of tasks at most `MAX_TASKS` (computed from the counts, so a
    stored `sim_seeds: 1e9` costs nothing). Other keys (`engine`) are left out, as
    `MatrixSpec.from_dict` always did. DamagedRecord, prefixed with `where`, if not."""
    try:
        return _matrix_config(d)
    except ValueError as e:
        raise DamagedRecord(f"{where}: {e}") from None


def _matrix_config(d: Any) -> dict[str, Any]:
    if not isinstance(d, Mapping):
        raise ValueError(f"expected an object, got {show(d)}")
    for need in ("builds", "seeds"):
        if need not in d:
            raise ValueError(f"`{need}` is missing")
    out: dict[str, Any] = {"builds": _names("builds", d["builds"]),
                           "seeds": integer("seeds", d["seeds"], 0, MAX_SEEDS)}
    if "first_seed" in d:
        out["first_seed"] = integer("first_seed", d["first_seed"], -MAX_SEED, MAX_SEED)
    if "modes" in d:
        out["modes"] = _names("modes", d["modes"])
    if d.get("profiles") is not None:
        out["profiles"] = _names("profiles", d["profiles"])
    elif "profiles" in d:
        out["profiles"] = None
    if "sim_seeds" in d:
        out["sim_seeds"] = integer("sim_seeds", d["sim_seeds"], 0, MAX_SIM_SEEDS)
    if "sim_batch" in d:
        out["sim_batch"] = integer("sim_batch", d["sim_batch"], 1, MAX_SIM_SEEDS)
    if "base" in d:
        if not isinstance(d["base"], Mapping):
            raise ValueError(f"base must be an object, got {show(d['base'])}")
        out["base"] = dict(d["base"])  # its numbers: `RunConfig.from_dict`, per task
    per = out["seeds"] + math.ceil(out.get("sim_seeds", 0) / out.get("sim_batch", 25))
    n = len(out["builds"]) * len(out.get("profiles") or [None]) * len(
        out.get("modes", [None])) * per
    if n > MAX_TASKS:
        raise ValueError(f"{n} tasks; a matrix has at most {MAX_TASKS}")
    return out


def check_matrix_row(row: Mapping[str, Any]) -> None:
    """DamagedRecord, naming the matrix, unless a `matrices` row's id, revision and start
    time are text and its config is one (`matrix_config`)."""
    mid = row.get("id")
    if not isinstance(mid, str) or not mid:
        raise DamagedRecord(f"a recorded matrix is damaged: it has no id (started "
                            f"{show(row.get('started'))})")
    for name in ("revision", "started"):
        if not isinstance(row.get(name), str | None):
            raise DamagedRecord(f"matrix {mid}: its {name} is damaged: {show(row.get(name))}")
    matrix_config(row.get("config"), f"matrix {mid}: its recorded config is damaged")


# What a sim task's per-seed result holds (`tasks.run_sim_batch`): field -> its check.
def _opt_text(name: str, v: Any) -> None:
    if v is not None and not isinstance(v, str):
        raise ValueError(f"{name} must be text, got {show(v)}")


def _seed_result(i: int, s: Any) -> None:
    if not isinstance(s, Mapping):
        raise ValueError(f"seeds[{i}] must be an object, got {show(s)}")
    if s.get("seed") is not None:
        integer(f"seeds[{i}].seed", s["seed"], -MAX_SEED, 2 * MAX_SEED)
    for name in ("verdict", "failing", "sentence", "error", "run"):
        _opt_text(f"seeds[{i}].{name}", s.get(name))
    if s.get("t_ns") is not None:
        number(f"seeds[{i}].t_ns", s["t_ns"], -1e18, 1e18)
    cov = s.get("coverage")
    if cov is not None:
        if not isinstance(cov, list) or not all(isinstance(p, str) for p in cov):
            raise ValueError(f"seeds[{i}].coverage must be a list of names, got {show(cov)}")


def _task_damage(r: Mapping[str, Any]) -> None:
    if r.get("status") not in ("done", "error"):
        raise ValueError(f"status {show(r.get('status'))} is neither done nor error")
    runs = r.get("runs")
    if not isinstance(runs, list) or len(runs) > MAX_SIM_SEEDS or not all(
            isinstance(x, str) and x for x in runs):
        raise ValueError(f"runs must be a list of run ids, got {show(runs)}")
    detail = r.get("detail")
    if not isinstance(detail, dict):
        raise ValueError(f"detail must be an object, got {show(detail)}")
    _opt_text("detail.error", detail.get("error"))
    seeds = detail.get("seeds")
    if seeds is not None:
        if not isinstance(seeds, list) or len(seeds) > MAX_SIM_SEEDS:
            raise ValueError(f"detail.seeds must be a list, got {show(seeds)}")
        for i, s in enumerate(seeds):
            _seed_result(i, s)


def task_records(db: sqlite_utils.Database, matrix_id: str) -> dict[str, dict[str, Any]]:
    """`store.matrix_tasks`, every record checked (its status, its runs, its detail and
    a sim task's per-seed results, as the table and the trend read them); DamagedRecord
    naming the matrix and the task at the first that is not what was stored."""
    try:
        recs = store.matrix_tasks(db, matrix_id)
    except ValueError as e:  # `runs` or `detail` is not JSON
        raise DamagedRecord(f"matrix {matrix_id}: a task record is not JSON ({e})") from None
    for key, r in recs.items():
        try:
            if not isinstance(key, str) or not key:
                raise ValueError("it has no task key")
            _task_damage(r)
        except ValueError as e:
            raise DamagedRecord(f"matrix {matrix_id}: the record of task {show(key)} is "
                                f"damaged: {e}") from None
    return recs


__all__ = ["DamagedRecord", "MAX_TASKS", "check_matrix_row", "matrix_config", "task_records"]
