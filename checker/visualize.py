"""A check result as one self-contained HTML page, in the spirit of Porcupine's visualizer.

Text (`explain`) says *what* failed; a picture of the concurrent ops says *why*: which
ops overlapped, which order the search managed to find, and where it got stuck. The page
is meant to be mailed around and opened years later, so it is a single file with inline
CSS, server-side SVG and a few lines of inline JS for tooltips; nothing is fetched.

Layout per partition: one lane per process, x = event position compressed to the events of
the ops drawn (keys of a kv history interleave, and gaps between them carry no meaning);
given the run's times (a run report has them), the positions are labelled in seconds of
the run. The page opens scrolled to the op that cannot come next, its label drawn whole.
The linearization (or its longest prefix) is drawn as numbered points joined by a line:
each point lies inside its op's interval and the points never move backwards in time,
which is exactly the real-time condition a linearization has to satisfy.

Tooltip data (op, state after, position in the linearization) is one JSON blob read by
the JS; every value goes through the model's `describe_*` and `str()` first, so arbitrary
Python values never reach `json.dumps`, and `<`, `>`, `&` are escaped inside the blob so
a value like `</script>` cannot end the script element.
"""
from __future__ import annotations

import html
import json
import math
import os
import secrets
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from .history import Op, process_sort_key
from .linearizability import CheckResult, PartitionResult, Step, Verdict
from .models import Model

MAX_FULL_OPS = 2000  # a partition with more ops than this is drawn as a window
WINDOW_STEPS = 300  # linearized ops kept in a window (the last ones)
MAX_WINDOW_OPS = 1500  # hard cap on the ops of a window, whatever overlaps it
MAX_DRAWN_PARTITIONS = 50  # the others are listed in a table
MAX_DRAWN_OPS = 40_000  # page-wide budget, so a huge run still gives a page a browser opens
MAX_TABLE_ROWS = 5000
MAX_OP_TEXT = 300
MAX_STATE_TEXT = 1500

# Geometry (px).
_GUTTER = 110
_AXIS_H = 28
_ROW_H = 30
_LANE_GAP = 6
_BAR_Y = 10
_BAR_H = 16
_CHAR_W = 6.1  # 10px monospace
# Fault bands, here and in the run report: one palette, colors handed out in order of
# first appearance (the report hands them out per fault family), so a fault has one color
# on every drawing of a run. Ten colors that tell apart (Tableau 10): a family's lane and
# its bands must not be mistaken for a neighbour's.
FAULT_COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2",
                "#edc948", "#9c755f", "#ff9da7", "#79706e"]


def write_html(path: str, model: Model, result: CheckResult, title: str = "",
               annotations: list[dict] | None = None) -> None:
    """Write the page for `result` to `path`; the write is atomic, so a reader (or a
    report linking to it) never sees half a page."""
    text = render_html(model, result, title=title, annotations=annotations)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def render_html(model: Model, result: CheckResult, title: str = "",
                annotations: list[dict] | None = None, nonce: str | None = None,
                times: Mapping[int, int] | None = None) -> str:
    """The whole page as a string (see the module docstring for what it shows).

    `annotations` are bands over the lanes, e.g. nemesis faults from a run report:
    dicts with `start` / `end` event positions (`end` None: until the end), `label`,
    `kind` (bands of one kind share a color) and optionally that `color`. `nonce` is
    the page's CSP nonce (`csp`); a page embedding this one passes its own. `times`
    maps event positions to ns since the run's start (a run report has them): the axis,
    the tooltips and the blocked ops then say seconds of the run, the unit of every
    other drawing of the run, instead of positions nobody can match with a timeline.
    """
    page = _Page(model, annotations or [], dict(times or {}))
    parts = sorted(result.partitions, key=lambda p: -p.verdict.rank)  # worst first
    drawn: list[PartitionResult] = []
    rest: list[PartitionResult] = []
    budget = MAX_DRAWN_OPS
    for p in parts:
        cost = min(len(p.ops), MAX_WINDOW_OPS if len(p.ops) > MAX_FULL_OPS else MAX_FULL_OPS)
        if len(drawn) < MAX_DRAWN_PARTITIONS and (cost <= budget or not drawn):
            drawn.append(p)
            budget -= cost
        else:
            rest.append(p)
    open_valid = len(parts) <= 4
    body = [_header(page, result, title)]
    for idx, p in enumerate(drawn):
        body.append(_partition_section(page, p, idx, open_valid))
    if rest:
        body.append(_rest_table(page, rest))
    if not parts:
        body.append('<p class="note">The history has no operations to check.</p>')
    return _document(title, "\n".join(body), {"ops": page.data, "states": page.states},
                     nonce or new_nonce())


