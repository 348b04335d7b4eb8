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
from nemesis.faults import FAMILIES, KINDS, OPT_IN_FAMILIES

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
           "PLOT_H", "RIGHT", "WIDTH", "TimeAxis", "axis", "bands", "esc", "family_color",
           "family_of", "family_order", "fault_color", "glyph", "gridline", "nice", "secs",
           "targets_text", "visible"]

# What the run's operator does for the cutover (nemesis records that are not faults):
# the timeline draws them in the cutover lane, not among the faults.
CUTOVER_FAULTS = frozenset({"enable", "enable-raft-envelope", "cutover-requested",
                            "cutover-settled", "rotate"})
CUTOVER_FAMILIES = frozenset({"enable", "rotate"})


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
        # by index, not by adding up: a step below 1 ns (a window of a few ns) rounded
        # to 9 decimals would never advance
        for k in range(int((self.t1 / 1e9 - first) / step + 1e-6) + 1):
            t = round(first + k * step, 12)
            out.append((self(t * 1e9), f"{t:g}s" if step >= 1 else f"{t:.{_decimals(step)}f}s"))
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


def family_of(fault: str) -> str:
    """The family of a nemesis record, by its kind's record (`nemesis/faults.py`):
    `cutover` for the operator's records, `heal` for the heal, else `other` (a kind
    this build does not know: an older run's)."""
    if fault in CUTOVER_FAULTS:
        return "cutover"
    kind = KINDS.get(fault)
    fam = (kind.family or "heal") if kind is not None else (
        fault if fault in FAMILIES or fault in OPT_IN_FAMILIES else "other")
    return "cutover" if fam in CUTOVER_FAMILIES else fam


def family_order(fam: str) -> tuple[int, str]:
    """Lanes in the order `--nemesis` names the families, then the rest by name."""
    order = [f for f in FAMILIES + OPT_IN_FAMILIES if f not in CUTOVER_FAMILIES]
    order += ["heal", "other"]
    return (order.index(fam), fam) if fam in order else (len(order), fam)


def family_color(family: str, palette: dict[str, str]) -> str:
    """The colour of a fault family on this page: one per family (about ten families,
    ten distinct colours), not one per kind (twenty kinds ran out of colours and
    repeated near-identical pastels)."""
    return assign_color(family, palette)


def fault_color(name: str, palette: dict[str, str]) -> str:
    """The colour of fault `name`: its family's, on every drawing of the page (the
    counterexample's bands too)."""
    return family_color(family_of(name), palette)


def axis(x: TimeAxis, y: float, height: float) -> str:
    """The time axis at `y`, its ticks in seconds, grid lines `height` up (every plot
    shares the window's axis, so a moment lines up across them)."""
    out = [f'<line class="axis" x1="{GUTTER}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}"/>']
    for px, label in x.ticks():
        out.append(f'<line class="grid" x1="{px:.1f}" y1="{y - height:.1f}" x2="{px:.1f}" '
                   f'y2="{y + 4:.1f}"/><text class="tick" x="{px:.1f}" y="{y + 15:.1f}" '
                   f'text-anchor="middle">{esc(label)}</text>')
    return "".join(out)


def visible(x: TimeAxis, f: Mapping[str, Any]) -> bool:
    """Whether fault `f` overlaps the window (an open fault runs to its end)."""
    s = f.get("start_ns") or 0
    e = f.get("end_ns")
    return not ((e is not None and e < x.t0) or s > x.t1)


def bands(x: TimeAxis, faults: Sequence[Mapping[str, Any]], top: float, height: float,
          palette: dict[str, str]) -> str:
    """One band per fault behind a plot, in its family's colour; hover for what and
    when."""
    out = []
    for f in faults:
        s = f.get("start_ns") or 0
        e = f.get("end_ns")
        e = x.t1 if e is None else e
        xa, xb = x(s), x(e)
        color = fault_color(str(f.get("fault")), palette)
        targets = f.get("targets")
        tip = (f"{f.get('fault')} on {targets_text(targets)} from {secs(s)} s to "
               f"{secs(f.get('end_ns'))} s")
        out.append(f'<rect class="band" data-fault="{esc(f.get("fault"))}" x="{xa:.1f}" '
                   f'y="{top:.1f}" width="{max(xb - xa, 1.5):.1f}" height="{height:.1f}" '
                   f'fill="{color}"><title>{esc(tip)}</title></rect>')
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
