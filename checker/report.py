"""A stored run as one self-contained HTML page: what `cutover report` writes and what
`cutover serve` shows.

Pure rendering: `render_report(data)` takes plain dicts (the orchestrator reads the
database and builds them, see `orchestrator.review.report_data`) and returns a string.
Nothing here opens a file or a socket, so the page is the same whether it is written to
disk or served, and a test can feed it a hand-made run.

Why the page looks the way it does:

* The verdicts and the first violation, in one sentence, come first: that is what a
  person opening a report after a red CI run wants to read.
* The plots are inline SVG drawn here (no matplotlib, no JS charting library, no fonts
  or scripts fetched): the file must open the same way years later, offline. Tooltips
  are SVG `<title>` elements, so the page needs no script at all; a Content-Security-
  Policy meta tag makes the browser refuse any fetch, which keeps that promise honest.
* Faults are drawn as bands behind every plot, because "what was the nemesis doing at
  that moment" is the first question for any anomaly.
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
``events``     [{node, time_ns, kind, detail}] node events (any kinds; the ones that
               matter for the cutover are drawn)
``nodes``      [{node, cutover, active, applied, halted, halt_reason, above_wrapped,
               above_clear}]
``lin``        [{key, verdict, explanation, html}] per non-valid key
``i1``         {cutover, violations, entries, t_ns, window_ns, faults, events} or None
``links``      {label: href} shown under the title (served pages)
"""
from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from node.events import EventKind

# Geometry of the plots (px, in the SVG's own coordinates; the SVG scales to the page).
WIDTH = 1100
GUTTER = 90
RIGHT = 16
LANE_H = 12
EVENT_LANE_H = 18
AXIS_H = 22
BAND_LABEL_H = 16
PLOT_H = 220

OUTCOME_COLORS = {"ok": "#4caf50", "fail": "#e57373", "info": "#ffa726"}
FAULT_COLORS = ["#7e57c2", "#26a69a", "#8d6e63", "#42a5f5", "#ec407a", "#9ccc65",
                "#ffca28", "#78909c"]
VERDICT_CLASSES = ("valid", "invalid", "unknown", "aborted", "error", "running")

# Cutover-relevant node events: (category, color, glyph).
EVENT_STYLE: dict[str, tuple[str, str]] = {
    "leader": ("#546e7a", "rect"),
    "start": ("#2e7d32", "up"),
    "stop": ("#37474f", "down"),
    "halt": ("#c62828", "cross"),
    "bootstrap": ("#1565c0", "circle"),
    "rotation": ("#1e88e5", "star"),
    "marker proposed": ("#8e24aa", "diamond"),
    "marker committed": ("#4a148c", "star"),
    "marker applied": ("#6a1b9a", "circle"),
    "installer": ("#00897b", "up"),
    "barrier up": ("#212121", "bar"),
    "barrier down": ("#9e9e9e", "bar"),
    "enable-raft-envelope": ("#ad1457", "diamond"),
    "snapshot": ("#6d4c41", "rect"),
}


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def verdict_class(verdict: str | None, status: str | None = None) -> str:
    """The CSS class suffix of a run's verdict; a run without one shows its status."""
    v = verdict or status or "running"
    return v if v in VERDICT_CLASSES else "unknown"


def event_category(kind: str, detail: Mapping[str, Any] | None) -> str | None:
    """Which legend entry a node event belongs to, or None when it is not drawn
    (commit progress, recovery, follower role changes: too many, too little meaning;
    and any kind this build does not know)."""
    d = detail or {}
    if kind == EventKind.ROLE:
        return "leader" if d.get("role") == "leader" else None
    if kind in (EventKind.START, EventKind.STOP, EventKind.HALT, EventKind.INSTALLER,
                EventKind.ENABLE_RAFT_ENVELOPE):
        return str(kind)
    if kind == EventKind.MARKER_PROPOSED:
        return "marker proposed"
    if kind == EventKind.MARKER_COMMITTED:
        return "marker committed"
    if kind == EventKind.ENCRYPTION_APPLIED:
        what = str(d.get("what") or "")
        if what.startswith("marker"):
            return "marker applied"
        if what.startswith("rotate"):
            return "rotation"
        if what.startswith("bootstrap"):
            return "bootstrap"
        return None
    if kind == EventKind.BARRIER:
        return "barrier up" if d.get("up") else "barrier down"
    if kind in (EventKind.SNAPSHOT_TAKEN, EventKind.SNAPSHOT_INSTALLED):
        return "snapshot"
    return None