# --------------------------------------------------------------------------------------
# Page state and text helpers


@dataclass
class _Page:
    model: Model
    annotations: list[dict]
    times: dict[int, int] = field(default_factory=dict)  # event position -> ns
    data: list[list[Any]] = field(default_factory=list)  # tooltip rows, indexed by data-i
    # State texts, each stored once: reads repeat the state before them, and a kv state
    # (a long appended string) would otherwise be copied into every row.
    states: list[str] = field(default_factory=list)
    state_ids: dict[str, int] = field(default_factory=dict)
    kind_colors: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for a in self.annotations:
            kind = str(a.get("kind", "fault"))
            if a.get("color"):  # the caller's color (the run report's, for the same fault)
                self.kind_colors.setdefault(kind, str(a["color"]))
            self.color(kind)

    def color(self, kind: str) -> str:
        return assign_color(kind, self.kind_colors)

    def when(self, pos: int | None) -> str:
        """An event position as the run's seconds when known, else as the position."""
        if pos is None:
            return "none (indeterminate)"
        t = self.times.get(pos)
        return f"{t / 1e9:.3f} s" if t is not None else f"event {pos}"

    def span(self, op: Op) -> str:
        """An op's interval, in the run's seconds when known (`when`)."""
        if not self.times:
            return f"[{op.call}, {'∞' if op.ret is None else op.ret}]"
        end = "∞" if op.ret is None else self.when(op.ret)
        return f"[{self.when(op.call)}, {end}]"

    def op_text(self, op: Op) -> str:
        return _clip(_safe(self.model.describe_op, op, _fallback_op), MAX_OP_TEXT)

    def state_text(self, state: Any) -> str:
        return _clip(_safe(self.model.describe_state, state, str), MAX_STATE_TEXT)

    def state_ref(self, state: Any) -> int:
        text = self.state_text(state)
        ref = self.state_ids.get(text)
        if ref is None:
            ref = self.state_ids[text] = len(self.states)
            self.states.append(text)
        return ref


def _safe(fn: Callable[[Any], str], x: Any, fallback: Callable[[Any], str]) -> str:
    """A model's describe_* crashing on an odd value must not cost the whole page."""
    try:
        return str(fn(x))
    except Exception:  # noqa: BLE001 - any model bug, shown with the fallback text
        return fallback(x)


def _fallback_op(op: Op) -> str:
    return f"{op.f}({op.key}, {op.value}) -> {op.output}"


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + f"… ({len(s)} chars)"


def assign_color(kind: str, assigned: dict[str, str]) -> str:
    """The color of fault `kind`: its own if it has one, else the next free one."""
    if kind not in assigned:
        assigned[kind] = FAULT_COLORS[len(assigned) % len(FAULT_COLORS)]
    return assigned[kind]


def esc(x: Any) -> str:
    """Text for HTML (element content or a quoted attribute); None is empty. The one
    escape of the project's pages: the UI's templates and SVG helpers use it too."""
    return html.escape("" if x is None else str(x), quote=True)


def _num(x: float) -> str:
    return f"{x:.1f}"


def _key_text(page: _Page, part: PartitionResult) -> str:
    if part.key is None:
        return "(whole history)"
    return _clip(_safe(page.model.describe_state, part.key, str), 80)


# --------------------------------------------------------------------------------------
# Header, legend, tables


