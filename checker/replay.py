"""Invariant I4 by replay: the committed log, replayed offline, is the truth replicas are
held to.

Comparing the digests two replicas happen to report at the same applied index finds a
divergence only by luck (progress events come about once a second) and never finds a
snapshot whose image does not match its index. So the checker rebuilds the state machine
itself: it takes the cluster's committed log (every node's durable entries up to what
that node knew committed, decrypted with the run's keys), replays it through the node's
own KV state machine from an empty map (or from the oldest snapshot when no node still
holds the log's beginning), and holds every piece of evidence to it:

* every digest a node reported (`progress` and `stop` events carry `applied` and
  `digest`) must be the replayed digest at that index;
* every snapshot file's image must be the replayed state at the snapshot's index (a
  snapshot labelled below the state it holds makes every restart apply entries twice);
* two nodes must not hold different committed entries at one index.

Nothing compared is `unknown`, never `valid`: a run whose evidence could not be checked
has not shown convergence.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from node import payload as pl
from node import registry
from node.kv import KV
from node.types import Entry, EntryKind

# How far around a snapshot's index to look for the state its image really holds.
_NEAR = 64


@dataclass
class ReplayNode:
    """One node's evidence: its durable log, how far it knew the log committed, its
    snapshot images (index, term, KV image bytes or None, why not) and its reported
    digests (events with `applied` and `digest`)."""

    name: str
    log: Mapping[int, Entry]
    commit: int
    images: list[tuple[int, int, bytes | None, str | None]] = field(default_factory=list)
    reported: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ReplayResult:
    """What the replay found: violations (dicts in the checker's shape) and a summary."""

    violations: list[dict[str, Any]]
    compared: int
    replayed_from: int
    replayed_to: int
    base: str
    notes: list[str]


# payload_of(entry) -> cleartext payload, None for an entry without one, or raises
# ValueError with the reason it cannot be opened.
PayloadOf = Callable[[Entry], bytes | None]


def replay_check(nodes: list[ReplayNode], payload_of: PayloadOf) -> ReplayResult:
    """Hold every node's evidence to the replayed committed log (see the module doc)."""
    violations: list[dict[str, Any]] = []
    notes: list[str] = []
    _election_safety(nodes, violations)
    _votes_kept(nodes, violations)
    ref = _reference_log(nodes, violations, payload_of)
    base_index, base_state, base = _base(nodes, ref)
    if base_index is None:
        return ReplayResult(violations, 0, 0, 0, "none",
                            ["no node holds the log's beginning or a readable snapshot "
                             "below the rest of it: nothing to replay"])
    # The indexes whose digest is needed: reports, snapshot labels and their surroundings.
    wanted: set[int] = set()
    for n in nodes:
        wanted.update(a for a, _ in _reports(n))
        for s, _t, img, _err in n.images:
            if img is not None:
                wanted.update(range(max(base_index, s - _NEAR), s + _NEAR + 1))
    digests, end = _replay(ref, payload_of, base_index, base_state, wanted, notes)
    compared = 0
    for n in nodes:
        compared += _compare_reports(n, digests, violations)
        compared += _compare_images(n, digests, violations, notes)
    return ReplayResult(violations, compared, base_index, end, base, notes)


def _replay(ref: dict[int, Entry], payload_of: PayloadOf, base_index: int, base_state: Any,
            wanted: set[int], notes: list[str]) -> tuple[dict[int, str], int]:
    """The committed log applied from the base: the digests at the wanted indexes, and
    the last index replayed (a missing, unopenable or malformed entry stops it)."""
    kv = KV()
    kv.restore(base_state)
    digests: dict[int, str] = {}
    if base_index in wanted:
        digests[base_index] = kv.digest()
    end = base_index
    for i in range(base_index + 1, max(ref, default=0) + 1):
        e = ref.get(i)
        if e is None:
            notes.append(f"entry {i} of the committed log is on no node: replay stops at "
                         f"{i - 1}")
            break
        try:
            body = payload_of(e)
        except ValueError as err:
            notes.append(f"committed entry {i} does not open ({err}): replay stops at {i - 1}")
            break
        if body is not None:
            try:
                if pl.opcode(body) == pl.OP_USER:
                    kv.apply(pl.decode_body(body))
                else:
                    # elastickv profile (row 9): writer-registry rows live in the map
                    for dek, full, epoch in pl.registry_rows(body):
                        registry.apply_registration(kv, dek, full, epoch)
            except pl.PayloadError as err:
                notes.append(f"committed entry {i} is malformed ({err}): replay stops at "
                             f"{i - 1}")
                break
            except registry.RegistryRefused as err:
                notes.append(f"committed entry {i} is a writer registration every replica "
                             f"refuses ({err.what}): replay stops at {i - 1}")
                break
        end = i
        if i in wanted:
            digests[i] = kv.digest()
    return digests, end


def _compare_reports(n: ReplayNode, digests: dict[int, str],
                     violations: list[dict[str, Any]]) -> int:
    """A node's reported digests against the replay; the number compared."""
    compared = 0
    for a, rep in _reports(n):
        d = digests.get(a)
        if d is None:
            continue
        compared += 1
        if rep["digest"] != d:
            violations.append({
                "node": n.name, "index": a, "term": None, "opcode": None,
                "reason": f"reported digest {rep['digest']} at applied index {a} "
                          f"({rep.get('kind', 'event')}), but the replayed committed log "
                          f"gives {d} there",
                "t": rep.get("t"), "evidence": "reported-digest"})
    return compared


def _compare_images(n: ReplayNode, digests: dict[int, str], violations: list[dict[str, Any]],
                    notes: list[str]) -> int:
    """A node's snapshot images against the replay; the number compared."""
    compared = 0
    for s, term, img, err in n.images:
        if img is None:
            if err:
                notes.append(f"snapshot {s} of {n.name} not compared: {err}")
            continue
        d = digests.get(s)
        if d is None:
            continue
        compared += 1
        got = _digest_of(img)
        if got == d:
            continue
        near = sorted((k for k, v in digests.items() if v == got),
                      key=lambda k: (abs(k - s), k))
        holds = (f"; it holds the state at index {near[0]}" if near
                 else "; it matches no nearby index")
        violations.append({
            "node": n.name, "index": s, "term": term, "opcode": None,
            "reason": f"snapshot {s} holds a state that is not the committed log's state "
                      f"at {s} (image digest {got}, replay {d}){holds}",
            "evidence": "snapshot-image",
            **({"holds_index": near[0]} if near else {})})
    return compared


def _reports(n: ReplayNode) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for ev in n.reported:
        a, dg = ev.get("applied"), ev.get("digest")
        if isinstance(a, int) and not isinstance(a, bool) and isinstance(dg, str):
            out.append((a, ev))
    return out


def _digest_of(image: bytes) -> str | None:
    kv = KV()
    try:
        kv.restore(image)
    except Exception:  # noqa: BLE001 - a damaged image is a difference, not a crash
        return None
    return kv.digest()


def _election_safety(nodes: list[ReplayNode], violations: list[dict[str, Any]]) -> None:
    """Raft's election safety, from the nodes' `role` events: one leader per term."""
    leaders: dict[int, dict[str, Any]] = {}
    for n in nodes:
        for ev in n.reported:
            if ev.get("kind") != "role" or ev.get("role") != "leader":
                continue
            term = ev.get("term")
            if not isinstance(term, int):
                continue
            first = leaders.setdefault(term, {"node": n.name, "t": ev.get("t")})
            if first["node"] != n.name:
                violations.append({
                    "node": n.name, "index": None, "term": term, "opcode": None,
                    "reason": f"two leaders in term {term}: {first['node']} and {n.name}",
                    "t": ev.get("t"), "evidence": "election-safety"})
                first["node"] = n.name  # report each further claimant once


def _votes_kept(nodes: list[ReplayNode], violations: list[dict[str, Any]]) -> None:
    """Raft keeps votedFor on stable storage before it answers: a node that granted its
    vote in term T (a `vote` event, written before the grant left) must come back from
    any crash in a later term, or in T still voting for the same candidate (each `start`
    event's `term` and `vote`). One that does not could grant a second candidate in T;
    this sees the forgotten promise itself, long before two leaders show it. A start
    without `vote` (evidence of an older node build) proves nothing either way."""
    for n in nodes:
        last: tuple[int, Any] | None = None
        for ev in n.reported:
            kind = ev.get("kind")
            if kind == "vote" and isinstance(ev.get("term"), int):
                last = (ev["term"], ev.get("candidate"))
            elif kind == "start" and last is not None and "vote" in ev:
                term, vote = ev.get("term"), ev.get("vote")
                if not isinstance(term, int):
                    continue
                if term > last[0] or (term == last[0] and vote == last[1]):
                    continue
                lost = (f"in term {term}" if term < last[0]
                        else f"in term {term} voting for {vote or 'nobody'}")
                violations.append({
                    "node": n.name, "index": None, "term": last[0], "opcode": None,
                    "reason": f"{n.name} granted its vote in term {last[0]} to {last[1]}, "
                              f"then restarted {lost}: the vote was not on stable storage "
                              f"and can be given twice",
                    "t": ev.get("t"), "evidence": "vote-durability"})
                break  # once per node: later starts repeat the same loss


def _reference_log(nodes: list[ReplayNode], violations: list[dict[str, Any]],
                   payload_of: PayloadOf | None = None) -> dict[int, Entry]:
    """The committed log: at each index the entry the nodes that knew it committed hold.

    Two terms at one committed index are a divergence (Raft's state-machine safety;
    reported once, at the first such index). Two copies with one term but different
    bytes are a damaged copy (which I1 reports) unless both open: then two leaders
    wrote that index in one term, a divergence too. Either way the replay goes on with
    the copy most nodes hold."""
    by_index: dict[int, Counter] = {}
    holders: dict[tuple[int, int], list[str]] = {}
    for n in nodes:
        for i, e in n.log.items():
            if i > n.commit:
                continue
            by_index.setdefault(i, Counter())[e] += 1
            holders.setdefault((i, e.term), []).append(n.name)
    ref: dict[int, Entry] = {}
    reported = False
    for i in sorted(by_index):
        ranked = sorted(by_index[i].items(), key=lambda kv: (-kv[1], kv[0].term, kv[0].data))
        ref[i] = ranked[0][0]
        terms = sorted({e.term for e in by_index[i]}, key=lambda t: -len(holders[(i, t)]))
        if len(by_index[i]) > len(terms) and payload_of is not None and not reported:
            for t in terms:
                same = [e for e in by_index[i] if e.term == t]
                if len(same) > 1 and all(_opens(payload_of, e) for e in same):
                    reported = True
                    violations.append({
                        "node": None, "index": i, "term": t, "opcode": None,
                        "reason": f"committed entry {i} of term {t} has {len(same)} different "
                                  f"versions that all open: two leaders wrote it in one term",
                        "evidence": "committed-log"})
                    break
        if len(terms) > 1 and not reported:
            reported = True
            odd = terms[1]
            names = holders[(i, odd)]
            violations.append({
                "node": names[0], "index": i, "term": odd, "opcode": None,
                "reason": f"committed entry {i} differs between replicas: term "
                          f"{terms[0]} on {', '.join(holders[(i, terms[0])])}, "
                          f"term {odd} on {', '.join(names)}",
                "evidence": "committed-log"})
    return ref


def _opens(payload_of: PayloadOf, e: Entry) -> bool:
    try:
        payload_of(e)
    except ValueError:
        return False
    return True


def _base(nodes: list[ReplayNode], ref: dict[int, Entry]) -> tuple[int | None, bytes, str]:
    """Where the replay starts: the empty map at 0 when the log's first entry survives
    somewhere; else the oldest readable snapshot image from which the log goes on."""
    if not ref or min(ref) == 1:
        return 0, b"", "empty state at index 0"
    first, last = min(ref), max(ref)
    for s, img, name in sorted((s, img, n.name) for n in nodes for s, _t, img, _e in n.images
                               if img is not None):
        if s >= first - 1 and (s + 1 in ref or s >= last):
            return s, img, f"snapshot {s} of {name} (trusted: the log before it is gone)"
    return None, b"", "none"


def entry_payload(open_entry: Callable[[Entry], Any]) -> PayloadOf:
    """Adapt the cutover checker's decoder: no-ops have no payload."""

    def payload_of(e: Entry) -> bytes | None:
        if e.kind is not EntryKind.NORMAL or not e.data:
            return None
        return open_entry(e)

    return payload_of
