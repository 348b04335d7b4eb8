"""Where a storage fault lands in a node's files, decided once for both worlds.

The real world damages real files and the simulator its `SimDisk`; both read the node's
directory through the same few calls (`listdir`, `is_file`, `read_bytes`: `node.disk.Disk`
and `orchestrator.sim.disk.SimDisk` both have them), so one `pick` names the same file
and offset in either world and a plan means the same in both.
"""
from __future__ import annotations

import os
from typing import Any, Protocol

from node.fsmstore import FSM_DIR
from node.sidecar import SIDECAR_NAME
from node.storage import SNAP_DIR, WAL_DIR

SECTOR = 512  # a latent sector error takes out one aligned sector


class Reader(Protocol):
    def listdir(self, path: str) -> list[str]: ...

    def is_file(self, path: str) -> bool: ...

    def is_dir(self, path: str) -> bool: ...

    def read_bytes(self, path: str) -> bytes: ...


def files(disk: Reader, root: str, area: str) -> list[str]:
    """The node's files of `area` ("wal", "snapshot", "sidecar", "fsm": the elastickv
    profile's durable KV store), sorted: temp files and locks are left out (the node
    never reads them back)."""
    if area == "sidecar":
        p = os.path.join(root, SIDECAR_NAME)
        return [p] if disk.is_file(p) else []
    d = os.path.join(root, {"wal": WAL_DIR, "fsm": FSM_DIR}.get(area, SNAP_DIR))
    if not disk.is_dir(d):
        return []
    return [os.path.join(d, n) for n in sorted(disk.listdir(d))
            if not n.endswith(".tmp") and disk.is_file(os.path.join(d, n))]


def locate(disk: Reader, root: str, area: str, pick: int, how: str) -> dict[str, Any]:
    """The place `pick` names: {"path", "offset", "length", "bit"} (a bit flip is one bit
    of one byte; a sector error the aligned sector around the byte, cut at the file's
    end), or {"skipped": why} when the node has no such file yet."""
    sizes = {}
    for p in files(disk, root, area):
        try:  # a file a sector error already made unreadable is damaged enough
            sizes[p] = len(disk.read_bytes(p))
        except OSError:
            continue
    cands = [p for p in sizes if sizes[p]]
    if not cands:
        return {"skipped": f"no readable {area} file to damage"}
    path = cands[pick % len(cands)]
    size = sizes[path]
    offset = (pick // len(cands)) % size
    bit = (pick >> 20) % 8
    if how == "sector":
        start = offset - offset % SECTOR
        return {"path": path, "offset": start, "length": min(SECTOR, size - start), "bit": 0}
    return {"path": path, "offset": offset, "length": 1, "bit": bit}


def described(place: dict[str, Any], root: str, how: str) -> dict[str, Any]:
    """What the nemesis record says of the damage (the file relative to the data dir)."""
    return {"file": os.path.relpath(place["path"], root), "offset": place["offset"],
            "length": place["length"], "how": "one bit flipped" if how == "flip"
            else "a latent sector error"}
