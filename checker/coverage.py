"""Protocol-state coverage: which dangerous states a run actually reached.

A run that passes says little unless it went where the bugs live. These points are
computed after the run from what happened, never from what the plan intended: the
nodes' events (as stored in `node_events`: node, time_ns, kind, detail), the client
history (`ops`) and the executor's record of what it did (`nemesis`). The aggregate over
many runs (`cutover coverage`) says which states the nightly runs never reach.

`coverage(events, ops, nemesis)` returns {point: {"count": n, "first_ns": t}} for every
point reached; `POINTS` names and explains them all.

Every point is reachable by a correct cluster. Two states the protocol describes are not
points for that reason: the marker applied as stale, and EnableRaftEnvelope answering
`stale`. A rotation must be in the log before the marker yet unapplied when the marker
is built for that; the per-node admin lock refuses the marker while a rotation proposed
there is pending, and a new leader builds its marker only after applying everything
earlier leaders committed. Both stay visible in the events (and a bug that makes them
reachable is a finding).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

POINTS: dict[str, str] = {
    "marker-replayed-newer-dek": "a node applied the marker again (replay from a snapshot "
                                 "below C) while its active DEK was newer than the marker's",
    "marker-replayed": "a node applied the marker again (already-active branch)",
    "leader-with-marker-unapplied": "a leader was elected while holding the marker logged "
                                    "but unapplied",
    "leader-change-during-cutover": "leadership changed between the marker's proposal and "
                                    "its first apply",
    "install-snapshot-crosses-cutover": "a node installed a snapshot at or above C while "
                                        "it had applied below C",
    "install-snapshot": "a node installed a snapshot at run time",
    "snapshot-above-cutover": "a node took a snapshot above C",
    "restart-below-cutover-snapshot": "a node restarted after the cutover from a snapshot "
                                      "below C (it must replay the marker)",
    "restarted-above-cutover-leads": "a node restarted after the cutover, then led",
    "apply-wait-timeout": "EnableRaftEnvelope's wait for the marker to apply timed out "
                          "(the barrier stays up)",
    "stuck-barrier-restarted": "a node whose barrier was stuck was restarted",
    "enable-retried-same-node": "EnableRaftEnvelope retried on the same node after an "
                                "indeterminate answer",
    "enable-retried-new-node": "EnableRaftEnvelope retried on another node after an "
                               "indeterminate answer",
    "enable-already-active": "EnableRaftEnvelope answered already-active",
    "rotation-during-marker-flight": "a DEK rotation was proposed while the marker was in "
                                     "flight (proposed, not yet applied anywhere)",
    "rotation-after-cutover": "a DEK rotation applied after the cutover",
    "rotation-behind-active": "a RotateDEK came after the active key had passed its key "
                              "(an operator's retry of one that had committed, or a late "
                              "one): answered already / stale-key, or applied",
    "divergent-suffix-truncated": "a follower's divergent log suffix was truncated",
    "leader-deposed-with-uncommitted": "a leader stepped down with entries it had not "
                                       "committed",
    "read-across-leader-change": "a read was in flight while a new leader was elected",
    "write-acked-before-power-loss": "a write was acknowledged less than 0.5 s before a "
                                     "power loss",
    "power-loss-lost-data": "a power loss cut unsynced bytes from a node's files",
    "restart-twice-within-election-timeout": "a node started twice within 0.5 s",
    "torn-tail-recovered": "a node recovered a torn WAL tail",
    "barrier-refused-write": "a client write was refused with cutover-in-progress",
    "new-leader-not-ready": "a client write was refused by a new leader still applying "
                            "its log",
    "halt": "a node halted on an entry it could not apply",
}


# BUGGIFY (node/buggify.py): `buggify:<point>` for every point that fired in a run (its
# node's `buggify` event with an action other than `reached`). Kept apart from POINTS:
# only runs with BUGGIFY on can reach them, so counting them there would lower every
# other run's coverage and change what a BUGGIFY-off batch prints.
BUGGIFY_PREFIX = "buggify:"


def buggify_fired(cov: Iterable[str]) -> list[str]:
    """The BUGGIFY points a run's coverage says fired, sorted."""
    return sorted(p for p in cov if p.startswith(BUGGIFY_PREFIX))


class _Cov:
    def __init__(self) -> None:
        self.out: dict[str, dict[str, Any]] = {}

    def hit(self, point: str, t: Any) -> None:
        assert point in POINTS or point.startswith(BUGGIFY_PREFIX), point
        t = int(t) if isinstance(t, int | float) else None
        rec = self.out.setdefault(point, {"count": 0, "first_ns": t})
        rec["count"] += 1
        if t is not None and (rec["first_ns"] is None or t < rec["first_ns"]):
            rec["first_ns"] = t


def _detail(ev: Mapping[str, Any]) -> Mapping[str, Any]:
    d = ev.get("detail")
    return d if isinstance(d, Mapping) else ev


