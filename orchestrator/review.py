"""Reviewing stored runs: `cutover list`, `show`, `check`, `report`, `serve`, `export`.

Everything here reads the results database through `orchestrator.store` and turns rows
into what a person (or another tool) needs; the HTML itself is drawn by the pure
`checker.report`, and the web server lives in `orchestrator.serve`. These commands never
change a run except `check`, which re-runs the checkers and rewrites the stored verdicts
(and only after making sure the run's artifacts are all there, so a half-deleted run
directory cannot turn a stored `invalid` into an `unknown`).

A user mistake (no database, someone else's database, a corrupt file, an unknown run, a
run whose files are gone) is one line on stderr and exit code 3, like the rest of the CLI.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, TextIO

import click

from . import store

DEFAULT_MAX_OPS = 3000  # ops drawn per page of a report's timeline and latency plot
I1_CONTEXT_NS = 3_000_000_000  # the seconds around an I1 violation shown in the report
MAX_LIN_KEYS = 10  # counterexample pages embedded in one report
CHECKER_ORDER = ("linearizability", "cutover", "stats", "availability")


class ReviewError(RuntimeError):
    """A stored run cannot be reviewed as asked; the message is for the user."""


# --------------------------------------------------------------------------- access


@contextmanager
def opened(results: str) -> Iterator[Any]:
    """The results database, closed afterwards; every way it can be unusable becomes
    a `ReviewError` (a corrupt page can surface in any query, not only at open)."""
    try:
        db = store.open_db(results)
    except store.StoreError as e:
        raise ReviewError(str(e)) from None
    try:
        yield db
    except sqlite3.DatabaseError as e:
        raise ReviewError(f"{store.db_path(results)} cannot be read ({e})") from None
    finally:
        db.conn.close()


def find_run(db: Any, ref: str) -> dict[str, Any]:
    try:
        return store.resolve_run(db, ref)
    except store.StoreError as e:
        raise ReviewError(str(e)) from None


def run_dir_of(results: str, row: Mapping[str, Any]) -> str:
    return os.path.join(results, row.get("run_dir") or row["id"])


def config_of(row: Mapping[str, Any]) -> dict[str, Any]:
    try:
        cfg = json.loads(row.get("config") or "{}")
    except ValueError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def stored_checks(db: Any, run_id: str) -> dict[str, dict[str, Any]]:
    """{checker: detail} where detail carries `valid` (the stored JSON is the checker's
    whole result); a row without detail keeps at least its verdict."""
    out = {}
    for name, c in store.checks(db, run_id).items():
        d = c["detail"] if isinstance(c["detail"], dict) else {}
        out[name] = {**d, "valid": c["valid"]}
    return out


def first_violation(checks: Mapping[str, Mapping[str, Any]]) -> tuple[str, str, Any] | None:
    from checker import suite

    return suite.first_violation(checks)


def op_tuples(db: Any, run_id: str) -> list[tuple[Any, ...]]:
    """The history as plain tuples (process, type, f, key, value JSON, time_ns, node,
    error): a report of a 100,000-op run reads 200,000 rows, and dicts plus JSON
    decoding of every value would be most of its time."""
    return db.conn.execute("select process, type, f, key, value, time_ns, node, error "
                           "from ops where run = ? order by idx", [run_id]).fetchall()


def pair_ops(rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """History tuples (see `op_tuples`) as one dict per operation, values still JSON
    text (`decode_values` decodes the few that get drawn); an op with no completion
    stays `info` with `end_ns` None (open to the end)."""
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
    for o in ops:
        for k in ("value", "output"):
            if isinstance(o[k], str):
                try:
                    o[k] = json.loads(o[k])
                except ValueError:
                    pass


def node_events(db: Any, run_id: str, kinds: Iterable[str] | None = None) -> list[dict[str, Any]]:
    q = "select node, seq, time_ns, kind, detail from node_events where run = ?"
    args: list[Any] = [run_id]
    if kinds is not None:
        ks = list(kinds)
        q += f" and kind in ({','.join('?' * len(ks))})"
        args += ks
    out = []
    for r in db.query(q + " order by time_ns, node, seq", args):
        try:
            r["detail"] = json.loads(r["detail"]) if r["detail"] else {}
        except ValueError:
            r["detail"] = {}
        out.append(r)
    return out


# ---------------------------------------------------------------------- node table


def node_table(db: Any, run_id: str, checks: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per node: C, active DEK, applied index, halts, entries above C wrapped or not.

    The checker's reading of the node's files (sidecar) comes first; a run that never
    got checked falls back on what the node's own event log said last.
    """
    cut = checks.get("cutover") or {}
    detail_nodes = cut.get("nodes") or {}
    evs = node_events(db, run_id, ["halt", "encryption-applied", "stop", "progress", "start"])
    last_enc: dict[str, dict[str, Any]] = {}
    last_applied: dict[str, int] = {}
    halts: dict[str, list[dict[str, Any]]] = defaultdict(list)
    names = set(detail_nodes)
    for e in evs:
        n = e["node"]
        names.add(n)
        d = e["detail"]
        if e["kind"] == "halt":
            halts[n].append(d)
        elif e["kind"] == "encryption-applied":
            last_enc[n] = d
        if isinstance(d.get("applied"), int):
            last_applied[n] = d["applied"]
    for r in db.query("select distinct node from log_entries where run = ?", [run_id]):
        names.add(r["node"])
    c_cluster = cut.get("cutover")
    rows = []
    for n in sorted(names):
        side = (detail_nodes.get(n) or {}).get("sidecar") or {}
        c = side.get("cutover", (last_enc.get(n) or {}).get("cutover"))
        active = side.get("active_raft_dek", (last_enc.get(n) or {}).get("active"))
        applied = last_applied.get(n, side.get("raft_applied_index"))
        c_scan = c_cluster or c
        above_w = above_c = None
        if c_scan:
            r = next(iter(db.query(
                "select count(*) n, coalesce(sum(wrapped), 0) w from log_entries "
                "where run = ? and node = ? and idx > ?", [run_id, n, c_scan])), None)
            if r and r["n"]:
                above_w, above_c = r["w"], r["n"] - r["w"]
        h = halts.get(n) or []
        reason = None
        if h:
            last = h[-1]
            reason = (f"{len(h)}x, last at index {last.get('index')}: {last.get('reason')}"
                      if len(h) > 1 else f"at index {last.get('index')}: {last.get('reason')}")
        rows.append({"node": n, "cutover": c, "active": active, "applied": applied,
                     "halted": bool(h), "halt_reason": reason, "above_wrapped": above_w,
                     "above_clear": above_c})
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


