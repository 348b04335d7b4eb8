"""Partition shapes (Jepsen's grudges) as sets of blocked directed links.

A grudge here is the set of (src, dst) pairs the switchboard drops. Every function is
pure; randomness comes in through the caller's seeded `random.Random`.
"""
from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

Links = set[tuple[str, str]]


def complete(groups: Iterable[Iterable[str]]) -> Links:
    """Every node talks only within its own group."""
    gs = [list(g) for g in groups]
    out: Links = set()
    for i, a in enumerate(gs):
        for j, b in enumerate(gs):
            if i != j:
                out |= {(x, y) for x in a for y in b}
    return out


def isolate(nodes: Sequence[str], victim: str) -> Links:
    """`victim` alone on one side (Jepsen's split-one)."""
    return complete([[victim], [n for n in nodes if n != victim]])


def halves(nodes: Sequence[str], rng: random.Random) -> tuple[Links, list[list[str]]]:
    """A random minority and majority (Jepsen's partition-random-halves)."""
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    k = len(shuffled) // 2
    groups = [sorted(shuffled[:k]), sorted(shuffled[k:])]
    return complete(groups), groups


def majorities_ring(nodes: Sequence[str], rng: random.Random) -> Links:
    """Each node sees a majority, but no two nodes see the same one: on a random ring,
    a node keeps links to its nearest neighbours only (exact for <= 5 nodes)."""
    ring = list(nodes)
    rng.shuffle(ring)
    n = len(ring)
    reach = max(1, -(-(n // 2) // 2))  # neighbours kept on each side (1 for 5 nodes)
    keep: Links = set()
    for i, a in enumerate(ring):
        for d in range(1, reach + 1):
            for j in (i + d, i - d):
                b = ring[j % n]
                if b != a:
                    keep.add((a, b))
                    keep.add((b, a))
    return {(a, b) for a in ring for b in ring if a != b and (a, b) not in keep}


def bridge(nodes: Sequence[str], rng: random.Random) -> tuple[Links, str]:
    """Two halves that only one node (the bridge) connects."""
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    mid = shuffled[0]
    rest = shuffled[1:]
    k = len(rest) // 2
    a, b = rest[:k], rest[k:]
    return complete([a, b]), mid


def star(nodes: Sequence[str], center: str, cut_off: Iterable[str] = ()) -> Links:
    """Only `center` talks to everybody; the others talk to nobody but it, and the
    `cut_off` nodes to nobody at all. Only the center can win an election (the others
    reach one voter), which is how the nemesis makes a chosen node lead."""
    cut = set(cut_off)
    out: Links = set()
    for a in nodes:
        for b in nodes:
            if a == b:
                continue
            if a in cut or b in cut or (center not in (a, b)):
                out.add((a, b))
    return out
