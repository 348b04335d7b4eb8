"""The SVG pieces every plot of the UI is made of: the time axis (ns since the run's
start to x), ticks and grid lines, fault bands with their labels, event glyphs, and the
colors of outcomes and faults.

Plots are drawn server-side as SVG strings (no charting library, no script, nothing
fetched), so a report opens the same way offline, years later; tooltips are SVG
`<title>` elements. Every text that goes into an SVG passes `esc`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from checker.visualize import assign_color, esc

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

__all__ = ["AXIS_H", "BAND_LABEL_H", "EVENT_LANE_H", "GUTTER", "LANE_H", "OUTCOME_COLORS",
           "PLOT_H", "RIGHT", "WIDTH", "TimeAxis", "axis", "band_label_rows", "bands", "esc",
           "fault_color", "glyph", "gridline", "nice", "secs", "targets_text", "visible"]


def secs(ns: int | float | None) -> str:
    """Nanoseconds since the run's start as seconds, the unit every page shows."""
    return "-" if ns is None else f"{ns / 1e9:.3f}"


def targets_text(t: Any) -> str:
    """A fault's targets (a list of nodes, mostly) as one short text."""
    if isinstance(t, list):
        return ", ".join(map(str, t)) or "-"
    return "-" if t is None else str(t)


class TimeAxis:
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
        step = nice(span / 10)
        first = math.ceil(self.t0 / 1e9 / step) * step
        out = []
        t = first
        while t <= self.t1 / 1e9 + 1e-9:
            out.append((self(t * 1e9), f"{t:g}s" if step >= 1 else f"{t:.{_decimals(step)}f}s"))
            t = round(t + step, 9)
        return out


def nice(x: float) -> float:
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


def fault_color(name: str, palette: dict[str, str]) -> str:
    """The band color of fault `name` on this page (the counterexample's palette too)."""
    return assign_color(name, palette)


def axis(x: TimeAxis, y: float, height: float) -> str:
    """The time axis at `y`, its ticks in seconds, grid lines `height` up (every plot
    shares the window's axis, so a moment lines up across them)."""
    out = [f'<line class="axis" x1="{GUTTER}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}"/>']
    for px, label in x.ticks():
        out.append(f'<line class="grid" x1="{px:.1f}" y1="{y - height:.1f}" x2="{px:.1f}" '
                   f'y2="{y + 4:.1f}"/><text class="tick" x="{px:.1f}" y="{y + 15:.1f}" '
                   f'text-anchor="middle">{esc(label)}</text>')
    return "".join(out)


def band_label_rows(x: TimeAxis, faults: Sequence[Mapping[str, Any]]) -> tuple[list[int], int]:
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


def visible(x: TimeAxis, f: Mapping[str, Any]) -> bool:
    """Whether fault `f` overlaps the window (an open fault runs to its end)."""
    s = f.get("start_ns") or 0
    e = f.get("end_ns")
    return not ((e is not None and e < x.t0) or s > x.t1)


def bands(x: TimeAxis, faults: Sequence[Mapping[str, Any]], top: float, height: float,
           palette: dict[str, str], label_rows: list[int] | None = None) -> str:
    """One band per fault behind a plot, hover for what and when; with `label_rows`
    (the timeline), each band is named above the plot too."""
    out = []
    for k, f in enumerate(faults):
        s = f.get("start_ns") or 0
        e = f.get("end_ns")
        e = x.t1 if e is None else e
        xa, xb = x(s), x(e)
        color = fault_color(str(f.get("fault")), palette)
        targets = f.get("targets")
        tip = (f"{f.get('fault')} on {targets_text(targets)} from {secs(s)} s to {secs(f.get('end_ns'))} s")
        out.append(f'<rect class="band" data-fault="{esc(f.get("fault"))}" x="{xa:.1f}" '
                   f'y="{top:.1f}" width="{max(xb - xa, 1.5):.1f}" height="{height:.1f}" '
                   f'fill="{color}"><title>{esc(tip)}</title></rect>')
        if label_rows is not None:
            ly = 12 + label_rows[k] * 12
            lx = min(xa + 1, WIDTH - RIGHT - len(str(f.get("fault"))) * 6.2)
            out.append(f'<text class="bandlabel" x="{lx:.1f}" y="{ly}" '
                       f'fill="{color}">{esc(f.get("fault"))}</text>'
                       f'<line class="bandtick" x1="{xa:.1f}" y1="{ly - 9}" x2="{xa:.1f}" '
                       f'y2="{top:.1f}" stroke="{color}"/>')
    return "".join(out)


def glyph(shape: str, cx: float, cy: float, color: str) -> str:
    """A node event's mark, left open: the caller adds its class and data attributes,
    then closes it, with a `<title>` inside for the tooltip."""
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


def gridline(yy: float, label: str) -> str:
    """A horizontal grid line across the plot with its value on the left."""
    return (f'<line class="grid" x1="{GUTTER}" y1="{yy:.1f}" x2="{WIDTH - RIGHT}" '
            f'y2="{yy:.1f}"/><text class="tick" x="{GUTTER - 6}" y="{yy + 4:.1f}" '
            f'text-anchor="end">{esc(label)}</text>')