def _header(page: _Page, result: CheckResult, title: str) -> str:
    counts = {v: 0 for v in Verdict}
    for p in result.partitions:
        counts[p.verdict] += 1
    n = len(result.partitions)
    split = ", ".join(f"{counts[v]} {v.value}" for v in (Verdict.INVALID, Verdict.UNKNOWN,
                                                         Verdict.VALID) if counts[v])
    n_ops = sum(len(p.ops) for p in result.partitions)
    v = result.verdict.value
    out = [f'<header><h1>{esc(title or "linearizability check")}</h1>',
           f'<div class="verdict v-{v}" id="verdict">{esc(v)}</div>',
           '<dl class="facts">',
           f"<dt>model</dt><dd>{esc(result.model)}</dd>",
           f"<dt>partitions</dt><dd>{n}{f' ({esc(split)})' if split else ''}</dd>",
           f"<dt>operations</dt><dd>{n_ops}</dd>",
           f"<dt>check time</dt><dd>{result.seconds:.3f} s</dd>",
           "</dl></header>", _legend(page)]
    if page.annotations:
        rows = []
        for a in page.annotations:
            kind = str(a.get("kind", "fault"))
            end = a.get("end")
            rows.append(f'<tr><td>{swatch(page.color(kind))}{esc(kind)}</td>'
                        f'<td>{esc(a.get("label", ""))}</td>'
                        f'<td>{esc(_at(page, a.get("start", 0)))}</td>'
                        f'<td>{"end" if end is None else esc(_at(page, end))}</td></tr>')
        out.append('<details class="annots"><summary>annotations '
                   f"({len(page.annotations)})</summary><table><tr><th>kind</th><th>label</th>"
                   "<th>from</th><th>to</th></tr>" + "".join(rows)
                   + "</table></details>")
    return "\n".join(out)


def _at(page: _Page, pos: Any) -> str:
    return page.when(pos) if page.times and isinstance(pos, int) else str(pos)


def _legend(page: _Page) -> str:
    items = [("lin", "linearized (number = order)"), ("nl", "not linearized"),
             ("bl", "cannot be linearized next: illegal in that state"),
             ("bx", "cannot be linearized next: legal, but nothing can follow"),
             ("ch", "indeterminate, applied to enable the next op"),
             ("ind", "indeterminate (no response): open to the end")]
    cells = []
    for cls, text in items:
        hatch = '<rect class="hatch" x="1" y="1" width="26" height="12"/>' if cls == "ind" else ""
        cells.append(f'<span class="lg"><svg width="28" height="14"><g class="op {cls}">'
                     f'<rect class="bar" x="1" y="1" width="26" height="12" rx="2"/>{hatch}'
                     f"</g></svg>{esc(text)}</span>")
    cells.append('<span class="lg"><svg width="28" height="14"><polyline class="path" '
                 'points="1,11 13,3 27,9"/></svg>linearization order</span>')
    return ('<div class="legend">' + "".join(cells) + '<span class="hint">hover an op for '
            "details, click to pin</span></div>")


def _rest_table(page: _Page, rest: list[PartitionResult]) -> str:
    rows = []
    for p in rest[:MAX_TABLE_ROWS]:
        done = sum(1 for s in p.linearization if not s.unknown_chain)
        total = sum(1 for o in p.ops if o.ret is not None)
        note = p.reason if p.verdict is Verdict.UNKNOWN else (
            f"{len(p.blocked)} op(s) cannot be linearized next"
            if p.verdict is Verdict.INVALID else "")
        rows.append(f"<tr><td>{esc(_key_text(page, p))}</td>"
                    f'<td class="v-{p.verdict.value}">{p.verdict.value}</td>'
                    f"<td>{len(p.ops)}</td><td>{done} / {total}</td><td>{esc(note)}</td></tr>")
    more = (f'<p class="note">... and {len(rest) - MAX_TABLE_ROWS} more partitions.</p>'
            if len(rest) > MAX_TABLE_ROWS else "")
    return (f'<section class="rest"><h2>{len(rest)} more partition(s), not drawn</h2>'
            f'<p class="note">At most {MAX_DRAWN_PARTITIONS} partitions (and '
            f"{MAX_DRAWN_OPS} ops) are drawn per page; the rest are listed here, worst "
            "first.</p><table><tr><th>key</th><th>verdict</th><th>ops</th>"
            "<th>linearized / completed</th><th>note</th></tr>" + "".join(rows)
            + "</table>" + more + "</section>")


# --------------------------------------------------------------------------------------
# One partition


@dataclass
class _View:
    """What gets drawn of a partition: its ops, the steps shown, and the left edge."""

    ops: list[Op]
    first_step: int  # index in the linearization of the first step shown
    t0: int | None  # left edge (event position) when windowed, else None
    note: str = ""


def _lin_points(steps: list[Step]) -> list[int]:
    """For each step, the latest call among it and the steps before it: a point in time
    inside the op's interval, never moving backwards (why it is inside: an op linearized
    before this one cannot have been called after this one returned)."""
    out = []
    g = -1
    for s in steps:
        g = max(g, s.op.call)
        out.append(g)
    return out