def describe_event(ev: Mapping[str, Any]) -> str:
    """One line for a node event: kind plus its small detail fields."""
    d = ev.get("detail") or {}
    parts = [f"{k}={v}" for k, v in d.items()
             if k not in ("wall", "pid", "listen") and not isinstance(v, dict | list)]
    return f"{ev.get('node', '')} {ev.get('kind', '')} " + " ".join(parts)


def _targets(t: Any) -> str:
    if isinstance(t, list):
        return ", ".join(map(str, t)) or "-"
    return "-" if t is None else str(t)


def _secs(ns: int | float | None) -> str:
    return "-" if ns is None else f"{ns / 1e9:.3f}"


# ----------------------------------------------------------------------------- scales


class _X:
    """Time (ns since the run's start) to x, over the window."""

    def __init__(self, t0: int, t1: int) -> None:
        self.t0 = t0
        self.t1 = max(t1, t0 + 1)
        self.w = WIDTH - GUTTER - RIGHT

    def __call__(self, t: float) -> float:
        t = min(max(t, self.t0), self.t1)
        return GUTTER + (t - self.t0) / (self.t1 - self.t0) * self.w

    def ticks(self) -> list[tuple[float, str]]:
        span = (self.t1 - self.t0) / 1e9
        step = _nice(span / 10)
        first = math.ceil(self.t0 / 1e9 / step) * step
        out = []
        t = first
        while t <= self.t1 / 1e9 + 1e-9:
            out.append((self(t * 1e9), f"{t:g}s" if step >= 1 else f"{t:.{_decimals(step)}f}s"))
            t = round(t + step, 9)
        return out


