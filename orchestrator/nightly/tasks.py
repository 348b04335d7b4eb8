"""The tasks of a matrix, and running one in a scratch directory of its own.

A matrix is a list of tasks, each a pure function of the matrix's config: one real run
(a build, a profile, a nemesis mode, a seed), one `cutover sim` batch (a build,
profile and mode over a range of seeds), or one `cutover hunt` (a build, profile and
mode, with the matrix's budget, seeds and confirm/rare counts: `HuntParams`). A task's
key names it the same way every time, so `cutover matrix --resume` can tell what is
left, and two nights can be compared task by task.

`run_task` is what an engine's worker runs: the task in `scratch_root/<tmp>/` (its
own results database and run directories), then everything it stored, shipped back
as data (`ShippedRun`: the run's rows and its run directory as a tar archive, KEK
included, mode kept; a hunt's record besides: `ShippedHunt`). The coordinator merges
that into the real results (`orchestrator.nightly.merge`), so no worker ever writes to the
shared results directory or database, and a worker that dies mid-task leaves nothing
half-written there.
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
from orchestrator import store
from orchestrator.real.run import execute
from orchestrator.run.config import RunConfig
from orchestrator.search.hunt import hunt, verdict_line
from orchestrator.sim.batch import run_seed, store_run

# RunConfig fields a task sets itself (the axes of the matrix); the rest is the
# matrix's base config.
AXES = ("bugs", "seed", "scenario", "profile", "results")


class DaemonWorker(RuntimeError):
    """The process running the task may not start children (a daemonic Dask worker)."""


@dataclass(frozen=True)
class HuntParams:
    """What a `hunt` task hunts with (`cutover hunt`'s flags): a budget in seconds for
    the search and the shrinking, and/or a number of seeds; the real runs of each
    finding (`confirm`) and of rare-coverage seeds (`rare`); simulation processes."""

    budget: float | None = None
    seeds: int | None = None
    confirm: int = 3
    rare: int = 1
    workers: int = 1


@dataclass(frozen=True)
class Task:
    """One unit of a matrix. `seeds` is the seed range of a `sim` batch (first, last);
    a `run` task has `seed`; a `hunt` task has `seed` (its first) and `hunt`."""

    kind: str  # run | sim | hunt
    build: str  # a bug switch, or a profile's name ("fixed", "elastickv"): no switch
    mode: str  # the nemesis scenario (swarm, generative, sequence, churn)
    profile: str | None = None  # RunConfig.profile, when the matrix varies it
    seed: int | None = None
    seeds: tuple[int, int] | None = None
    hunt: HuntParams | None = None

    @property
    def key(self) -> str:
        """The task's name, stable across runs of the coordinator (`--resume`)."""
        what = str(self.seed) if self.kind in ("run", "hunt") \
            else f"{self.seeds[0]}-{self.seeds[1]}"  # type: ignore[index]
        return f"{self.kind}/{self.build}/{self.profile or '-'}/{self.mode}/{what}"

    @property
    def first_seed(self) -> int | None:
        """The seed of a run, the first of a sim batch or of a hunt's search."""
        return self.seeds[0] if self.kind == "sim" and self.seeds else self.seed

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
        return out + {"sim": " (sim)", "hunt": " (hunt)"}.get(self.kind, "")

    def config(self, base: Mapping[str, Any], results: str) -> RunConfig:
        """The RunConfig of this task: the base config with the task's axes set.
        `RunError` when the base (or a profile) is not a config this build runs."""
        d: dict[str, Any] = {k: v for k, v in base.items() if k not in AXES}
        d.update(bugs=[] if self.build in PROFILES else [self.build], scenario=self.mode,
                 seed=self.seed if self.kind in ("run", "hunt") else (self.seeds or (1, 1))[0],
                 results=results)
        if self.profile is not None:
            d["profile"] = self.profile
        return RunConfig.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Task:
        seeds, h = d.get("seeds"), d.get("hunt")
        return cls(kind=d["kind"], build=d["build"], mode=d["mode"], profile=d.get("profile"),
                   seed=d.get("seed"), seeds=tuple(seeds) if seeds else None,  # type: ignore[arg-type]
                   hunt=HuntParams(**h) if h else None)


def make_tasks(spec: Mapping[str, Any]) -> list[Task]:
    """Every task of a matrix config (`matrix.MatrixSpec.to_dict`), in the order the
    local engine runs them (and the table lists them): build, profile, mode, seed; a
    build's sim batches after its runs, and its hunt (`hunt`: HuntParams' fields, or
    None) last."""
    out: list[Task] = []
    first = int(spec.get("first_seed", 1))
    profiles = spec.get("profiles") or [None]
    sim_first = int(spec.get("sim_first_seed", first))
    sim_n, batch = int(spec.get("sim_seeds") or 0), max(1, int(spec.get("sim_batch") or 1))
    hunting = HuntParams(**spec["hunt"]) if spec.get("hunt") else None
    for build in spec["builds"]:
        for profile in profiles:
            for mode in spec["modes"]:
                for seed in range(first, first + int(spec.get("seeds") or 0)):
                    out.append(Task("run", build, mode, profile, seed=seed))
                for a in range(sim_first, sim_first + sim_n, batch):
                    b = min(a + batch, sim_first + sim_n) - 1
                    out.append(Task("sim", build, mode, profile, seeds=(a, b)))
                if hunting is not None:
                    out.append(Task("hunt", build, mode, profile, seed=first, hunt=hunting))
    return out


def config_digest(task: Task, base: Mapping[str, Any]) -> str:
    """What the task's test is, as a short hash: its config without where it stores
    results. Two runs with the same digest at the same revision should agree on their
    verdict; when they do not, that is a flake (`cutover trend`)."""
    d = asdict(task.config(base, "-"))
    d.pop("results", None)
    if task.hunt is not None:  # a hunt's test is its search and real runs too
        d["hunt"] = asdict(task.hunt)
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


class UnstorableHunt(store.StoreError):
    """A shipped hunt's record cannot be stored as it is (the merge stores nothing)."""


@dataclass
class ShippedHunt:
    """The record of one hunt a worker made (`store.hunt_rows`: its `hunts` row, its
    findings, its real runs, its search's coverage), as data; its runs (the simulated
    run of each finding, each real run) travel as `ShippedRun`s beside it. `scratch` is
    the worker's results directory (paths under it are rewritten at the merge)."""

    hunt_id: str
    rows: store.RunRows = field(repr=False)
    scratch: str
    exit_code: int
    summary: str

    def detail(self) -> dict[str, Any]:
        return hunt_detail(self.hunt_id, self.exit_code, self.summary)

    def merger(self, results: str, matrix: str | None, task: str
               ) -> Callable[[Any, Mapping[str, str], Mapping[str, str]], dict[str, Any]]:
        """What `merge.merge_task(extra=)` calls in its transaction to store the record."""
        def extra(db: Any, ids: Mapping[str, str], dirs: Mapping[str, str]) -> dict[str, Any]:
            return {"hunt": self.store_into(db, results, matrix, task, ids, dirs)}
        return extra

    def store_into(self, db: Any, results: str, matrix: str | None, task: str,
                   ids: Mapping[str, str], dirs: Mapping[str, str]) -> str:
        """Insert the record into `db` (inside the merge's transaction), under a hunt id
        of its own there (`<id>-2` when another hunt has it: two workers may start a
        hunt in the same second), its runs named by the ids they are stored under
        (`ids`), paths under the worker's scratch directory moved to `results`, and the
        matrix and task in its config. A hunt stored already (the same start, end and
        summary under its id) is not stored again. Returns the hunt's id in `db`."""
        rows = self._checked(db)
        hunts_cols, hunts_data = rows["hunts"]
        h = dict(zip(hunts_cols, hunts_data[0], strict=True))
        if store.hunt_fingerprint(db, self.hunt_id) == tuple(
                h.get(c) for c in store.HUNT_FINGERPRINT):
            return self.hunt_id
        new = store.free_id(db, "hunts", self.hunt_id)
        batch = store.free_id(db, "sim_batches", new)

        def run(rid: Any) -> Any:
            return ids.get(rid, rid) if isinstance(rid, str) else rid

        out: store.RunRows = {}
        for t, (cols, data) in rows.items():
            fixed = []
            for r in data:
                d = dict(zip(cols, r, strict=True))
                if t == "hunts":
                    d["id"] = new
                    d["config"] = _json_edit(d.get("config"), lambda c: self._config(
                        c, results, matrix, task))
                    d["detail"] = _json_edit(d.get("detail"), lambda c: {
                        **c, "undecided": [{**u, "run": run(u.get("run"))}
                                           if isinstance(u, dict) else u
                                           for u in c.get("undecided") or []]})
                elif t == "sim_batches":
                    d["id"] = batch
                    d["config"] = _json_edit(d.get("config"), lambda c: {**c, "results": results})
                elif t == "hunt_findings":
                    d["hunt"], d["sim_run"] = new, run(d.get("sim_run"))
                    d["plan_file"] = self._moved(d.get("plan_file"), ids, "")
                else:  # hunt_runs
                    d["hunt"], d["real_run"] = new, run(d.get("real_run"))
                fixed.append(tuple(d[c] for c in cols))
            out[t] = (cols, fixed)
        store.insert_run_rows(db, out)
        # A real run of a shrunk plan names the plan file it played: in the scratch
        # directory then, in the sim run's directory here now.
        for rid, path in dirs.items():
            cfg = store.run_config(store.runs_by_id(db, [rid]).get(rid) or {})
            moved = self._moved(cfg.get("plan_file"), ids, results)
            if moved is None or moved == cfg.get("plan_file"):
                continue
            store.set_run_config(db, rid, {**cfg, "plan_file": moved})
            conf = os.path.join(path, "config.json")
            try:
                with open(conf, encoding="utf-8") as fh:
                    doc = json.load(fh)
                if isinstance(doc, dict):
                    doc["plan_file"] = moved
                    with open(conf, "w", encoding="utf-8") as fh:
                        json.dump(doc, fh, indent=2, default=str)
            except (OSError, ValueError) as e:
                raise UnstorableHunt(f"run {rid}: cannot update its config.json: {e}") from None
        return new

    def _checked(self, db: Any) -> store.RunRows:
        """The rows, refused (UnstorableHunt) unless they are the hunt tables with
        columns this database has (their names go into SQL) and one `hunts` row, the
        hunt's."""
        try:
            have = {t: set(db[t].columns_dict) for t in store.HUNT_TABLES
                    if t in db.table_names()}
            for t, (cols, data) in self.rows.items():
                if t not in have or not set(cols) <= have[t] or not all(
                        len(r) == len(cols) for r in data):
                    raise UnstorableHunt(f"hunt {str(self.hunt_id)[:80]}: its rows are of a "
                                         f"table or column this database does not have "
                                         f"({str(t)[:40]!r}): nothing was stored")
            hunts_cols, hunts_data = self.rows["hunts"]
            if len(hunts_data) != 1 or dict(zip(hunts_cols, hunts_data[0], strict=True)
                                            ).get("id") != self.hunt_id:
                raise UnstorableHunt(f"hunt {str(self.hunt_id)[:80]}: its record is not one "
                                     f"hunt: nothing was stored")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UnstorableHunt(f"hunt {str(self.hunt_id)[:80]}: its rows are malformed "
                                 f"({type(e).__name__}): nothing was stored") from None
        return self.rows

    def _config(self, c: dict[str, Any], results: str, matrix: str | None,
                task: str) -> dict[str, Any]:
        run = c.get("run")
        if isinstance(run, dict) and "results" in run:
            c = {**c, "run": {**run, "results": results}}
        return {**c, "matrix": matrix, "task": task}

    def _moved(self, path: Any, ids: Mapping[str, str], root: str) -> Any:
        """A path under the scratch directory (or relative to it: `root` "") as the
        same file in the results: under `root`, its first part (a run id) renamed as
        the run was. Anything else is left as it is."""
        if not isinstance(path, str) or not path:
            return path
        rel = path
        if os.path.isabs(path):
            rel = os.path.relpath(path, self.scratch)
            if rel.startswith(".."):
                return path
        first, _, rest = rel.partition("/")
        rel = f"{ids.get(first, first)}/{rest}" if rest else ids.get(first, first)
        return os.path.join(root, rel) if root else rel


def _json_edit(doc: Any, edit: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    """A JSON object column with `edit` applied; anything else as it is."""
    try:
        d = json.loads(doc) if isinstance(doc, str) else None
    except ValueError:
        return doc
    if not isinstance(d, dict):
        return doc
    return json.dumps(edit(d), separators=(",", ":"), default=str)


@dataclass
class TaskResult:
    """What a task sends back. `runs` are to be merged; `sim` holds a batch's per-seed
    results (seed, verdict, failing, sentence, t_ns, coverage, run: the id of its
    shipped run when it failed); `hunt` a hunt's record; `error` is a harness error
    (the task did not produce a verdict). Times: `exec_s` running the task itself,
    `pack_s` shipping it."""

    task: str
    kind: str
    runs: list[ShippedRun] = field(default_factory=list)
    sim: list[dict[str, Any]] | None = None
    hunt: ShippedHunt | None = None
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
    (`orchestrator.nightly.merge._safe_members`): a second name of a file (a power-loss keep
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
        elif task.kind == "hunt":
            h = run_hunt(task, base, scratch)
            res.exec_s = time.monotonic() - t0
            t1 = time.monotonic()
            with store.opened(scratch) as db:
                rows = store.hunt_rows(db, h.hunt_id)
            res.hunt = ShippedHunt(h.hunt_id, rows, scratch, h.exit_code, h.summary)
            res.runs = [ship(scratch, rid) for rid in hunt_runs(scratch, h.hunt_id)]
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


def hunt_detail(hunt_id: str, exit_code: int, summary: str) -> dict[str, Any]:
    """A hunt task's `matrix_tasks.detail`: the hunt's id, exit code and verdict line;
    `error` when the hunt could not do its job (exit 3: the task is run again by
    `--resume`, as a run's harness error is)."""
    out: dict[str, Any] = {"hunt": hunt_id, "exit_code": exit_code, "summary": summary}
    if exit_code not in (0, 1, 2):
        out["error"] = summary
    return out


@dataclass
class HuntDone:
    """A hunt task's hunt, as the engines record it."""

    hunt_id: str
    exit_code: int
    summary: str

    def detail(self) -> dict[str, Any]:
        return hunt_detail(self.hunt_id, self.exit_code, self.summary)


def run_hunt(task: Task, base: Mapping[str, Any], results: str,
             matrix: str | None = None) -> HuntDone:
    """A `cutover hunt` of the task's build in this process, into `results`, quiet (no
    progress lines, no reports: the matrix prints its own table). Its config records
    the task (and the matrix, when known here: a worker's hunt gets it at the merge)."""
    assert task.hunt is not None
    p = task.hunt
    cfg = task.config(base, results)
    doc = {**asdict(p), "first_seed": task.seed, "task": task.key}
    if matrix is not None:
        doc["matrix"] = matrix
    res = hunt(cfg, results=results, budget=p.budget, seeds=p.seeds,
               first_seed=cfg.seed if cfg.seed is not None else 1, workers=p.workers,
               confirm=p.confirm, rare=p.rare, config_doc=doc)
    return HuntDone(res.hunt_id, res.exit_code, verdict_line(res))


def hunt_runs(results: str, hunt_id: str) -> list[str]:
    """Every run a hunt stored, in the order that tells most: each finding's simulated
    run, the real runs (confirmations, then rare-coverage runs), the undecided seeds
    stored as runs."""
    with store.opened(results) as db:
        out = [f["sim_run"] for f in store.hunt_findings(db, hunt_id) if f.get("sim_run")]
        out += [r["real_run"] for r in store.hunt_runs(db, hunt_id) if r.get("real_run")]
        h = next((h for h in store.hunts(db) if h["id"] == hunt_id), {})
        und = ((h.get("detail") or {}).get("undecided") or []) if isinstance(
            h.get("detail"), dict) else []
        out += [u["run"] for u in und if isinstance(u, dict) and isinstance(u.get("run"), str)]
        have = store.runs_by_id(db, out)
    return [r for r in dict.fromkeys(out) if r in have]


def outcome_doc(o: Any) -> dict[str, Any]:
    """A RunOutcome as plain data (what a progress line prints)."""
    return {"run_id": o.run_id, "verdict": o.verdict, "exit_code": o.exit_code,
            "summary": o.summary, "seed": o.seed, "seconds": o.seconds}