def _time_to_position(ops: list[Any]) -> Callable[[int | None], int | None]:
    """Nemesis times as history event positions, for the counterexample's fault bands
    (the visualization's axis is event positions, not nanoseconds)."""
    from bisect import bisect_left

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


def lin_sections(db: Any, run_id: str, model_name: str,
                 lin: Mapping[str, Any], faults: list[dict[str, Any]],
                 timeout: float = 30.0) -> list[dict[str, Any]]:
    """For every key the stored check found not linearizable: its explanation and the
    counterexample page, re-derived from the stored history (pages are not stored:
    the history is, and the check of one key is quick)."""
    from checker.history import HistoryError
    from checker.linearizability import check
    from checker.models import get_model
    from checker.suite import ops_from_rows
    from checker.visualize import render_html

    bad = [k for k in (lin.get("keys") or []) if k.get("verdict") != "valid"]
    if not bad:
        return []
    model = get_model(model_name)
    try:
        ops = ops_from_rows(store.iter_ops(db, run_id), model_name)
    except HistoryError:
        return [{"key": k.get("key"), "verdict": k.get("verdict"),
                 "explanation": k.get("explanation")} for k in bad]
    by_key: dict[Any, list[Any]] = defaultdict(list)
    for o in ops:
        by_key[o.key].append(o)
    pos = _time_to_position(ops)
    annotations = [{"start": pos(f["start_ns"]), "end": pos(f["end_ns"]),
                    "label": f"{f['fault']} {f['targets'] or ''}", "kind": f["fault"]}
                   for f in faults]
    out = []
    for k in bad[:MAX_LIN_KEYS]:
        item = {"key": k.get("key"), "verdict": k.get("verdict"),
                "explanation": k.get("explanation")}
        if k.get("verdict") == "invalid" and by_key.get(k.get("key")):
            res = check(model, by_key[k["key"]], timeout=timeout, workers=1)
            item["html"] = render_html(model, res, title=f"key {k['key']}",
                                       annotations=annotations)
        out.append(item)
    return out


