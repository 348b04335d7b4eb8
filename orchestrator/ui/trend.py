"""The trend page of `cutover serve` (`/trend`): what `cutover trend` prints, drawn.
The hunts (`cutover hunt`) follow, each finding with its real confirmations.

Two plots over the recorded matrices, oldest to newest: each build's detection rate
(the fixed build's line is the share of its runs found valid, dashed), and the median
time into the run of the first violation; then the numbers, and the flakes. Drawn
server-side from `orchestrator.ui.svg`'s helpers like the report's plots: no script,
nothing fetched, colors as SVG attributes (a page's CSP allows no inline style).
"""
from __future__ import annotations

from collections.abc import Callable

from markupsafe import Markup

from orchestrator import store
from orchestrator.nightly.matrix import is_fixed
from orchestrator.nightly.trend import Point, TrendData, trend_data
from orchestrator.ui.render import page
from orchestrator.ui.svg import GUTTER, PLOT_H, RIGHT, WIDTH, esc, family_color, gridline, nice

LEGEND_ROW = 14
LEGEND_CHAR_W = 6.9  # px of one character of the 11px monospace legend
X_LABEL_H = 30


def trend_page(results: str, nonce: str | None = None, last: int | None = None) -> str:
    """`/trend`: the plots, the table and the flakes of every recorded matrix."""
    with store.opened(results) as db:
        data = trend_data(db, last=last)
    return render_trend(data, nonce)


def render_trend(data: TrendData, nonce: str | None = None) -> str:
    """The page of `data` (no database: a test draws hand-made trends)."""
    palette: dict[str, str] = {}
    for label in data.series:
        family_color(label, palette)
    rows = [{"label": label if i == 0 else "", "matrix": p.matrix,
             "started": p.started.replace("T", " ")[:16], "revision": (p.revision or "-")[:12],
             "detected": _detected(p), "median": "-" if p.median_s is None
             else f"{p.median_s:.1f}", "errors": p.errors or ""}
            for label, points in data.series.items() for i, p in enumerate(points)]
    flakes = [{"label": f.label, "seed": f.seed, "revision": f.revision[:12],
               "verdicts": [{"matrix": m, "verdict": v, "run": r,
                             "href": f"/run/{r}/" if r else None} for m, v, r in f.verdicts]}
              for f in data.flakes]
    hunts = [{"id": h.hunt, "started": h.started.replace("T", " ")[:16], "build": h.build,
              "seeds": "-" if h.seeds is None else h.seeds,
              "findings": [{"kind": f["kind"], "confirmed": f["confirmed"],
                            "attempts": f["attempts"], "gap": f["gap"]} for f in h.findings]}
             for h in data.hunts]
    signatures = [{"signature": sig, "hunts": n, "confirmed": k, "attempts": t, "gaps": g}
                  for sig, n, k, t, g in data.signatures()]
    return page("trend.html", nonce=nonce, title="cutover trend", matrices=data.matrices,
                hunts=hunts, signatures=signatures,
                rate_plot=plot(data, palette, lambda p: p.rate, 1.0,
                               lambda v: f"{v:.0%}", "detection rate"),
                median_plot=plot(data, palette, lambda p: p.median_s,
                                 4 * nice(max((p.median_s or 0 for ps in data.series.values()
                                               for p in ps), default=1.0) / 4 or 0.25),
                                 lambda v: f"{v:g} s", "median seconds to the first violation"),
                rows=rows, flakes=flakes)


def _detected(p: Point) -> str:
    if not p.judged:
        return "-"
    return f"{p.hits}/{p.judged}" + (" valid" if is_fixed(p.label) else "")


