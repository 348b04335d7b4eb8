"""Every checker of a run, on data alone: the stored history rows, the fault windows and
the nodes' data dirs. `cutover run` calls it at the end and `cutover check` calls it
again on a stored run; both store what it returns, so the two cannot disagree.

Each checker answers `valid` / `invalid` / `unknown` plus a JSON detail; the run's
verdict is the worst of them (Jepsen's `compose`). `first_violation` is one sentence a
person can act on, and `first_violation_ns` says how far into the run it happened (for
the invariants: `entry_time`, the one rule). What the UI draws later comes from here
too: a non-linearizable key stores its `witness`, and `counterexample` redraws it
without searching again.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from node.events import EventKind, read_events

from .crashes import check_crashes as check_crashes  # a checker of the suite
from .explain import explain_partition
from .history import HistoryError, Op
from .invariants import CutoverReport, check_cutover
from .linearizability import PartitionResult, Step, Verdict, check
from .models import Model, get_model
from .readers import parse_jepsen_maps

ORDER = ("linearizability", "cutover", "crashes", "stats", "availability", "vacuity")

# What the nemesis record holds besides faults: the operator's cutover request, the run's
# milestones and the harness's own housekeeping. Everything else that starts (or, for an
# instant fault such as a snapshot, happens) is a fault that ran.
NOT_FAULTS = frozenset({"enable-raft-envelope", "cutover-requested", "cutover-settled",
                        "cutover-failed", "heal-all", "restart-stuck-barrier",
                        "nemesis-error", "client-error"})


def ops_from_rows(rows: Iterable[Mapping[str, Any]], model: str) -> list[Op]:
    """The stored history (invoke, then ok/fail/info per process) as checker ops."""
    maps = []
    for i, r in enumerate(rows):
        if r["process"] == "nemesis":
            continue
        m = {"type": r["type"], "process": r["process"], "f": r["f"], "key": r["key"],
             "value": r["value"], "time": r["time_ns"], "node": r.get("node")}
        if isinstance(m["value"], list):
            m["value"] = list(m["value"])
        maps.append((i + 1, m))
    return parse_jepsen_maps("history", maps, model)


def check_linearizability(rows: list[Mapping[str, Any]], model_name: str,
                          timeout: float = 60.0) -> dict[str, Any]:
    model = get_model(model_name)
    try:
        ops = ops_from_rows(rows, model_name)
    except HistoryError as e:
        return {"valid": "unknown", "error": f"the stored history does not pair up: {e}"}
    res = check(model, ops, timeout=timeout)
    keys = []
    first = None
    for p in res.partitions:
        entry: dict[str, Any] = {"key": p.key, "verdict": p.verdict.value, "ops": len(p.ops),
                                 "configurations": p.configurations}
        if p.verdict is not Verdict.VALID:
            entry["reason"] = p.reason
            entry["explanation"] = explain_partition(model, p)
            if p.verdict is Verdict.INVALID:
                entry["witness"] = witness(p)
            bad = [op for op, illegal in p.blocked if illegal] or [op for op, _ in p.blocked]
            if bad:
                op = min(bad, key=lambda o: o.call)
                t = op.meta.get("time") if op.meta else None
                entry["op"] = {"process": op.process, "f": op.f, "value": op.value,
                               "output": repr(op.output), "time_ns": t,
                               "node": op.meta.get("node") if op.meta else None}
                if p.verdict is Verdict.INVALID and (first is None or (
                        t is not None and (first[1] is None or t < first[1]))):
                    first = (f"key {p.key!r}: {model.describe_op(op)} on node "
                             f"{entry['op']['node']} cannot be placed in any linearization",
                             t)
        keys.append(entry)
    out: dict[str, Any] = {"valid": _v(res.verdict), "model": model_name, "ops": len(ops),
                           "keys": keys, "seconds": round(res.seconds, 3)}
    if first is not None:
        out["first_violation"], out["first_violation_ns"] = first
    elif res.verdict is Verdict.INVALID:
        out["first_violation"] = "a key's history is not linearizable"
    return out


def witness(p: PartitionResult) -> dict[str, Any]:
    """What a report needs to draw a counterexample without searching again: the
    linearization found (op ids in order, and which steps were indeterminate ops applied
    to enable the next) and the ops that cannot come next. Op ids are positions in the
    stored history (`ops_from_rows`), so they name the same ops whenever it is read."""
    lin = p.linearization
    return {"order": [s.op.id for s in lin],
            "chain": [i for i, s in enumerate(lin) if s.unknown_chain],
            "blocked": [[o.id, bool(illegal)] for o, illegal in p.blocked]}


def counterexample(model: Model, ops: list[Op],
                   entry: Mapping[str, Any]) -> PartitionResult | None:
    """A stored key verdict (an entry of `check_linearizability`'s `keys`) as the
    partition result `checker.visualize` draws: its ops from the stored history, its
    model states by replaying the stored order (a linear walk, no search). None when
    the entry carries no witness (checked by an older build) or the witness does not
    fit the history it is given."""
    w = entry.get("witness")
    if not isinstance(w, dict):
        return None
    try:
        order = [int(i) for i in w.get("order") or []]
        chain = {int(i) for i in w.get("chain") or []}
        blocked_ids = [(int(i), bool(ill)) for i, ill in w.get("blocked") or []]
        verdict = Verdict(entry.get("verdict"))
    except (TypeError, ValueError):
        return None
    by_id = {o.id: o for o in ops}
    anchor = (blocked_ids[0][0] if blocked_ids else order[0]) if (blocked_ids or order) \
        else None
    if anchor not in by_id or any(i not in by_id for i in order) \
            or any(i not in by_id for i, _ in blocked_ids):
        return None
    part = next(p for p in model.partition(ops) if any(o.id == anchor for o in p))
    steps = []
    state = model.init()
    for k, i in enumerate(order):
        legal, state = model.step(state, by_id[i])
        if not legal:
            return None
        steps.append(Step(by_id[i], state, k in chain))
    return PartitionResult(verdict, part, steps, [(by_id[i], ill) for i, ill in blocked_ids],
                           str(entry.get("reason") or ""), int(entry.get("configurations") or 0),
                           key=part[0].key)


def _v(v: Verdict) -> str:
    return v.value if isinstance(v, Verdict) else str(v)


def storage_damage(nemesis: Iterable[Mapping[str, Any]], t0_ns: int = 0) -> dict[str, int]:
    """The nodes whose files a storage fault damaged (`damaged_storage` on the fault's
    `start` in the nemesis record), each with the first time, in ns on the clock of the
    exit record (`t0_ns` plus the record's time)."""
    out: dict[str, int] = {}
    for r in nemesis:
        d = r.get("detail") or {}
        targets = r.get("targets") or []
        if r.get("f") != "start" or not isinstance(d, Mapping) or not d.get("damaged_storage"):
            continue
        for n in targets if isinstance(targets, list) else []:
            t = int(r.get("time_ns") or 0) + t0_ns
            out[str(n)] = min(out.get(str(n), t), t)
    return out


def check_invariants(node_dirs: Mapping[str, str], kek_path: str,
                     tokens: Iterable[tuple[bytes, int]], *, t0_ns: int = 0,
                     excused: Iterable[tuple[str, int]] = (),
                     profile: str = "fixed",
                     damaged: Mapping[str, int] | Iterable[str] = ()
                     ) -> tuple[dict[str, Any], CutoverReport | None]:
    """I1-I7 from the nodes' files; `excused` are (node, index) copies the nemesis
    damaged on purpose (a halt exactly there is the correct, loud reaction); `damaged`
    the nodes whose files a storage fault damaged (their unreadable files are the
    fault's, not evidence against the node).

    The byte scan reads snapshot data in both profiles (`profile` is kept for the
    callers; it no longer changes the scan). elastickv's snapshot is its Pebble store,
    whose values its storage envelope seals (design §4.4), and the elastickv profile
    models that envelope (docs/protocol.md, row 11): a cleartext value in one of its
    snapshots above C is a node that stores values without the envelope, a finding."""
    del profile
    try:
        rep = check_cutover(dict(node_dirs), kek_path, list(tokens), excused=set(excused),
                            damaged=list(damaged))
    except OSError as e:  # a file that cannot be read: the inputs are incomplete
        return {"valid": "unknown", "error": f"cannot read the nodes' files: {e}",
                "incomplete": True}, None
    except ValueError as e:  # files that do not parse: judged, as evidence
        return {"valid": "unknown", "error": f"cannot read the nodes' files: {e}"}, None
    # A file of a node whose storage the nemesis damaged that does not parse is the
    # fault, read back (the node refused it, or never read it): listed, not a violation.
    # What the node did with the damage is still judged by every invariant.
    hurt = {f"{n}: " for n in damaged}
    fault_errors = [e for e in rep.errors if any(e.startswith(h) for h in hurt)]
    rep.errors[:] = [e for e in rep.errors if e not in fault_errors]
    d = rep.to_dict(include_rows=False)
    out: dict[str, Any] = {**d, "valid": "valid" if rep.valid else "invalid"}
    if fault_errors:
        out["damaged_by_nemesis"] = fault_errors[:50]
    out["cutover_time_ns"] = (None if rep.cutover_time_ns is None
                              else rep.cutover_time_ns - t0_ns)
    fv = rep.first_violation()
    if fv is not None:
        name, v = fv
        out["first_violation"] = describe_violation(name, v, rep)
        events = [(n, ev.get("t"), ev.get("kind"), ev)
                  for n, d in sorted(node_dirs.items()) for ev in read_events(d)]
        t = entry_time(v, events, rep.cutover_time_ns)
        out["first_violation_ns"] = None if t is None else int(t) - t0_ns
        out["failing"] = name
    elif rep.unknown:
        out["valid"] = "unknown"
        out["first_violation"] = rep.unknown
    return out, rep


def entry_time(v: Mapping[str, Any],
               events: Iterable[tuple[str, Any, Any, Mapping[str, Any]]],
               default: int | None = None) -> int | None:
    """When the entry of violation `v` existed, as best the run can tell.

    The log records no times, so it is the earliest node event that proves the entry
    was there: a halt at exactly its index (on any node: the halting replica had it),
    or a commit at or past it on the entry's own node (`progress`, about once a second,
    or `stop`). Another node's commit proves nothing about this copy (a stale suffix is
    not the cluster's entry), and a halt at a later index is another entry. Without
    such evidence: the violation's own time (a halt's `t`), else `default` (the cutover
    time). `events` are (node, t, kind, fields); times in the caller's clock.
    This is the one rule: `cutover run` and `cutover check` store it, `show` and the
    report print what is stored.
    """
    idx = v.get("index")
    cands = []
    if isinstance(idx, int) and not isinstance(idx, bool):
        for node, t, kind, d in events:
            if not isinstance(t, int) or isinstance(t, bool):
                continue
            if kind == EventKind.HALT and d.get("index") == idx:
                cands.append(t)
            elif (node == v.get("node") and kind in (EventKind.PROGRESS, EventKind.STOP)
                  and isinstance(d.get("commit"), int) and d["commit"] >= idx):
                cands.append(t)
    if cands:
        return min(cands)
    t = v.get("t") or v.get("time_ns")
    if isinstance(t, int) and not isinstance(t, bool):
        return t
    return default


def describe_violation(name: str, v: Mapping[str, Any], rep: CutoverReport) -> str:
    """One sentence: which invariant, which node, which index, what was there."""
    title = rep.results[name].title if name in rep.results else name
    where = []
    if v.get("node") is not None:
        where.append(f"node {v['node']}")
    if v.get("index") is not None:
        where.append(f"index {v['index']}")
    if v.get("term") is not None:
        where.append(f"term {v['term']}")
    reason = v.get("reason") or v.get("what") or ""
    c = f" (C = {rep.cutover})" if rep.cutover else ""
    return f"{name} {title} violated at {', '.join(where) or 'an unknown place'}{c}: {reason}"


def stats(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """ok / fail / info counts by f; a run where nothing succeeded is `unknown`."""
    by: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        if r["process"] == "nemesis" or r["type"] == "invoke":
            continue
        by[r["f"]][r["type"]] += 1
    total = Counter()
    for c in by.values():
        total.update(c)
    valid = "valid" if total["ok"] > 0 else "unknown"
    return {"valid": valid, "by_f": {f: dict(c) for f, c in sorted(by.items())},
            "total": dict(total),
            **({} if total["ok"] else {"first_violation": "no operation succeeded"})}


def availability(rows: Iterable[Mapping[str, Any]],
                 windows: Iterable[tuple[int, int | None, str, Any]], end_ns: int,
                 *, floor: float = 0.0) -> dict[str, Any]:
    """Share of completed ops that were ok, per second, outside fault windows.

    Informational (Maelstrom's availability checker): it is `valid` unless the share
    outside faults falls under `floor` (0 by default: reported, never failing).
    """
    wins = [(s, e if e is not None else end_ns) for s, e, _, _ in windows]
    per_sec: dict[int, Counter] = defaultdict(Counter)
    for r in rows:
        if r["process"] == "nemesis" or r["type"] == "invoke":
            continue
        t = r["time_ns"]
        sec = int(t // 1_000_000_000)
        per_sec[sec][r["type"]] += 1
        per_sec[sec]["in_fault" if any(s <= t <= e for s, e in wins) else "quiet"] += 1
    quiet_ok = quiet_all = 0
    series = []
    for sec in sorted(per_sec):
        c = per_sec[sec]
        n = c["ok"] + c["fail"] + c["info"]
        faulty = any(s < (sec + 1) * 1e9 and e > sec * 1e9 for s, e in wins)
        series.append({"second": sec, "ok": c["ok"], "fail": c["fail"], "info": c["info"],
                       "fault": faulty})
        if not faulty:
            quiet_ok += c["ok"]
            quiet_all += n
    share = quiet_ok / quiet_all if quiet_all else None
    ok = share is None or share >= floor
    return {"valid": "valid" if ok else "invalid", "ok_share_outside_faults": share,
            "seconds": series}


def _detail(e: Mapping[str, Any]) -> Mapping[str, Any]:
    """An event's fields: flat (the simulator's, a run's event log) or under `detail` (a
    stored row)."""
    d = e.get("detail")
    return d if isinstance(d, Mapping) else e


def vacuity(config: Mapping[str, Any], ops: Iterable[Mapping[str, Any]],
            nemesis: Iterable[Mapping[str, Any]],
            events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Whether the run tested what it was asked to test; `unknown` when it did not.

    A history with no operation is trivially linearizable, and invariants about a cutover
    hold vacuously when there was none: a VALID from such a run would say "this build
    holds" about something never tried (Jepsen answers `:unknown` for a history too thin
    to judge). So a run asked for a cutover (`cutover_at` set) must show one applied
    fresh on some node; a run asked for faults (a nemesis other than `none`) must show
    one that ran; and its workload phase must have completed at least one operation."""
    missing: list[str] = []
    events = list(events)  # read twice below
    cut_at = config.get("cutover_at")
    cut = sum(1 for e in events if e.get("kind") == EventKind.ENCRYPTION_APPLIED
              and (e.get("what") or (e.get("detail") or {}).get("what")) == "marker-fresh")
    if cut_at is not None and not cut:
        missing.append(f"it was asked for a cutover (at {float(cut_at):g} s) and none "
                       f"happened")
    families = (config.get("plan") or {}).get("families")
    if families is None:
        nem = config.get("nemesis")
        families = [] if nem in (None, "none", "") else [nem]
    # A fault that was skipped (corrupt-entry found no copy to damage) did not run.
    faults = sum(1 for r in nemesis if r.get("f") in ("start", "event")
                 and r.get("fault") not in NOT_FAULTS
                 and not (isinstance(r.get("detail"), dict) and r["detail"].get("skipped")))
    if families and not faults:
        missing.append(f"it was asked for faults ({', '.join(map(str, families))}) and "
                       f"none ran")
    cp = config.get("crash_point")
    if isinstance(cp, Mapping) and not any(
            e.get("kind") == EventKind.BUGGIFY and "crash_point" in _detail(e)
            for e in events):
        missing.append(f"it was asked for a crash at {cp.get('node')}'s durability boundary "
                       f"{cp.get('k')} and none happened (crash points are the simulator's)")
    done = sum(1 for r in ops if r.get("type") == "ok"
               and not str(r.get("process", "")).startswith(("final-", "nemesis")))
    if not done:
        missing.append("its workload phase completed no operation")
    out: dict[str, Any] = {"valid": "unknown" if missing else "valid", "cutovers": cut,
                           "faults_ran": faults, "workload_ok": done}
    if missing:
        out["first_violation"] = "vacuous: " + "; ".join(missing)
        out["missing"] = missing
    return out


def worst(verdicts: Iterable[str]) -> str:
    """The run's verdict: the worst of its checkers' (Jepsen's `compose`)."""
    return max(verdicts, key=Verdict.rank_of, default="valid")


EXIT_CODES = {v.value: v.exit_code for v in Verdict}


def first_violation(results: Mapping[str, Mapping[str, Any]]) -> tuple[str, str, Any] | None:
    """(checker, sentence, ns into the run) of the earliest-reported failing checker."""
    for name in ORDER:
        r = results.get(name)
        if r and r.get("valid") == "invalid":
            return name, str(r.get("first_violation", "")), r.get("first_violation_ns")
    for name in ORDER:
        r = results.get(name)
        if r and r.get("valid") == "unknown":
            return name, str(r.get("first_violation") or r.get("error") or "unknown"), None
    return None