def i1_section(db: Any, run_id: str, cut: Mapping[str, Any],
               nem: list[dict[str, Any]], windows: list[dict[str, Any]],
               events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The offending entries of an I1 violation and what happened around them."""
    from node.payload import OPCODE_NAMES

    inv = (cut.get("invariants") or {}).get("I1") or {}
    if inv.get("valid", True):
        return None
    violations = list(inv.get("violations") or [])[:50]
    c = cut.get("cutover") or 0
    stored = {(r["node"], r["idx"], r["term"]): r["wrapped"] for r in db.query(
        "select node, idx, term, wrapped from log_entries where run = ? and idx > ?",
        [run_id, c])}
    for v in violations:
        w = stored.get((v.get("node"), v.get("index"), v.get("term")))
        v["stored"] = "?" if w is None else "wrapped" if w else "cleartext"
        v["wrapped"] = bool(w)
    first = inv.get("first_violation") or (violations[0] if violations else {})
    entries = []
    if first.get("node") is not None and isinstance(first.get("index"), int):
        lo = min(c, first["index"]) - 2
        hi = max(first["index"] + 6, c + 3)
        for r in db.query("select node, idx, term, opcode, wrapped, key_id from log_entries "
                          "where run = ? and node = ? and idx between ? and ? "
                          "order by idx, term limit 60", [run_id, first["node"], lo, hi]):
            r["opcode_name"] = OPCODE_NAMES.get(r["opcode"]) if r["opcode"] is not None else None
            entries.append(r)
    # When: what the checker stored (checker.suite.entry_time, the one rule), so this
    # section, `show` and the header agree; a run checked before there was a time for
    # it falls back on the cutover time.
    t = cut.get("first_violation_ns") if cut.get("failing") == "I1" else None
    if not isinstance(t, int):
        t = cut.get("cutover_time_ns")
    out: dict[str, Any] = {"cutover": c, "violations": violations, "entries": entries,
                           "count": inv.get("violation_count", len(violations)), "t_ns": t}
    if t is not None:
        a, b = max(0, t - I1_CONTEXT_NS), t + I1_CONTEXT_NS
        out["window_ns"] = [a, b]
        out["faults"] = [r for r in nem if r["time_ns"] is not None and a <= r["time_ns"] <= b]
        out["band_faults"] = [f for f in windows if _overlaps(f, a, b)]
        out["events"] = [e for e in events if e["time_ns"] is not None
                         and a <= e["time_ns"] <= b and e["kind"] != "progress"][:200]
    return out


def report_data(db: Any, row: Mapping[str, Any], *, from_s: float | None = None,
                to_s: float | None = None, max_ops: int = DEFAULT_MAX_OPS,
                page_ref: Callable[[int, int], dict[str, str]] | None = None,
                links: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Everything `checker.report.render_report` draws, read from the database.

    The history is windowed: ops whose invoke falls in [from, to] (seconds into the run,
    default the whole run), at most `max_ops` of them drawn; when there are more, the
    page shows the first `max_ops` and `page_ref(from_ns, to_ns)` says how to get each
    other page (`{"href": ...}` when served, `{"command": ...}` for a file).
    """
    from workloads import MODEL_OF

    run_id = row["id"]
    cfg = config_of(row)
    checks = stored_checks(db, run_id)
    ops = pair_ops(op_tuples(db, run_id))
    nem = store.nemesis_rows(db, run_id)
    windows = _fault_dicts(store.fault_windows(nem))
    events = node_events(db, run_id)
    times = [o["start_ns"] for o in ops] + [o["end_ns"] for o in ops if o["end_ns"]]
    times += [r["time_ns"] for r in nem if r["time_ns"] is not None]
    end_ns = max(times, default=1_000_000_000)
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
    return {
        "run": dict(row), "config": cfg, "checks": checks,
        "first": first_violation(checks) if checks else None,
        "window": {"from_ns": a, "to_ns": b, "total_ops": len(sel), "shown_ops": len(drawn),
                   "pages": page_list},
        "ops": drawn, "completions": comps,
        "faults": [f for f in windows if _overlaps(f, a, b)],
        "events": [e for e in events if e["time_ns"] is not None and a <= e["time_ns"] <= b],
        "nodes": node_table(db, run_id, checks),
        "lin": lin_sections(db, run_id, model, checks.get("linearizability") or {},
                            windows, timeout=float(cfg.get("lin_timeout") or 60.0)),
        "i1": i1_section(db, run_id, cut, nem, windows, events) if cut else None,
        "links": dict(links or {}),
    }


def render_run_report(db: Any, row: Mapping[str, Any], **kw: Any) -> str:
    from checker.report import render_report

    return render_report(report_data(db, row, **kw))


# -------------------------------------------------------------------------- export


def _process(p: str) -> int | str:
    """Worker processes are integers in Jepsen's histories; ours are stored as text."""
    return int(p) if p.lstrip("-").isdigit() else p


def history_events(db: Any, run_id: str, *, nemesis: bool = True) -> Iterator[dict[str, Any]]:
    """The stored history in Jepsen's shape, nemesis entries merged in by time (Jepsen
    puts them in the same history as process `nemesis`; checkers skip them)."""
    nem = store.nemesis_rows(db, run_id) if nemesis else []
    k = 0
    index = 0
    for r in store.iter_ops(db, run_id):
        while k < len(nem) and nem[k]["time_ns"] <= r["time_ns"]:
            yield _nem_event(nem[k], index)
            index += 1
            k += 1
        ev = {"index": index, "time": r["time_ns"], "process": _process(r["process"]),
              "type": r["type"], "f": r["f"], "key": r["key"], "value": r["value"]}
        if r.get("node"):
            ev["node"] = r["node"]
        if r.get("error"):
            ev["error"] = r["error"]
        index += 1
        yield ev
    for n in nem[k:]:
        yield _nem_event(n, index)
        index += 1


def _nem_event(r: Mapping[str, Any], index: int) -> dict[str, Any]:
    f = r["fault"] if r["f"] == "event" else f"{r['f']}-{r['fault']}"
    ev = {"index": index, "time": r["time_ns"], "process": "nemesis", "type": "info", "f": f,
          "value": r["targets"]}
    if r.get("detail") is not None:
        ev["detail"] = r["detail"]
    return ev


_KEYWORD_FIELDS = ("type", "f")
_KEYWORD = re.compile(r"^[A-Za-z*+!_?<>=][\w*+!?<>=.\-]*$")


def edn(v: Any) -> str:
    """A value as EDN (the subset Jepsen histories use)."""
    if v is None:
        return "nil"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + " ".join(edn(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_edn_key(k)} {edn(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v))


def _edn_key(k: Any) -> str:
    """Map keys as keywords when they can be one (`:key_id`), else as values."""
    return f":{k}" if isinstance(k, str) and _KEYWORD.match(k) else edn(k)


def edn_event(ev: Mapping[str, Any]) -> str:
    """One op map; `:type` and `:f` are keywords, the process `:nemesis` too, and a kv
    op's key goes in `:key` (our `lin --model kv` and Jepsen's newer histories) while
    `:value` stays the op's own value."""
    parts = []
    for k, v in ev.items():
        if (k in _KEYWORD_FIELDS or (k == "process" and v == "nemesis")) \
                and _KEYWORD.match(str(v)):
            parts.append(f":{k} :{v}")
        else:
            parts.append(f":{k} {edn(v)}")
    return "{" + ", ".join(parts) + "}"


def export_history(db: Any, row: Mapping[str, Any], fmt: str, out: TextIO) -> int:
    """Write the run's history as `jepsen-edn` or `jsonl`; returns the events written."""
    n = 0
    if fmt == "jepsen-edn":
        out.write(f"; cutover run {row['id']} (seed {row.get('seed')}): one op map per line.\n"
                  f"; check it with: cutover lin FILE --format jepsen-edn --model kv\n")
    for ev in history_events(db, row["id"]):
        if fmt == "jsonl":
            out.write(json.dumps(ev, separators=(",", ":"), ensure_ascii=False, default=str))
        else:
            out.write(edn_event(ev))
        out.write("\n")
        n += 1
    return n


# ---------------------------------------------------------------------- commands


def _fail(e: Exception) -> None:
    from .cli import fail

    fail(str(e))


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise ReviewError(f"cannot write {path}: {e.strerror}") from None


results_option = click.option("--results", default="results", show_default=True,
                              help="The results directory (holds cutover.db).")


def _fmt_duration(s: Any) -> str:
    return "-" if s is None else f"{float(s):.1f}s"


def _started(s: Any) -> str:
    return "-" if not s else str(s).replace("T", " ")[:19]


def list_lines(db: Any) -> list[str]:
    head = ("RUN", "STARTED", "DURATION", "WORKLOAD", "NEMESES", "BUGS", "SEED", "VERDICT")
    rows = [(r["id"], _started(r.get("started")), _fmt_duration(r.get("duration_s")),
             r.get("workload") or "-", r.get("nemesis") or "-", r.get("bugs") or "-",
             str(r.get("seed") if r.get("seed") is not None else "-"),
             r.get("verdict") or r.get("status") or "-") for r in store.runs(db)]
    widths = [max(len(h), *(len(x[i]) for x in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    return [fmt.format(*head)] + [fmt.format(*r) for r in rows]


def show_lines(db: Any, row: Mapping[str, Any]) -> list[str]:
    from checker.report import check_line

    cfg = config_of(row)
    checks = stored_checks(db, row["id"])
    out = [f"run {row['id']}  ({row.get('status') or '?'}, "
           f"{_fmt_duration(row.get('duration_s'))}, started {_started(row.get('started'))})"]
    keys = ("nodes", "workload", "keys", "nemesis", "bugs", "seed", "time_limit", "rate",
            "concurrency", "cutover_at")
    out.append("config: " + " ".join(
        f"{k}={','.join(map(str, cfg[k])) if isinstance(cfg.get(k), list) else cfg.get(k)}"
        for k in keys if k in cfg and cfg[k] not in (None, [], "")))
    verdict = row.get("verdict") or row.get("status") or "-"
    code = row.get("exit_code")
    out.append(f"verdict: {verdict.upper()}" + (f" (exit {code})" if code is not None else ""))
    for name in [n for n in CHECKER_ORDER if n in checks] + sorted(set(checks) - set(CHECKER_ORDER)):
        out.append(f"  {name:<16} {checks[name].get('valid', '?'):<8} "
                   f"{check_line(name, checks[name])}")
    if not checks:
        out.append("  (no stored verdicts: the run did not finish; `cutover check` computes "
                   "them)")
    first = first_violation(checks) if checks else None
    if first:
        name, sentence, t = first
        when = f" at {t / 1e9:.1f}s" if isinstance(t, int | float) else ""
        out.append(f"first violation: {name}{when}: {sentence}")
    elif row.get("summary"):
        out.append(f"summary: {row['summary']}")
    nodes = node_table(db, row["id"], checks)
    if nodes:
        out.append("")
        head = ("NODE", "C", "DEK", "APPLIED", "ABOVE-C WRAPPED", "CLEARTEXT", "HALTED")
        rows = [(n["node"], _d(n["cutover"]), _d(n["active"]), _d(n["applied"]),
                 _d(n["above_wrapped"]), _d(n["above_clear"]),
                 ("yes, " + str(n["halt_reason"])) if n["halted"] else "no") for n in nodes]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
        out += [fmt.format(*head)] + [fmt.format(*r) for r in rows]
    return out


def _d(v: Any) -> str:
    return "-" if v is None else str(v)


def check_artifacts(results: str, row: Mapping[str, Any]) -> str:
    """The run dir, after making sure everything a re-check reads is there: a missing
    piece would turn a stored verdict into `unknown`, which is a loss, not a check."""
    from .run import node_dirs

    rd = run_dir_of(results, row)
    if not os.path.isdir(rd):
        raise ReviewError(f"run {row['id']}: its directory {rd} is missing; cannot re-check")
    if not node_dirs(rd):
        raise ReviewError(f"run {row['id']}: no node data dirs under "
                          f"{os.path.join(rd, 'nodes')}; cannot re-check")
    if not os.path.isfile(os.path.join(rd, "kek")):
        raise ReviewError(f"run {row['id']}: its KEK file is missing from {rd}; "
                          f"cannot re-check")
    return rd


def recheck(results: str, ref: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]], str,
                                               int, str]:
    """Re-run every checker on a stored run and store the outcome (checks + runs row).

    Returns (run row, results per checker, verdict, exit code, summary).
    """
    from checker import suite

    from .run import run_checkers, verdict_line

    with opened(results) as db:
        row = find_run(db, ref)
    rd = check_artifacts(results, row)
    cfg = config_of(row)
    try:
        rec = store.Recorder(results, row["id"], int(row.get("t0_ns") or 0))
    except store.StoreError as e:
        raise ReviewError(str(e)) from None
    from node.keystore import KeystoreError

    try:
        with opened(results) as db:
            try:
                res = run_checkers(db, row["id"], rd, rec)
            except KeystoreError as e:
                # raised before anything is stored: the stored verdicts stay as they were
                raise ReviewError(f"run {row['id']}: its KEK file cannot be used: {e}") from None
        verdict = suite.worst(r["valid"] for r in res.values())
        code = suite.EXIT_CODES[verdict]
        summary = verdict_line(verdict, suite.first_violation(res),
                               SimpleNamespace(seed=row.get("seed"),  # type: ignore[arg-type]
                                               bugs=cfg.get("bugs") or []))
        rec.run_row(verdict=verdict, exit_code=code, summary=summary)
        rec.flush()
    except store.StoreError as e:
        raise ReviewError(str(e)) from None
    finally:
        rec.close()
    return row, res, verdict, code, summary


def register(main: click.Group) -> None:
    """Add the review commands to the `cutover` group."""
    for cmd in (list_cmd, show, check, report, serve, export):
        main.add_command(cmd)


@click.command("list")
@results_option
def list_cmd(results: str) -> None:
    """Stored runs, newest first, with their verdicts (first column: the run id)."""
    _echo(results, list_lines)


def _echo(results: str, lines_of: Callable[[Any], list[str]]) -> None:
    """Read everything first, then print: a bad database prints one error line only."""
    try:
        with opened(results) as db:
            lines = lines_of(db)
    except ReviewError as e:
        _fail(e)
    for ln in lines:
        click.echo(ln)


@click.command()
@click.argument("run")
@results_option
def show(run: str, results: str) -> None:
    """Config, verdict per checker, the first violation and the per-node cutover table."""
    _echo(results, lambda db: show_lines(db, find_run(db, run)))


@click.command()
@click.argument("run")
@results_option
def check(run: str, results: str) -> None:
    """Re-run every checker on a stored run from its artifacts; store the new verdicts.

    Exit code like `run`: 0 valid, 1 invalid, 2 unknown.
    """
    try:
        row, res, verdict, code, summary = recheck(results, run)
    except ReviewError as e:
        _fail(e)
    from checker.report import check_line

    for name in [n for n in CHECKER_ORDER if n in res] + sorted(set(res) - set(CHECKER_ORDER)):
        click.echo(f"{name:<16} {res[name]['valid']:<8} {check_line(name, res[name])}")
    click.echo(summary)
    sys.exit(code)


@click.command()
@click.argument("run")
@results_option
@click.option("-o", "--output", "output", help="Where to write (default "
              "RESULTS/<run-id>/report.html).")
@click.option("--from", "from_s", type=float, help="Window start, seconds into the run.")
@click.option("--to", "to_s", type=float, help="Window end, seconds into the run.")
@click.option("--max-ops", type=click.IntRange(min=1), default=DEFAULT_MAX_OPS,
              show_default=True, help="Ops drawn per page; longer windows are paged.")
def report(run: str, results: str, output: str | None, from_s: float | None,
           to_s: float | None, max_ops: int) -> None:
    """One self-contained HTML report of a stored run (opens offline, fetches nothing)."""
    try:
        with opened(results) as db:
            row = find_run(db, run)

            def page_ref(a: int, b: int) -> dict[str, str]:
                return {"command": f"cutover report {row['id']} --from {a / 1e9:.9f} "
                                   f"--to {b / 1e9:.9f}"
                                   + (f" --max-ops {max_ops}" if max_ops != DEFAULT_MAX_OPS
                                      else "")}

            text = render_run_report(db, row, from_s=from_s, to_s=to_s, max_ops=max_ops,
                                     page_ref=page_ref)
        if output is None:
            rd = run_dir_of(results, row)
            if not os.path.isdir(rd):
                raise ReviewError(f"run {row['id']}: its directory {rd} is missing; "
                                  f"pass -o FILE")
            output = os.path.join(rd, "report.html")
        _atomic_write(output, text)
    except ReviewError as e:
        _fail(e)
    click.echo(output)


@click.command()
@results_option
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (the default keeps it on this machine).")
def serve(results: str, port: int, host: str) -> None:
    """Browse the stored runs: index, reports, the run files (never the KEK), zips."""
    from .serve import make_server

    try:
        with opened(results):
            pass
        httpd = make_server(results, host, port, verbose=True)
    except ReviewError as e:
        _fail(e)
    except OSError as e:
        _fail(ReviewError(f"cannot listen on {host}:{port}: {e.strerror}"))
    h, p = httpd.server_address[:2]
    click.echo(f"serving {results} at http://{h}:{p}/ (Ctrl-C to stop)")
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


@click.command()
@click.argument("run")
@results_option
@click.option("--format", "fmt", required=True, type=click.Choice(["jepsen-edn", "jsonl"]))
@click.option("-o", "--output", "output", help="Write here instead of stdout.")
def export(run: str, results: str, fmt: str, output: str | None) -> None:
    """The stored history for Jepsen's tools or `cutover lin` (use `--model kv`)."""
    import io

    try:
        with opened(results) as db:
            row = find_run(db, run)
            if output is None:
                try:
                    export_history(db, row, fmt, sys.stdout)
                    sys.stdout.flush()
                except BrokenPipeError:
                    # `| head`: the reader has what it wanted; not a verdict (exit 1 would
                    # read as "invalid")
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return
            buf = io.StringIO()
            export_history(db, row, fmt, buf)
        _atomic_write(output, buf.getvalue())
    except ReviewError as e:
        _fail(e)
