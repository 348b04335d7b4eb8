"""A simulated disk with the durability rules of `node.disk` (the module every node write
goes through), so the node's own storage code (WAL, snapshots, sidecar, node id) runs
unchanged in the simulator and a crash loses exactly what a power failure would.

State: a namespace (path -> inode) that the node sees, and for each directory the
namespace as of its last fsync; each inode has its bytes and how many of them are
durable. `crash(power=False)` is a SIGKILL (the page cache survives: nothing changes);
`crash(power=True)` is a power loss: every directory goes back to its last synced
namespace and every file to its synced bytes (with an `rng`, a random part of the
unsynced tail survives, as with a partial write-back). Unlike the real journal, the
simulated disk knows the truth even across restarts.
"""
from __future__ import annotations

import errno
import os
import random
from pathlib import Path
from typing import Any

from node.disk import write_atomic

PathLike = str | os.PathLike[str]


_MISSING = object()  # a directory never synced before (for `undo`)


def _p(path: PathLike) -> str:
    return os.path.normpath(os.fspath(path))


class _Inode:
    __slots__ = ("bad", "data", "durable")

    def __init__(self) -> None:
        self.data = bytearray()
        self.durable = 0  # bytes that survive a power loss
        self.bad: list[tuple[int, int]] = []  # latent sector errors: (offset, length)


class SimFile:
    """An open file for appending (`node.disk.DiskFile`'s interface)."""

    def __init__(self, disk: SimDisk, path: str, inode: _Inode) -> None:
        self._disk = disk
        self.path = Path(path)
        self._inode = inode

    @property
    def size(self) -> int:
        return len(self._inode.data)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        d = self._disk
        d.bytes_written += len(data)
        d._log("write", self._inode, len(self._inode.data))
        off = len(self._inode.data)
        self._inode.data += data
        if d.armed is not None:
            d._misfire(self._inode, off, bytes(data))

    def sync(self) -> None:
        d = self._disk
        d.syncs += 1
        if d._turn is not None:
            d._turn_k += 1
            d._turn.append((d._turn_k, "sync", self._inode, self._inode.durable))
        self._inode.durable = len(self._inode.data)

    def close(self) -> None:
        pass


class _Lock:
    def close(self) -> None:
        pass


