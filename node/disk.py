"""Every file a node writes goes through here: the WAL, snapshots, the sidecar, the node id
and the KEK file. One module, so that one place knows what is durable.

Why it exists: a SIGKILL keeps the page cache, so a node that forgets an fdatasync (or
a directory fsync after a rename) looks perfectly durable under kill -9. A power loss
does not. With a journal (`Disk(journal=PATH)`, which the harness turns on), every
durability point is written down as it happens, and `power_loss(data_dir)` can later cut
the files back to what a power failure at the moment of a SIGKILL would have left. The
deterministic simulator implements the same interface in memory (`SimDisk` in
`orchestrator/sim/`), with the same rules.

The model (the rules both implement):

* **File data** is durable up to the size the file had at its last `File.sync()`
  (fdatasync); whatever was appended after that is lost, or (with an `rng`) a random
  part of it survives, as when the kernel flushed some pages first. Files are append-only except
  for `truncate` (which syncs at once) and `overwrite` (a nemesis tool, which syncs).
* **Directory entries** (a file created, renamed over another, or unlinked) are durable
  only once their directory is fsynced (`sync_dir`). A power loss before that undoes
  them: a created file vanishes, a renamed file goes back to its old name and the file
  it replaced comes back, an unlinked file comes back. The journal keeps the replaced
  or unlinked file alive under a `.pl-keep-N` hard link until the directory sync.
* Directories are created durable (the parent is fsynced at once).

Limits next to Jepsen's lazyfs (a FUSE file system that caches every write): lazyfs
loses unsynced writes of any file, can tear a write in the middle of a page and needs
FUSE and root; this needs neither, but sees only files written through this module, cuts
at sync boundaries (no torn page inside unsynced data, no reordering of unsynced
writes), treats a file's content as durable when the node started with it, and treats
metadata other than names (mode, mtime) as always durable.

Journal format (`durability.journal` in the data dir, JSON lines, append-only,
one `write` per record, reset at every start): ``{"sync": path, "size": n}``,
``{"create": path}``, ``{"rename": src, "dst": dst, "keep": keep-or-null}``,
``{"unlink": path, "keep": keep}``, ``{"dirsync": dir}``, ``{"base": path, "size": n}``
(a file the node opened as it was). Paths are relative to the data dir.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import stat
from pathlib import Path
from typing import IO, Any

from node.buggify import OFF, Buggify

__all__ = [
    "JOURNAL_NAME",
    "Disk",
    "DiskFile",
    "PowerLossReport",
    "REAL",
    "power_loss",
]

JOURNAL_NAME = "durability.journal"
KEEP_MARK = ".pl-keep-"

PathLike = str | os.PathLike[str]


class DiskFile:
    """An open file a node appends to; `sync()` makes what was written durable."""

    def __init__(self, disk: Disk, path: Path, f: IO[bytes], size: int) -> None:
        self._disk = disk
        self.path = path
        self._f = f
        self.size = size

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """All of `data`, appended (one write call in practice)."""
        view = memoryview(data)
        while view:
            n = self._f.write(view)
            if n is None:  # pragma: no cover - only for non-blocking files
                continue
            view = view[n:]
            self.size += n

    def sync(self) -> None:
        """fdatasync: everything written so far survives a power loss."""
        _fdatasync(self._f.fileno())
        self._disk._note(sync=self._disk._rel(self.path), size=self.size)

    def close(self) -> None:
        self._f.close()


_fdatasync = getattr(os, "fdatasync", os.fsync)


def write_atomic(disk: Any, path: PathLike, data: bytes, *, temp_suffix: str = ".tmp",
                 mode: int = 0o644) -> None:
    """Replace `path` so that a crash leaves the old or the new content, never a mix:
    temp file, fsync, rename, fsync the directory. Written once over a disk's primitives
    (`create_truncate`, `DiskFile.write/sync`, `rename`, `sync_dir`), so the simulated
    disk runs this very sequence and a mistake in it shows in `cutover sim` too."""
    p = Path(path)
    tmp = p.with_name(p.name + temp_suffix)
    bg: Buggify = getattr(disk, "buggify", OFF)  # BUGGIFY points (node/buggify.py)
    f = disk.create_truncate(tmp, mode)
    try:
        f.write(data)
        if bg.on:
            bg.hit("file.written")
        f.sync()
        if bg.on:
            bg.hit("file.synced")
    finally:
        f.close()
    disk.rename(tmp, p)
    if bg.on:
        bg.hit("file.renamed")
    disk.sync_dir(p.parent)
    if bg.on:
        bg.hit("file.dir.synced")


class Disk:
    """Real files, optionally journaled for `power_loss` (see the module docstring)."""

    # The node's BUGGIFY hook (node/buggify.py): the storage code that writes through
    # this disk reads it here, so one injection reaches the WAL, snapshots and sidecar.
    buggify: Buggify = OFF

    def __init__(self, journal: PathLike | None = None) -> None:
        self._journal_fd: int | None = None
        self._root: Path | None = None
        self._keep_seq = 0
        self._pending_keeps: dict[Path, list[Path]] = {}  # dir -> keep links to drop
        if journal is not None:
            jp = Path(journal)
            self._root = jp.parent
            _drop_keeps(jp)  # leftovers of an earlier incarnation's journal
            self._journal_fd = os.open(jp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                                       | os.O_APPEND | os.O_CLOEXEC, 0o644)

    # ------------------------------------------------------------------ journal

    @property
    def journaled(self) -> bool:
        return self._journal_fd is not None

    def _rel(self, p: Path) -> str:
        if self._root is None:
            return str(p)
        try:
            return str(Path(p).relative_to(self._root))
        except ValueError:
            return str(p)

    def _note(self, **rec: Any) -> None:
        if self._journal_fd is not None:
            os.write(self._journal_fd, (json.dumps(rec, separators=(",", ":")) + "\n").encode())

    def _keep(self, p: Path) -> Path | None:
        """Hard-link `p` (about to be replaced or unlinked) so a power loss can bring it
        back; only when journaling."""
        if self._journal_fd is None or not p.exists():
            return None
        self._keep_seq += 1
        keep = p.with_name(f"{p.name}{KEEP_MARK}{os.getpid()}-{self._keep_seq}")
        os.link(p, keep)
        self._pending_keeps.setdefault(p.parent, []).append(keep)
        return keep

    def close(self) -> None:
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None

    # ------------------------------------------------------------------ reading

    @staticmethod
    def read_bytes(path: PathLike) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    @staticmethod
    def exists(path: PathLike) -> bool:
        return os.path.exists(path)

    @staticmethod
    def is_dir(path: PathLike) -> bool:
        return os.path.isdir(path)

    @staticmethod
    def is_file(path: PathLike) -> bool:
        return os.path.isfile(path)

    @staticmethod
    def listdir(path: PathLike) -> list[str]:
        """Names in a directory (power-loss keep links excluded)."""
        return [n for n in os.listdir(path) if KEEP_MARK not in n]

    # ------------------------------------------------------------------ writing

    def makedirs(self, path: PathLike) -> None:
        """Create `path` and its missing parents, each durable before this returns."""
        p = Path(path)
        missing = []
        while not p.is_dir():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):
                d.mkdir()
            self.sync_dir(d.parent)

    def create(self, path: PathLike) -> DiskFile:
        """A new file (it must not exist), open for appending; its name is durable only
        after `sync_dir` of its directory, its data after `DiskFile.sync`."""
        p = Path(path)
        f = open(p, "xb", buffering=0)  # noqa: SIM115 - DiskFile owns it
        # Noted after the fact: a kill in between leaves the name, as a lucky power loss
        # could; noting first could make `power_loss` delete a file that existed.
        self._note(create=self._rel(p))
        return DiskFile(self, p, f, 0)

    def open_append(self, path: PathLike) -> DiskFile:
        """An existing file, open for appending; what it holds now counts as durable."""
        p = Path(path)
        f = open(p, "ab", buffering=0)  # noqa: SIM115 - DiskFile owns it
        size = f.seek(0, os.SEEK_END)
        self._note(base=self._rel(p), size=size)
        return DiskFile(self, p, f, size)

    def create_truncate(self, path: PathLike, mode: int = 0o644) -> DiskFile:
        """`path` created or emptied, open for appending (a temp file to replace another
        with); durable as `create`'s."""
        p = Path(path)
        self._note(create=self._rel(p))
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        return DiskFile(self, p, os.fdopen(fd, "wb", buffering=0), 0)

    def write_atomic(self, path: PathLike, data: bytes, *, temp_suffix: str = ".tmp",
                     mode: int = 0o644) -> None:
        """Replace `path` so that a crash leaves the old or the new content, never a mix
        (`write_atomic`, the one rule for every disk)."""
        write_atomic(self, path, data, temp_suffix=temp_suffix, mode=mode)

    def link_new(self, path: PathLike, data: bytes, *, mode: int = 0o600) -> bool:
        """Create `path` with `data` (mode set before any byte is written), durably, and
        only if it does not exist yet: False when it does (nothing is changed)."""
        p = Path(path)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            try:
                os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, p)
            except FileExistsError:
                return False
            self._note(create=self._rel(p))
        finally:
            os.unlink(tmp)
        self._note(sync=self._rel(p), size=len(data))
        self.sync_dir(p.parent)
        return True

    def rename(self, src: PathLike, dst: PathLike) -> None:
        """Rename over `dst`; durable after `sync_dir` of the directory."""
        s, d = Path(src), Path(dst)
        keep = self._keep(d)
        self._note(rename=self._rel(s), dst=self._rel(d),
                   keep=None if keep is None else self._rel(keep))
        os.replace(s, d)

    def unlink(self, path: PathLike) -> None:
        """Remove a file; durable after `sync_dir` of its directory."""
        p = Path(path)
        keep = self._keep(p)
        if keep is not None:
            self._note(unlink=self._rel(p), keep=self._rel(keep))
        os.unlink(p)

    def truncate(self, path: PathLike, size: int) -> None:
        """Cut a file to `size` bytes, durably."""
        with open(path, "r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())
        self._note(sync=self._rel(Path(path)), size=size)

    def overwrite(self, path: PathLike, offset: int, data: bytes) -> None:
        """Write `data` at `offset` in place, durably (the corrupt-entry nemesis)."""
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def sync_dir(self, path: PathLike) -> None:
        """fsync a directory: the names created, renamed or removed in it are durable."""
        d = Path(path)
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if self._journal_fd is not None:
            self._note(dirsync=self._rel(d))
            for keep in self._pending_keeps.pop(d, ()):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(keep)

    @staticmethod
    def lock(path: PathLike) -> IO[bytes]:
        """flock `path` (created if missing); BlockingIOError when another holds it. The
        lock dies with the process, so a SIGKILLed node never leaves one behind."""
        f = open(path, "ab")  # noqa: SIM115 - the caller owns the lock
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise
        return f


REAL = Disk()  # what code that is given no disk uses: real files, no journal


# ---------------------------------------------------------------------- power loss


class PowerLossReport(dict):  # type: ignore[type-arg]
    """What `power_loss` undid: {"truncated": {path: bytes dropped}, "undone": [...]}."""


def _read_journal(jp: Path) -> list[dict[str, Any]]:
    out = []
    try:
        raw = jp.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return out
    for line in raw.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn last line: the op it announced never started
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _drop_keeps(jp: Path) -> None:
    root = jp.parent
    for rec in _read_journal(jp):
        keep = rec.get("keep")
        if isinstance(keep, str):
            with contextlib.suppress(OSError):
                os.unlink(root / keep)


def power_loss(data_dir: PathLike, rng: random.Random | None = None) -> PowerLossReport:
    """Cut a stopped node's files back to their durable state (module docstring).

    With `rng`, each file keeps a random part of what it had written but not synced (the
    kernel may have flushed some of it before the power went: a torn tail), instead of
    none of it. Call only when the node process is dead. Returns what changed; resets the
    journal.
    """
    root = Path(data_dir)
    jp = root / JOURNAL_NAME
    recs = _read_journal(jp)
    durable: dict[str, int] = {}  # current name -> durable size
    pending: dict[str, list[dict[str, Any]]] = {}  # dir -> dir ops not yet synced
    for rec in recs:
        if "sync" in rec or "base" in rec:
            durable[rec.get("sync") or rec["base"]] = int(rec["size"])
        elif "create" in rec:
            durable[rec["create"]] = 0
            pending.setdefault(str(Path(rec["create"]).parent), []).append(rec)
        elif "rename" in rec:
            if rec["rename"] in durable:
                durable[rec["dst"]] = durable.pop(rec["rename"])
            else:
                durable.pop(rec["dst"], None)
            pending.setdefault(str(Path(rec["dst"]).parent), []).append(rec)
        elif "unlink" in rec:
            if rec["unlink"] in durable:
                durable[rec["keep"]] = durable.pop(rec["unlink"])
            pending.setdefault(str(Path(rec["unlink"]).parent), []).append(rec)
        elif "dirsync" in rec:
            pending.pop(rec["dirsync"], None)
    report = PowerLossReport(truncated={}, undone=[])
    # Data first, on the names as they are now (the inode's bytes move with renames).
    for name, size in sorted(durable.items()):
        p = root / name
        try:
            st = os.stat(p)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size > size:
            keep = size + (rng.randrange(st.st_size - size + 1) if rng is not None else 0)
            if keep < st.st_size:
                with open(p, "r+b") as f:
                    f.truncate(keep)
                report["truncated"][name] = st.st_size - keep
    # Then names: undo every directory operation its directory never made durable.
    ops = [r for ops_ in pending.values() for r in ops_]
    order = {id(r): i for i, r in enumerate(recs)}
    for rec in sorted(ops, key=lambda r: order[id(r)], reverse=True):
        if "create" in rec:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(root / rec["create"])
            report["undone"].append(f"create {rec['create']}")
        elif "rename" in rec:
            with contextlib.suppress(FileNotFoundError):
                os.replace(root / rec["dst"], root / rec["rename"])
            if rec.get("keep"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(root / rec["keep"], root / rec["dst"])
            report["undone"].append(f"rename {rec['rename']} -> {rec['dst']}")
        elif "unlink" in rec:
            with contextlib.suppress(FileNotFoundError):
                os.replace(root / rec["keep"], root / rec["unlink"])
            report["undone"].append(f"unlink {rec['unlink']}")
    _drop_keeps(jp)
    with contextlib.suppress(FileNotFoundError):
        os.truncate(jp, 0)
    return report
