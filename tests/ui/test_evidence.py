"""Issue 23's review pages, without a browser: a failed run's page leads with its
evidence (parts 3), the timeline's lanes (part 4), the run list's triage (part 5), each
checked on the rendering functions' output. `test_serve_browser.py` checks the same
pages as Chromium lays them out.
"""
from __future__ import annotations

import html
import itertools
import re
from pathlib import Path
from typing import Any

import pytest

from checker import check, get_model, read_history
from checker.visualize import render_html
from orchestrator import store
from orchestrator.ui.data import in_seconds, report_data
from orchestrator.ui.lanes import (
    CHAR_W,
    LabelRow,
    client_lanes,
    fault_lanes,
    violation_marker,
    worker_of,
)
from orchestrator.ui.plots import latency_svg, throughput_svg, timeline_svg
from orchestrator.ui.report import entry_rows, render_report
from orchestrator.ui.runlist import duration_text, index_page
from orchestrator.ui.svg import RIGHT, WIDTH, TimeAxis, family_of
from tests.conftest import assert_no_key_material
from tests.ui.test_review import BUSY_FAULTS, store_synthetic_run

S = 1_000_000_000


# --------------------------------------------------------------------- part 4: lanes


@pytest.mark.parametrize("fault,family", [
    ("kill", "kill"), ("restart", "kill"), ("kill-power", "power"), ("halves", "partition"),
    ("cut-in", "partition"), ("slow-out", "net"), ("loss", "net"), ("snapshot", "snapshot"),
    ("clock-skew", "clock"), ("corrupt-entry", "corrupt"), ("heal-all", "heal"),
    ("rotate", "cutover"), ("enable-raft-envelope", "cutover"),
    ("cutover-settled", "cutover"), ("partition", "partition"), ("no-such-kind", "other")])
def test_a_fault_is_drawn_in_its_familys_lane(fault: str, family: str) -> None:
    assert family_of(fault) == family


def _labels(svg: str, cls: str = "faultlabel") -> list[tuple[float, float, str]]:
    """(x, y, text) of every label of class `cls`."""
    return [(float(x), float(y), html.unescape(t)) for x, y, t in re.findall(
        rf'<text class="{cls}[^"]*" x="([\d.]+)" y="([\d.]+)">([^<]*)</text>', svg)]


def _overlapping(labels: list[tuple[float, float, str]]) -> list[Any]:
    boxes = [(x, x + len(t) * CHAR_W, y, t) for x, y, t in labels]
    return [(a[3], b[3]) for a, b in itertools.combinations(boxes, 2)
            if abs(a[2] - b[2]) < 10 and a[0] < b[1] and b[0] < a[1]]


def _busy_faults(end: int) -> list[dict[str, Any]]:
    return [{"start_ns": int(a * end), "end_ns": int(b * end), "fault": f, "targets": t}
            for f, t, a, b in BUSY_FAULTS]


def test_fault_lanes_one_per_family_and_labels_never_overlap_nor_clip() -> None:
    end = 30 * S
    faults = _busy_faults(end)
    svg, height = fault_lanes(TimeAxis(0, end), faults, 20, {})
    families = re.findall(r'<g class="faultlane" data-family="([^"]+)"', svg)
    assert sorted(families) == sorted({family_of(f["fault"]) for f in faults})
    assert len(set(families)) == len(families) and height > 0
    labels = _labels(svg)
    assert len(labels) >= len(families)  # most windows keep a label
    assert _overlapping(labels) == []
    assert all(x + len(t) * CHAR_W <= WIDTH - RIGHT + 0.5 for x, _y, t in labels)
    # one colour per family, and distinct families do not share one
    colors = {fam: set(re.findall(rf'data-family="{fam}".*?fill="(#[0-9a-f]{{6}})"'
                                  r'[^>]*stroke', svg)) for fam in families}
    assert all(len(c) == 1 for c in colors.values()), colors
    assert len({c.pop() for c in colors.values()}) == len(families)


