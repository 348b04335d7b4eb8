"""A stored run as one self-contained HTML page: what `cutover report` writes and what
`cutover serve` shows at `/run/<id>/`.

`render_report(data)` takes the plain dicts of `orchestrator.ui.data.report_data` and
returns the page (`templates/report.html`); it opens no file and no socket, so the page
is the same whether it is written to disk or served, and a test can feed it a hand-made
run. Why the page looks the way it does:

* The verdicts and the first violation, in one sentence, come first: that is what a
  person opening a report after a red CI run wants to read.
* The plots are inline SVG (`orchestrator.ui.plots`): no charting library, no fonts or
  scripts fetched; the file must open the same way years later, offline. Tooltips are
  SVG `<title>` elements, and a Content-Security-Policy makes the browser refuse any
  fetch, which keeps that promise honest.
* Faults are drawn as bands behind every plot, because "what was the nemesis doing at
  that moment" is the first question for any anomaly; a fault has one color on the
  whole page, the counterexample's bands included.
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
``faults``     [{start_ns, end_ns or None, fault, targets}]
``palette``    {fault: color} already handed out (the counterexample's bands use it)
``events``     [{node, time_ns, kind, detail}] node events (any kinds; the ones that
               matter for the cutover are drawn)
``nodes``      [{node, cutover, active, applied, halted, halt_reason, above_wrapped,
               above_clear, above_noop}]
``lin``        [{key, verdict, explanation, html, stored}] per non-valid key
``i1``         {cutover, violations, entries, t_ns, window_ns, faults, events} or None
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
            ("duration", f"{run['duration_s']:.1f} s" if run.get("duration_s") else "-"),
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


def _plots(data: Mapping[str, Any], palette: dict[str, str]) -> dict[str, Markup]:
    w = data.get("window") or {}
    ops = data.get("ops") or []
    t0 = int(w.get("from_ns") or 0)
    t1 = int(w.get("to_ns") or max([o.get("end_ns") or o["start_ns"] for o in ops] or [1]))
    faults = data.get("faults") or []
    events = data.get("events") or []
    return {"timeline": Markup(timeline_svg(ops, events, faults, t0, t1, palette)),
            "latency": Markup(latency_svg(ops, faults, t0, t1, palette)),
            "throughput": Markup(throughput_svg(data.get("completions") or [], faults, t0, t1,
                                                palette))}


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
    for it in items:
        v = verdict_class(str(it.get("verdict")))
        out.append({"key": it.get("key"), "verdict": v, "explanation": it.get("explanation"),
                    "html": it.get("html"),
                    "missing": v == "invalid" and not it.get("html")
                    and it.get("stored") is False})
    return {"sections": out, "note": note}


def _i1(i1: Mapping[str, Any] | None, palette: dict[str, str]) -> dict[str, Any] | None:
    if not i1:
        return None
    c = i1.get("cutover") or 0
    out: dict[str, Any] = {
        "cutover": i1.get("cutover"),
        "count": i1.get("count", len(i1.get("violations") or [])),
        "violations": [(v.get("node"), v.get("index"), v.get("term"),
                        v.get("opcode_name") or v.get("opcode"),
                        "cleartext" if not v.get("wrapped") else "wrapped", v.get("half", ""),
                        v.get("reason", "")) for v in i1.get("violations") or []],
        "entries": [(e.get("node"), e.get("idx"), e.get("term"), e.get("opcode_name") or "-",
                     "wrapped" if e.get("wrapped") else "cleartext", _dash(e.get("key_id")),
                     "above C" if e.get("idx", 0) > c else "")
                    for e in i1.get("entries") or []],
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
                                              palette, plot_id="i1-timeline"))
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
