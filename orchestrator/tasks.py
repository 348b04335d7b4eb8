"""The tasks of a matrix, and running one in a scratch directory of its own.

A matrix is a list of tasks, each a pure function of the matrix's config: one real run
(a build, a profile, a nemesis mode, a seed), or one `cutover sim` batch (a build,
profile and mode over a range of seeds). A task's key names it the same way every
time, so `cutover matrix --resume` can tell what is left, and two nights can be
compared task by task.

`run_task` is what an engine's worker runs: the task in `scratch_root/<tmp>/` (its
own results database and run directories), then everything it stored, shipped back
as data (`ShippedRun`: the run's rows and its run directory as a tar archive, KEK
included, mode kept). The coordinator merges that into the real results
(`orchestrator.merge`), so no worker ever writes to the shared results directory or
database, and a worker that dies mid-task leaves nothing half-written there.
"""
from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import shutil
import socket
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from node.cutover import PROFILES

from . import store
from .config import RunConfig
from .run import execute
from .sim.batch import run_seed, store_run

# RunConfig fields a task sets itself (the axes of the matrix); the rest is the
# matrix's base config.
AXES = ("bugs", "seed", "scenario", "profile", "results")


class DaemonWorker(RuntimeError):
    """The process running the task may not start children (a daemonic Dask worker)."""


@dataclass(frozen=True)
class Task:
    """One unit of a matrix. `seeds` is the seed range of a `sim` batch (first, last);
    a `run` task has `seed`."""

    kind: str  # run | sim
    build: str  # a bug switch, or a profile's name ("fixed", "elastickv"): no switch
    mode: str  # the nemesis scenario (swarm, generative, sequence, churn)
    profile: str | None = None  # RunConfig.profile, when the matrix varies it
    seed: int | None = None
    seeds: tuple[int, int] | None = None

    @property
    def key(self) -> str:
        """The task's name, stable across runs of the coordinator (`--resume`)."""
        what = str(self.seed) if self.kind == "run" else f"{self.seeds[0]}-{self.seeds[1]}"  # type: ignore[index]
        return f"{self.kind}/{self.build}/{self.profile or '-'}/{self.mode}/{what}"

    def label(self, modes: int = 1, profiles: int = 1) -> str:
        """The row of the detection table: the build, then what else varies."""
        if self.build in PROFILES:  # the build without a switch: named after its profile
            out = self.profile or self.build
        else:
            out = self.build
            if profiles > 1 or self.profile is not None:
                out += f" [{self.profile or 'default'}]"
        if modes > 1:
            out += f" [{self.mode}]"
        return out + (" (sim)" if self.kind == "sim" else "")

    def config(self, base: Mapping[str, Any], results: str) -> RunConfig:
        """The RunConfig of this task: the base config with the task's axes set.
        `RunError` when the base (or a profile) is not a config this build runs."""
        d: dict[str, Any] = {k: v for k, v in base.items() if k not in AXES}
        d.update(bugs=[] if self.build in PROFILES else [self.build], scenario=self.mode,
                 seed=self.seed if self.kind == "run" else (self.seeds or (1, 1))[0],
                 results=results)
        if self.profile is not None:
            d["profile"] = self.profile
        return RunConfig.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Task:
        seeds = d.get("seeds")
        return cls(kind=d["kind"], build=d["build"], mode=d["mode"], profile=d.get("profile"),
                   seed=d.get("seed"), seeds=tuple(seeds) if seeds else None)  # type: ignore[arg-type]


def make_tasks(spec: Mapping[str, Any]) -> list[Task]:
    """Every task of a matrix config (`matrix.MatrixSpec.to_dict`), in the order the
    local engine runs them (and the table lists them): build, profile, mode, seed; a
    build's sim batches after its runs."""
    out: list[Task] = []
    first = int(spec.get("first_seed", 1))
    profiles = spec.get("profiles") or [None]
    sim_first = int(spec.get("sim_first_seed", first))
    sim_n, batch = int(spec.get("sim_seeds") or 0), max(1, int(spec.get("sim_batch") or 1))
    for build in spec["builds"]:
        for profile in profiles:
            for mode in spec["modes"]:
                for seed in range(first, first + int(spec.get("seeds") or 0)):
                    out.append(Task("run", build, mode, profile, seed=seed))
                for a in range(sim_first, sim_first + sim_n, batch):
                    b = min(a + batch, sim_first + sim_n) - 1
                    out.append(Task("sim", build, mode, profile, seeds=(a, b)))
    return out