def _nice(x: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is >= x."""
    if x <= 0:
        return 1.0
    p = 10 ** math.floor(math.log10(x))
    for m in (1, 2, 2.5, 5, 10):
        if m * p >= x - 1e-12:
            return m * p
    return 10 * p


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9)) + (1 if step * 10 % 10 == 5 else 0)


def _fault_color(name: str, palette: dict[str, str]) -> str:
    if name not in palette:
        palette[name] = FAULT_COLORS[len(palette) % len(FAULT_COLORS)]
    return palette[name]


def _axis(x: _X, y: float, height: float) -> str:
    out = [f'<line class="axis" x1="{GUTTER}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}"/>']
    for px, label in x.ticks():
        out.append(f'<line class="grid" x1="{px:.1f}" y1="{y - height:.1f}" x2="{px:.1f}" '
                   f'y2="{y + 4:.1f}"/><text class="tick" x="{px:.1f}" y="{y + 15:.1f}" '
                   f'text-anchor="middle">{_e(label)}</text>')
    return "".join(out)


def _band_label_rows(x: _X, faults: Sequence[Mapping[str, Any]]) -> tuple[list[int], int]:
    """A text row per band label so that labels of nearby faults do not overlap."""
    ends: list[float] = []
    rows = []
    for f in faults:
        xa = x(f.get("start_ns") or 0)
        w = len(str(f.get("fault"))) * 6.2 + 6
        for i, e in enumerate(ends):
            if xa >= e:
                ends[i] = xa + w
                rows.append(i)
                break
        else:
            ends.append(xa + w)
            rows.append(len(ends) - 1)
    return rows, len(ends)


def _visible(x: _X, f: Mapping[str, Any]) -> bool:
    s = f.get("start_ns") or 0
    e = f.get("end_ns")
    return not ((e is not None and e < x.t0) or s > x.t1)


def _bands(x: _X, faults: Sequence[Mapping[str, Any]], top: float, height: float,
           palette: dict[str, str], label_rows: list[int] | None = None) -> str:
    out = []
    for k, f in enumerate(faults):
        s = f.get("start_ns") or 0
        e = f.get("end_ns")
        e = x.t1 if e is None else e
        xa, xb = x(s), x(e)
        color = _fault_color(str(f.get("fault")), palette)
        targets = f.get("targets")
        tip = (f"{f.get('fault')} on {_targets(targets)} from {_secs(s)} s to {_secs(f.get('end_ns'))} s")
        out.append(f'<rect class="band" data-fault="{_e(f.get("fault"))}" x="{xa:.1f}" '
                   f'y="{top:.1f}" width="{max(xb - xa, 1.5):.1f}" height="{height:.1f}" '
                   f'fill="{color}"><title>{_e(tip)}</title></rect>')
        if label_rows is not None:
            ly = 12 + label_rows[k] * 12
            lx = min(xa + 1, WIDTH - RIGHT - len(str(f.get("fault"))) * 6.2)
            out.append(f'<text class="bandlabel" x="{lx:.1f}" y="{ly}" '
                       f'fill="{color}">{_e(f.get("fault"))}</text>'
                       f'<line class="bandtick" x1="{xa:.1f}" y1="{ly - 9}" x2="{xa:.1f}" '
                       f'y2="{top:.1f}" stroke="{color}"/>')
    return "".join(out)


# ------------------------------------------------------------------------ the plots


def _proc_key(p: Any) -> tuple[int, Any]:
    s = str(p)
    if s.lstrip("-").isdigit():
        return (0, int(s))
    return (1, s)


def _glyph(shape: str, cx: float, cy: float, color: str) -> str:
    r = 4.5
    if shape == "circle":
        return f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r}" fill="{color}"'
    if shape == "rect":
        return (f'<rect x="{cx - r:.1f}" y="{cy - r:.1f}" width="{2 * r}" height="{2 * r}" '
                f'fill="{color}"')
    if shape == "bar":
        return f'<rect x="{cx - 1.5:.1f}" y="{cy - 7:.1f}" width="3" height="14" fill="{color}"'
    pts = {
        "diamond": [(0, -r - 1), (r, 0), (0, r + 1), (-r, 0)],
        "up": [(0, -r - 1), (r, r), (-r, r)],
        "down": [(0, r + 1), (r, -r), (-r, -r)],
        "cross": [(-r, -r), (0, -1.5), (r, -r), (1.5, 0), (r, r), (0, 1.5), (-r, r), (-1.5, 0)],
        "star": [(0, -r - 1), (1.5, -1.5), (r + 1, 0), (1.5, 1.5), (0, r + 1), (-1.5, 1.5),
                 (-r - 1, 0), (-1.5, -1.5)],
    }[shape]
    p = " ".join(f"{cx + dx:.1f},{cy + dy:.1f}" for dx, dy in pts)
    return f'<polygon points="{p}" fill="{color}"'


def timeline_svg(ops: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]],
                 faults: Sequence[Mapping[str, Any]], t0: int, t1: int,
                 palette: dict[str, str]) -> str:
    """One lane of cutover events per node, then one lane of ops per process."""
    x = _X(t0, t1)
    nodes = sorted({str(e["node"]) for e in events if e.get("time_ns") is not None
                    and event_category(str(e.get("kind")), e.get("detail"))})
    procs = sorted({str(o["process"]) for o in ops}, key=_proc_key)
    faults = [f for f in faults if _visible(x, f)]
    label_rows, n_rows = _band_label_rows(x, faults)
    top = 12 * n_rows + 8
    ev_h = EVENT_LANE_H * len(nodes)
    lanes_h = LANE_H * len(procs)
    bottom = top + ev_h + 6 + lanes_h
    height = bottom + AXIS_H
    out = [f'<svg class="plot timeline" id="timeline" viewBox="0 0 {WIDTH} {height}" '
           f'width="{WIDTH}" height="{height}" role="img" '
           'aria-label="timeline of operations per process">']
    out.append(_bands(x, faults, top, bottom - top, palette, label_rows))
    # node event lanes
    for i, n in enumerate(nodes):
        y = top + i * EVENT_LANE_H + EVENT_LANE_H / 2
        out.append(f'<text class="lane" x="{GUTTER - 6}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{_e(n)} events</text>'
                   f'<line class="lanebg" x1="{GUTTER}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" '
                   f'y2="{y:.1f}"/>')
    lane_of = {n: i for i, n in enumerate(nodes)}
    for ev in events:
        t = ev.get("time_ns")
        cat = event_category(str(ev.get("kind")), ev.get("detail"))
        if t is None or cat is None or not (t0 <= t <= t1):
            continue
        color, shape = EVENT_STYLE[cat]
        y = top + lane_of[str(ev["node"])] * EVENT_LANE_H + EVENT_LANE_H / 2
        out.append(_glyph(shape, x(t), y, color) + f' class="ev" data-kind="{_e(cat)}">'
                   f'<title>{_e(_secs(t))} s  {_e(cat)}: {_e(describe_event(ev))}</title>'
                   + ("</circle>" if shape == "circle" else "</rect>" if shape in ("rect", "bar")
                      else "</polygon>"))
    # op lanes
    y0 = top + ev_h + 6
    lane = {p: i for i, p in enumerate(procs)}
    for p, i in lane.items():
        y = y0 + i * LANE_H
        out.append(f'<text class="lane small" x="{GUTTER - 6}" y="{y + LANE_H - 3:.1f}" '
                   f'text-anchor="end">{_e(p)}</text>')
    for o in ops:
        s = o["start_ns"]
        e = o.get("end_ns")
        typ = o.get("type", "info")
        xa = x(s)
        xb = x(t1 if e is None else e)
        y = y0 + lane[str(o["process"])] * LANE_H + 1
        val = o.get("output") if o.get("f") == "read" and typ == "ok" else o.get("value")
        lat = "open" if e is None else f"{(e - s) / 1e6:.1f} ms"
        tip = (f"process {o['process']}  {o.get('f')} {o.get('key') or ''} "
               f"{json.dumps(val, default=str)}  -> {typ}"
               f"{' (' + str(o['error']) + ')' if o.get('error') else ''}  "
               f"{_secs(s)} s, {lat}, node {o.get('node') or '-'}")
        out.append(f'<rect class="op {_e(typ)}" x="{xa:.1f}" y="{y:.1f}" '
                   f'width="{max(xb - xa, 1.0):.1f}" height="{LANE_H - 2}" '
                   f'fill="{OUTCOME_COLORS.get(typ, "#999")}"><title>{_e(tip)}</title></rect>')
    out.append(_axis(x, bottom + 2, bottom - top))
    out.append("</svg>")
    return "".join(out)


def latency_svg(ops: Sequence[Mapping[str, Any]], faults: Sequence[Mapping[str, Any]],
                t0: int, t1: int, palette: dict[str, str]) -> str:
    """Latency of every completed op at its invoke time, log scale, colored by outcome."""
    x = _X(t0, t1)
    pts = [(o["start_ns"], (o["end_ns"] - o["start_ns"]) / 1e6, o.get("type", "info"))
           for o in ops if o.get("end_ns") is not None]
    lo = min((max(p[1], 0.01) for p in pts), default=0.1)
    hi = max((p[1] for p in pts), default=1000.0)
    lo_e = math.floor(math.log10(max(lo, 0.01)))
    hi_e = max(math.ceil(math.log10(max(hi, 0.01))), lo_e + 1)
    top, bottom = BAND_LABEL_H, BAND_LABEL_H + PLOT_H

    def y(ms: float) -> float:
        v = math.log10(max(ms, 10 ** lo_e))
        return bottom - (v - lo_e) / (hi_e - lo_e) * (bottom - top)

    faults = [f for f in faults if _visible(x, f)]
    out = [f'<svg class="plot latency" id="latency" viewBox="0 0 {WIDTH} {bottom + AXIS_H}" '
           f'width="{WIDTH}" height="{bottom + AXIS_H}" role="img" aria-label="latency">']
    out.append(_bands(x, faults, top, bottom - top, palette))
    for k in range(lo_e, hi_e + 1):
        yy = y(10 ** k)
        label = f"{10 ** k:g} ms"
        out.append(_gridline(yy, label))
    for s, ms, typ in pts:
        out.append(f'<circle class="pt {_e(typ)}" cx="{x(s):.1f}" cy="{y(ms):.1f}" r="2" '
                   f'fill="{OUTCOME_COLORS.get(typ, "#999")}"><title>{_e(_secs(s))} s  '
                   f'{ms:.1f} ms  {_e(typ)}</title></circle>')
    out.append(_axis(x, bottom, bottom - top))
    out.append("</svg>")
    return "".join(out)


def _gridline(yy: float, label: str) -> str:
    """A horizontal grid line across the plot with its value on the left."""
    return (f'<line class="grid" x1="{GUTTER}" y1="{yy:.1f}" x2="{WIDTH - RIGHT}" '
            f'y2="{yy:.1f}"/><text class="tick" x="{GUTTER - 6}" y="{yy + 4:.1f}" '
            f'text-anchor="end">{_e(label)}</text>')


def throughput_svg(completions: Sequence[Sequence[Any]], faults: Sequence[Mapping[str, Any]],
                   t0: int, t1: int, palette: dict[str, str]) -> str:
    """Completions per second in buckets (at most ~200 over the window), per outcome."""
    x = _X(t0, t1)
    bucket = _nice((x.t1 - x.t0) / 1e9 / 200)
    b_ns = int(bucket * 1e9)
    n = max(1, math.ceil((x.t1 - x.t0) / b_ns))
    counts = {k: [0] * n for k in OUTCOME_COLORS}
    for t, typ in completions:
        if typ in counts and x.t0 <= t <= x.t1:
            counts[typ][min(n - 1, int((t - x.t0) // b_ns))] += 1
    # the last bucket may be cut short by the window's end: divide by its real width
    widths = [min(b_ns, x.t1 - (x.t0 + i * b_ns)) / 1e9 for i in range(n)]
    rates = {k: [c / max(w, bucket / 10) for c, w in zip(v, widths, strict=True)]
             for k, v in counts.items()}
    hi = max((max(v) for v in rates.values()), default=0.0) or 1.0
    hi = _nice(hi / 4) * 4
    top, bottom = BAND_LABEL_H, BAND_LABEL_H + PLOT_H

    def y(r: float) -> float:
        return bottom - r / hi * (bottom - top)

    faults = [f for f in faults if _visible(x, f)]
    out = [f'<svg class="plot throughput" id="throughput" viewBox="0 0 {WIDTH} '
           f'{bottom + AXIS_H}" width="{WIDTH}" height="{bottom + AXIS_H}" role="img" '
           'aria-label="throughput">']
    out.append(_bands(x, faults, top, bottom - top, palette))
    for k in range(5):
        r = hi * k / 4
        out.append(_gridline(y(r), f"{r:g}/s"))
    for typ, series in rates.items():
        if not any(series):
            continue
        pts = " ".join(f"{x(x.t0 + (i + 0.5) * b_ns):.1f},{y(r):.1f}"
                       for i, r in enumerate(series))
        out.append(f'<polyline class="rate {typ}" fill="none" stroke-width="1.5" '
                   f'stroke="{OUTCOME_COLORS[typ]}" points="{pts}"><title>{typ} per second '
                   f'({bucket:g} s buckets)</title></polyline>')
    out.append(_axis(x, bottom, bottom - top))
    out.append("</svg>")
    return "".join(out)


# ------------------------------------------------------------------------- sections


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    h = "".join(f"<th>{_e(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


def check_line(name: str, d: Mapping[str, Any]) -> str:
    """The short, human part of a checker's detail for the verdict table."""
    if d.get("first_violation"):
        return str(d["first_violation"])
    if d.get("error"):
        return str(d["error"])
    if name == "linearizability":
        return f"{d.get('ops', 0)} ops over {len(d.get('keys') or [])} keys"
    if name == "stats":
        t = d.get("total") or {}
        return ", ".join(f"{k} {t.get(k, 0)}" for k in ("ok", "fail", "info"))
    if name == "availability":
        share = d.get("ok_share_outside_faults")
        return "no quiet seconds" if share is None else f"{share:.0%} ok outside faults"
    if name == "cutover":
        return f"C = {d.get('cutover')}"
    return ""


def _header(data: Mapping[str, Any]) -> str:
    run = data["run"]
    v = verdict_class(run.get("verdict"), run.get("status"))
    out = [f'<header><h1>run <span class="runid">{_e(run.get("id"))}</span></h1>',
           f'<div class="verdict verdict-{v}" id="verdict" data-verdict="{v}">{_e(v)}</div>']
    links = data.get("links") or {}
    if links:
        out.append('<nav class="links">' + " · ".join(
            f'<a href="{_e(h)}">{_e(k)}</a>' for k, h in links.items()) + "</nav>")
    out.append(f'<p class="summary">{_e(run.get("summary") or "(no summary)")}</p>')
    first = data.get("first")
    if first:
        name, sentence, t = (list(first) + [None, None, None])[:3]
        when = f" at {_secs(t)} s" if isinstance(t, int | float) else ""
        out.append(f'<p class="first" id="first-violation"><b>First violation</b> '
                   f'({_e(name)}{_e(when)}): {_e(sentence)}</p>')
    out.append("</header>")
    return "".join(out)


def _facts(data: Mapping[str, Any]) -> str:
    run = data["run"]
    cfg = data.get("config") or {}
    facts = [("seed", run.get("seed")), ("started", run.get("started")),
             ("duration", f"{run['duration_s']:.1f} s" if run.get("duration_s") else "-"),
             ("status", run.get("status")), ("exit code", run.get("exit_code")),
             ("workload", f"{run.get('workload')} ({cfg.get('keys', '?')} keys)"),
             ("nodes", cfg.get("nodes")), ("nemesis", run.get("nemesis")),
             ("bugs", run.get("bugs") or "none"), ("cutover at", cfg.get("cutover_at")),
             ("time limit", cfg.get("time_limit")), ("rate", cfg.get("rate")),
             ("concurrency", cfg.get("concurrency"))]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e('-' if v is None else v)}</dd>" for k, v in facts)
    full = json.dumps(cfg, indent=2, sort_keys=True, default=str)
    return (f'<section id="config"><h2>Configuration</h2><dl class="facts">{dl}</dl>'
            f"<details><summary>full config</summary><pre>{_e(full)}</pre></details>"
            f"</section>")