def coverage(events: Iterable[Mapping[str, Any]], ops: Iterable[Mapping[str, Any]] = (),
             nemesis: Iterable[Mapping[str, Any]] = ()) -> dict[str, dict[str, Any]]:
    """The coverage points a run reached (see the module docstring).

    Three passes, in this order (a point's place in the result is the order it was first
    reached in): the node events, what the executor did, the client history. The later
    passes need times the first one found (leader elections, the marker's flight)."""
    cov = _Cov()
    evs = sorted(events, key=lambda e: (e.get("time_ns") or 0))
    nem = sorted(nemesis, key=lambda r: (r.get("time_ns") or 0))
    history = list(ops)
    cut = _Cutover.seen_in(evs)
    nodes = _NodeEvents(cov, cut)
    for ev in evs:
        nodes.see(ev)
    power_losses = _nemesis_record(cov, nem, cut)
    _client_history(cov, history, sorted(nodes.leader_times), power_losses)
    return cov.out


@dataclass
class _Cutover:
    """The cutover as the nodes saw it: C, the marker's index, when the marker was first
    proposed and when it first applied (its flight is in between)."""

    cut: int = 0
    marker: int = 0
    t_proposed: int | None = None
    t_first_apply: int | None = None

    @classmethod
    def seen_in(cls, evs: list[Mapping[str, Any]]) -> _Cutover:
        c = cls()
        for ev in evs:
            d, kind, t = _detail(ev), ev.get("kind"), ev.get("time_ns")
            if kind == "marker-proposed" and isinstance(d.get("index"), int):
                c.marker = c.marker or d["index"]
                c.t_proposed = t if c.t_proposed is None else c.t_proposed
            if kind == "encryption-applied" and str(d.get("what", "")).startswith("marker"):
                c.t_first_apply = t if c.t_first_apply is None else c.t_first_apply
                if d.get("what") == "marker-fresh" and not c.cut:
                    c.cut = int(d.get("cutover") or 0)
        c.marker = c.marker or c.cut
        return c


# Node event kinds that are a point by themselves, whatever they carry.
_ONE_EVENT_POINTS = {
    "apply-wait-timeout": "apply-wait-timeout",
    "log-truncated": "divergent-suffix-truncated",
    "torn-tail": "torn-tail-recovered",
    "halt": "halt",
}


class _NodeEvents:
    """The node events, in time order, and what each node was doing when they came."""

    def __init__(self, cov: _Cov, cut: _Cutover) -> None:
        self.cov, self.cut = cov, cut
        self.last_role: dict[str, Mapping[str, Any]] = {}
        self.starts: dict[str, list[int]] = defaultdict(list)
        self.incarnation_above: dict[str, bool] = {}
        self.leader_times: list[int] = []
        self.newest_rotation: dict[str, int] = {}  # per node: the newest key a rotation installed

    def see(self, ev: Mapping[str, Any]) -> None:
        d, kind, t, node = _detail(ev), ev.get("kind"), ev.get("time_ns"), ev.get("node")
        if kind == "encryption-applied":
            self._encryption_applied(d, t, node)
        elif kind == "role":
            self._role(d, t, node)
        elif kind == "snapshot-installed":
            self._snapshot_installed(d, t)
        elif kind == "snapshot-taken":
            if d.get("cutover"):
                self.cov.hit("snapshot-above-cutover", t)
        elif kind == "start":
            self._start(d, t, node)
        elif isinstance(kind, str) and kind in _ONE_EVENT_POINTS:
            self.cov.hit(_ONE_EVENT_POINTS[kind], t)
        elif kind == "buggify" and isinstance(d.get("point"), str) \
                and d.get("action") not in (None, "reached"):
            self.cov.hit(BUGGIFY_PREFIX + d["point"], t)

    def _encryption_applied(self, d: Mapping[str, Any], t: Any, node: Any) -> None:
        what = d.get("what")
        if what == "marker-already-active":
            self.cov.hit("marker-replayed", t)
            if d.get("dek") and d.get("active") and d["dek"] != d["active"]:
                self.cov.hit("marker-replayed-newer-dek", t)
        elif what in ("rotate", "rotate-replay") and d.get("cutover"):
            self.cov.hit("rotation-after-cutover", t)
        if what == "rotate-stale" or (
                what == "rotate" and isinstance(d.get("dek"), int)
                and d["dek"] <= self.newest_rotation.get(node, 0)):
            self.cov.hit("rotation-behind-active", t)
        if what in ("rotate", "rotate-replay") and isinstance(d.get("dek"), int):
            self.newest_rotation[node] = max(self.newest_rotation.get(node, 0), d["dek"])

    def _role(self, d: Mapping[str, Any], t: Any, node: Any) -> None:
        prev = self.last_role.get(node)
        if d.get("role") == "leader":
            self._elected(d, t, node)
        elif prev is not None and prev.get("role") == "leader":
            if d.get("last_index", 0) > d.get("commit", 0):
                self.cov.hit("leader-deposed-with-uncommitted", t)
        self.last_role[node] = d

    def _elected(self, d: Mapping[str, Any], t: Any, node: Any) -> None:
        c = self.cut
        if isinstance(t, int):
            self.leader_times.append(t)
        if c.marker and d.get("last_index", 0) >= c.marker > d.get("applied", c.marker):
            self.cov.hit("leader-with-marker-unapplied", t)
        if (c.t_proposed is not None and t is not None and t > c.t_proposed
                and (c.t_first_apply is None or t < c.t_first_apply)):
            self.cov.hit("leader-change-during-cutover", t)
        if self.incarnation_above.get(node):
            self.cov.hit("restarted-above-cutover-leads", t)
            self.incarnation_above[node] = False

    def _snapshot_installed(self, d: Mapping[str, Any], t: Any) -> None:
        self.cov.hit("install-snapshot", t)
        c = int(d.get("cutover") or 0) or self.cut.cut
        if c and d.get("index", 0) >= c > d.get("prev_applied", c):
            self.cov.hit("install-snapshot-crosses-cutover", t)

    def _start(self, d: Mapping[str, Any], t: Any, node: Any) -> None:
        self.newest_rotation.pop(node, None)  # a restart's replays are not new commits
        if isinstance(t, int):
            if self.starts[node] and t - self.starts[node][-1] < 500_000_000:
                self.cov.hit("restart-twice-within-election-timeout", t)
            self.starts[node].append(t)
        c = int(d.get("cutover") or 0)
        self.incarnation_above[node] = bool(c)
        if c and d.get("snapshot_index", 0) and d["snapshot_index"] < c:
            self.cov.hit("restart-below-cutover-snapshot", t)