def _choose_view(part: PartitionResult, points: list[int]) -> _View:
    ops = part.ops
    if len(ops) <= MAX_FULL_OPS:
        return _View(list(ops), 0, None)
    lin = part.linearization
    first = max(0, len(lin) - WINDOW_STEPS)
    blocked_ops = [o for o, _ in part.blocked]
    if first < len(lin):
        t0 = points[first]
    elif blocked_ops:
        t0 = min(o.call for o in blocked_ops)
    else:
        t0 = min(o.call for o in ops)
    ends = [points[-1]] if lin else []
    ends += [o.call for o in blocked_ops]
    t1 = max(ends) if ends else None
    before = {s.op.id for s in lin[:first]}
    keep = {s.op.id for s in lin[first:]} | {o.id for o in blocked_ops}
    inside = []
    overlap = []
    for o in ops:
        if o.id in keep:
            continue
        if o.call >= t0:
            if t1 is None or o.call <= t1:
                inside.append(o)
        elif o.id not in before and (o.ret is None or o.ret > t0):
            overlap.append(o)  # pending across the left edge: still a candidate there
    room = max(0, MAX_WINDOW_OPS - len(keep))
    inside.sort(key=lambda o: o.call)
    # Nearest the failure when there is one, else from the start.
    extra = (inside[-room:] if t1 is not None else inside[:room]) if room else []
    room -= len(extra)
    overlap.sort(key=lambda o: o.call)
    extra += overlap[-room:] if room else []
    chosen = [o for o in ops if o.id in keep] + extra
    chosen.sort(key=lambda o: o.call)
    where = ("around the failure" if part.verdict is Verdict.INVALID else
             "around where the search stopped" if part.verdict is Verdict.UNKNOWN else
             "at the end of the linearization")
    bits = []
    if lin:
        bits.append(f"the last {len(lin) - first} of {len(lin)} linearized ops")
    if blocked_ops:
        bits.append(f"the {len(blocked_ops)} op(s) that cannot be linearized next")
    if bits:
        what = " and ".join(bits) + ", with the ops concurrent with them"
    else:
        where, what = "from the start", "no op was linearized"
    span = f"events {t0} to {t1}" if t1 is not None else f"from event {t0}"
    note = (f"This partition has {len(ops)} operations, too many to draw: showing "
            f"{len(chosen)} {where} ({what}; {span}). Ops that started earlier are cut "
            "at the left edge.")
    return _View(chosen, first, t0, note)


def _partition_section(page: _Page, part: PartitionResult, idx: int, open_valid: bool) -> str:
    lin = part.linearization
    points = _lin_points(lin)
    view = _choose_view(part, points)
    v = part.verdict.value
    is_open = part.verdict is not Verdict.VALID or open_valid
    summary = _partition_summary(page, part)
    svg, focus = _partition_svg(page, part, view, points)
    return (f'<details class="part v-{v}" id="p{idx}"{" open" if is_open else ""}>'
            f'<summary><span class="key">key {esc(_key_text(page, part))}</span> '
            f'<span class="pv v-{v}">{esc(v)}</span> '
            f'<span class="cnt">{len(part.ops)} ops</span></summary>'
            f"{summary}"
            + (f'<p class="note window">{esc(view.note)}</p>' if view.note else "")
            + f'<div class="scroll" data-focus="{_num(focus)}">{svg}</div></details>')


def _partition_summary(page: _Page, part: PartitionResult) -> str:
    lin = part.linearization
    done = sum(1 for s in lin if not s.unknown_chain)
    chain = len(lin) - done
    total = sum(1 for o in part.ops if o.ret is not None)
    indet = len(part.ops) - total
    extra = f", {chain} indeterminate op(s) applied" if chain else ""
    facts = (f"{done} of {total} completed ops linearized{extra}; {indet} indeterminate; "
             f"{part.configurations} configurations explored")
    if part.verdict is Verdict.VALID:
        return f'<p class="sum">Linearizable: {esc(facts)}.</p>'
    if part.verdict is Verdict.UNKNOWN:
        return (f'<p class="sum">Unknown: {esc(part.reason or "no reason given")}. '
                f"Longest prefix found so far: {esc(facts)}.</p>")
    state = lin[-1].state if lin else _safe_init(page.model)
    items = []
    for op, illegal in part.blocked:
        why = ("illegal in this state" if illegal else
               "legal here, but every continuation fails")
        items.append(f'<li><span class="mono">{esc(page.op_text(op))}</span> by process '
                     f"{esc(op.process)} {esc(page.span(op))}: {why}</li>")
    return (f'<p class="sum">Not linearizable. The longest linearizable prefix: {esc(facts)}. '
            f'Nothing can come next from state <span class="mono">'
            f"{esc(page.state_text(state))}</span>:</p><ul class=\"blocked\">"
            + "".join(items) + "</ul>")


