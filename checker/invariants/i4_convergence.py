"""I4, convergence: held to the replayed committed log (`i4_replay.py`, `checker.replay`),
plus the digests two replicas reported at one applied index (kept: it needs no replay).

Nothing compared is `unknown`, never `valid`: a run whose evidence could not be checked
has not shown convergence.
"""
from __future__ import annotations

from collections import defaultdict

from .entries import DecodedLog
from .i4_replay import replay
from .keys import Keys
from .nodes import Node
from .report import Collector, InvariantResult


def check_i4(nodes: list[Node], decoded: DecodedLog, keys: Keys,
             notes: list[str]) -> InvariantResult:
    col = Collector("I4")
    compared = _reported_digests(nodes, col)
    res = replay(nodes, decoded, keys)
    for v in res.violations:
        col.add(v.pop("node"), v.pop("index"), v.pop("term"), v.pop("opcode"),
                v.pop("reason"), **v)
    notes.extend(f"I4 replay: {m}" for m in res.notes)
    col.result.summary = {"applied_indexes_compared": compared,
                          "replay": {"compared": res.compared, "from": res.replayed_from,
                                     "to": res.replayed_to, "base": res.base}}
    r = col.finish()
    if r.valid and not res.compared and not compared:
        r.unknown = "nothing to compare: no reported digest or snapshot image met the replay"
    return r


def _reported_digests(nodes: list[Node], col: Collector) -> int:
    """Replicas that reported different digests at one applied index; returns how many
    applied indexes had two reports or more to compare."""
    seen: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for n in nodes:
        obs = 0
        for ev in n.events:
            a, dg = ev.get("applied"), ev.get("digest")
            if isinstance(a, int) and not isinstance(a, bool) and isinstance(dg, str):
                obs += 1
                if n.name not in seen[a][dg]:
                    seen[a][dg].append(n.name)
        col.result.nodes[n.name] = {"digest_observations": obs}
    compared = 0
    for applied in sorted(seen):
        by_digest = seen[applied]
        if sum(len(v) for v in by_digest.values()) > 1:
            compared += 1
        if len(by_digest) > 1:
            ranked = sorted(by_digest.items(), key=lambda kv: (-len(kv[1]), kv[0]))
            odd = ranked[1][1][0]
            col.add(odd, applied, None, None,
                    f"replicas at applied index {applied} disagree: "
                    + "; ".join(f"{dg} on {', '.join(ns)}" for dg, ns in ranked),
                    digests={dg: ns for dg, ns in ranked}, evidence="reported-digests")
    return compared
