"""I3, no halts: a node that stops on an entry it cannot apply failed closed, which is
right, but the cluster lost a replica to it; every `halt` event is a finding (a copy a
nemesis damaged on purpose is excused by the suite, `check.excuse`)."""
from __future__ import annotations

from node.events import EventKind

from .nodes import Node
from .report import Collector, InvariantResult


def check_i3(nodes: list[Node]) -> InvariantResult:
    col = Collector("I3")
    for n in nodes:
        halts = [ev for ev in n.events if ev.get("kind") == EventKind.HALT]
        for ev in halts:
            col.add(n.name, ev.get("index"), ev.get("term"), None,
                    f"halt: {ev.get('reason')}", t=ev.get("t"))
        col.result.nodes[n.name] = {"halts": len(halts)}
    return col.finish()