def _safe_init(model: Model) -> Any:
    try:
        return model.init()
    except Exception:  # noqa: BLE001 - only used for a caption
        return None


@dataclass(frozen=True, slots=True)
class _Geometry:
    """The x scale of one drawing, built once per partition and shared by every part of
    it: positions are compressed to the events of the ops drawn (gaps between them carry
    no meaning), so anything placed on the drawing must go through the same axis."""

    axis: list[int]  # the event positions drawn, sorted
    at: dict[int, int]  # an axis position -> its index, the common case of `idx`
    unit: float  # px per event
    t0: int | None  # the left edge of a window, else None
    end_x: float  # where indeterminate ops run off to (axis units)

    @classmethod
    def of(cls, ops: list[Op], t0: int | None) -> _Geometry:
        axis_set = ({o.call if t0 is None else max(o.call, t0) for o in ops}
                    | {o.ret for o in ops if o.ret is not None})
        if t0 is not None:
            axis_set.add(t0)
        axis = sorted(axis_set)
        n = len(axis)
        unit = max(14.0 if n <= 1000 else 9.0, min(36.0, 2400.0 / max(1, n)))
        return cls(axis, {p: i for i, p in enumerate(axis)}, unit, t0, n + 1.5)

    def start_of(self, o: Op) -> int:
        """An op that began before a window's left edge is drawn from the edge."""
        return o.call if self.t0 is None else max(o.call, self.t0)

    def idx(self, pos: int) -> int:
        """Positions off the axis (a linearization point, an annotation) fall back to the
        slot at or before them, so they still land inside the right op."""
        i = self.at.get(pos)
        return i if i is not None else max(0, bisect_right(self.axis, pos) - 1)

    def px(self, x: float) -> float:
        return _GUTTER + self.unit * (x + 1)

    def span(self, o: Op) -> tuple[int, float]:
        """An indeterminate op never returned, so it stays open to the right edge."""
        return self.idx(self.start_of(o)), self.end_x if o.ret is None else self.idx(o.ret)


@dataclass
class _Lanes:
    """Where each op's row is, computed once: the bars, the order line and the stuck
    lines all need the same y, and the spans are reused by the bars."""

    lanes: list[tuple[Any, float, int]]  # (process, top y, height)
    row_y: dict[int, float]  # op id -> top of its row
    spans: dict[int, tuple[int, float]]  # op id -> (start, end) in axis units
    height: float


def _layout_lanes(ops: list[Op], geo: _Geometry) -> _Lanes:
    """One lane per process; overlapping ops of a process (an indeterminate op stays open
    while the process goes on) get extra rows, so no two bars are drawn over each
    other."""
    by_proc: dict[Any, list[Op]] = {}
    for o in sorted(ops, key=lambda o: o.call):
        by_proc.setdefault(o.process, []).append(o)
    row_y: dict[int, float] = {}
    spans: dict[int, tuple[int, float]] = {}
    lanes = []
    y = float(_AXIS_H)
    for p in sorted(by_proc, key=process_sort_key):
        ends: list[float] = []
        for o in by_proc[p]:
            a, b = spans[o.id] = geo.span(o)
            for r, e in enumerate(ends):
                if e < a:
                    ends[r] = b
                    break
            else:
                r = len(ends)
                ends.append(b)
            row_y[o.id] = y + r * _ROW_H
        h = max(1, len(ends)) * _ROW_H
        lanes.append((p, y, h))
        y += h + _LANE_GAP
    return _Lanes(lanes, row_y, spans, y + 4)


