"""A stored run as one self-contained HTML page: what `cutover report` writes and what
`cutover serve` shows at `/run/<id>/`.

`render_report(data)` takes the plain dicts of `orchestrator.ui.data.report_data` and
returns the page (`templates/report.html`); it opens no file and no socket, so the page
is the same whether it is written to disk or served, and a test can feed it a hand-made
run. Why the page looks the way it does:

* The verdicts and the first violation, in one sentence, come first: that is what a
  person opening a report after a red CI run wants to read. Right below it comes the
  evidence (the counterexample, or the offending log entries), linked from that box:
  a reviewer had to scroll 3,000 px to find which operations failed.
* The plots are inline SVG (`orchestrator.ui.plots`): no charting library, no fonts or
  scripts fetched; the file must open the same way years later, offline. Tooltips are
  SVG `<title>` elements, and a Content-Security-Policy makes the browser refuse any
  fetch, which keeps that promise honest.
* Faults are drawn because "what was the nemesis doing at that moment" is the first
  question for any anomaly: on the timeline one lane per fault family
  (`orchestrator.ui.lanes`: twenty overlapping bands were unreadable), behind the
  latency and throughput plots as bands; a family has one color on the whole page, the
  counterexample's bands included. A "first violation" line crosses every plot.
* A long history is drawn one window at a time (`data["window"]`): the timeline of
  100,000 ops is a picture no browser draws usefully. The caller chooses the window and
  passes links (served pages) or commands (a file on disk) to the other pages.
* The linearizability counterexample is `checker.visualize`'s own page, embedded in an
  iframe `srcdoc`: one renderer for `cutover lin --html` and for reports.

Input (`data`), every key optional unless said:

``run``        the runs row (id, started, duration_s, seed, workload, nemesis, bugs,
               status, verdict, exit_code, summary) -- required
``config``     the run's config dict
``checks``     {checker: detail dict with ``valid``}
``first``      [checker, sentence, ns into the run] or None
``window``     {from_ns, to_ns, total_ops, shown_ops, pages: [{from_ns, to_ns, href or
               command, current}]}
``ops``        [{process, f, key, type, start_ns, end_ns or None, value, output, node,
               error}] the completed (or open) ops of the window
``completions`` [[time_ns, type]] every completion in the window, for the throughput
``faults``     [{start_ns, end_ns or None, fault, targets, detail}]
``palette``    {fault family: color} already handed out (the counterexample's bands use it)
``events``     [{node, time_ns, kind, detail}] node events (any kinds; the ones that
               matter for the cutover are drawn)
``nodes``      [{node, cutover, active, applied, halted, halt_reason, above_wrapped,
               above_clear, above_noop}]
``lin``        [{key, verdict, reason, explanation, html, stored}] per non-valid key
``i1``         {name (I1, I2 or I4), title, first, cutover, violations, entries, t_ns,
               window_ns, faults, events} or None
``links``      {label: href} shown under the title (served pages)
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from markupsafe import Markup

from checker.coverage import POINTS, summary_line
from orchestrator import store
from orchestrator.errors import ReviewError
from orchestrator.ui import DEFAULT_MAX_OPS
from orchestrator.ui.data import report_data
from orchestrator.ui.plots import (
    EVENT_STYLE,
    describe_event,
    event_category,
    latency_svg,
    throughput_svg,
    timeline_svg,
)
from orchestrator.ui.render import page, verdict_class
from orchestrator.ui.runlist import duration_text
from orchestrator.ui.svg import OUTCOME_COLORS, fault_color, glyph, secs, targets_text
from orchestrator.ui.text import check_line, checker_names


def render_report(data: Mapping[str, Any]) -> str:
    """The whole report page (see the module docstring for `data`)."""
    palette: dict[str, str] = dict(data.get("palette") or {})
    for f in data.get("faults") or []:
        fault_color(str(f.get("fault")), palette)
    run = data["run"]
    verdict = verdict_class(run.get("verdict"), run.get("status"))
    checks = data.get("checks") or {}
    return page("report.html", nonce=data.get("nonce"),
                title=f"cutover run {run.get('id')}: {verdict}",
                run=run, verdict=verdict, links=data.get("links") or {},
                first=_first(data.get("first")),
                facts=_facts(run, data.get("config") or {}),
                config_json=json.dumps(data.get("config") or {}, indent=2, sort_keys=True,
                                       default=str),
                checks=[{"name": n, "verdict": verdict_class(str(checks[n].get("valid",
                                                                                  "unknown"))),
                         "line": check_line(n, checks[n])} for n in checker_names(checks)],
                invariants=_invariants(checks), stats=_stats(checks),
                nodes=_nodes(data.get("nodes") or []),
                window=_window(data.get("window") or {}),
                legend=_legend(palette, data.get("events") or []),
                plots=_plots(data, palette),
                lin=_lin(checks, data.get("lin") or []),
                i1=_i1(data.get("i1"), palette),
                coverage=_coverage(data.get("coverage") or {}))


def _coverage(cov: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Which protocol states the run reached (checker/coverage.py), and which not."""
    return {"line": summary_line(cov),
            "rows": [[p, str(cov[p]["count"]), secs(cov[p].get("first_ns")), POINTS[p]]
                     for p in POINTS if p in cov],
            "missed": [p for p in POINTS if p not in cov]}


