"""The HTML visualization, on real check results: corpus files and generated histories."""
from __future__ import annotations

import html
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from checker import UNKNOWN, Verdict, check, get_model, read_history
from checker.history import EventPairer, Op
from checker.visualize import MAX_DRAWN_PARTITIONS, MAX_WINDOW_OPS, render_html, write_html


def _blob(page: str) -> list[list[Any]]:
    m = re.search(r'<script type="application/json" id="opdata">(.*?)</script>', page, re.S)
    assert m, "tooltip data blob missing"
    blob = json.loads(m.group(1))
    states = blob["states"]
    assert len(states) == len(set(states)), "each state text is stored once"
    return [d[:6] + [None if d[6] is None else states[d[6]]] + d[7:] for d in blob["ops"]]


def _sections(page: str) -> list[str]:
    """Each drawn partition: its <details> element, in page order."""
    return re.findall(r'<details class="part .*?</details>', page, re.S)


def _lanes(section: str) -> list[str]:
    return re.findall(r'<text class="lname"[^>]*>([^<]*)</text>', section)


def _assert_self_contained(page: str) -> None:
    low = page.lower()
    for bad in ("http://", "https://", "src=", "<link", "@import", "@font-face", "//cdn"):
        assert bad not in low, bad
    assert set(re.findall(r"url\(([^)]*)\)", page)) <= {"#hatch"}
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<script") == 2 and page.count("</script>") == 2


def _history(events: list[tuple]) -> list[Op]:
    """Events ("i", proc, f, value) / ("ok", proc, output) / ("info", proc)."""
    p = EventPairer("test")
    for ev in events:
        if ev[0] == "i":
            _, proc, f, value, *key = ev
            p.invoke(0, proc, f, key[0] if key else None, value)
        elif ev[0] == "ok":
            p.complete(0, ev[1], "ok", ev[2])
        else:
            p.complete(0, ev[1], "info")
    return p.finish()


def test_invalid_etcd_history_shows_the_failure(corpus: Path) -> None:
    model = get_model("cas-register")
    ops = read_history(f"{corpus}/etcd/etcd_000.log", "porcupine-etcd")
    result = check(model, ops)
    assert result.verdict is Verdict.INVALID
    page = render_html(model, result, title="etcd_000.log")
    _assert_self_contained(page)
    assert '<div class="verdict v-invalid" id="verdict">invalid</div>' in page
    assert "etcd_000.log" in page and "cas-register" in page
    part = result.partitions[0]
    [section] = _sections(page)
    # One lane per process of the partition, in numeric order.
    procs = sorted({o.process for o in part.ops})
    assert _lanes(section) == [str(p) for p in procs]
    # The failing op is named in the summary and drawn red; the order found is numbered.
    (bad, illegal), = part.blocked
    assert illegal
    assert html.escape(model.describe_op(bad)) in page
    assert section.count('class="op bl') == 1 and 'class="stuck"' in section
    badges = re.findall(r'<g class="badge[^"]*" data-i="\d+">.*?<text[^>]*>(\d+)</text>', section)
    assert sorted(map(int, badges)) == list(range(1, len(part.linearization) + 1))
    # Tooltip data: description, process, call/return, order and the state after.
    data = _blob(page)
    assert len(data) == len(part.ops)
    by_desc = {(d[0], d[2]): d for d in data}
    for k, step in enumerate(part.linearization, 1):
        row = by_desc[(model.describe_op(step.op), step.op.call)]
        assert row[1] == str(step.op.process) and row[3] == step.op.ret
        assert row[4] == k and row[5] == len(part.linearization)
        assert row[6] == model.describe_state(step.state)
    row = by_desc[(model.describe_op(bad), bad.call)]
    assert row[4] is None and "illegal in state" in row[7]
    assert row[7].endswith(model.describe_state(part.linearization[-1].state))


def test_valid_history_with_indeterminate_ops(corpus: Path) -> None:
    model = get_model("cas-register")
    result = check(model, read_history(f"{corpus}/etcd/etcd_002.log", "porcupine-etcd"))
    assert result.verdict is Verdict.VALID
    page = render_html(model, result)
    _assert_self_contained(page)
    assert 'id="verdict">valid</div>' in page
    [section] = _sections(page)
    assert section.startswith('<details class="part v-valid" id="p0" open>')
    assert 'class="op bl' not in section and 'class="stuck"' not in section
    part = result.partitions[0]
    chain = [s for s in part.linearization if s.unknown_chain]
    assert chain, "etcd_002 needs indeterminate writes to be linearizable"
    assert section.count('class="op ch lin ind') == len(chain)
    assert section.count('class="badge chb"') == len(chain)
    indeterminate = [o for o in part.ops if o.ret is None]
    assert section.count('class="hatch"') == len(indeterminate)
    notes = [d[7] for d in _blob(page)]
    assert sum("applied right before the next op" in n for n in notes) == len(chain)