def _backdrop(page: _Page, geo: _Geometry, layout: _Lanes, width: float) -> list[str]:
    """Everything drawn behind the ops: lane stripes and names, the time axis labelled
    with real event positions (the x scale is compressed, so a reader needs them), and
    the annotation bands."""
    height = layout.height
    out = []
    for k, (p, ly, h) in enumerate(layout.lanes):
        out.append(f'<rect class="lane{k % 2}" x="0" y="{_num(ly)}" width="{_num(width)}" '
                   f'height="{h}"/><text class="lname" x="6" y="{_num(ly + h / 2 + 4)}">'
                   f"{esc(_clip(str(p), 16))}</text>")
    tick = max(1, math.ceil((64 if page.times else 56) / geo.unit))
    for i in range(0, len(geo.axis), tick):
        x = geo.px(i)
        t = page.times.get(geo.axis[i])
        label = f"{t / 1e9:.3f}" if t is not None else str(geo.axis[i])
        out.append(f'<line class="grid" x1="{_num(x)}" y1="{_AXIS_H - 6}" x2="{_num(x)}" '
                   f'y2="{_num(height)}"/><text class="tick" x="{_num(x)}" '
                   f'y="{_AXIS_H - 10}">{label}</text>')
    axl = "process \\ s" if page.times else "process \\ event"
    out.append(f'<text class="tick axl" x="6" y="{_AXIS_H - 10}">{axl}</text>')
    out.extend(_annotation_bands(page, geo, height))
    return out


def _annotation_bands(page: _Page, geo: _Geometry, height: float) -> list[str]:
    """Faults as translucent bands, so an anomaly can be read against what the nemesis
    was doing at the time; a band that misses the drawn events is left out."""
    out = []
    unit = geo.unit
    for a in page.annotations:
        band = _band(a, geo.axis, geo.t0)
        if band is None:
            continue
        xa, xb = band
        x1 = geo.px(xa) - unit / 2
        x2 = geo.px(min(xb, geo.end_x)) + unit / 2 if xb >= xa else x1 + 3
        kind = str(a.get("kind", "fault"))
        label = str(a.get("label", ""))
        out.append(f'<g class="band"><title>{esc(kind)}: {esc(label)}</title>'
                   f'<rect x="{_num(x1)}" y="{_AXIS_H - 4}" width="{_num(max(3, x2 - x1))}" '
                   f'height="{_num(height - _AXIS_H)}" fill="{page.color(kind)}"/>'
                   f'<text x="{_num(x1 + 2)}" y="{_num(height - 4)}" '
                   f'fill="{page.color(kind)}">{esc(_clip(label, 40))}</text></g>')
    return out


def _point_xs(lin: list[Step], points: list[int], shown: list[int],
              geo: _Geometry) -> dict[int, float]:
    """The x (axis units) of each shown linearization point, by op id. Points of several
    steps often share one axis slot (the same latest call); they are spread evenly
    inside it so that each badge stays visible and the order line still moves right."""
    slot = [geo.idx(points[i]) for i in shown]
    point_x: dict[int, float] = {}
    j = 0
    while j < len(shown):
        k = j
        while k < len(shown) and slot[k] == slot[j]:
            k += 1
        m = k - j
        for r in range(j, k):
            point_x[lin[shown[r]].op.id] = slot[j] + (r - j + 1) / (m + 1)
        j = k
    return point_x


def _op_class(o: Op, si: int | None, chain: bool, blocked: dict[int, bool],
              t0: int | None) -> str:
    """The CSS classes of a bar: its role in the verdict first (the tooltip shows that
    one), then the modifiers for an open or cut bar."""
    if o.id in blocked:
        cls = "bl" if blocked[o.id] else "bx"
    elif si is None:
        cls = "nl"
    else:
        cls = "ch lin" if chain else "lin"
    if o.ret is None:
        cls += " ind"
    if t0 is not None and o.call < t0:
        cls += " cut"
    return cls


def _op_note(page: _Page, lin: list[Step], o: Op, si: int | None, chain: bool,
             blocked: dict[int, bool]) -> str:
    """The tooltip's explanation of an op whose place in the order is not obvious from
    the drawing alone."""
    if o.id in blocked:
        before = lin[-1].state if lin else _safe_init(page.model)
        return (("cannot be linearized next: illegal in state " if blocked[o.id] else
                 "cannot be linearized next: legal in state ")
                + page.state_text(before)
                + ("" if blocked[o.id] else ", but no continuation succeeds from there"))
    if chain:
        return "indeterminate op, applied right before the next op because it needs it"
    if o.ret is None and si is None:
        return "indeterminate op, never needed: it may never have happened"
    return ""


