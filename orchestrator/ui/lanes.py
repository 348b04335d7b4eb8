"""The timeline's lanes, drawn as Jepsen draws its nemesis: one lane per fault family
(its windows as bars, one colour per family, labels that never overlap), one lane of
the cutover's own moments (the operator's enable and rotations, the marker proposed
and first applied), one lane per client worker, and the "first violation" marker that
crosses every plot.

Why lanes and not bands: a default run has about twenty fault windows; drawn as bands
behind the whole timeline they overlap, their pastel colours run together and their
labels collide. In a lane per family a window has its own row and its label is placed
only where it fits (the tooltip keeps the rest).

Why workers and not processes: a process that times out (`info`) is retired and its
worker goes on as process `p + concurrency` (Jepsen's rule), so one lane per process
opened a new lane on every `info`: about 135 lanes in a default run.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from checker.history import process_sort_key
from orchestrator.ui.svg import (
    GUTTER,
    RIGHT,
    WIDTH,
    TimeAxis,
    esc,
    family_color,
    family_of,
    family_order,
    secs,
)

CHAR_W = 6.2  # px of one character of the 10px monospace labels (measured: 6.02)
LABEL_GAP = 6  # px between two labels of one lane
FAULT_ROW_H = 14
CUTOVER_LANE_H = 20
MARKER_LABEL_H = 14  # the row above the lanes where the violation marker is named

def text_w(text: str) -> float:
    """The width a label takes (monospace, so the count of characters says it)."""
    return len(text) * CHAR_W


class LabelRow:
    """Where labels of one row may still go: each is placed at its wish or not at all,
    so two labels never overlap, none runs into a later bar of its row, and none runs
    past the plot's right edge."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []

    def place(self, x: float, text: str, limit: float = WIDTH - RIGHT) -> float | None:
        """The x where `text` goes (its wish `x`, moved left to fit the plot), or None
        when it would cross `limit` (the next bar's start) or touch a label already
        placed."""
        w = text_w(text)
        x = max(GUTTER, min(x, WIDTH - RIGHT - w))
        if x + w > limit:
            return None
        a, b = x - LABEL_GAP / 2, x + w + LABEL_GAP / 2
        if any(a < e and s < b for s, e in self.spans):
            return None
        self.spans.append((a, b))
        return x


def _rows(spans: Sequence[tuple[float, float]]) -> tuple[list[int], int]:
    """A row per span so that spans of one row do not overlap (greedy, in order)."""
    ends: list[float] = []
    rows = []
    for a, b in spans:
        for i, e in enumerate(ends):
            if a >= e:
                ends[i] = b
                rows.append(i)
                break
        else:
            ends.append(b)
            rows.append(len(ends) - 1)
    return rows, max(1, len(ends))


def _next_starts(spans: Sequence[tuple[float, float]], rows: Sequence[int]) -> list[float]:
    """For each span, where the next span of its row starts (the plot's right edge for
    the last one): a label must end before it."""
    out = [float(WIDTH - RIGHT + 2)] * len(spans)
    last: dict[int, int] = {}
    for i in range(len(spans) - 1, -1, -1):
        j = last.get(rows[i])
        if j is not None:
            out[i] = spans[j][0]
        last[rows[i]] = i
    return out