def _verdicts(data: Mapping[str, Any]) -> str:
    checks = data.get("checks") or {}
    if not checks:
        return ('<section id="checks"><h2>Verdicts</h2><p class="note">No checker verdicts '
                "are stored for this run (it did not finish); <code>cutover check</code> "
                "computes them from what was recorded.</p></section>")
    rows = []
    order = ["linearizability", "cutover", "stats", "availability"]
    for name in order + sorted(set(checks) - set(order)):
        if name not in checks:
            continue
        d = checks[name] or {}
        v = verdict_class(str(d.get("valid", "unknown")))
        rows.append(f'<tr class="check verdict-{v}" data-checker="{_e(name)}" '
                    f'data-verdict="{v}"><td>{_e(name)}</td><td class="v">{_e(v)}</td>'
                    f"<td>{_e(check_line(name, d))}</td></tr>")
    out = ['<section id="checks"><h2>Verdicts</h2><table class="checks"><thead><tr>'
           "<th>checker</th><th>verdict</th><th>detail</th></tr></thead><tbody>",
           "".join(rows), "</tbody></table>"]
    cut = checks.get("cutover") or {}
    inv = cut.get("invariants") or {}
    if inv:
        irows = []
        for k, r in inv.items():
            fv = r.get("first_violation") or {}
            irows.append((k, r.get("title", ""), "valid" if r.get("valid") else "invalid",
                          r.get("violation_count", 0), fv.get("reason", "")))
        out.append("<h3>Cutover invariants</h3>"
                   + _table(["", "invariant", "verdict", "violations", "first"], irows,
                            "invariants"))
    st = (checks.get("stats") or {}).get("by_f") or {}
    if st:
        srows = [(f, c.get("ok", 0), c.get("fail", 0), c.get("info", 0)) for f, c in st.items()]
        out.append("<h3>Operations</h3>" + _table(["f", "ok", "fail", "info"], srows, "stats"))
    out.append("</section>")
    return "".join(out)