def _op_bar(o: Op, i: int, cls: str, desc: str, x1: float, x2: float, ry: float,
            full: bool = False) -> str:
    """One op's bar; its label is cut to what fits, since the full text is in the
    tooltip (row `i` of the data blob); with `full` (an op that cannot come next) no
    label here: `_draw_ops` writes it whole, on top."""
    w = max(2.0, x2 - x1)
    parts = [f'<g class="op {cls}" data-i="{i}">',
             f'<rect class="bar" x="{_num(x1)}" y="{_num(ry + _BAR_Y)}" width="{_num(w)}" '
             f'height="{_BAR_H}" rx="2"/>']
    if o.ret is None:
        parts.append(f'<rect class="hatch" x="{_num(x1)}" y="{_num(ry + _BAR_Y)}" '
                     f'width="{_num(w)}" height="{_BAR_H}"/>')
    chars = int((w - 6) / _CHAR_W)
    if chars >= 3 and not full:
        label = desc if len(desc) <= chars else desc[: chars - 1] + "…"
        parts.append(f'<text class="olabel" x="{_num(x1 + 3)}" '
                     f'y="{_num(ry + _BAR_Y + _BAR_H - 4)}">{esc(label)}</text>')
    parts.append("</g>")
    return "".join(parts)


def _op_badge(i: int, si: int, chain: bool, cx: float, ry: float) -> str:
    """The numbered point of a linearized op: the order is read from these numbers."""
    txt = str(si + 1)
    bw = 5.6 * len(txt) + 5
    return (f'<g class="badge{" chb" if chain else ""}" data-i="{i}">'
            f'<rect x="{_num(cx - bw / 2)}" y="{_num(ry + 2)}" width="{_num(bw)}" '
            f'height="12" rx="6"/><text x="{_num(cx)}" y="{_num(ry + 11)}">'
            f"{txt}</text></g>")


def _draw_ops(page: _Page, part: PartitionResult, ops: list[Op], geo: _Geometry,
              layout: _Lanes, point_x: dict[int, float]) -> tuple[list[str], list[str], float]:
    """The bars and the badges (drawn apart: badges go on top of the order line, bars
    below it), and the x to scroll to first: the op that cannot come next, else the
    last point of the order. Appends each op's tooltip row to the page, in op order."""
    lin = part.linearization
    step_of = {s.op.id: i for i, s in enumerate(lin)}
    blocked = {o.id: illegal for o, illegal in part.blocked}
    total = len(lin)
    bars: list[str] = []
    badges: list[str] = []
    focus = 0.0
    for o in ops:
        a, b = layout.spans[o.id]
        x1, x2 = geo.px(a), geo.px(b)
        ry = layout.row_y[o.id]
        si = step_of.get(o.id)
        chain = si is not None and lin[si].unknown_chain
        cls = _op_class(o, si, chain, blocked, geo.t0)
        desc = page.op_text(o)
        state = page.state_ref(lin[si].state) if si is not None else None
        note = _op_note(page, lin, o, si, chain, blocked)
        if o.id in blocked:
            focus = max(focus, x1)
        i = len(page.data)
        page.data.append([desc, str(o.process), page.when(o.call) if page.times else o.call,
                          (page.when(o.ret) if o.ret is not None else None) if page.times
                          else o.ret, None if si is None else si + 1, total, state, note,
                          cls.split()[0]])
        bars.append(_op_bar(o, i, cls, desc, x1, x2, ry, full=o.id in blocked))
        if o.id in blocked:  # the failing op's whole label, on top of everything
            badges.append(f'<text class="flabel" x="{_num(x1 + 3)}" '
                          f'y="{_num(ry + _BAR_Y + _BAR_H - 4)}">{esc(desc)}</text>')
        if si is not None and o.id in point_x:
            cx = geo.px(point_x[o.id])
            badges.append(_op_badge(i, si, chain, cx, ry))
            if si == total - 1 and not part.blocked:
                focus = max(focus, cx)
    return bars, badges, focus


def _order_lines(part: PartitionResult, shown: list[int], point_x: dict[int, float],
                 geo: _Geometry, layout: _Lanes) -> list[str]:
    """The order found, as a line through the points, and dashed red lines from its last
    point to every op that cannot come next: together they show where the search got
    stuck."""
    lin = part.linearization
    row_y = layout.row_y
    out = []
    pts = [(geo.px(point_x[lin[s].op.id]), row_y[lin[s].op.id] + 8) for s in shown
           if lin[s].op.id in row_y]
    if len(pts) > 1:
        out.append('<polyline class="path" points="'
                   + " ".join(f"{_num(x)},{_num(yy)}" for x, yy in pts) + '"/>')
    if part.blocked:
        last = pts[-1] if pts else (geo.px(0), _AXIS_H)
        for o, _ in part.blocked:
            if o.id not in row_y:
                continue
            a, b = layout.spans[o.id]
            bx = geo.px(max(a + 0.5, min((a + b) / 2, a + 2)))
            out.append(f'<line class="stuck" x1="{_num(last[0])}" y1="{_num(last[1])}" '
                       f'x2="{_num(bx)}" y2="{_num(row_y[o.id] + _BAR_Y + _BAR_H / 2)}"/>')
    return out


