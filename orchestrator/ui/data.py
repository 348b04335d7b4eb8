"""What the UI shows of a stored run, read from the results database.

Everything comes from `orchestrator.store` (the history, faults, node events, the
scanned log entries) and from what the checkers stored (`checks`): nothing here runs a
check. A counterexample is redrawn from the linearization the checker stored with its
verdict (`checker.suite.counterexample`: a replay of the model along the stored order,
not a search), and the time of an I1 violation is the one the checker stored
(`checker.suite.entry_time`), so the report, `show` and the run's summary agree.

`report_data` returns plain dicts; `orchestrator.ui.report` turns them into the page.
"""
from __future__ import annotations

import json
import math
import re
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import sqlite_utils

from checker.history import HistoryError, Op
from checker.linearizability import CheckResult
from checker.models import get_model
from checker.suite import counterexample, first_violation, ops_from_rows
from checker.visualize import new_nonce, render_html
from node.events import EventKind
from node.payload import OPCODE_NAMES
from orchestrator import store
from orchestrator.errors import ReviewError
from orchestrator.ui import DEFAULT_MAX_OPS
from orchestrator.ui.svg import family_of, fault_color
from workloads import MODEL_OF

I1_CONTEXT_NS = 3_000_000_000  # the seconds around an I1 violation shown in the report
MAX_LIN_KEYS = 10  # counterexample pages embedded in one report
ENTRY_INVARIANTS = ("I1", "I2", "I4")  # their violations are log entries (node, index)


def stored_checks(db: sqlite_utils.Database, run_id: str) -> dict[str, dict[str, Any]]:
    """{checker: detail} where detail carries `valid` (the stored JSON is the checker's
    whole result); a row without detail keeps at least its verdict."""
    out = {}
    for name, c in store.checks(db, run_id).items():
        d = c["detail"] if isinstance(c["detail"], dict) else {}
        out[name] = {**d, "valid": c["valid"]}
    return out


