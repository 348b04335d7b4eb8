"""Which process owns a running run, and whether it is still there.

A run is `running` in the results database until its orchestrator stores a verdict or
marks it `aborted`. An orchestrator killed with SIGKILL (or a machine that lost power)
does neither, and the run would read `running` forever. So `cutover run` leaves
`RUN/owner.json` (pid, the process's start time, the boot and the host) before the run's
row exists, and any command that opens the database marks `crashed` a running run whose
owner is gone (`orchestrator.store.mark_crashed`).

A pid alone is not an identity: pids are reused. The start time (`/proc/PID/stat`,
clock ticks since boot) and the boot id make it one, within one PID namespace. A pid
means nothing in another namespace (a container on the same host, with the same host
name) or on another host (a results directory on a shared disk), so there the owner is
judged by its heartbeat instead: a running orchestrator touches its `owner.json` every
few seconds (`Heartbeat`), and one whose file has not moved for `STALE_AFTER` seconds is
gone. Without the heartbeat such a run stayed `running` forever, or a reader in another
namespace marked a live run `crashed`.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any

OWNER_FILE = "owner.json"
BEAT_EVERY = 5.0  # seconds between two touches of a running run's owner.json
STALE_AFTER = 120.0  # seconds without a touch after which an owner we cannot see is gone


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state is [0], start time [19])."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError, UnicodeDecodeError):
        return None


def _pid_ns(pid: int | str = "self") -> str | None:
    """The PID namespace `pid` lives in (`pid:[4026531836]`), or None."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return None


def stamp(pid: int | None = None) -> dict[str, Any]:
    """Who `pid` (default: this process) is, as `is_gone` will check it."""
    pid = os.getpid() if pid is None else pid
    fields = _stat_fields(pid)
    return {"pid": pid, "start": int(fields[19]) if fields else None, "boot": _boot_id(),
            "host": socket.gethostname(), "pidns": _pid_ns(pid)}


def write(run_dir: str) -> None:
    """Leave this process's stamp in `run_dir` (atomically: a reader never sees half)."""
    path = os.path.join(run_dir, OWNER_FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(stamp(), fh)
    os.replace(tmp, path)


def read(run_dir: str) -> dict[str, Any] | None:
    """The stamp a run's orchestrator left, or None (a run recorded before stamps, or a
    file that is not one)."""
    try:
        with open(os.path.join(run_dir, OWNER_FILE), "rb") as fh:
            doc = json.loads(fh.read(4096))
            beat = os.fstat(fh.fileno()).st_mtime
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("pid"), int):
        return None
    doc["beat_age"] = max(0.0, time.time() - beat)  # seconds since the owner last touched it
    return doc


class Heartbeat:
    """Touches a running run's owner.json every `BEAT_EVERY` seconds until stopped, so a
    reader that cannot see the owner's pid (another host, another PID namespace) can
    still tell a live run from a dead one."""

    def __init__(self, run_dir: str, every: float = BEAT_EVERY) -> None:
        self.path = os.path.join(run_dir, OWNER_FILE)
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="owner-heartbeat",
                                        daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            try:
                os.utime(self.path)
            except OSError:
                pass  # the run dir went away: the run ends on its own errors


def is_gone(who: dict[str, Any]) -> bool:
    """True when the process `who` describes is certainly not running any more: it
    exited (or is a zombie), its pid now belongs to another process, or the machine has
    rebooted since. An owner whose pid this process cannot judge (another host, another
    PID namespace) is gone when its heartbeat stopped `STALE_AFTER` seconds ago (an owner
    file read without its age never is)."""
    ns = _pid_ns()
    if who.get("host") != socket.gethostname() or (who.get("pidns") and ns
                                                   and who["pidns"] != ns):
        age = who.get("beat_age")
        return isinstance(age, int | float) and age > STALE_AFTER
    boot = _boot_id()
    if who.get("boot") and boot and who["boot"] != boot:
        return True
    pid = who["pid"]
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # someone else's process: it exists
    fields = _stat_fields(pid)
    if fields is None:
        return not os.path.exists(f"/proc/{pid}") and os.path.isdir("/proc/self")
    if fields[0] == "Z":
        return True
    start = who.get("start")
    return isinstance(start, int) and start != int(fields[19])