def test_kv_partitions_worst_first_and_parallel_results(corpus: Path) -> None:
    model = get_model("kv")
    ops = read_history(f"{corpus}/kv/c10-bad.txt", "porcupine-kv")
    # Forked workers send back copies of the ops: steps must still match the drawn bars.
    result = check(model, ops, stop_early=False, workers=2)
    page = render_html(model, result, title="c10-bad.txt")
    _assert_self_contained(page)
    sections = _sections(page)
    assert len(sections) == len(result.partitions)
    ranks = [{"invalid": 0, "unknown": 1, "valid": 2}[re.match(
        r'<details class="part v-(\w+)"', s).group(1)] for s in sections]
    assert ranks == sorted(ranks) and ranks[0] == 0
    badges = sum(len(re.findall(r'<g class="badge', s)) for s in sections)
    assert badges == sum(len(p.linearization) for p in result.partitions)
    for p in result.failures():
        assert f"key {html.escape(model.describe_state(p.key))}" in page
        for op, _ in p.blocked:
            assert html.escape(model.describe_op(op)) in page


def test_html_special_characters_are_escaped(tmp_path: Any) -> None:
    model = get_model("kv")
    evil = "</script><b>&amp;"
    ops = _history([("i", 0, "put", evil, "<k>"), ("ok", 0, None),
                    ("i", 1, "get", None, "<k>"), ("ok", 1, evil + "!"),
                    ("i", "<proc>", "put", "x", "<k>"), ("info", "<proc>")])
    result = check(model, ops)
    assert result.verdict is Verdict.INVALID
    annotations = [{"start": 0, "end": 2, "label": "<i>partition</i>", "kind": "<kill>"}]
    out = tmp_path / "page.html"
    write_html(str(out), model, result, title="T<t>&x", annotations=annotations)
    page = out.read_text(encoding="utf-8")
    _assert_self_contained(page)
    for raw in ("<b>", "<k>", "<i>", "<proc>", "<kill>", "<t>"):
        assert raw not in page, raw
    assert "&lt;/script&gt;&lt;b&gt;&amp;amp;" in page
    assert "&lt;i&gt;partition&lt;/i&gt;" in page and "&lt;proc&gt;" in page
    assert "<h1>T&lt;t&gt;&amp;x</h1>" in page
    # JSON.parse gives the raw text back to the tooltip, which sets it as textContent.
    descs = [d[0] for d in _blob(page)]
    assert model.describe_op(ops[0]) in descs
    assert any(d[6] == model.describe_state(evil) for d in _blob(page))
    assert oct(os.stat(out).st_mode & 0o777) != oct(0o600)


def test_annotations_are_bands_over_the_lanes() -> None:
    model = get_model("cas-register")
    ops = _history([("i", 0, "write", 1), ("ok", 0, None), ("i", 1, "read", None),
                    ("ok", 1, 1), ("i", 2, "write", 2), ("ok", 2, None),
                    ("i", 0, "read", None), ("ok", 0, 2)])
    result = check(model, ops)
    annotations = [{"start": 1, "end": 4, "label": "partition n1", "kind": "partition"},
                   {"start": 5, "end": None, "label": "kill n2", "kind": "kill"},
                   {"start": 500, "end": 600, "label": "after the end", "kind": "kill"}]
    page = render_html(model, result, annotations=annotations)
    [section] = _sections(page)
    bands = re.findall(r'<g class="band"><title>([^<]*)</title><rect x="([\d.]+)"[^>]*'
                       r'width="([\d.]+)"', section)
    assert [b[0] for b in bands] == ["partition: partition n1", "kill: kill n2"]
    assert float(bands[1][1]) > float(bands[0][1]) and all(float(b[2]) > 0 for b in bands)
    # Listed in the header too, with one color per kind.
    assert page.count("<td>after the end</td>") == 1
    colors = re.findall(r'fill="(#[0-9a-f]{6})"/><text', section)
    assert len(colors) == 2 and colors[0] != colors[1]


