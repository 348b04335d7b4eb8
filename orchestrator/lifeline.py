"""No process left behind: every child the harness starts dies with the harness.

A SIGKILL of the orchestrator runs none of its clean-up code, so the children must see
to it themselves. Two things, both needed, in this order, as the first thing a child
does (`die_with_parent`):

* PR_SET_PDEATHSIG asks the kernel to signal the child when its parent dies. It only
  covers a death *after* the call, and a spawn-context child spends most of a second
  importing before its first line of ours runs.
* So the child then compares `getppid()` with the pid its parent passed down: a parent
  that died earlier has already handed the child to init (or a subreaper), the pids
  differ, and the child exits at once. A child reading "its parent's pid" itself would
  read init's and watch the wrong process forever (issue 22, item 6).

The node process keeps its own copy of these lines (`node.server.die_with_parent`):
`node/` imports nothing of the orchestrator. The switchboard and the simulator's pool
workers use this one. Linux only: elsewhere prctl is missing and only the `getppid()`
check (and the switchboard's poll) remains.

The other half is the parent's: on SIGTERM or Ctrl-C it must end what it started and
say so (`abort_on_signals`, `worker_pool`), rather than die where it stands.
"""
from __future__ import annotations

import atexit
import concurrent.futures as cf
import ctypes
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

PR_SET_PDEATHSIG = 1


def set_pdeathsig(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send us `sig` when the thread that forked us exits; False where that
    is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """First thing in a child: die with `parent_pid` (read by the parent, passed down),
    or exit now (status 0: nobody is left to read it) if it is already gone."""
    set_pdeathsig(sig)
    if os.getppid() != parent_pid:
        os._exit(0)


def _pool_worker_init(parent_pid: int) -> None:
    """A pool worker's initializer: the lifeline; Ctrl-C left to the parent (a terminal
    sends SIGINT to the whole process group; the parent ends the pool); and a temporary
    directory of the worker's own, holding every one its tasks make, removed as the
    worker exits, SIGTERM included (a SIGKILL leaves it, as it would leave theirs)."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    root = tempfile.mkdtemp(prefix="cutover-worker-")
    tempfile.tempdir = root  # this process only: its tasks' TemporaryDirectory go here

    def on_term(_signum: int, _frame: Any) -> None:
        # Not an exception unwinding the task: one landing between a mkdtemp and its
        # `with` (or inside a cleanup) would leave that directory behind.
        shutil.rmtree(root, ignore_errors=True)
        os._exit(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    atexit.register(shutil.rmtree, root, ignore_errors=True)


def kill_pool(ex: cf.ProcessPoolExecutor, grace: float = 3.0) -> None:
    """End a pool now: pending work cancelled, workers terminated (a seed being
    simulated is not worth waiting for when the user asked us to stop), and killed if
    they are still there after `grace` seconds."""
    # No public way to reach the workers before Python 3.14 (`terminate_workers`).
    procs = list((getattr(ex, "_processes", None) or {}).values())
    # (Taken before the shutdown, which forgets it: see the end.)
    writer = getattr(getattr(ex, "_result_queue", None), "_writer", None)
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        try:
            p.terminate()
        except (OSError, ValueError, AttributeError):
            pass
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)
        except (OSError, ValueError, AssertionError):
            pass
    # A worker ended in the middle of sending a result leaves half a message in the
    # result pipe, and the pool's manager thread waits for the rest for ever: this
    # process holds the pipe's other end, so no end-of-file comes. The process then hangs
    # at exit, where the interpreter joins that thread (a hunt did, after its summary).
    # Closing our end gives the reader its end-of-file: the pool is broken, the thread
    # ends. Every worker is gone by now, so nothing else writes there.
    if writer is not None:
        try:
            writer.close()
        except OSError:
            pass


@contextmanager
def worker_pool(workers: int) -> Iterator[cf.ProcessPoolExecutor]:
    """A spawn-context process pool whose workers die with this process (SIGKILL
    included), and that is ended, not drained, when the block is left by an exception
    (Ctrl-C, a SIGTERM turned into KeyboardInterrupt by `abort_on_signals`): draining
    would wait for every running task to finish."""
    ex = cf.ProcessPoolExecutor(max_workers=max(1, workers),
                                mp_context=multiprocessing.get_context("spawn"),
                                initializer=_pool_worker_init, initargs=(os.getpid(),))
    try:
        yield ex
    except BaseException:
        kill_pool(ex)
        raise
    ex.shutdown(wait=True)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT, raised where the main thread is (its text: the signal's name).

    A KeyboardInterrupt to everything that handles one (click turns it into "aborted"
    and exit 130), but not the class itself, on purpose: CPython 3.11 remembers a bare
    KeyboardInterrupt that crossed an `exec` of a string (dataclasses and namedtuple
    make their methods that way, at import) and, at exit, kills itself with SIGINT
    instead of exiting 130, even though the exception was handled."""


def _interrupt(signum: int, _frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def abort_on_signals() -> None:
    """SIGTERM and SIGINT raise KeyboardInterrupt (`Interrupted`), so the command unwinds, ends its
    children and prints its one line (exit 130) instead of dying silently. Installed
    first thing in a command; code that needs finer handling (`run.execute`) installs
    its own for its duration. A signal we were started with ignored stays ignored (a
    shell does that to a background job, so the terminal's Ctrl-C spares it)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, _interrupt)
