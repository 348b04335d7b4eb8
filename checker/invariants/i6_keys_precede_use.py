"""I6, keys precede use: every key id used at index i was installed below i (by a
bootstrap or rotate entry, or by a snapshot covering it). An entry sealed under a key
the log installs only later, or never, could not have been opened by a replica applying
the log in order. Two different DEKs under one key id are findings here too: which one
a replica holds would decide whether it can open the log."""
from __future__ import annotations

from collections import defaultdict

from .entries import DecodedLog, EntryKey
from .keys import Keys
from .report import Collector, InvariantResult


def check_i6(decoded: DecodedLog, holders: dict[EntryKey, list[str]],
             keys: Keys) -> InvariantResult:
    col = Collector("I6")
    per_node: dict[str, int] = defaultdict(int)
    for k, d in sorted(decoded.items(), key=lambda kv: kv[0][:2]):
        if d.status != "wrapped":
            continue
        index, term = k[0], k[1]
        for node in holders[k]:
            per_node[node] += 1
        node = sorted(holders[k])[0]
        got = keys.installed.get(d.key_id)  # type: ignore[arg-type]
        if got is None:
            col.add(node, index, term, d.opcode,
                    f"key id {d.key_id} is used at {index} but no bootstrap/rotate entry "
                    f"installs it and no snapshot carries it", key_id=d.key_id,
                    nodes=sorted(holders[k]))
        elif got[0] >= index:
            col.add(node, index, term, d.opcode,
                    f"key id {d.key_id} is used at {index} but installed only at "
                    f"{got[0]} ({got[1]})", key_id=d.key_id, installed_at=got[0],
                    nodes=sorted(holders[k]))
    for c in keys.conflicts:
        col.add(c.get("node"), c.get("index"), None, None,
                f"key id {c['key_id']} from {c['source']}: {c['reason']}", key_id=c["key_id"])
    col.result.nodes = {n: {"wrapped_entries": c} for n, c in sorted(per_node.items())}
    col.result.summary = {
        "installed": {str(k): {"at": p, "by": src} for k, (p, src) in
                      sorted(keys.installed.items())},
        "known_key_ids": keys.store.ids(),
        "unopenable_keys": keys.problems,
        "malformed_install_entries": keys.malformed_installs,
        "ignored_bootstraps": keys.ignored_bootstraps,
    }
    return col.finish()