def plot(data: TrendData, palette: dict[str, str], value: Callable[[Point], float | None],
         ymax: float, fmt: Callable[[float], str], title: str) -> Markup:
    """One line per build over the matrices (x: the matrices in time order, y: `value`
    from 0 to `ymax`); a point's tooltip says what it is."""
    n = len(data.matrices)
    if not n or not data.series:
        return Markup("")
    w = WIDTH - GUTTER - RIGHT
    labels = [label + (" (valid share)" if is_fixed(label) else "") for label in data.series]
    # as many legend columns as the longest label allows: a label never runs into the next
    col_w = max(len(t) for t in labels) * LEGEND_CHAR_W + 30
    cols = max(1, min(4, int(w // col_w)))
    legend_h = LEGEND_ROW * ((len(data.series) + cols - 1) // cols) + 6
    top = legend_h + 8
    height = top + PLOT_H + X_LABEL_H
    index = {m["id"]: i for i, m in enumerate(data.matrices)}

    def x(i: int) -> float:
        return GUTTER + (w / 2 if n == 1 else i * w / (n - 1))

    def y(v: float) -> float:
        return top + PLOT_H - min(max(v / ymax, 0.0), 1.0) * PLOT_H

    out = [f'<svg class="plot trend" viewBox="0 0 {WIDTH} {height}" '
           f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{esc(title)}">']
    for k in range(5):
        v = ymax * k / 4
        out.append(gridline(y(v), fmt(v)))
    out.append(f'<line class="axis" x1="{GUTTER}" y1="{top + PLOT_H:.1f}" '
               f'x2="{WIDTH - RIGHT}" y2="{top + PLOT_H:.1f}"/>')
    step = max(1, (n + 9) // 10)
    for i, m in enumerate(data.matrices):
        # every step-th, and the last; not one a step too close to the last
        if (i % step == 0 and (i == n - 1 or n - 1 - i >= step)) or i == n - 1:
            label = str(m.get("started") or "").replace("T", " ")[5:16]
            anchor = "start" if i == 0 and n > 1 else "end" if i == n - 1 and n > 1 else "middle"
            out.append(f'<text class="tick" x="{x(i):.1f}" y="{top + PLOT_H + 14:.1f}" '
                       f'text-anchor="{anchor}"><title>{esc(m["id"])}</title>{esc(label)}'
                       f'</text>')
    taken: dict[tuple[int, int], int] = {}
    for j, (label, points) in enumerate(data.series.items()):
        color = family_color(label, palette)
        dash = ' stroke-dasharray="5 3"' if is_fixed(label) else ""
        pts = [(index[p.matrix], value(p), p) for p in points if p.matrix in index]
        drawn = [(i, v, p) for i, v, p in pts if v is not None]
        if len(drawn) > 1:
            path = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v, _p in drawn)
            out.append(f'<polyline class="series" points="{path}" fill="none" '
                       f'stroke="{color}" stroke-width="2"{dash}/>')
        for i, v, p in drawn:
            # builds with the same value at the same matrix (all at 100%, say) side by
            # side, not drawn over each other
            k = taken.get((i, round(y(v))), 0)
            taken[(i, round(y(v)))] = k + 1
            # (inward at the first and the last matrix: the value labels are left of it)
            dx = (k * 7 if i == 0 else -k * 7 if i == n - 1
                  else (k + 1) // 2 * 7 * (1 if k % 2 else -1))
            tip = (f"{label} in {p.matrix} ({p.revision or 'no revision'}): "
                   f"{_detected(p)}, median "
                   f"{'-' if p.median_s is None else f'{p.median_s:.1f} s'}")
            out.append(f'<circle class="pt" data-build="{esc(label)}" cx="{x(i) + dx:.1f}" '
                       f'cy="{y(v):.1f}" r="4" fill="{color}"><title>{esc(tip)}</title>'
                       f'</circle>')
        lx = GUTTER + (j % cols) * (w / cols)
        ly = 12 + (j // cols) * LEGEND_ROW
        out.append(f'<rect x="{lx:.1f}" y="{ly - 8}" width="14" height="8" fill="{color}"/>'
                   f'<text class="legend" x="{lx + 18:.1f}" y="{ly}">{esc(label)}'
                   f'{" (valid share)" if is_fixed(label) else ""}</text>')
    out.append("</svg>")
    return Markup("".join(out))


__all__ = ["plot", "render_trend", "trend_page"]