class SimDisk:
    """`node.disk.Disk`'s interface over memory, with power-loss semantics."""

    journaled = False

    def __init__(self) -> None:
        self.names: dict[str, _Inode] = {}
        self.dirs: set[str] = {"/", "."}
        self.synced: dict[str, dict[str, _Inode]] = {}  # dir -> {name: inode} at last fsync
        self.bytes_written = 0
        self.syncs = 0
        # One loop turn of the node, for a crash that strikes while its fsyncs are still
        # running: the durability changes of the turn, each with the number of the file
        # sync it waits for (`begin_turn`, `end_turn`, `undo`).
        self._turn: list[tuple[int, str, Any, Any]] | None = None
        self._turn_k = 0
        # The lost and misdirected writes (`arm_writes`): while armed, each write goes
        # wrong with probability p; the page cache still shows it as written, so what
        # went wrong shows at the next crash (the process's cache is gone: what it
        # reads then is what the media holds).
        self.armed: tuple[str, float, random.Random] | None = None
        self.pending: list[tuple[str, _Inode, int, bytes]] = []
        self.misfired: dict[str, int] = {}

    # ------------------------------------------------------------------ reading

    def read_bytes(self, path: PathLike) -> bytes:
        try:
            inode = self.names[_p(path)]
        except KeyError:
            raise FileNotFoundError(2, "No such file (simulated)", os.fspath(path)) from None
        if any(off < len(inode.data) for off, _n in inode.bad):
            raise OSError(errno.EIO, "Input/output error (simulated latent sector error)",
                          os.fspath(path))
        return bytes(inode.data)

    def exists(self, path: PathLike) -> bool:
        p = _p(path)
        return p in self.names or p in self.dirs

    def is_dir(self, path: PathLike) -> bool:
        return _p(path) in self.dirs

    def is_file(self, path: PathLike) -> bool:
        return _p(path) in self.names

    def listdir(self, path: PathLike) -> list[str]:
        d = _p(path)
        out = [os.path.basename(n) for n in self.names if os.path.dirname(n) == d]
        out += [os.path.basename(x) for x in self.dirs if os.path.dirname(x) == d and x != d]
        return sorted(out)

    # ------------------------------------------------------------------ writing

    def makedirs(self, path: PathLike) -> None:
        p = _p(path)
        while p not in self.dirs:
            self.dirs.add(p)
            parent = os.path.dirname(p)
            if parent == p:
                break
            p = parent

    def _dir_of(self, p: str) -> str:
        d = os.path.dirname(p)
        if d not in self.dirs:
            raise FileNotFoundError(2, "No such directory (simulated)", d)
        if d not in self.synced:
            # The first time a directory is touched: what it holds now is durable (it was
            # created durably, with whatever was there).
            self._log("dir", d, _MISSING)
            self.synced[d] = {n: i for n, i in self.names.items() if os.path.dirname(n) == d}
        return d

    def create(self, path: PathLike) -> SimFile:
        p = _p(path)
        self._dir_of(p)
        if p in self.names:
            raise FileExistsError(17, "File exists (simulated)", p)
        self._log("name", p, None)
        inode = self.names[p] = _Inode()
        return SimFile(self, p, inode)

    def open_append(self, path: PathLike) -> SimFile:
        p = _p(path)
        try:
            return SimFile(self, p, self.names[p])
        except KeyError:
            raise FileNotFoundError(2, "No such file (simulated)", p) from None

    def create_truncate(self, path: PathLike, mode: int = 0o644) -> SimFile:
        p = _p(path)
        self._dir_of(p)
        inode = self.names.get(p)
        if inode is None:
            self._log("name", p, None)
            inode = self.names[p] = _Inode()
        else:
            self._log("data", inode, (bytes(inode.data), inode.durable))
            del inode.data[:]
            inode.durable = 0
        return SimFile(self, p, inode)

    def write_atomic(self, path: PathLike, data: bytes, *, temp_suffix: str = ".tmp",
                     mode: int = 0o644) -> None:
        write_atomic(self, path, data, temp_suffix=temp_suffix, mode=mode)

    def link_new(self, path: PathLike, data: bytes, *, mode: int = 0o600) -> bool:
        p = _p(path)
        if p in self.names:
            return False
        self.write_atomic(p, data)
        return True

    def rename(self, src: PathLike, dst: PathLike) -> None:
        s, d = _p(src), _p(dst)
        self._dir_of(s)
        self._dir_of(d)
        self._log("name", d, self.names.get(d))
        self._log("name", s, self.names[s])
        self.names[d] = self.names.pop(s)

    def unlink(self, path: PathLike) -> None:
        p = _p(path)
        self._dir_of(p)
        try:
            self._log("name", p, self.names[p])
            del self.names[p]
        except KeyError:
            raise FileNotFoundError(2, "No such file (simulated)", p) from None

    def truncate(self, path: PathLike, size: int) -> None:
        inode = self.names[_p(path)]
        self._log("data", inode, (bytes(inode.data), inode.durable))
        del inode.data[size:]
        inode.durable = len(inode.data)

    def overwrite(self, path: PathLike, offset: int, data: bytes) -> None:
        inode = self.names[_p(path)]
        self._log("data", inode, (bytes(inode.data), inode.durable))
        inode.data[offset:offset + len(data)] = data
        inode.durable = max(inode.durable, offset + len(data))

    def sync_dir(self, path: PathLike) -> None:
        d = _p(path)
        self._log("dir", d, self.synced.get(d, _MISSING))
        self.synced[d] = {n: i for n, i in self.names.items() if os.path.dirname(n) == d}

    # ------------------------------------------------------------------ turns

    def begin_turn(self) -> None:
        self._turn = []
        self._turn_k = 0

    @property
    def turn_syncs(self) -> int:
        """File syncs so far in this turn: an output made now waits for that many."""
        return self._turn_k if self._turn is not None else 0

    def end_turn(self) -> list[tuple[int, str, Any, Any]]:
        """The turn's disk changes in order (for `undo`, should it be cut short)."""
        log, self._turn, self._turn_k = self._turn or [], None, 0
        return log

    def _log(self, kind: str, key: Any, old: Any) -> None:
        if self._turn is not None:
            self._turn.append((self._turn_k, kind, key, old))

    def undo(self, log: list[tuple[int, str, Any, Any]], completed: int) -> None:
        """The process died while the turn's `completed + 1`-th file sync ran: that sync
        and every later one made nothing durable, and nothing the turn did after it
        ever happened (its writes, renames, unlinks). Then `crash` applies the rest: a
        SIGKILL keeps what was written before (the page cache), a power loss drops
        what was not durable."""
        for tag, kind, key, old in reversed(log):
            if tag <= completed:
                continue
            if kind == "sync":
                key.durable = min(key.durable, old)
            elif kind == "write":
                del key.data[old:]
                key.durable = min(key.durable, old)
            elif kind == "data":
                key.data[:] = old[0]
                key.durable = old[1]
            elif kind == "name":
                if old is None:
                    self.names.pop(key, None)
                else:
                    self.names[key] = old
            elif kind == "dir":
                if old is _MISSING:
                    self.synced.pop(key, None)
                else:
                    self.synced[key] = old

    def lock(self, path: PathLike) -> Any:
        return _Lock()

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ faults

    def crash(self, *, power: bool, rng: random.Random | None = None) -> dict[str, Any]:
        """A SIGKILL changes nothing on disk; a power loss reverts to what is durable.
        Returns what was lost ({"truncated": {path: bytes}, "undone": [names]}). Either
        way the writes that went wrong while armed show now (`arm_writes`)."""
        self._land_misfires()
        lost: dict[str, Any] = {"truncated": {}, "undone": []}
        if not power:
            return lost
        names: dict[str, _Inode] = {}
        dirs_seen = {os.path.dirname(n) for n in self.names} | set(self.synced)
        for d in sorted(dirs_seen):
            current = {n: i for n, i in self.names.items() if os.path.dirname(n) == d}
            durable = self.synced.get(d, current)
            for n in sorted(set(current) ^ set(durable)):
                lost["undone"].append(n)
            names.update(durable)
        for n, inode in sorted(names.items()):
            if len(inode.data) > inode.durable:
                keep = inode.durable + (rng.randrange(len(inode.data) - inode.durable + 1)
                                        if rng is not None else 0)
                if keep < len(inode.data):
                    lost["truncated"][n] = len(inode.data) - keep
                    del inode.data[keep:]
                inode.durable = len(inode.data)
        self.names = names
        self.synced = {d: {n: i for n, i in names.items() if os.path.dirname(n) == d}
                       for d in self.synced}
        return lost

    def damage(self, path: PathLike, offset: int, data: bytes) -> None:
        """Overwrite bytes in place (a nemesis's corruption), durably."""
        self.overwrite(path, offset, data)

    def sector_error(self, path: PathLike, offset: int, length: int) -> None:
        """A latent sector error: from now on a read of the file fails (EIO), as a read
        of the damaged range would (the node reads its files whole). A write does not
        heal it: the node replaces a file rather than rewrite it."""
        self.names[_p(path)].bad.append((offset, length))

    def arm_writes(self, how: str | None, p: float = 0.0,
                   rng: random.Random | None = None) -> dict[str, Any]:
        """From now on each write is lost (`how` "lost": it never reaches the media) or
        misdirected ("misdirected": it lands at another place of the node's files) with
        probability `p`; None disarms. Returns how many went wrong so far."""
        self.armed = None if how is None else (how, p, rng or random.Random(0))
        return {"misfired": dict(self.misfired)}

    def _misfire(self, inode: _Inode, off: int, data: bytes) -> None:
        assert self.armed is not None
        how, p, rng = self.armed
        if rng.random() < p:
            self.pending.append((how, inode, off, data))
            self.misfired[how] = self.misfired.get(how, 0) + 1

    def _land_misfires(self) -> None:
        """What the media holds of the writes that went wrong: zeros where a lost or
        misdirected write should have been, and a misdirected one's bytes over another
        place of the node's files (never past a file's end)."""
        pending, self.pending = self.pending, []
        rng = self.armed[2] if self.armed is not None else random.Random(len(pending))
        for how, inode, off, data in pending:
            end = min(off + len(data), len(inode.data))
            if end > off:
                inode.data[off:end] = bytes(end - off)
            if how != "misdirected":
                continue
            others = [i for _n, i in sorted(self.names.items()) if i.data]
            if not others:
                continue
            target = rng.choice(others)
            at = rng.randrange(len(target.data))
            n = min(len(data), len(target.data) - at)
            target.data[at:at + n] = data[:n]

    def materialize(self, root: PathLike, under: PathLike) -> None:
        """Write every file below `under` to the real directory `root` (for the offline
        checkers, the review commands, and comparing two runs byte for byte)."""
        base = _p(under)
        for n, inode in sorted(self.names.items()):
            if n != base and not n.startswith(base + os.sep):
                continue
            rel = os.path.relpath(n, base)
            out = os.path.join(os.fspath(root), rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "wb") as fh:
                fh.write(inode.data)
