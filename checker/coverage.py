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


class _Cov:
    def __init__(self) -> None:
        self.out: dict[str, dict[str, Any]] = {}

    def hit(self, point: str, t: Any) -> None:
        assert point in POINTS, point
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
    """The coverage points a run reached (see the module docstring)."""
    cov = _Cov()
    evs = sorted(events, key=lambda e: (e.get("time_ns") or 0))
    nem = sorted(nemesis, key=lambda r: (r.get("time_ns") or 0))
    history = list(ops)

    # The cutover as the nodes saw it.
    cut = 0
    t_proposed: int | None = None
    t_first_apply: int | None = None
    marker = 0
    for ev in evs:
        d, kind, t = _detail(ev), ev.get("kind"), ev.get("time_ns")
        if kind == "marker-proposed" and isinstance(d.get("index"), int):
            marker = marker or d["index"]
            t_proposed = t if t_proposed is None else t_proposed
        if kind == "encryption-applied" and str(d.get("what", "")).startswith("marker"):
            t_first_apply = t if t_first_apply is None else t_first_apply
            if d.get("what") == "marker-fresh" and not cut:
                cut = int(d.get("cutover") or 0)
    marker = marker or cut

    last_role: dict[str, Mapping[str, Any]] = {}
    starts: dict[str, list[int]] = defaultdict(list)
    incarnation_above: dict[str, bool] = {}
    leader_times: list[int] = []
    newest_rotation: dict[str, int] = {}  # per node: the newest key a rotation installed
    for ev in evs:
        d, kind, t, node = _detail(ev), ev.get("kind"), ev.get("time_ns"), ev.get("node")
        what = d.get("what")
        if kind == "start":
            newest_rotation.pop(node, None)  # a restart's replays are not new commits
        if kind == "encryption-applied":
            if what == "marker-already-active":
                cov.hit("marker-replayed", t)
                if d.get("dek") and d.get("active") and d["dek"] != d["active"]:
                    cov.hit("marker-replayed-newer-dek", t)
            elif what in ("rotate", "rotate-replay") and d.get("cutover"):
                cov.hit("rotation-after-cutover", t)
            if what == "rotate-stale" or (
                    what == "rotate" and isinstance(d.get("dek"), int)
                    and d["dek"] <= newest_rotation.get(node, 0)):
                cov.hit("rotation-behind-active", t)
            if what in ("rotate", "rotate-replay") and isinstance(d.get("dek"), int):
                newest_rotation[node] = max(newest_rotation.get(node, 0), d["dek"])
        elif kind == "role":
            prev = last_role.get(node)
            if d.get("role") == "leader":
                if isinstance(t, int):
                    leader_times.append(t)
                if marker and d.get("last_index", 0) >= marker > d.get("applied", marker):
                    cov.hit("leader-with-marker-unapplied", t)
                if (t_proposed is not None and t is not None and t > t_proposed
                        and (t_first_apply is None or t < t_first_apply)):
                    cov.hit("leader-change-during-cutover", t)
                if incarnation_above.get(node):
                    cov.hit("restarted-above-cutover-leads", t)
                    incarnation_above[node] = False
            elif prev is not None and prev.get("role") == "leader":
                if d.get("last_index", 0) > d.get("commit", 0):
                    cov.hit("leader-deposed-with-uncommitted", t)
            last_role[node] = d
        elif kind == "snapshot-installed":
            cov.hit("install-snapshot", t)
            c = int(d.get("cutover") or 0) or cut
            if c and d.get("index", 0) >= c > d.get("prev_applied", c):
                cov.hit("install-snapshot-crosses-cutover", t)
        elif kind == "snapshot-taken":
            if d.get("cutover"):
                cov.hit("snapshot-above-cutover", t)
        elif kind == "start":
            if isinstance(t, int):
                if starts[node] and t - starts[node][-1] < 500_000_000:
                    cov.hit("restart-twice-within-election-timeout", t)
                starts[node].append(t)
            c = int(d.get("cutover") or 0)
            incarnation_above[node] = bool(c)
            if c and d.get("snapshot_index", 0) and d["snapshot_index"] < c:
                cov.hit("restart-below-cutover-snapshot", t)
        elif kind == "apply-wait-timeout":
            cov.hit("apply-wait-timeout", t)
        elif kind == "log-truncated":
            cov.hit("divergent-suffix-truncated", t)
        elif kind == "torn-tail":
            cov.hit("torn-tail-recovered", t)
        elif kind == "halt":
            cov.hit("halt", t)

    # What the executor did, and what the operator was told.
    prev_enable: tuple[str, str] | None = None
    power_losses: list[int] = []
    for r in nem:
        f, fault, t = r.get("f"), r.get("fault"), r.get("time_ns")
        d = r.get("detail") or {}
        targets = r.get("targets") or []
        if fault == "enable-raft-envelope" and f == "stop":
            node = targets[0] if targets else None
            status = d.get("status")
            if prev_enable is not None and prev_enable[1] not in ("ok", "already-active"):
                cov.hit("enable-retried-same-node" if prev_enable[0] == node
                        else "enable-retried-new-node", t)
            if status == "already-active":
                cov.hit("enable-already-active", t)
            prev_enable = (node, str(status))
        elif fault == "rotate" and f == "stop" and d.get("result") in ("already",
                                                                        "stale-key"):
            cov.hit("rotation-behind-active", t)
        elif fault == "rotate" and f == "start":
            if (t_proposed is not None and t is not None and t >= t_proposed
                    and (t_first_apply is None or t <= t_first_apply)):
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

    # The client history.
    invokes: dict[str, Mapping[str, Any]] = {}
    leader_times.sort()
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
    return cov.out


def summary_line(reached: Iterable[str]) -> str:
    got = set(reached) & set(POINTS)
    return f"coverage: {len(got)}/{len(POINTS)} points"