def _nodes(data: Mapping[str, Any]) -> str:
    nodes = data.get("nodes") or []
    if not nodes:
        return ""
    rows = []
    for n in nodes:
        halted = ("yes: " + str(n.get("halt_reason") or "")) if n.get("halted") else "no"
        rows.append((n.get("node"), _dash(n.get("cutover")), _dash(n.get("active")),
                     _dash(n.get("applied")), halted, _dash(n.get("above_wrapped")),
                     _dash(n.get("above_clear"))))
    return ('<section id="nodes"><h2>Nodes</h2>'
            + _table(["node", "C", "active DEK", "applied", "halted",
                      "entries above C: wrapped", "cleartext"], rows, "nodes")
            + "</section>")


def _dash(v: Any) -> Any:
    return "-" if v is None else v


def _legend(palette: dict[str, str], events: Sequence[Mapping[str, Any]]) -> str:
    items = [f'<span class="lg"><span class="sw" style="background:{c}"></span>{_e(k)}</span>'
             for k, c in OUTCOME_COLORS.items()]
    cats = {event_category(str(e.get("kind")), e.get("detail")) for e in events} - {None}
    for cat, (color, shape) in EVENT_STYLE.items():
        if cat in cats:
            items.append(f'<span class="lg"><svg width="14" height="14">'
                         f"{_glyph(shape, 7, 7, color)}/></svg>{_e(cat)}</span>")
    for name, color in palette.items():
        items.append(f'<span class="lg"><span class="sw band" style="background:{color}">'
                     f"</span>{_e(name)}</span>")
    return '<div class="legend">' + "".join(items) + "</div>"


