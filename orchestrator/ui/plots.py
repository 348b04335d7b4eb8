"""The report's plots: the timeline (fault lanes, the cutover lane, node events, ops per
client worker: `orchestrator.ui.lanes`), latency and throughput over the fault bands
(`orchestrator.ui.svg`), each crossed by the "first violation" line. A new plot goes
here, and into `templates/report.html` where it is shown.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from node.events import EventKind
from orchestrator.ui.lanes import (
    MARKER_LABEL_H,
    client_lanes,
    cutover_lane,
    fault_lanes,
    violation_marker,
)
from orchestrator.ui.svg import (
    AXIS_H,
    BAND_LABEL_H,
    EVENT_LANE_H,
    GUTTER,
    LANE_H,
    OUTCOME_COLORS,
    PLOT_H,
    RIGHT,
    WIDTH,
    TimeAxis,
    axis,
    bands,
    esc,
    glyph,
    gridline,
    nice,
    secs,
    visible,
)

# Cutover-relevant node events, by legend entry: (color, glyph).
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


def timeline_svg(ops: Sequence[Mapping[str, Any]], events: Sequence[Mapping[str, Any]],
                 faults: Sequence[Mapping[str, Any]], t0: int, t1: int,
                 palette: dict[str, str], plot_id: str = "timeline",
                 concurrency: int | None = None, violation_ns: int | None = None) -> str:
    """Fault lanes (one per family), the cutover lane, a lane of events per node, then
    the client lanes (one per worker: `orchestrator.ui.lanes`), under the "first
    violation" marker."""
    x = TimeAxis(t0, t1)
    faults = [f for f in faults if visible(x, f)]
    top = MARKER_LABEL_H + 2
    lanes_svg, h = fault_lanes(x, faults, top, palette)
    cut_svg, ch = cutover_lane(x, faults, events, top + h + (2 if h else 0))
    ev_top = top + h + (2 if h else 0) + ch + (4 if ch else 0)
    nodes = sorted({str(e["node"]) for e in events if e.get("time_ns") is not None
                    and event_category(str(e.get("kind")), e.get("detail"))})
    ev_h = EVENT_LANE_H * len(nodes)
    clients = client_lanes(ops, concurrency, t1)
    y0 = ev_top + ev_h + 6
    heights = [_client_lane_h(c["n"]) for c in clients]
    bottom = y0 + sum(heights)
    height = bottom + AXIS_H
    out = [f'<svg class="plot timeline" id="{plot_id}" viewBox="0 0 {WIDTH} {height:.0f}" '
           f'width="{WIDTH}" height="{height:.0f}" role="img" '
           'aria-label="timeline: faults, the cutover, node events and client operations">',
           axis(x, bottom + 2, bottom - top),  # first: its grid lines go under the labels
           lanes_svg, cut_svg, _event_lanes(x, events, nodes, ev_top)]
    y = y0
    for c, lh in zip(clients, heights, strict=True):
        out.append(_client_lane(x, c, y, lh, t1))
        y += lh
    out.append(violation_marker(x, violation_ns, top, bottom + 2))
    out.append("</svg>")
    return "".join(out)


def _client_lane_h(rows: int) -> float:
    """A worker's lane is one row high; ops that overlap (one left open, the final
    reads) share up to three rows' height."""
    return float(LANE_H * min(rows, 3))


def _event_lanes(x: TimeAxis, events: Sequence[Mapping[str, Any]], nodes: list[str],
                 top: float) -> str:
    out = []
    for i, n in enumerate(nodes):
        y = top + i * EVENT_LANE_H + EVENT_LANE_H / 2
        out.append(f'<text class="lane" x="{GUTTER - 6}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{esc(n)} events</text>'
                   f'<line class="lanebg" x1="{GUTTER}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" '
                   f'y2="{y:.1f}"/>')
    lane_of = {n: i for i, n in enumerate(nodes)}
    for ev in events:
        t = ev.get("time_ns")
        cat = event_category(str(ev.get("kind")), ev.get("detail"))
        if t is None or cat is None or not (x.t0 <= t <= x.t1):
            continue
        color, shape = EVENT_STYLE[cat]
        y = top + lane_of[str(ev["node"])] * EVENT_LANE_H + EVENT_LANE_H / 2
        out.append(glyph(shape, x(t), y, color) + f' class="ev" data-kind="{esc(cat)}">'
                   f'<title>{esc(secs(t))} s  {esc(cat)}: {esc(describe_event(ev))}</title>'
                   + ("</circle>" if shape == "circle" else "</rect>" if shape in ("rect", "bar")
                      else "</polygon>"))
    return "".join(out)