def _partition_svg(page: _Page, part: PartitionResult, view: _View,
                   points: list[int]) -> tuple[str, float]:
    """The SVG of one partition, and the x (px) to scroll to first (the failure)."""
    geo = _Geometry.of(view.ops, view.t0)
    layout = _layout_lanes(view.ops, geo)
    height = layout.height
    width = geo.px(geo.end_x) + 24
    shown = list(range(view.first_step, len(part.linearization)))
    point_x = _point_xs(part.linearization, points, shown, geo)
    out = [f'<svg class="hist" width="{_num(width)}" height="{_num(height)}" '
           f'viewBox="0 0 {_num(width)} {_num(height)}" role="img">']
    out += _backdrop(page, geo, layout, width)
    bars, badges, focus = _draw_ops(page, part, view.ops, geo, layout, point_x)
    out += bars
    out += _order_lines(part, shown, point_x, geo, layout)
    out += badges
    out.append("</svg>")
    return "".join(out), focus


def _band(a: dict, axis: list[int], t0: int | None) -> tuple[float, float] | None:
    """An annotation's extent in axis units, or None when it misses what is drawn."""
    try:
        start = int(a.get("start", 0) or 0)
        end_raw = a.get("end")
        end = None if end_raw is None else int(end_raw)
    except (TypeError, ValueError):
        return None
    if not axis or start > axis[-1] or (end is not None and t0 is not None and end < t0):
        return None
    xa = bisect_left(axis, start)
    xb = (len(axis) + 1.0) if end is None else float(bisect_right(axis, end) - 1)
    return float(xa), xb


# --------------------------------------------------------------------------------------
# The document


def _json_blob(data: dict[str, Any]) -> str:
    """Tooltip data for a <script> element: `<`, `>` and `&` become JSON escapes, so no
    value can close the element or open a comment, and JSON.parse restores them."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")




_DEFS = ('<svg class="defs" width="0" height="0" aria-hidden="true"><defs>'
         '<pattern id="hatch" patternUnits="userSpaceOnUse" width="6" height="6" '
         'patternTransform="rotate(45)"><rect width="6" height="6" fill="none"/>'
         '<line x1="0" y1="0" x2="0" y2="6" stroke="#444" stroke-width="2" '
         'stroke-opacity=".35"/></pattern></defs></svg>')


@cache
def asset(name: str) -> str:
    """A file of `checker/assets/` (the page's CSS and JS), read once."""
    return (resources.files("checker") / "assets" / name).read_text(encoding="utf-8")


def new_nonce() -> str:
    """A fresh nonce for one page: only elements carrying it may run or style."""
    return secrets.token_urlsafe(18)


def csp(nonce: str) -> str:
    """The Content-Security-Policy of every page of the project (this view, the run
    report, the pages of `cutover serve`): nothing is fetched, and only the page's own
    `<script>` and `<style>` elements, which carry `nonce`, run. No 'unsafe-inline': a
    value that slipped past the escaping still could not execute. A report embeds this
    view in a sandboxed `srcdoc` frame, which inherits the report's policy, so the
    report hands the view its own nonce."""
    return (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "img-src data:; frame-src 'self' about: data:; base-uri 'none'; "
            "form-action 'none'")


def swatch(color: str, cls: str = "sw") -> str:
    """A color sample as SVG (a fill attribute, not an inline style: the CSP allows no
    style attribute)."""
    return (f'<svg class="{esc(cls)}" viewBox="0 0 1 1" preserveAspectRatio="none" '
            f'aria-hidden="true"><rect width="1" height="1" fill="{esc(color)}"/></svg>')


def _document(title: str, body: str, data: dict[str, Any], nonce: str) -> str:
    head_title = f"{title} - linearizability" if title else "linearizability check"
    n = esc(nonce)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{esc(csp(nonce))}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{esc(head_title)}</title><style nonce="{n}">{asset("visualize.css")}'
            "</style></head><body>\n"
            f"{_DEFS}\n{body}\n"
            '<div id="tip" hidden></div>\n'
            f'<script type="application/json" id="opdata">{_json_blob(data)}</script>\n'
            f'<script nonce="{n}">{asset("visualize.js")}</script>\n</body></html>\n')