def pair_ops(rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """History tuples (`store.history_tuples`) as one dict per operation, values still
    JSON text (`decode_values` decodes the few that get drawn); an op with no
    completion stays `info` with `end_ns` None (open to the end)."""
    open_: dict[str, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for process, typ, f, key, value, t, node, error in rows:
        if typ == "invoke":
            op = {"process": process, "f": f, "key": key, "value": value, "start_ns": t,
                  "end_ns": None, "type": "info", "node": node, "output": None,
                  "error": None}
            open_[process] = op
            out.append(op)
            continue
        op = open_.pop(process, None)
        if op is None:
            continue
        op["type"] = typ
        op["end_ns"] = t
        op["node"] = node or op["node"]
        op["error"] = error
        if f == "read":
            op["output"] = value
    out.sort(key=lambda o: o["start_ns"])
    return out


def decode_values(ops: Iterable[dict[str, Any]]) -> None:
    """Decode the JSON values of the ops that get drawn (in place); text that is not
    JSON stays text."""
    for o in ops:
        for k in ("value", "output"):
            if isinstance(o[k], str):
                try:
                    o[k] = json.loads(o[k])
                except ValueError:
                    pass


# ---------------------------------------------------------------------- node table


def node_table(db: sqlite_utils.Database, run_id: str,
               checks: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per node: C, active DEK, applied index, halts, and the entries above C: wrapped,
    cleartext and no-op (a new leader's empty entry is neither wrapped nor cleartext,
    and counting it as cleartext made a valid run read like an I1 violation).

    The checker's reading of the node's files (sidecar) comes first; a run that never
    got checked falls back on what the node's own event log said last.
    """
    cut = checks.get("cutover") or {}
    detail_nodes = cut.get("nodes") or {}
    evs = store.node_events(db, run_id, [EventKind.HALT, EventKind.ENCRYPTION_APPLIED,
                                         EventKind.STOP, EventKind.PROGRESS,
                                         EventKind.START])
    last_enc: dict[str, dict[str, Any]] = {}
    last_applied: dict[str, int] = {}
    halts: dict[str, list[dict[str, Any]]] = defaultdict(list)
    names = set(detail_nodes)
    for e in evs:
        n = e["node"]
        names.add(n)
        d = e["detail"]
        if e["kind"] == EventKind.HALT:
            halts[n].append(d)
        elif e["kind"] == EventKind.ENCRYPTION_APPLIED:
            last_enc[n] = d
        if isinstance(d.get("applied"), int):
            last_applied[n] = d["applied"]
    names |= store.log_nodes(db, run_id)
    c_cluster = cut.get("cutover")
    # Halts at copies the corrupt-entry fault damaged on purpose: the designed outcome
    # (I3 moved them to its summary's `excused`), labelled so a valid run does not read
    # like a halted one.
    i3 = ((cut.get("invariants") or {}).get("I3") or {}).get("summary") or {}
    expected = {(v.get("node"), v.get("index")) for v in i3.get("excused") or []
                if isinstance(v, dict)}
    rows = []
    for n in sorted(names):
        side = (detail_nodes.get(n) or {}).get("sidecar") or {}
        c = side.get("cutover", (last_enc.get(n) or {}).get("cutover"))
        active = side.get("active_raft_dek", (last_enc.get(n) or {}).get("active"))
        applied = last_applied.get(n, side.get("raft_applied_index"))
        c_scan = c_cluster or c
        counts = store.log_counts_above(db, run_id, n, c_scan) if c_scan else None
        h = halts.get(n) or []
        reason = None
        if h:
            last = h[-1]
            reason = (f"{len(h)}x, last at index {last.get('index')}: {last.get('reason')}"
                      if len(h) > 1 else f"at index {last.get('index')}: {last.get('reason')}")
            if all((n, x.get("index")) in expected for x in h):
                reason = f"expected (the corrupt-entry fault damaged it), {reason}"
        rows.append({"node": n, "cutover": c, "active": active, "applied": applied,
                     "halted": bool(h), "halt_reason": reason,
                     "above_wrapped": counts["wrapped"] if counts else None,
                     "above_clear": counts["cleartext"] if counts else None,
                     "above_noop": counts["noop"] if counts else None})
    return rows


# ------------------------------------------------------------------- report data


def _fault_dicts(windows: Iterable[tuple[int, int | None, str, Any]]) -> list[dict[str, Any]]:
    return [{"start_ns": s, "end_ns": e, "fault": f, "targets": t} for s, e, f, t in windows]


def _overlaps(f: Mapping[str, Any], a: int, b: int) -> bool:
    e = f["end_ns"]
    return f["start_ns"] <= b and (e is None or e >= a)


def _pages(ops: list[dict[str, Any]], lo: int, hi: int, max_ops: int) -> list[tuple[int, int]]:
    """Split the ops that start in [lo, hi] into pages of at most `max_ops`, as time
    ranges: asking for a page's range gives back exactly that page's ops."""
    if len(ops) <= max_ops:
        return [(lo, hi)]
    bounds = [lo] + [ops[i]["start_ns"] for i in range(max_ops, len(ops), max_ops)] + [hi]
    return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)
            if bounds[i + 1] > bounds[i]]


def _time_to_position(ops: list[Op]) -> Callable[[int | None], int | None]:
    """Nemesis times as history event positions, for the counterexample's fault bands
    (the visualization's axis is event positions, not nanoseconds)."""
    pairs = sorted((o.meta.get("time"), o.call) for o in ops
                   if o.meta and isinstance(o.meta.get("time"), int))
    times = [t for t, _ in pairs]

    def pos(t: int | None) -> int | None:
        if t is None:
            return None
        i = bisect_left(times, t)
        if i >= len(pairs):
            return (pairs[-1][1] + 1) if pairs else 0
        return pairs[i][1]

    return pos


def lin_sections(db: sqlite_utils.Database, run_id: str, model_name: str,
                 lin: Mapping[str, Any], faults: list[dict[str, Any]],
                 palette: dict[str, str], nonce: str | None = None,
                 ends: Mapping[tuple[str, int], int | None] | None = None
                 ) -> list[dict[str, Any]]:
    """For every key the stored check found not linearizable: its explanation and, for
    an invalid one, the counterexample page, drawn from the linearization the checker
    stored (the history is read again, the search is not run again). `ends` maps
    (process, invoke ns) to the op's completion ns (`pair_ops`), so the counterexample
    speaks the run's seconds."""
    bad = sorted((k for k in (lin.get("keys") or []) if k.get("verdict") != "valid"),
                 key=lambda k: k.get("verdict") != "invalid")
    items = [{"key": k.get("key"), "verdict": k.get("verdict"), "reason": k.get("reason"),
              "explanation": k.get("explanation"), "stored": bool(k.get("witness"))}
             for k in bad]
    drawable = [(item, k) for item, k in zip(items, bad, strict=True)
                if k.get("verdict") == "invalid" and k.get("witness")][:MAX_LIN_KEYS]
    if not drawable:
        return items
    model = get_model(model_name)
    try:
        ops = ops_from_rows(store.iter_ops(db, run_id), model_name)
    except HistoryError:
        return items
    pos = _time_to_position(ops)
    annotations = [{"start": pos(f["start_ns"]), "end": pos(f["end_ns"]),
                    "label": f"{f['fault']} {f['targets'] or ''}",
                    "kind": family_of(str(f["fault"])),
                    "color": palette.get(family_of(str(f["fault"])))}
                   for f in faults]
    times = position_times(ops, ends or {})
    for item, k in drawable:
        part = counterexample(model, ops, k)
        if part is None:
            item["stored"] = False
            continue
        res = CheckResult(part.verdict, [part], model.name, float(lin.get("seconds") or 0.0))
        item["html"] = render_html(model, res, title=f"key {k['key']}",
                                   annotations=annotations, nonce=nonce, times=times)
        item["explanation"] = in_seconds(str(item.get("explanation") or ""), times)
    return items


def position_times(ops: Iterable[Op], ends: Mapping[tuple[str, int], int | None]
                   ) -> dict[int, int]:
    """Event positions (an op's call and return) as ns since the run's start: the
    invoke's time the op carries, its completion's from `ends`."""
    out: dict[int, int] = {}
    for o in ops:
        t = (o.meta or {}).get("time")
        if not isinstance(t, int):
            continue
        out[o.call] = t
        e = ends.get((str(o.process), t))
        if o.ret is not None and isinstance(e, int):
            out[o.ret] = e
    return out


_SPAN = re.compile(r"\[(\d+), (\d+|∞)\](?=\s\s|\s*$)", re.M)


def in_seconds(text: str, times: Mapping[int, int]) -> str:
    """The stored explanation with its op intervals (`[call, return]` as event
    positions) in seconds of the run, as the drawing and the timeline show them. Only
    an interval whose both ends are known is rewritten; the rest stays as stored."""
    def sub(m: re.Match[str]) -> str:
        a = times.get(int(m.group(1)))
        b = None if m.group(2) == "∞" else times.get(int(m.group(2)))
        if a is None or (b is None and m.group(2) != "∞"):
            return m.group(0)
        return f"[{a / 1e9:.3f} s, {'∞' if b is None else f'{b / 1e9:.3f} s'}]"
    return _SPAN.sub(sub, text)


def i1_section(db: sqlite_utils.Database, run_id: str, cut: Mapping[str, Any],
               nem: list[dict[str, Any]], windows: list[dict[str, Any]],
               events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The offending entries of an I1, I2 or I4 violation (the invariants whose
    violations are log entries) and what happened around them; the failing one, else
    the first of them that failed."""
    invs = cut.get("invariants") or {}
    bad = [n for n in ENTRY_INVARIANTS if not (invs.get(n) or {}).get("valid", True)]
    if not bad:
        return None
    name = cut.get("failing") if cut.get("failing") in bad else bad[0]
    inv = invs[name]
    violations = list(inv.get("violations") or [])[:50]
    c = cut.get("cutover") or 0
    stored = store.log_wrapped_above(db, run_id, c)
    for v in violations:
        w = stored.get((v.get("node"), v.get("index"), v.get("term")))
        v["stored"] = "?" if w is None else "wrapped" if w else "cleartext"
        v["wrapped"] = bool(w)
    first = inv.get("first_violation") or (violations[0] if violations else {})
    entries = []
    if first.get("node") is not None and isinstance(first.get("index"), int):
        # around C and around the offending entry: they can be far apart
        i = first["index"]
        spans = sorted({(c - 2, c + 3), (i - 3, i + 6)})
        if spans[-1][0] <= spans[0][1] + 1:
            spans = [(spans[0][0], max(spans[0][1], spans[-1][1]))]
        rows = [r for lo, hi in spans
                for r in store.log_entries_between(db, run_id, first["node"], lo, hi)]
        for r in rows:
            r["opcode_name"] = OPCODE_NAMES.get(r["opcode"]) if r["opcode"] is not None else None
            entries.append(r)
    # When: what the checker stored (checker.suite.entry_time, the one rule), so this
    # section, `show` and the summary agree; a run checked before there was a time for
    # it falls back on the cutover time.
    t = cut.get("first_violation_ns") if cut.get("failing") == name else None
    if not isinstance(t, int):
        t = cut.get("cutover_time_ns")
    out: dict[str, Any] = {"name": name, "title": inv.get("title") or name,
                           "first": first, "cutover": c, "violations": violations,
                           "entries": entries,
                           "count": inv.get("violation_count", len(violations)), "t_ns": t}
    if isinstance(t, int):
        a, b = max(0, t - I1_CONTEXT_NS), t + I1_CONTEXT_NS
        out["window_ns"] = [a, b]
        out["faults"] = [r for r in nem if r["time_ns"] is not None and a <= r["time_ns"] <= b]
        out["band_faults"] = [f for f in windows if _overlaps(f, a, b)]
        out["events"] = [e for e in events if e["time_ns"] is not None
                         and a <= e["time_ns"] <= b and e["kind"] != EventKind.PROGRESS][:200]
    return out


def report_data(db: sqlite_utils.Database, row: Mapping[str, Any], *,
                from_s: float | None = None, to_s: float | None = None,
                max_ops: int = DEFAULT_MAX_OPS,
                page_ref: Callable[[int, int], dict[str, str]] | None = None,
                links: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Everything `orchestrator.ui.report.render_report` draws (its docstring lists the
    keys), read from the database.

    The history is windowed: ops whose invoke falls in [from, to] (seconds into the run,
    default the whole run), at most `max_ops` of them drawn; when there are more, the
    page shows the first `max_ops` and `page_ref(from_ns, to_ns)` says how to get each
    other page (`{"href": ...}` when served, `{"command": ...}` for a file).
    """
    run_id = row["id"]
    cfg = store.run_config(row)
    checks = stored_checks(db, run_id)
    ops = pair_ops(store.history_tuples(db, run_id))
    nem = store.nemesis_rows(db, run_id)
    windows = _fault_dicts(store.fault_windows(nem))
    events = store.node_events(db, run_id)
    times = [o["start_ns"] for o in ops] + [o["end_ns"] for o in ops if o["end_ns"]]
    times += [r["time_ns"] for r in nem if r["time_ns"] is not None]
    end_ns = max(times, default=1_000_000_000)
    for name, v in (("--from", from_s), ("--to", to_s)):
        if v is not None and not math.isfinite(v):
            raise ReviewError(f"{name} {v} is not a number of seconds")
    lo = 0 if from_s is None else int(round(from_s * 1e9))
    hi = end_ns if to_s is None else int(round(to_s * 1e9))
    if lo < 0 or hi <= lo:
        raise ReviewError(f"empty window: --from {lo / 1e9:g} s must be >= 0 and before "
                          f"--to {hi / 1e9:g} s")
    if max_ops < 1:
        raise ReviewError("--max-ops must be at least 1")
    sel = [o for o in ops if lo <= o["start_ns"] < hi or (o["start_ns"] == hi >= end_ns)]
    pages = _pages(sel, lo, hi, max_ops)
    a, b = pages[0]
    drawn = [o for o in sel if a <= o["start_ns"] < b or (o["start_ns"] == b == hi)]
    decode_values(drawn)
    page_list = []
    for i, (pa, pb) in enumerate(pages):
        p: dict[str, Any] = {"from_ns": pa, "to_ns": pb, "current": i == 0}
        if page_ref is not None:
            p.update(page_ref(pa, pb))
        page_list.append(p)
    comps = [[o["end_ns"], o["type"]] for o in ops
             if o["end_ns"] is not None and a <= o["end_ns"] <= b]
    model = MODEL_OF.get(cfg.get("workload") or row.get("workload") or "kv", "kv")
    cut = checks.get("cutover") or {}
    details = {(r["fault"], r["time_ns"]): r["detail"] for r in nem
               if r["f"] in ("start", "event")}
    for f in windows:  # what the cutover lane names: a rotation's key id, the settled C
        f["detail"] = details.get((f["fault"], f["start_ns"])) or {}
    palette: dict[str, str] = {}  # one color per fault family, in every drawing of the page
    for f in windows:
        fault_color(str(f["fault"]), palette)
    nonce = new_nonce()  # the page's, and its embedded counterexamples' (same policy)
    return {
        "nonce": nonce,
        "run": dict(row), "config": cfg, "checks": checks,
        "first": first_violation(checks) if checks else None,
        "window": {"from_ns": a, "to_ns": b, "total_ops": len(sel), "shown_ops": len(drawn),
                   "pages": page_list},
        "ops": drawn, "completions": comps,
        "faults": [f for f in windows if _overlaps(f, a, b)],
        "palette": palette,
        "events": [e for e in events if e["time_ns"] is not None and a <= e["time_ns"] <= b],
        "nodes": node_table(db, run_id, checks),
        "lin": lin_sections(db, run_id, model, checks.get("linearizability") or {}, windows,
                            palette, nonce,
                            {(str(o["process"]), o["start_ns"]): o["end_ns"] for o in ops}),
        "i1": i1_section(db, run_id, cut, nem, windows, events) if cut else None,
        "coverage": store.coverage_of(db, run_id),
        "links": dict(links or {}),
    }