def _window_nav(w: Mapping[str, Any]) -> str:
    total = w.get("total_ops", 0)
    shown = w.get("shown_ops", 0)
    pages = w.get("pages") or []
    out = [f'<p class="window" id="window" data-shown="{shown}" data-total="{total}">'
           f"Window {_secs(w.get('from_ns'))} s – {_secs(w.get('to_ns'))} s: {shown} of "
           f"{total} operations drawn.</p>"]
    if len(pages) > 1:
        items = []
        for p in pages:
            label = f"{_secs(p['from_ns'])}–{_secs(p['to_ns'])} s"
            if p.get("current"):
                items.append(f'<li class="current"><b>{_e(label)}</b> (this page)</li>')
            elif p.get("href"):
                items.append(f'<li><a href="{_e(p["href"])}">{_e(label)}</a></li>')
            else:
                items.append(f"<li>{_e(label)}: <code>{_e(p.get('command', ''))}</code></li>")
        out.append('<details class="pages" open><summary>pages of the history '
                   f"({len(pages)})</summary><ol>{''.join(items)}</ol></details>")
    return "".join(out)


def _plots(data: Mapping[str, Any], palette: dict[str, str]) -> str:
    w = data.get("window") or {}
    ops = data.get("ops") or []
    t0 = int(w.get("from_ns") or 0)
    t1 = int(w.get("to_ns") or max([o.get("end_ns") or o["start_ns"] for o in ops] or [1]))
    faults = data.get("faults") or []
    events = data.get("events") or []
    tl = timeline_svg(ops, events, faults, t0, t1, palette)
    lat = latency_svg(ops, faults, t0, t1, palette)
    thr = throughput_svg(data.get("completions") or [], faults, t0, t1, palette)
    return ('<section id="history"><h2>History</h2>' + _window_nav(w)
            + _legend(palette, events)
            + '<h3>Timeline: cutover events per node, operations per process</h3>'
            + f'<div class="scroll">{tl}</div>'
            + '<h3>Latency (log scale) by outcome</h3>' + f'<div class="scroll">{lat}</div>'
            + '<h3>Throughput (completions per second)</h3>'
            + f'<div class="scroll">{thr}</div></section>')


