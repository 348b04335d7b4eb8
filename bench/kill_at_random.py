"""Kill `cutover` commands at random moments; count what they leave behind.

    .venv/bin/python bench/kill_at_random.py [-n 100] [--seed S] [--commands run,sim,...]

Each trial starts one command as a user would (`python -m orchestrator.cli ...`, a
short run, a sim batch on two workers, a local-engine matrix, and a Dask matrix when
Dask is installed), in a session of its own, with a fresh results directory and a tag
in its environment, and sends it SIGKILL, SIGTERM or SIGINT at a random moment (all
drawn from the seed, printed first). Then:

* **left behind**: live processes still carrying the tag (every process the command
  started inherits its environment, whatever its command line) once the command has
  exited and `--grace` seconds have passed: a node holding its WAL lock and port, a
  switchboard, a pool or Dask worker, a resource tracker waiting for them;
* **running**: runs whose row still says `running` after the next command opened the
  results (`cutover list`, which marks `crashed` the runs whose orchestrator is gone).
  `raw_running` counts them before that: after a SIGKILL nobody else can update them;
* **silent**: trials where SIGTERM/SIGINT did not end the command with exit 130 (a
  signal that lands before Python has run a line of ours still kills it silently).

Last line: `left_behind=X running=Y of N`. Not a test: it takes minutes (about 8 s a
trial), and it reports figures rather than asserting them.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TAG_ENV = "CUTOVER_KILL_TAG"
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)

# Each command, kept short, and the window its kill time is drawn from (seconds after
# the start: start-up, the run, its checks and its teardown all get their share).
COMMANDS: dict[str, tuple[list[str], float]] = {
    "run": (["run", "--nodes", "3", "--time-limit", "3"], 9.0),
    "sim": (["sim", "--seeds", "20", "--workers", "2", "--nodes", "3", "--time-limit", "5"],
            8.0),
    "matrix": (["matrix", "--engine", "local", "--seeds", "1", "--bugs", "none", "--nodes",
                "3", "--time-limit", "5", "--sim-seeds", "2", "--sim-batch", "2"], 14.0),
    "dask": (["matrix", "--engine", "dask", "--workers", "1", "--seeds", "1", "--bugs",
              "none", "--nodes", "3", "--time-limit", "5"], 16.0),
}


@dataclass
class Trial:
    command: str
    sig: str
    at: float
    exit: int | None
    finished_first: bool
    left: int
    raw_running: int
    running: int
    silent: bool


def tagged(tag: str) -> list[int]:
    """Live processes (not zombies) with `tag` in their environment."""
    needle = f"{TAG_ENV}={tag}".encode()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
            with open(f"/proc/{d}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if needle in env and state != b"Z":
            out.append(int(d))
    return out


def running_runs(results: Path) -> int:
    db = results / "cutover.db"
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute("select count(*) from runs where status = 'running'"
                                ).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0  # no runs table yet: the command died while creating the database


def trial(name: str, sig: int, at: float, grace: float, keep: bool) -> Trial:
    args, _window = COMMANDS[name]
    tag = uuid.uuid4().hex
    root = Path(tempfile.mkdtemp(prefix=f"cutover-kill-{name}-"))
    results, tmp = root / "results", root / "tmp"
    tmp.mkdir()
    env = {**os.environ, TAG_ENV: tag, "TMPDIR": str(tmp)}
    with open(root / "stdout", "wb") as out, open(root / "stderr", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args,
                                 "--results", str(results)], cwd=REPO, env=env,
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        try:
            proc.wait(at)
            finished_first = True
        except subprocess.TimeoutExpired:
            finished_first = False
            os.kill(proc.pid, sig)
        try:
            code: int | None = proc.wait(60)
        except subprocess.TimeoutExpired:  # a signal it did not act on: counted, ended
            code = None
            proc.kill()
            proc.wait()
        deadline = time.monotonic() + grace
        left = tagged(tag)
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = tagged(tag)
        raw = running_runs(results)
        if results.exists():  # the next command: it marks a run whose owner is gone
            subprocess.run([sys.executable, "-m", "orchestrator.cli", "list", "--results",
                            str(results)], cwd=REPO, capture_output=True, timeout=60)
        silent = (not finished_first and sig != signal.SIGKILL and code != 130)
        return Trial(name, signal.Signals(sig).name, at, code, finished_first, len(left),
                     raw, running_runs(results), silent)
    finally:
        for pid in tagged(tag):  # whatever is left: ended, so the next trial is fair
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100, help="trials (default 100)")
    ap.add_argument("--seed", type=int, help="default: random (printed)")
    ap.add_argument("--commands", help="comma list of " + ",".join(COMMANDS)
                    + " (default: all; dask when it is installed)")
    ap.add_argument("--grace", type=float, default=10.0,
                    help="seconds the command's processes get to end after it did")
    ap.add_argument("--keep", action="store_true", help="keep each trial's directory")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 31)
    names = a.commands.split(",") if a.commands else [
        c for c in COMMANDS if c != "dask" or importlib.util.find_spec("distributed")]
    unknown = [c for c in names if c not in COMMANDS]
    if unknown:
        ap.error(f"unknown command {unknown[0]!r}")
    print(f"seed {seed}: {a.n} trials of {','.join(names)}", flush=True)
    rng = random.Random(seed)
    trials: list[Trial] = []
    for i in range(a.n):
        name = names[i % len(names)]
        sig = rng.choice(SIGNALS)
        at = round(rng.uniform(0.2, COMMANDS[name][1]), 2)
        t = trial(name, sig, at, a.grace, a.keep)
        trials.append(t)
        print(f"#{i + 1:<3} {name:<6} {t.sig:<7} at {at:5.2f}s  exit {t.exit}"
              f"{' (finished first)' if t.finished_first else ''}  left {t.left}  "
              f"running {t.raw_running}->{t.running}{'  SILENT' if t.silent else ''}",
              flush=True)
    by: Counter[str] = Counter()
    for t in trials:
        if t.left:
            by[f"{t.command}/{t.sig}"] += t.left
    killed = sum(not t.finished_first for t in trials)
    print(f"killed {killed} of {len(trials)} (the rest finished first); "
          f"silent={sum(t.silent for t in trials)} "
          f"raw_running={sum(t.raw_running for t in trials)}; left behind by command and "
          f"signal: {dict(by) if by else 'none'}")
    print(f"left_behind={sum(t.left for t in trials)} "
          f"running={sum(t.running for t in trials)} of {len(trials)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