def _nemesis_record(cov: _Cov, nem: list[Mapping[str, Any]], cut: _Cutover) -> list[int]:
    """What the executor did, and what the operator was told; returns when each power
    loss started."""
    prev_enable: tuple[Any, str] | None = None
    power_losses: list[int] = []
    for r in nem:
        f, fault, t = r.get("f"), r.get("fault"), r.get("time_ns")
        d = r.get("detail") or {}
        if fault == "enable-raft-envelope" and f == "stop":
            prev_enable = _enable_answered(cov, r, d, t, prev_enable)
        elif fault == "rotate" and f == "stop" and d.get("result") in ("already",
                                                                        "stale-key"):
            cov.hit("rotation-behind-active", t)
        elif fault == "rotate" and f == "start":
            if (cut.t_proposed is not None and t is not None and t >= cut.t_proposed
                    and (cut.t_first_apply is None or t <= cut.t_first_apply)):
                cov.hit("rotation-during-marker-flight", t)
        elif fault == "kill-power" and f == "event":
            lost = d.get("lost") or {}
            if any((v or {}).get("truncated_bytes") or (v or {}).get("undone")
                   for v in lost.values()):
                cov.hit("power-loss-lost-data", t)
        elif fault == "kill-power" and f == "start" and isinstance(t, int):
            power_losses.append(t)
        elif fault == "restart-stuck-barrier":
            cov.hit("stuck-barrier-restarted", t)
    return power_losses


def _enable_answered(cov: _Cov, r: Mapping[str, Any], d: Mapping[str, Any], t: Any,
                     prev: tuple[Any, str] | None) -> tuple[Any, str]:
    """One answer to EnableRaftEnvelope, after the previous one; returns (node, status)."""
    targets = r.get("targets") or []
    node = targets[0] if targets else None
    status = d.get("status")
    if prev is not None and prev[1] not in ("ok", "already-active"):
        cov.hit("enable-retried-same-node" if prev[0] == node
                else "enable-retried-new-node", t)
    if status == "already-active":
        cov.hit("enable-already-active", t)
    return (node, str(status))


def _client_history(cov: _Cov, history: list[Mapping[str, Any]], leader_times: list[int],
                    power_losses: list[int]) -> None:
    """The client history: refusals, and completions around elections and power loss."""
    invokes: dict[str, Mapping[str, Any]] = {}
    for r in history:
        p, typ, t = r.get("process"), r.get("type"), r.get("time_ns")
        if typ == "invoke":
            invokes[p] = r
            continue
        inv = invokes.pop(p, None)
        err = r.get("error")
        if err == "cutover-in-progress":
            cov.hit("barrier-refused-write", t)
        elif err == "not-ready":
            cov.hit("new-leader-not-ready", t)
        if inv is None or not isinstance(t, int):
            continue
        t0 = inv.get("time_ns")
        if r.get("f") == "read" and typ == "ok" and isinstance(t0, int) and any(
                t0 < lt < t for lt in leader_times):
            cov.hit("read-across-leader-change", t)
        if r.get("f") in ("write", "cas") and typ == "ok" and any(
                0 <= pl - t < 500_000_000 for pl in power_losses):
            cov.hit("write-acked-before-power-loss", t)


def summary_line(reached: Iterable[str]) -> str:
    got = set(reached) & set(POINTS)
    return f"coverage: {len(got)}/{len(POINTS)} points"