def config_digest(task: Task, base: Mapping[str, Any]) -> str:
    """What the task's test is, as a short hash: its config without where it stores
    results. Two runs with the same digest at the same revision should agree on their
    verdict; when they do not, that is a flake (`cutover trend`)."""
    d = asdict(task.config(base, "-"))
    d.pop("results", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ------------------------------------------------------------------ the worker's side


@dataclass
class ShippedRun:
    """One run a worker stored in its scratch results, as data for the coordinator.
    `archive` holds the run directory (the KEK inside it): it is never shown, so a
    log line or a traceback that prints the object prints no key material."""

    run_id: str
    rows: store.RunRows = field(repr=False)
    archive: bytes = field(repr=False)
    outcome: dict[str, Any] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return f"ShippedRun({self.run_id}, {len(self.archive)} archive bytes)"


@dataclass
class TaskResult:
    """What a task sends back. `runs` are to be merged; `sim` holds a batch's per-seed
    results (seed, verdict, failing, sentence, t_ns, coverage, run: the id of its
    shipped run when it failed); `error` is a harness error (the task did not produce a
    verdict). Times: `exec_s` running the task itself, `pack_s` shipping it."""

    task: str
    kind: str
    runs: list[ShippedRun] = field(default_factory=list)
    sim: list[dict[str, Any]] | None = None
    error: str | None = None
    worker: str = ""
    exec_s: float = 0.0
    pack_s: float = 0.0
    started: float = 0.0  # time.time() on the worker
    ended: float = 0.0


class UnshippableRun(RuntimeError):
    """A run directory holds something the coordinator's merge refuses (a link, a
    device): a harness error of the task, said here rather than at the merge."""


def _archive(run_dir: str) -> bytes:
    """The run directory as an uncompressed tar (modes kept: the KEK stays 0600). Not
    compressed: on one machine gzip would cost more than the copy it saves; runs are a
    few MB. Regular files and directories only, as the merge accepts
    (`orchestrator.merge._safe_members`): a second name of a file (a power-loss keep
    link a killed node left) is shipped as a file of its own, not as a hard link, a
    socket is skipped (as `tar.add` did), and a symlink, pipe or device is an
    `UnshippableRun`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for dirpath, dirnames, filenames in os.walk(run_dir):
            dirnames.sort()
            rel = os.path.relpath(dirpath, run_dir)
            tar.add(dirpath, arcname="." if rel == "." else f"./{rel}", recursive=False)
            for name in sorted(filenames) + [d for d in dirnames
                                             if os.path.islink(os.path.join(dirpath, d))]:
                full = os.path.join(dirpath, name)
                arc = f"./{name}" if rel == "." else f"./{rel}/{name}"
                info = tar.gettarinfo(full, arcname=arc)
                if info is None:  # a socket: no bytes to ship (`tar.add` skipped it too)
                    continue
                if info.islnk():  # a second name of a file shipped already: its bytes again
                    info.type, info.linkname = tarfile.REGTYPE, ""
                    info.size = os.lstat(full).st_size
                if not info.isreg():
                    raise UnshippableRun(f"{full} is not a regular file or directory; a run "
                                         f"directory holds nothing else")
                with open(full, "rb") as fh:
                    tar.addfile(info, fh)
    return buf.getvalue()


def ship(results: str, run_id: str, outcome: dict[str, Any] | None = None) -> ShippedRun:
    """A run of the scratch results `results`, as data."""
    with store.opened(results) as db:
        rows = store.run_rows(db, run_id)
        row = store.resolve_run(db, run_id)
    return ShippedRun(run_id, rows, _archive(store.run_dir_of(results, row)), outcome or {})


def run_task(task_doc: Mapping[str, Any], base: Mapping[str, Any], scratch_root: str,
             worker: str = "") -> TaskResult:
    """Run one task in a fresh directory under `scratch_root` and ship back what it
    stored; the directory is removed afterwards. Raises only for a harness failure
    (the engine records it as a harness error, never as a verdict)."""
    if multiprocessing.current_process().daemon:
        raise DaemonWorker(
            "this worker is a daemonic process and cannot start the nodes of a run: start "
            "Dask workers with DASK_DISTRIBUTED__WORKER__DAEMON=False (docs/nightly.md)")
    task = Task.from_dict(task_doc)
    res = TaskResult(task=task.key, kind=task.kind, worker=worker or socket.gethostname(),
                     started=time.time())
    os.makedirs(scratch_root, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="cutover-task-", dir=scratch_root)
    try:
        t0 = time.monotonic()
        if task.kind == "run":
            o = execute(task.config(base, scratch), out=None, progress=None,
                        handle_signals=False)
            res.exec_s = time.monotonic() - t0
            t1 = time.monotonic()
            res.runs.append(ship(scratch, o.run_id, outcome_doc(o)))
            res.pack_s = time.monotonic() - t1
        else:
            sims, stored = run_sim_batch(task, base, scratch)
            res.exec_s = time.monotonic() - t0
            t1 = time.monotonic()
            res.sim = sims
            res.runs = [ship(scratch, rid) for rid in stored]
            res.pack_s = time.monotonic() - t1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    res.ended = time.time()
    return res


def run_sim_batch(task: Task, base: Mapping[str, Any], results: str,
                  on_stored: Callable[[str], None] | None = None
                  ) -> tuple[list[dict[str, Any]], list[str]]:
    """A `cutover sim` batch in this process, seed after seed (one core per worker, as
    for a real run); the failing seeds stored in `results` as `cutover sim` stores them
    (`store_run`). Returns the per-seed results and the stored run ids."""
    assert task.seeds is not None
    doc = asdict(task.config(base, results))
    out: list[dict[str, Any]] = []
    stored: list[str] = []
    for seed in range(task.seeds[0], task.seeds[1] + 1):
        r = run_seed(doc, seed, keep=True)
        d = {"seed": r.seed, "verdict": r.verdict, "failing": r.failing,
             "sentence": r.sentence, "t_ns": r.t_ns, "coverage": r.coverage,
             "error": r.error, "run": None}
        if r.record is not None:
            d["run"] = store_run(results, r.record)
            stored.append(d["run"])
            if on_stored is not None:
                on_stored(d["run"])
        out.append(d)
    return out, stored


def outcome_doc(o: Any) -> dict[str, Any]:
    """A RunOutcome as plain data (what a progress line prints)."""
    return {"run_id": o.run_id, "verdict": o.verdict, "exit_code": o.exit_code,
            "summary": o.summary, "seed": o.seed, "seconds": o.seconds}