def _client_lane(x: TimeAxis, lane: Mapping[str, Any], y: float, lh: float, t1: int) -> str:
    """One worker's ops; the lane's name in the gutter, its processes in the tooltip."""
    procs = lane["procs"]
    name = lane["name"] + (f" ({len(procs)}p)" if len(procs) > 1 else "")
    out = [f'<g class="client" data-lane="{esc(lane["name"])}">'
           f'<text class="lane small" x="{GUTTER - 6}" y="{y + min(lh, LANE_H) - 3:.1f}" '
           f'text-anchor="end">{esc(name)}<title>processes {esc(", ".join(procs))}</title>'
           '</text>']
    rh = (lh - 1) / lane["n"]
    for o, r in zip(lane["ops"], lane["rows"], strict=True):
        s = o["start_ns"]
        e = o.get("end_ns")
        typ = o.get("type", "info")
        xa = x(s)
        xb = x(t1 if e is None else e)
        val = o.get("output") if o.get("f") == "read" and typ == "ok" else o.get("value")
        lat = "open" if e is None else f"{(e - s) / 1e6:.1f} ms"
        tip = (f"process {o['process']}  {o.get('f')} {o.get('key') or ''} "
               f"{json.dumps(val, default=str)}  -> {typ}"
               f"{' (' + str(o['error']) + ')' if o.get('error') else ''}  "
               f"{secs(s)} s, {lat}, node {o.get('node') or '-'}")
        out.append(f'<rect class="op {esc(typ)}" x="{xa:.1f}" y="{y + 1 + r * rh:.1f}" '
                   f'width="{max(xb - xa, 1.0):.1f}" height="{max(rh - 1, 2.0):.1f}" '
                   f'fill="{OUTCOME_COLORS.get(typ, "#999")}"><title>{esc(tip)}</title></rect>')
    out.append("</g>")
    return "".join(out)


def latency_svg(ops: Sequence[Mapping[str, Any]], faults: Sequence[Mapping[str, Any]],
                t0: int, t1: int, palette: dict[str, str],
                violation_ns: int | None = None) -> str:
    """Latency of every completed op at its invoke time, log scale, colored by outcome."""
    x = TimeAxis(t0, t1)
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

    faults = [f for f in faults if visible(x, f)]
    out = [f'<svg class="plot latency" id="latency" viewBox="0 0 {WIDTH} {bottom + AXIS_H}" '
           f'width="{WIDTH}" height="{bottom + AXIS_H}" role="img" aria-label="latency">']
    out.append(bands(x, faults, top, bottom - top, palette))
    for k in range(lo_e, hi_e + 1):
        yy = y(10 ** k)
        label = f"{10 ** k:g} ms"
        out.append(gridline(yy, label))
    for s, ms, typ in pts:
        out.append(f'<circle class="pt {esc(typ)}" cx="{x(s):.1f}" cy="{y(ms):.1f}" r="2" '
                   f'fill="{OUTCOME_COLORS.get(typ, "#999")}"><title>{esc(secs(s))} s  '
                   f'{ms:.1f} ms  {esc(typ)}</title></circle>')
    out.append(axis(x, bottom, bottom - top))
    out.append(violation_marker(x, violation_ns, top, bottom))
    out.append("</svg>")
    return "".join(out)


def throughput_svg(completions: Sequence[Sequence[Any]], faults: Sequence[Mapping[str, Any]],
                   t0: int, t1: int, palette: dict[str, str],
                   violation_ns: int | None = None) -> str:
    """Completions per second in buckets (at most ~200 over the window), per outcome."""
    x = TimeAxis(t0, t1)
    bucket = nice((x.t1 - x.t0) / 1e9 / 200)
    b_ns = max(1, int(bucket * 1e9))  # a window of a few ns still has a bucket
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
    hi = nice(hi / 4) * 4
    top, bottom = BAND_LABEL_H, BAND_LABEL_H + PLOT_H

    def y(r: float) -> float:
        return bottom - r / hi * (bottom - top)

    faults = [f for f in faults if visible(x, f)]
    out = [f'<svg class="plot throughput" id="throughput" viewBox="0 0 {WIDTH} '
           f'{bottom + AXIS_H}" width="{WIDTH}" height="{bottom + AXIS_H}" role="img" '
           'aria-label="throughput">']
    out.append(bands(x, faults, top, bottom - top, palette))
    for k in range(5):
        r = hi * k / 4
        out.append(gridline(y(r), f"{r:g}/s"))
    for typ, series in rates.items():
        if not any(series):
            continue
        pts = " ".join(f"{x(x.t0 + (i + 0.5) * b_ns):.1f},{y(r):.1f}"
                       for i, r in enumerate(series))
        out.append(f'<polyline class="rate {typ}" fill="none" stroke-width="1.5" '
                   f'stroke="{OUTCOME_COLORS[typ]}" points="{pts}"><title>{typ} per second '
                   f'({bucket:g} s buckets)</title></polyline>')
    out.append(axis(x, bottom, bottom - top))
    out.append(violation_marker(x, violation_ns, top, bottom))
    out.append("</svg>")
    return "".join(out)