def fault_lanes(x: TimeAxis, faults: Sequence[Mapping[str, Any]], top: float,
                palette: dict[str, str]) -> tuple[str, float]:
    """One lane per fault family (the cutover's records excluded: `cutover_lane`),
    each window a bar with its kind and targets as label where it fits; returns the
    SVG and the height used."""
    by_fam: dict[str, list[Mapping[str, Any]]] = {}
    for f in faults:
        fam = family_of(str(f.get("fault")))
        if fam != "cutover":
            by_fam.setdefault(fam, []).append(f)
    out: list[str] = []
    y = top
    for fam in sorted(by_fam, key=family_order):
        items = sorted(by_fam[fam], key=lambda f: f.get("start_ns") or 0)
        spans = [(x(f.get("start_ns") or 0),
                  max(x(x.t1 if f.get("end_ns") is None else f["end_ns"]),
                      x(f.get("start_ns") or 0) + 2)) for f in items]
        rows, n = _rows(spans)
        h = n * FAULT_ROW_H
        color = family_color(fam, palette)
        out.append(f'<g class="faultlane" data-family="{esc(fam)}">'
                   f'<rect class="lanebg" x="{GUTTER}" y="{y:.1f}" '
                   f'width="{WIDTH - GUTTER - RIGHT}" height="{h}" fill="#f7f7f7"/>'
                   f'<text class="lane" x="{GUTTER - 6}" y="{y + h / 2 + 4:.1f}" '
                   f'text-anchor="end">{esc(fam)}</text>')
        label_rows = [LabelRow() for _ in range(n)]
        limits = _next_starts(spans, rows)
        for f, (xa, xb), r, limit in zip(items, spans, rows, limits, strict=True):
            ry = y + r * FAULT_ROW_H
            name = str(f.get("fault"))
            targets = f.get("targets")
            who = ",".join(map(str, targets)) if isinstance(targets, list) else ""
            tip = (f"{name} on {who or '-'} from {secs(f.get('start_ns'))} s to "
                   f"{secs(f.get('end_ns')) if f.get('end_ns') is not None else 'the end'}")
            out.append(f'<rect class="fault" data-fault="{esc(name)}" x="{xa:.1f}" '
                       f'y="{ry + 1:.1f}" width="{max(xb - xa, 2.0):.1f}" '
                       f'height="{FAULT_ROW_H - 2}" fill="{color}" fill-opacity=".45" '
                       f'stroke="{color}"><title>{esc(tip)}</title></rect>')
            for text in (f"{name} {who}".strip(), name):
                lx = label_rows[r].place(xa + 2, text, limit - 2)
                if lx is not None:
                    out.append(f'<text class="faultlabel" x="{lx:.1f}" '
                               f'y="{ry + FAULT_ROW_H - 3.5:.1f}">{esc(text)}</text>')
                    break
        out.append("</g>")
        y += h + 2
    return "".join(out), y - top


# Which of the cutover's moments keep their label when they crowd (lower first): around
# EnableRaftEnvelope five of them fall within a few hundred ms.
PRIORITY = {"T": 0, "cutover-settled": 1, "enable-raft-envelope": 2, "enable": 2,
            "rotate": 3, "cutover-requested": 4, "marker-proposed": 6, "marker-committed": 7}
CUTOVER_LABEL_ROWS = 2