def _long_register_history(pairs: int, procs: int = 5) -> list[Op]:
    """A write and an overlapping read per round, then one stale read at the end."""
    p = EventPairer("big")
    for i in range(pairs):
        a, b = i % procs, (i + 1) % procs
        p.invoke(0, a, "write", None, i)
        p.invoke(0, b, "read", None, None)
        p.complete(0, a, "ok", None)
        p.complete(0, b, "ok", i)
    p.invoke(0, 0, "write", None, -1)
    p.complete(0, 0, "info")
    p.invoke(0, 1, "read", None, None)
    p.complete(0, 1, "ok", 3)
    return p.finish()


def test_large_history_is_windowed_around_the_failure() -> None:
    model = get_model("cas-register")
    ops = _long_register_history(2500)
    result = check(model, ops)
    assert result.verdict is Verdict.INVALID and len(ops) == 5002
    t0 = time.perf_counter()
    page = render_html(model, result)
    assert time.perf_counter() - t0 < 3.0
    _assert_self_contained(page)
    [section] = _sections(page)
    assert "too many to draw" in section and "the last 300 of" in section
    drawn = re.findall(r'<g class="op ', section)
    assert 300 <= len(drawn) <= MAX_WINDOW_OPS
    assert len(page) < 2_000_000
    part = result.partitions[0]
    (bad, _), = part.blocked
    assert html.escape(model.describe_op(bad)) in section and section.count('class="op bl') == 1
    numbers = {int(n) for n in re.findall(r'rx="6"/><text[^>]*>(\d+)</text>', section)}
    assert numbers == set(range(len(part.linearization) - 299, len(part.linearization) + 1))
    assert len(_lanes(section)) == 5


def test_many_partitions_draw_some_and_list_the_rest() -> None:
    model = get_model("kv")
    events: list[tuple] = []
    keys = MAX_DRAWN_PARTITIONS + 10
    for k in range(keys):
        events += [("i", k % 3, "put", f"v{k}", f"key{k}"), ("ok", k % 3, None),
                   ("i", 9, "get", None, f"key{k}"), ("ok", 9, f"v{k}" if k != 37 else "no")]
    result = check(model, _history(events), stop_early=False)
    assert result.verdict is Verdict.INVALID and len(result.partitions) == keys
    page = render_html(model, result)
    sections = _sections(page)
    assert len(sections) == MAX_DRAWN_PARTITIONS
    assert sections[0].startswith('<details class="part v-invalid" id="p0" open>')
    assert "key37" in sections[0]
    # Valid partitions start collapsed when there are many.
    assert all(s.startswith('<details class="part v-valid" id="p') and '" open>' not in s[:60]
               for s in sections[1:])
    table = page[page.index('<section class="rest">'):]
    assert "10 more partition(s), not drawn" in table
    assert table.count('<td class="v-valid">valid</td>') == 10


def test_unknown_verdict_and_empty_history() -> None:
    model = get_model("cas-register")
    ops = _history([("i", 0, "write", 1), ("i", 1, "read", None), ("ok", 0, None),
                    ("ok", 1, 1)])
    result = check(model, ops, timeout=1e-9)  # out of time before the first step
    assert result.verdict is Verdict.UNKNOWN
    page = render_html(model, result)
    _assert_self_contained(page)
    assert 'class="verdict v-unknown" id="verdict">unknown</div>' in page
    assert result.partitions[0].reason in page
    empty = render_html(model, check(model, []), title="empty")
    assert "no operations" in empty and 'id="verdict">valid</div>' in empty


def test_odd_values_go_through_the_model_not_json() -> None:
    model = get_model("cas-register")
    ops = _history([("i", (1, "a"), "write", (1, 2)), ("ok", (1, "a"), None),
                    ("i", None, "read", None), ("ok", None, (1, 2)),
                    ("i", 3, "cas", ((1, 2), frozenset({1}))), ("info", 3),
                    ("i", 4, "read", None), ("ok", 4, UNKNOWN)])
    result = check(model, ops)
    assert result.verdict is Verdict.VALID
    page = render_html(model, result)
    data = _blob(page)
    assert "write((1, 2)) -> ok" in [d[0] for d in data]
    assert "(1, 2)" in [d[6] for d in data]
    assert {d[1] for d in data} >= {"(1, 'a')", "None", "3"}