def test_a_label_row_refuses_what_would_touch_or_run_off_the_plot() -> None:
    row = LabelRow()
    assert row.place(200, "pause n1") == 200
    assert row.place(210, "kill n2") is None  # would overlap the first
    assert row.place(200 + 8 * CHAR_W + 10, "kill") is not None
    x = row.place(WIDTH, "corrupt-entry n3")  # moved left to fit
    assert x is not None and x + 16 * CHAR_W <= WIDTH - RIGHT
    assert row.place(500, "a long label", limit=520) is None  # would cross the next bar


def test_clients_get_one_lane_per_worker_not_per_process() -> None:
    ops = [{"process": p, "start_ns": i * S, "end_ns": i * S + S // 2, "type": "ok"}
           for i, p in enumerate([0, 1, 2, 12, 22, 1, 0, 32])]  # 2 retired three times
    ops += [{"process": f"final-{k}", "start_ns": 20 * S, "end_ns": 21 * S, "type": "ok"}
            for k in range(3)]
    lanes = client_lanes(ops, 10, 30 * S)
    assert [lane["name"] for lane in lanes] == ["w0", "w1", "w2", "final"]
    assert lanes[2]["procs"] == ["2", "12", "22", "32"]
    assert lanes[3]["n"] == 3  # the final reads overlap: a row each
    assert worker_of(14, 10) == "w4" and worker_of("final-3", 10) == "final"
    svg = timeline_svg(ops, [], [], 0, 30 * S, {}, concurrency=10)
    assert len(re.findall(r'<g class="client"', svg)) == 4


def test_the_cutover_lane_names_the_operators_moments() -> None:
    end = 30 * S
    faults = [{"start_ns": 9 * S, "end_ns": 9 * S + S // 100, "fault": "enable-raft-envelope",
               "targets": ["n1"], "detail": {}},
              {"start_ns": 9 * S, "end_ns": 9 * S, "fault": "cutover-settled", "targets": None,
               "detail": {"cutover": 507}},
              {"start_ns": 20 * S, "end_ns": 20 * S + S // 10, "fault": "rotate",
               "targets": ["n1"], "detail": {"key_id": 4}}]
    events = [{"node": "n2", "time_ns": 9 * S + 1000, "kind": "encryption-applied",
               "detail": {"what": "marker-fresh", "index": 507}}]
    svg = timeline_svg([], events, faults, 0, end, {})
    lane = re.search(r'<g class="cutoverlane">.*?</g>', svg, re.S)
    assert lane, "no cutover lane"
    texts = [t for _x, _y, t in _labels(lane.group(0))]
    assert "settled C=507" in texts and "rotate 4" in texts
    assert "faultlane" not in svg  # the operator's records are not faults
    assert _overlapping(_labels(svg)) == []


@pytest.mark.parametrize("draw", ["timeline", "latency", "throughput"])
def test_every_plot_marks_the_first_violation(draw: str) -> None:
    ops = [{"process": 0, "start_ns": i * S, "end_ns": i * S + S // 10, "type": "ok"}
           for i in range(10)]
    t = 4 * S + 123_000_000

    def plot(vt: int | None) -> str:
        if draw == "timeline":
            return timeline_svg(ops, [], [], 0, 10 * S, {}, violation_ns=vt)
        if draw == "latency":
            return latency_svg(ops, [], 0, 10 * S, {}, violation_ns=vt)
        return throughput_svg([[o["end_ns"], "ok"] for o in ops], [], 0, 10 * S, {},
                              violation_ns=vt)

    svg = plot(t)
    assert f'<g class="violation-marker" data-t-ns="{t}">' in svg
    assert "first violation 4.123 s" in svg
    assert "violation-marker" not in plot(None)
    assert "violation-marker" not in plot(20 * S)  # outside the window
    assert violation_marker(TimeAxis(0, 10 * S), None, 0, 10) == ""


# ------------------------------------------------------------- part 3: the evidence


@pytest.fixture(scope="module")
def stale(tmp_path_factory) -> tuple[str, dict[str, Any]]:
    results = str(tmp_path_factory.mktemp("evidence"))
    run = store_synthetic_run(results, "20260101T000002-s2", seed=2, stale=True, busy=True)
    store_synthetic_run(results, "20260101T000003-s3", seed=3, leak=True)
    return results, run


def _report(results: str, run_id: str) -> str:
    with store.opened(results) as db:
        return render_report(report_data(db, store.resolve_run(db, run_id)))


def test_a_failed_runs_page_leads_with_its_counterexample(stale) -> None:
    results, run = stale
    text = _report(results, run["id"])
    box = text.index('id="first-violation"')
    assert '<a href="#counterexample">' in text[box:text.index("</header>")]
    cx = text.index('id="counterexample"')
    assert box < cx < text.index('<section id="config">')  # right below, before the rest
    assert text[box:cx].count("<section") == 1  # nothing between them but its section
    for plot in ("timeline", "latency", "throughput"):
        svg = re.search(rf'<svg class="plot [a-z]+" id="{plot}".*?</svg>', text, re.S)
        assert svg and "violation-marker" in svg.group(0), plot
    assert_no_key_material(text.encode(), run["kek"])


def test_unchecked_keys_collapse_into_one_grey_line() -> None:
    skipped = "not finished: another partition is already invalid"
    lin = [{"key": "k2", "verdict": "invalid", "explanation": "invalid key 'k2'",
            "stored": True}]
    lin += [{"key": k, "verdict": "unknown", "reason": skipped, "stored": False,
             "explanation": f"unknown key {k!r}: {skipped}"} for k in ("k0", "k1", "k3")]
    lin += [{"key": "k9", "verdict": "unknown", "reason": "timed out after 60 s",
             "stored": False, "explanation": "unknown key 'k9': timed out"}]
    text = render_report({"run": {"id": "r1", "verdict": "invalid"}, "lin": lin,
                          "checks": {"linearizability": {"valid": "invalid"}},
                          "first": ["linearizability", "key 'k2': ...", 3 * S],
                          "window": {"from_ns": 0, "to_ns": 10 * S}})
    lines = re.findall(r'<p class="unchecked">(.*?)</p>', text)
    assert len(lines) == 1 and "3 other keys not checked (k0, k1, k3)" in lines[0]
    assert "another partition is already invalid" in lines[0]
    for k in ("k0", "k1", "k3"):
        assert f'data-key="{k}"' not in text  # no orange section per key
    assert 'class="key verdict-unknown" data-key="k9"' in text  # a real unknown stays


def test_the_counterexample_speaks_seconds_of_the_run(corpus: Path) -> None:
    model = get_model("kv")
    ops = read_history(str(corpus / "kv" / "c10-bad.txt"), fmt="porcupine-kv")
    res = check(model, ops)
    part = next(p for p in res.partitions if p.blocked)
    times = {}
    for o in part.ops:
        times[o.call] = o.call * 1_000_000
        if o.ret is not None:
            times[o.ret] = o.ret * 1_000_000
    page = render_html(model, type(res)(res.verdict, [part], res.model, 0.0), times=times)
    bad = part.blocked[0][0]
    assert f"[{bad.call / 1000:.3f} s, " in page  # the blocked op's interval
    assert "process \\ s" in page and "process \\ event" not in page
    assert 'class="flabel"' in page  # the failing op's whole label
    plain = render_html(model, type(res)(res.verdict, [part], res.model, 0.0))
    assert "process \\ event" in plain and f"[{bad.call}, " in plain


def test_stored_explanations_get_their_intervals_in_seconds() -> None:
    text = ("invalid key 'k2': ...\n    process    3  cas('k2', 'a', 'b') -> ok [723, 724]  "
            "=> 'b'\n    process    7  read('k2') -> 'a' [871, ∞]  illegal\n"
            "    process    1  write('k2', [1, 2]) -> ok [5, 6]")
    out = in_seconds(text, {723: 4_401_000_000, 724: 4_402_600_000, 871: 4_424_000_000,
                            5: 1_000_000})
    assert "[4.401 s, 4.403 s]  =>" in out and "[4.424 s, ∞]  illegal" in out
    assert "[1, 2]" in out and "[5, 6]" in out  # a value, and an interval not fully known


def test_the_log_around_a_violation_labels_the_marker_and_skips_the_middle() -> None:
    entries = [{"node": "n1", "idx": i, "term": 1, "wrapped": i > 10, "key_id": 1,
                "opcode": None if i == 9 else 0, "opcode_name": None if i == 9 else "user"}
               for i in range(8, 40)]
    rows = entry_rows(entries, 10, ("n1", 30))
    roles = {r[1]: r[6] for r in rows}
    assert roles[10] == "marker (C)" and roles[30].startswith("offending")
    assert roles[11] == "above C" and roles[9] == ""
    stored = {r[1]: r[4] for r in rows}
    assert stored[8] == "cleartext" and stored[9] == "no-op" and stored[11] == "wrapped"
    gap = [r for r in rows if r[0] == "..."]
    assert len(gap) == 1 and gap[0][1] == "13 entries"  # 14..26 left out
    assert 20 not in roles


def test_an_i1_page_leads_with_the_offending_entries(stale) -> None:
    results, _run = stale
    text = _report(results, "20260101T000003-s3")
    assert '<a href="#entries">' in text
    assert text.index('id="entries"') < text.index('<section id="linearizability">')
    entries = re.search(r'<table class="i1-entries">.*?</table>', text, re.S)
    assert entries and "<td>marker (C)</td>" in entries.group(0)


# ---------------------------------------------------------------- part 5: the list


def test_a_simulated_run_shows_its_wall_time() -> None:
    row = {"source": "sim", "duration_s": 35.3, "started": "2026-01-01T00:00:00.000+00:00",
           "finished": "2026-01-01T00:00:01.250+00:00"}
    assert duration_text(row) == "35.3 s simulated · 1.2 s wall"
    assert "wall not recorded" in duration_text({**row, "finished": row["started"]})
    assert duration_text({"source": None, "duration_s": 12.04}) == "12.0 s"


def _set_source(results: str, run_id: str, source: str) -> None:
    db = store.open_db(results)
    with db.conn:
        db.conn.execute("update runs set source = ? where id = ?", [source, run_id])
    db.conn.close()


def test_the_run_list_counts_filters_and_groups(tmp_path: Path) -> None:
    results = str(tmp_path)
    store_synthetic_run(results, "20260101T000001-s1", seed=1,
                        started="2026-01-01T00:00:01.000+00:00")
    store_synthetic_run(results, "20260101T000002-s2", seed=2, stale=True,
                        started="2026-01-01T00:00:02.000+00:00")
    store_synthetic_run(results, "20260101T000003-s3", seed=3, leak=True,
                        started="2026-01-01T00:00:03.000+00:00")
    _set_source(results, "20260101T000002-s2", "sim")
    page = index_page(results)
    counts = dict(re.findall(r'data-verdict="(\w+)" data-count="(\d+)"', page))
    assert counts == {"invalid": "2", "valid": "1"}
    assert len(re.findall(r'<tr class="run ', page)) == 3
    sim_row = re.search(r'<tr class="run [^>]*data-world="sim">.*?</tr>', page, re.S)
    assert sim_row and '<span class="sim"' in sim_row.group(0)
    only = index_page(results, query={"verdict": "invalid", "world": "real"})
    assert re.findall(r'data-run="([^"]+)" data-verdict', only) == ["20260101T000003-s3"]
    grouped = index_page(results, query={"group": "build"})
    heads = re.findall(r'<tr class="group-head"><th colspan="9">([^<]*)</th>', grouped)
    assert heads == ["build fixed: 2 runs (1 invalid, 1 valid)",
                     "build no-barrier: 1 runs (1 invalid)"]
    # a filter link keeps the others and a set one clears itself
    real = index_page(results, query={"world": "real"})
    assert '<a class="fv" data-value="invalid" href="/?world=real&amp;verdict=invalid">' in real
    active = index_page(results, query={"world": "real", "verdict": "invalid"})
    assert '<a class="fv active" data-value="invalid" href="/?world=real">' in active


def test_a_build_is_named_by_its_profile_and_its_switches() -> None:
    from orchestrator.ui.runlist import build_of
    assert build_of({}, {}) == "fixed"
    assert build_of({"bugs": "no-barrier"}, {"profile": "fixed"}) == "no-barrier"
    # elastickv as it stands is not "elastickv: fixed", which reads as a fixed elastickv
    assert build_of({}, {"profile": "elastickv"}) == "elastickv"
    assert build_of({"bugs": "stale-check-first"}, {"profile": "elastickv"}) == \
        "elastickv: stale-check-first"