def _cutover_marks(faults: Sequence[Mapping[str, Any]],
                   events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The cutover's moments, in time order: the operator's windows and records, the
    marker proposed (each time), committed, and applied fresh first (T)."""
    marks: list[dict[str, Any]] = []
    for f in faults:
        name = str(f.get("fault"))
        if family_of(name) != "cutover":
            continue
        d = f.get("detail") or {}
        label = {"enable-raft-envelope": "enable", "cutover-requested": "requested",
                 "cutover-settled": "settled"}.get(name, name)
        if name == "rotate" and d.get("key_id") is not None:
            label = f"rotate {d['key_id']}"
        if name == "cutover-settled" and d.get("cutover") is not None:
            label = f"settled C={d['cutover']}"
        marks.append({"t": f.get("start_ns") or 0, "end": f.get("end_ns"), "label": label,
                      "kind": name, "tip": f"{name} on {f.get('targets') or '-'}",
                      "rank": PRIORITY.get(name, 5)})
    seen: set[str] = set()
    for e in events:
        kind = str(e.get("kind"))
        d = e.get("detail") or {}
        what = str(d.get("what") or "")
        if kind == "marker-proposed":
            label = "marker proposed"
        elif kind == "marker-committed" and kind not in seen:
            label = "marker committed"
        elif kind == "encryption-applied" and what == "marker-fresh" and "T" not in seen:
            label, kind = "T: marker applied", "T"
        else:
            continue
        seen.add(kind)
        t = e.get("time_ns")
        if t is not None:
            marks.append({"t": t, "end": t, "label": label, "kind": kind,
                          "tip": f"{e.get('node')} {label} (index {d.get('index', '-')})",
                          "rank": PRIORITY.get(kind, 5)})
    return sorted(marks, key=lambda m: m["t"])


def cutover_lane(x: TimeAxis, faults: Sequence[Mapping[str, Any]],
                 events: Sequence[Mapping[str, Any]], top: float) -> tuple[str, float]:
    """The lane of the cutover's moments (`_cutover_marks`); ("", 0) when there are
    none in the window."""
    marks = [m for m in _cutover_marks(faults, events) if x.t0 <= m["t"] <= x.t1]
    if not marks:
        return "", 0.0
    h = CUTOVER_LANE_H * CUTOVER_LABEL_ROWS
    out = [f'<g class="cutoverlane"><rect class="lanebg" x="{GUTTER}" y="{top:.1f}" '
           f'width="{WIDTH - GUTTER - RIGHT}" height="{h}" fill="#f3eef8"/>'
           f'<text class="lane" x="{GUTTER - 6}" y="{top + h / 2 + 4:.1f}" '
           f'text-anchor="end">cutover</text>']
    for m in marks:
        xa = x(m["t"])
        end = m["end"]
        xb = x(x.t1 if end is None else end)
        tip = f"{secs(m['t'])} s  {m['tip']}"
        if xb - xa >= 2:
            out.append(f'<rect class="cutmark" data-kind="{esc(m["kind"])}" x="{xa:.1f}" '
                       f'y="{top + 2:.1f}" width="{xb - xa:.1f}" height="{h - 4}" '
                       f'fill="#8e24aa" fill-opacity=".25"><title>{esc(tip)}</title></rect>')
        else:
            out.append(f'<line class="cutmark" data-kind="{esc(m["kind"])}" x1="{xa:.1f}" '
                       f'y1="{top + 1:.1f}" x2="{xa:.1f}" y2="{top + h - 1:.1f}" '
                       f'stroke="#6a1b9a" stroke-width="2"><title>{esc(tip)}</title></line>')
    rows = [LabelRow() for _ in range(CUTOVER_LABEL_ROWS)]
    for m in sorted(marks, key=lambda m: (m["rank"], m["t"])):
        for r, row in enumerate(rows):
            lx = row.place(x(m["t"]) + 3, m["label"])
            if lx is not None:
                out.append(f'<text class="faultlabel cutlabel" x="{lx:.1f}" '
                           f'y="{top + r * CUTOVER_LANE_H + 14:.1f}">{esc(m["label"])}</text>')
                break
    out.append("</g>")
    return "".join(out), float(h)


def worker_of(process: Any, concurrency: int | None) -> str:
    """The client lane of a process: its worker (`p mod concurrency`, Jepsen's rule for
    a retired process), `final` for the final reads, else the process itself."""
    s = str(process)
    if s.lstrip("-").isdigit():
        return f"w{int(s) % concurrency}" if concurrency else f"p{int(s)}"
    if s.startswith("final-"):
        return "final"
    return s


def worker_sort_key(lane: str) -> tuple[int, Any]:
    """Workers by number, then the final reads, then anything else by name."""
    if lane[:1] in "wp" and lane[1:].isdigit():
        return (0, int(lane[1:]))
    return (1 if lane == "final" else 2, lane)


def client_lanes(ops: Sequence[Mapping[str, Any]], concurrency: int | None,
                 t1: int) -> list[dict[str, Any]]:
    """The client lanes: per worker its ops, each op's row inside the lane (an op left
    open, or the final reads, overlap the next ones and get a row of their own) and the
    processes it ran as."""
    lanes: dict[str, dict[str, Any]] = {}
    for o in ops:
        lane = lanes.setdefault(worker_of(o["process"], concurrency),
                                {"ops": [], "procs": set()})
        lane["ops"].append(o)
        lane["procs"].add(str(o["process"]))
    out = []
    for name in sorted(lanes, key=worker_sort_key):
        lane = lanes[name]
        spans = [(float(o["start_ns"]), float(t1 if o.get("end_ns") is None else o["end_ns"]))
                 for o in lane["ops"]]
        rows, n = _rows(spans)
        procs = sorted(lane["procs"], key=process_sort_key)
        out.append({"name": name, "ops": lane["ops"], "rows": rows, "n": n,
                    "procs": procs})
    return out


def violation_marker(x: TimeAxis, t_ns: int | None, top: float, bottom: float,
                     label: bool = True) -> str:
    """The vertical "first violation" line at `t_ns` from `top` to `bottom`, named in
    the row above `top` when `label`; "" outside the window."""
    if t_ns is None or not (x.t0 <= t_ns <= x.t1):
        return ""
    px = x(t_ns)
    text = f"first violation {secs(t_ns)} s"
    out = [f'<g class="violation-marker" data-t-ns="{int(t_ns)}">'
           f'<line x1="{px:.1f}" y1="{top:.1f}" x2="{px:.1f}" y2="{bottom:.1f}" '
           f'stroke="#c62828" stroke-width="1.5" stroke-dasharray="5 3"/>']
    if label:
        w = text_w(text)
        right = px + 4 + w <= WIDTH - RIGHT
        lx = px + 4 if right else px - 4
        out.append(f'<text class="vmlabel" x="{lx:.1f}" y="{top - 3:.1f}" '
                   f'text-anchor="{"start" if right else "end"}" fill="#c62828">'
                   f'{esc(text)}</text>')
    out.append(f"<title>{esc(text)}</title></g>")
    return "".join(out)