def _first(first: Sequence[Any] | None) -> dict[str, Any] | None:
    if not first:
        return None
    name, sentence, t = (list(first) + [None, None, None])[:3]
    return {"name": name, "sentence": sentence,
            "when": f" at {secs(t)} s" if isinstance(t, int | float) else ""}


def _facts(run: Mapping[str, Any], cfg: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [("seed", run.get("seed")), ("started", run.get("started")),
            ("duration", duration_text(run) or "-"),
            ("status", run.get("status")), ("exit code", run.get("exit_code")),
            ("workload", f"{run.get('workload')} ({cfg.get('keys', '?')} keys)"),
            ("nodes", cfg.get("nodes")), ("nemesis", run.get("nemesis")),
            ("bugs", run.get("bugs") or "none"), ("cutover at", cfg.get("cutover_at")),
            ("time limit", cfg.get("time_limit")), ("rate", cfg.get("rate")),
            ("concurrency", cfg.get("concurrency"))]


def _invariants(checks: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    inv = (checks.get("cutover") or {}).get("invariants") or {}
    rows = []
    for k, r in inv.items():
        fv = r.get("first_violation") or {}
        rows.append((k, r.get("title", ""), "valid" if r.get("valid") else "invalid",
                     r.get("violation_count", 0), fv.get("reason", "")))
    return rows


def _stats(checks: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    st = (checks.get("stats") or {}).get("by_f") or {}
    return [(f, c.get("ok", 0), c.get("fail", 0), c.get("info", 0)) for f, c in st.items()]


def _dash(v: Any) -> Any:
    return "-" if v is None else v


def _nodes(nodes: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    return [(n.get("node"), _dash(n.get("cutover")), _dash(n.get("active")),
             _dash(n.get("applied")),
             ("yes: " + str(n.get("halt_reason") or "")) if n.get("halted") else "no",
             _dash(n.get("above_wrapped")), _dash(n.get("above_clear")),
             _dash(n.get("above_noop"))) for n in nodes]


def _window(w: Mapping[str, Any]) -> dict[str, Any]:
    return {"from_ns": w.get("from_ns"), "to_ns": w.get("to_ns"),
            "shown": w.get("shown_ops", 0), "total": w.get("total_ops", 0),
            "pages": w.get("pages") or []}


def _legend(palette: Mapping[str, str],
            events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = [{"label": k, "color": c} for k, c in OUTCOME_COLORS.items()]
    cats = {event_category(str(e.get("kind")), e.get("detail")) for e in events} - {None}
    for cat, (color, shape) in EVENT_STYLE.items():
        if cat in cats:
            items.append({"label": cat, "glyph": Markup(
                f'<svg width="14" height="14">{glyph(shape, 7, 7, color)}/></svg>')})
    items += [{"label": name, "color": color, "band": True} for name, color in palette.items()]
    return items


def _violation_ns(first: Sequence[Any] | None) -> int | None:
    """When the first violation happened (ns into the run), as the checker stored it."""
    t = (list(first or []) + [None, None, None])[2]
    return int(t) if isinstance(t, int | float) and not isinstance(t, bool) else None


def _plots(data: Mapping[str, Any], palette: dict[str, str]) -> dict[str, Markup]:
    w = data.get("window") or {}
    ops = data.get("ops") or []
    t0 = int(w.get("from_ns") or 0)
    t1 = int(w.get("to_ns") or max([o.get("end_ns") or o["start_ns"] for o in ops] or [1]))
    faults = data.get("faults") or []
    events = data.get("events") or []
    conc = (data.get("config") or {}).get("concurrency")
    vt = _violation_ns(data.get("first"))
    return {"timeline": Markup(timeline_svg(ops, events, faults, t0, t1, palette,
                                            concurrency=conc if isinstance(conc, int) else None,
                                            violation_ns=vt)),
            "latency": Markup(latency_svg(ops, faults, t0, t1, palette, violation_ns=vt)),
            "throughput": Markup(throughput_svg(data.get("completions") or [], faults, t0, t1,
                                                palette, violation_ns=vt))}


UNCHECKED = "not finished"  # a key the checker left once another key was invalid


def _lin(checks: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    lin = checks.get("linearizability") or {}
    note = ""
    if not items:
        if lin.get("valid") == "valid":
            note = (f"Every key is linearizable ({lin.get('ops', 0)} ops, "
                    f"{len(lin.get('keys') or [])} keys).")
        elif lin:
            note = str(lin.get("error") or lin.get("first_violation") or lin.get("valid"))
        else:
            note = "Not checked."
    out = []
    unchecked: dict[str, list[str]] = {}
    for it in items:
        v = verdict_class(str(it.get("verdict")))
        reason = str(it.get("reason") or "")
        if v == "unknown" and reason.startswith(UNCHECKED):
            unchecked.setdefault(reason, []).append(str(it.get("key")))
            continue
        out.append({"key": it.get("key"), "verdict": v, "explanation": it.get("explanation"),
                    "html": it.get("html"),
                    "missing": v == "invalid" and not it.get("html")
                    and it.get("stored") is False})
    lines = [f"{len(keys)} other key{'s' if len(keys) > 1 else ''} not checked "
             f"({', '.join(keys)}): {reason.removeprefix(UNCHECKED).strip(' :')}. "
             "The check stops at the first key that is not linearizable; these were "
             "neither passed nor failed." for reason, keys in unchecked.items()]
    for sec in out:  # the first drawn counterexample: the violation box links to it
        if sec["html"]:
            sec["first"] = True
            break
    return {"sections": out, "note": note, "unchecked": lines}


def entry_role(e: Mapping[str, Any], c: int, offending: tuple[Any, Any]) -> str:
    """What a log entry is to the violation: the marker's own entry at the cutover index
    C (labelled so, since every entry above it must be wrapped and it is the line the
    reader compares against), the first offending entry, or one above C."""
    idx = e.get("idx")
    if (e.get("node"), idx) == offending:
        return "offending" + (" (above C)" if isinstance(idx, int) and idx > c else "")
    if idx == c:
        return "marker (C)"
    return "above C" if isinstance(idx, int) and idx > c else ""


def entry_rows(entries: Sequence[Mapping[str, Any]], c: int,
                at: tuple[Any, Any]) -> list[tuple[Any, ...]]:
    """The log around C and around the first offending entry, each a few entries wide,
    with one "..." row for what lies between: C and the offending entry can be a hundred
    entries apart, and the rows between them say nothing."""
    idx = at[1] if isinstance(at[1], int) else c
    keep = [e for e in entries if isinstance(e.get("idx"), int)
            and (c - 2 <= e["idx"] <= c + 3 or idx - 3 <= e["idx"] <= idx + 6)]
    rows: list[tuple[Any, ...]] = []
    for k, e in enumerate(keep):
        if k and e["idx"] > keep[k - 1]["idx"] + 1:
            rows.append(("...", f"{e['idx'] - keep[k - 1]['idx'] - 1} entries", "", "", "",
                         "", ""))
        # an entry whose payload has no opcode is a new leader's no-op: not cleartext
        stored = ("wrapped" if e.get("wrapped") else
                  "no-op" if e.get("opcode") is None and not e.get("opcode_name") else
                  "cleartext")
        rows.append((e.get("node"), e.get("idx"), e.get("term"), e.get("opcode_name") or "-",
                     stored, _dash(e.get("key_id")), entry_role(e, c, at)))
    return rows


def _i1(i1: Mapping[str, Any] | None, palette: dict[str, str]) -> dict[str, Any] | None:
    if not i1:
        return None
    c = i1.get("cutover") or 0
    first = i1.get("first") or {}
    at = (first.get("node"), first.get("index"))
    out: dict[str, Any] = {
        "name": i1.get("name", "I1"), "title": i1.get("title") or "",
        "cutover": i1.get("cutover"),
        "count": i1.get("count", len(i1.get("violations") or [])),
        "violations": [(v.get("node"), v.get("index"), v.get("term"),
                        v.get("opcode_name") or v.get("opcode"),
                        "cleartext" if not v.get("wrapped") else "wrapped", v.get("half", ""),
                        v.get("reason", "")) for v in i1.get("violations") or []],
        "entries": entry_rows(i1.get("entries") or [], c, at),
        "t_ns": i1.get("t_ns"), "window": None,
    }
    win = i1.get("window_ns")
    if win:
        a, b = win
        rows = []
        for f in i1.get("faults") or []:
            rows.append((secs(f.get("time_ns")), "nemesis",
                         f"{f.get('fault')} {f.get('f', '')} on {targets_text(f.get('targets'))}"))
        for ev in i1.get("events") or []:
            rows.append((secs(ev.get("time_ns")), f"node {ev.get('node')}", describe_event(ev)))
        rows.sort(key=lambda r: float(r[0]) if r[0] != "-" else 0.0)
        out["window"] = (a, b)
        out["context"] = rows
        out["timeline"] = Markup(timeline_svg([], i1.get("events") or [],
                                              i1.get("band_faults") or [], int(a), int(b),
                                              palette, plot_id="i1-timeline",
                                              violation_ns=i1.get("t_ns")))
    return out



def write_report(results: str, run_id: str) -> str:
    """Write `RESULTS/<run>/report.html` (what `cutover report RUN` writes, the whole run
    paged as it pages it) and return its path: `cutover hunt` prints the reports of its
    findings' runs. StoreError or ReviewError (one line) when it cannot."""
    with store.opened(results) as db:
        row = store.resolve_run(db, run_id)

        def page_ref(a: int, b: int) -> dict[str, str]:
            return {"command": f"cutover report {row['id']} --from {a / 1e9:.9f} "
                               f"--to {b / 1e9:.9f}"}

        text = render_report(report_data(db, row, max_ops=DEFAULT_MAX_OPS, page_ref=page_ref))
    rd = store.run_dir_of(results, row)
    if not os.path.isdir(rd):
        raise ReviewError(f"run {row['id']}: its directory {rd} is missing")
    out = os.path.join(rd, "report.html")
    tmp = f"{out}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, out)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise ReviewError(f"cannot write {out}: {e.strerror}") from None
    return out
