"""Processes left behind (issue 22, item 6): a killed or interrupted command ends every
process it started, and says so.

1. A SIGKILL of `cutover run` while its nodes start leaves no node and no switchboard
   (the children set PR_SET_PDEATHSIG first, then check that the parent that spawned
   them is still theirs); the same for the nodes of a Dask coordinator's worker.
2. A SIGTERM or SIGKILL of `cutover sim --workers 2` leaves no pool worker.
3. A SIGTERM/SIGINT of a local-engine `cutover matrix` prints one line with the resume
   hint and exits 130; a SIGTERM of `cutover run` before its run installs its handlers
   ends with a line and exit 130 too.

Every command runs as a user runs it, in a session of its own, with a tag in its
environment: every process it starts inherits the environment, so "left behind" is
"a live process carrying the tag" (/proc/PID/environ), whatever its command line.
"""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.real

CLI = [sys.executable, "-m", "orchestrator.cli"]
TAG_ENV = "CUTOVER_HOSTILE_TAG"
GONE_WITHIN = 20.0  # s for every orphan to notice: a spawn child imports for ~1 s first


# ------------------------------------------------------------------ processes


def _stat(pid: int | str) -> list[str] | None:
    """/proc/PID/stat after the command name: [0] state, [1] ppid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError, UnicodeDecodeError):
        return None


def _cmdline(pid: int | str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _tagged(tag: str) -> dict[int, str]:
    """Live processes (zombies excluded) carrying `tag` in their environment."""
    needle = f"{TAG_ENV}={tag}".encode()
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        st = _stat(d)
        if needle in env and st is not None and st[0] != "Z":
            out[int(d)] = _cmdline(d)
    return out


def _spawned(parent: int) -> list[int]:
    """`parent`'s spawn-context children (switchboard, nodes, pool or Dask workers)."""
    return [int(d) for d in os.listdir("/proc") if d.isdigit()
            and (_stat(d) or ["", ""])[1] == str(parent) and "spawn_main" in _cmdline(d)]


def _default_sigint() -> None:
    """In the child, SIGINT as a terminal would deliver it. A shell that starts pytest in
    the background (`cmd &` without job control) leaves SIGINT ignored, every child
    inherits that, and Python then installs no KeyboardInterrupt handler: a test of what
    Ctrl-C does would test nothing (or time out)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _until(pred: Callable[[], object], timeout: float, what: str,
           proc: subprocess.Popen | None = None, poll: float = 0.005) -> None:
    """Poll `pred` until true; fail after `timeout` (or when `proc` ended first)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the command ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(poll)


def _assert_none_left(tag: str) -> None:
    deadline = time.monotonic() + GONE_WITHIN
    left = _tagged(tag)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = _tagged(tag)
    assert not left, (f"{len(left)} process(es) left behind after {GONE_WITHIN:g} s: "
                      + "; ".join(f"{p}: {c[:100]}" for p, c in sorted(left.items())))