def _lin(data: Mapping[str, Any]) -> str:
    checks = data.get("checks") or {}
    lin = checks.get("linearizability") or {}
    items = data.get("lin") or []
    out = ['<section id="linearizability"><h2>Linearizability</h2>']
    if not items:
        if lin.get("valid") == "valid":
            out.append(f'<p class="note">Every key is linearizable ({lin.get("ops", 0)} ops, '
                       f'{len(lin.get("keys") or [])} keys).</p>')
        elif lin:
            out.append(f'<p class="note">{_e(lin.get("error") or lin.get("first_violation") or lin.get("valid"))}</p>')
        else:
            out.append('<p class="note">Not checked.</p>')
    for it in items:
        v = verdict_class(str(it.get("verdict")))
        out.append(f'<div class="key verdict-{v}" data-key="{_e(it.get("key"))}">'
                   f'<h3>key {_e(it.get("key"))}: <span class="v">{_e(v)}</span></h3>')
        if it.get("explanation"):
            out.append(f'<pre class="explain">{_e(it["explanation"])}</pre>')
        if it.get("html"):
            out.append('<iframe class="counterexample" sandbox="allow-scripts" '
                       f'title="counterexample for key {_e(it.get("key"))}" '
                       f'srcdoc="{_e(it["html"])}"></iframe>')
        out.append("</div>")
    out.append("</section>")
    return "".join(out)


