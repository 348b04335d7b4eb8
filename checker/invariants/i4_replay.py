"""The glue between the node files and `checker.replay` (I4 by replay).

`checker.replay` knows nothing of WAL records, envelopes or keys: it takes each node's
log, commit point, snapshot images and events, and a function that opens an entry. The
entries were already opened once while the keys were learnt (`keys.py`), so the replay
reuses those answers instead of unwrapping again, and a snapshot image sealed above C
is opened with the same keys (and so are the values the elastickv profile's storage
envelope sealed in it).
"""
from __future__ import annotations

from node.envelope import UnwrapError, is_wrapped_shape, unwrap
from node.kv import snapshot_kv
from node.snapshot import SnapshotFile
from node.storenv import open_stored_image
from node.types import Entry

from ..replay import PayloadOf, ReplayNode, ReplayResult, entry_payload, replay_check
from .entries import DecodedLog, decode, entry_key
from .keys import Keys
from .nodes import Node


def replay(nodes: list[Node], decoded: DecodedLog, keys: Keys) -> ReplayResult:
    """Every node's evidence held to the replayed committed log."""
    return replay_check([_replay_node(n, keys) for n in nodes],
                        entry_payload(_opener(decoded)))


def _opener(decoded: DecodedLog) -> PayloadOf:
    def open_entry(e: Entry) -> bytes | None:
        d = decoded.get(entry_key(e)) or decode(e)
        if d.status == "noop":
            return None
        if d.status == "clear":
            return d.payload
        if d.status == "wrapped" and d.inner is not None:
            return d.inner
        raise ValueError(d.error or d.status)

    return open_entry


def _replay_node(n: Node, keys: Keys) -> ReplayNode:
    applied = [ev["applied"] for ev in n.events
               if isinstance(ev.get("applied"), int) and not isinstance(ev["applied"], bool)]
    images = [(snap.header.index, snap.header.term, *open_image(snap, keys))
              for snap in n.snapshots]
    return ReplayNode(n.name, {i: rec.value for i, rec in n.log.items()},  # type: ignore[misc]
                      max([n.commit, *applied]), images, n.events)


def open_image(snap: SnapshotFile, keys: Keys) -> tuple[bytes | None, str | None]:
    """The cleartext KV image of a snapshot file (sealed above C), or why not."""
    try:
        image = snapshot_kv(snap.data)
        if is_wrapped_shape(image):
            image = unwrap(keys.store.get, image)
        # The elastickv profile's values under the storage envelope (row 11); a no-op
        # on an image without any.
        return open_stored_image(image, keys.store.get), None
    except UnwrapError as e:
        return None, f"image does not unwrap ({e.code})"
    except (ValueError, TypeError) as e:
        return None, f"image does not decode ({e})"