class Command:
    """One `cutover` command in a session of its own, tagged, its output in files."""

    def __init__(self, tmp: Path, args: list[str]) -> None:
        self.tag = uuid.uuid4().hex
        self.tmp = tmp / "tmp"  # TMPDIR of the command and all it starts
        self.tmp.mkdir()
        self.out, self.err = tmp / "stdout", tmp / "stderr"
        env = {**os.environ, TAG_ENV: self.tag, "TMPDIR": str(self.tmp)}
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(CLI + args, cwd=REPO, env=env, stdout=out,
                                         stderr=err, stdin=subprocess.DEVNULL,
                                         start_new_session=True,
                                         preexec_fn=_default_sigint)

    def signal(self, sig: int) -> int:
        """Send `sig`, then wait for the command itself to end; its exit status."""
        os.kill(self.proc.pid, sig)
        return self.proc.wait(60)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def simulating(self) -> bool:
        """A simulated seed is in progress (`run_seed` holds its temporary dir, in a
        pool worker's own one, or at the top in a matrix's process)."""
        return any(not p.name.startswith("cutover-sim-results")
                   for p in self.tmp.glob("**/cutover-sim-*"))

    def temp_left(self) -> list[str]:
        """What the command's seeds and workers left in its TMPDIR."""
        return [p.name for p in self.tmp.iterdir() if p.name.startswith(("cutover-sim-",
                                                                          "cutover-worker-"))]

    def cleanup(self) -> None:
        """Whatever a failed test left: killed, so it cannot spoil the next one."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in _tagged(self.tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def seed() -> int:
    s = int(os.environ.get("CUTOVER_TEST_SEED") or random.SystemRandom().randrange(1 << 31))
    print(f"seed {s} (CUTOVER_TEST_SEED={s} repeats it)")
    return s


# ---------------------------------------------------------- 1. run start-up


RUN = ["run", "--nodes", "3", "--time-limit", "3"]


def _nodes_logging(results: Path) -> bool:
    return len(list(results.glob("*/nodes/n*/events.jsonl"))) >= 3


@pytest.mark.parametrize("moment", ["first-node-spawned", "nodes-spawned", "nodes-up",
                                    "random"])
def test_sigkill_of_run_during_start_up_leaves_no_process(tmp_path: Path, moment: str,
                                                          seed: int) -> None:
    """The switchboard, then three nodes, are spawned; a spawn child imports for most
    of a second before its first line runs. Killed then, the old nodes were handed to
    init before they asked to die with their parent, and read init as that parent."""
    results = tmp_path / "results"
    cmd = Command(tmp_path, RUN + ["--seed", str(seed % 1000), "--results", str(results)])
    try:
        pid = cmd.proc.pid
        if moment == "first-node-spawned":  # the switchboard and one node
            _until(lambda: len(_spawned(pid)) >= 2, 60, "a node spawned", cmd.proc)
        elif moment == "nodes-spawned":
            _until(lambda: len(_spawned(pid)) >= 4, 60, "every node spawned", cmd.proc)
        elif moment == "nodes-up":
            _until(lambda: _nodes_logging(results), 60, "every node logging", cmd.proc)
        else:
            at = time.monotonic() + random.Random(seed).uniform(0.3, 2.5)
            print(f"SIGKILL {at - time.monotonic():.2f} s after the start")
            _until(lambda: time.monotonic() >= at, 10, "the kill time", cmd.proc)
        assert cmd.signal(signal.SIGKILL) == -signal.SIGKILL
        _assert_none_left(cmd.tag)
    finally:
        cmd.cleanup()


@pytest.mark.dask
def test_sigkill_of_a_dask_coordinator_leaves_no_node(tmp_path: Path) -> None:
    """docs/nightly.md: a local cluster's workers, and their nodes, die with the
    coordinator. The worker does (Dask watches its parent); its nodes, killed while
    they start, did not."""
    cmd = Command(tmp_path, ["matrix", "--engine", "dask", "--workers", "1", "--seeds", "1",
                             "--bugs", "none", "--nodes", "3", "--time-limit", "5",
                             "--results", str(tmp_path / "results")])
    try:
        workers: list[int] = []

        def nodes_spawned() -> bool:
            workers[:] = _spawned(cmd.proc.pid)
            return any(len(_spawned(w)) >= 4 for w in workers)  # switchboard + 3 nodes

        _until(nodes_spawned, 120, "a worker's nodes spawned", cmd.proc, poll=0.01)
        assert cmd.signal(signal.SIGKILL) == -signal.SIGKILL
        _assert_none_left(cmd.tag)
    finally:
        cmd.cleanup()


# ---------------------------------------------------------- 2. the sim pool


@pytest.mark.sim
@pytest.mark.parametrize("sig,moment", [(signal.SIGKILL, "pool-starting"),
                                        (signal.SIGKILL, "simulating"),
                                        (signal.SIGTERM, "simulating")],
                         ids=["SIGKILL-pool-starting", "SIGKILL-simulating",
                              "SIGTERM-simulating"])
def test_signal_of_sim_leaves_no_pool_worker(tmp_path: Path, sig: int, moment: str) -> None:
    cmd = Command(tmp_path, ["sim", "--seeds", "50", "--workers", "2", "--nodes", "3",
                             "--time-limit", "5", "--results", str(tmp_path / "results")])
    try:
        if moment == "pool-starting":
            _until(lambda: len(_spawned(cmd.proc.pid)) >= 2, 60, "both workers spawned",
                   cmd.proc)
        else:
            _until(cmd.simulating, 60, "a seed in progress", cmd.proc)
        code = cmd.signal(sig)
        if sig == signal.SIGTERM:
            assert code == 130, cmd.stderr()
            assert cmd.stderr().strip().splitlines()[-1] == "error: aborted"
        _assert_none_left(cmd.tag)
        if sig == signal.SIGTERM:  # the workers were terminated, not killed: they unwound
            assert not cmd.temp_left(), "temporary directories left behind"
    finally:
        cmd.cleanup()


# ---------------------------------------------------------- 3. a line and 130


@pytest.mark.sim
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_of_a_local_matrix_prints_the_resume_line(tmp_path: Path, sig: int) -> None:
    """Outside a run (here: a sim batch, one of the matrix's tasks) the signal used to
    kill it silently (SIGTERM) or end it without the hint (SIGINT)."""
    results = tmp_path / "results"
    cmd = Command(tmp_path, ["matrix", "--engine", "local", "--seeds", "0", "--sim-seeds",
                             "20", "--bugs", "none", "--nodes", "3", "--time-limit", "5",
                             "--results", str(results)])
    try:
        _until(cmd.simulating, 60, "the sim task in progress", cmd.proc)
        code = cmd.signal(sig)
        err = cmd.stderr()
        assert code == 130, err
        assert "Traceback" not in err
        mid = err.split()[1].rstrip(":")
        assert mid.startswith("mx-"), err
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: aborted"), err
        assert f"cutover matrix --resume {mid} --results {results}" in last, err
        db = sqlite3.connect(f"file:{results / 'cutover.db'}?mode=ro", uri=True)
        try:
            done = db.execute("select count(*) from matrix_tasks where matrix = ? and "
                              "status = 'done'", [mid]).fetchone()[0]
        finally:
            db.close()
        assert done == 0  # the interrupted task stays to be run by --resume
        _assert_none_left(cmd.tag)
    finally:
        cmd.cleanup()


def _loaded(pid: int, lib: str) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as fh:
            return lib in fh.read()
    except OSError:
        return False


def test_sigterm_of_run_before_its_handlers_ends_with_a_line(tmp_path: Path) -> None:
    """`run` loads ZeroMQ while it imports its work, a few hundred ms before the run
    installs its own handlers: a SIGTERM then used to end it with no line at all."""
    results = tmp_path / "results"
    cmd = Command(tmp_path, RUN + ["--results", str(results)])
    try:
        _until(lambda: _loaded(cmd.proc.pid, "_zmq"), 60, "ZeroMQ loaded", cmd.proc,
               poll=0.002)
        code = cmd.signal(signal.SIGTERM)
        out = cmd.out.read_text() + cmd.stderr()
        assert code == 130, out
        assert "Traceback" not in out
        assert "aborted" in out.strip().splitlines()[-1].lower(), out
        _assert_none_left(cmd.tag)
        if (results / "cutover.db").exists():
            db = sqlite3.connect(f"file:{results / 'cutover.db'}?mode=ro", uri=True)
            try:
                running = db.execute("select count(*) from runs where status = 'running'"
                                     ).fetchone()[0]
            finally:
                db.close()
            assert running == 0
    finally:
        cmd.cleanup()