def _i1(data: Mapping[str, Any], palette: dict[str, str]) -> str:
    i1 = data.get("i1")
    if not i1:
        return ""
    out = ['<section id="i1"><h2>I1: cleartext above the cutover</h2>',
           f'<p>C = {_e(i1.get("cutover"))}. {_e(i1.get("count", len(i1.get("violations") or [])))} '
           "offending entries; the first ones:</p>"]
    vrows = [(v.get("node"), v.get("index"), v.get("term"),
              v.get("opcode_name") or v.get("opcode"),
              "cleartext" if not v.get("wrapped") else "wrapped", v.get("half", ""),
              v.get("reason", "")) for v in i1.get("violations") or []]
    out.append(_table(["node", "index", "term", "opcode", "stored", "check", "reason"], vrows,
                      "i1-violations"))
    entries = i1.get("entries") or []
    if entries:
        erows = [(e.get("node"), e.get("idx"), e.get("term"), e.get("opcode_name") or "-",
                  "wrapped" if e.get("wrapped") else "cleartext",
                  _dash(e.get("key_id")), "above C" if e.get("idx", 0) > (i1.get("cutover") or 0)
                  else "") for e in entries]
        out.append("<h3>The log around the first offending entry</h3>"
                   + _table(["node", "index", "term", "opcode", "stored", "key id", ""], erows,
                            "i1-entries"))
    win = i1.get("window_ns")
    if win:
        a, b = win
        rows = []
        for f in i1.get("faults") or []:
            rows.append((_secs(f.get("time_ns")), "nemesis",
                         f"{f.get('fault')} {f.get('f', '')} on {_targets(f.get('targets'))}"))
        for ev in i1.get("events") or []:
            rows.append((_secs(ev.get("time_ns")), f"node {ev.get('node')}", describe_event(ev)))
        rows.sort(key=lambda r: float(r[0]) if r[0] != "-" else 0.0)
        t = i1.get("t_ns")
        out.append(f"<h3>Nemesis and node events from {_secs(a)} s to {_secs(b)} s "
                   f"(around {_secs(t)} s)</h3>"
                   + _table(["time (s)", "source", "what"], rows, "i1-context"))
        out.append('<div class="scroll">'
                   + timeline_svg([], i1.get("events") or [], i1.get("band_faults") or [],
                                  int(a), int(b), palette)
                   .replace('id="timeline"', 'id="i1-timeline"') + "</div>")
    out.append("</section>")
    return "".join(out)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
max-width:1180px;padding:16px 24px;color:#222}
h1{font-size:22px;margin:0 0 6px}h2{font-size:18px;border-bottom:1px solid #ddd;
padding-bottom:3px;margin-top:28px}h3{font-size:15px;margin:16px 0 6px}
.runid{font-family:ui-monospace,Menlo,Consolas,monospace}
.verdict{display:inline-block;font-weight:700;text-transform:uppercase;padding:3px 12px;
border-radius:4px;color:#fff;letter-spacing:.05em}
.verdict.verdict-valid{background:#2e7d32}.verdict.verdict-invalid{background:#c62828}
.verdict.verdict-unknown{background:#ef6c00}.verdict.verdict-aborted,
.verdict.verdict-error,.verdict.verdict-running{background:#757575}
tr.verdict-valid .v,.key.verdict-valid .v{color:#2e7d32;font-weight:600}
tr.verdict-invalid .v,.key.verdict-invalid .v{color:#c62828;font-weight:600}
tr.verdict-unknown .v,.key.verdict-unknown .v{color:#ef6c00;font-weight:600}
.summary{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
.first{background:#fff3f3;border-left:4px solid #c62828;padding:6px 10px}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:0}
dl.facts dt{color:#666}dl.facts dd{margin:0}
.note{color:#555}.scroll{overflow-x:auto}
svg.plot{display:block;max-width:100%;height:auto;background:#fff}
svg .axis{stroke:#444}svg .grid{stroke:#eee}svg .lanebg{stroke:#f0f0f0}
svg text{font:10px ui-monospace,Menlo,Consolas,monospace;fill:#444}
svg .band{opacity:.16}svg text.bandlabel{font-weight:600}svg .bandtick{stroke-opacity:.5}
svg .op:hover,svg .pt:hover,svg .ev:hover{stroke:#000;stroke-width:1}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;margin:6px 0;font-size:12px}
.lg{display:inline-flex;align-items:center;gap:4px}
.sw{display:inline-block;width:14px;height:10px;border-radius:2px}.sw.band{opacity:.35}
iframe.counterexample{width:100%;height:640px;border:1px solid #ccc;resize:vertical}
pre{background:#fafafa;border:1px solid #eee;padding:8px;overflow-x:auto;font-size:12px}
.window{color:#333}.pages ol{columns:3;font-size:12px}
nav.links a{margin-right:4px}
"""


def render_report(data: Mapping[str, Any]) -> str:
    """The whole report page (see the module docstring for `data`)."""
    palette: dict[str, str] = {}
    for f in data.get("faults") or []:
        _fault_color(str(f.get("fault")), palette)
    run = data["run"]
    title = f"cutover run {run.get('id')}: {verdict_class(run.get('verdict'), run.get('status'))}"
    body = [_header(data), _facts(data), _verdicts(data), _nodes(data), _plots(data, palette),
            _lin(data), _i1(data, palette)]
    csp = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
           "img-src data:; frame-src 'self' about: data:")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(b for b in body if b) + "\n</body></html>\n")
