"""The UI layer's own rules: the report draws what the checkers stored (it never
searches again), the first-violation time is one rule, event kinds come from one enum,
and no-op entries are not cleartext."""
from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import checker.linearizability as lin_mod
from checker import Verdict, check, get_model, read_history
from checker.suite import counterexample, entry_time, witness
from checker.visualize import render_html
from node.events import EventKind
from orchestrator import store
from orchestrator.ui.data import report_data
from orchestrator.ui.plots import event_category
from orchestrator.ui.report import render_report
from tests.ui.test_review import store_synthetic_run

INVALID_FILES = [("etcd/etcd_000.log", "porcupine-etcd", "cas-register"),
                 ("kv/c10-bad.txt", "porcupine-kv", "kv")]


def _blob(page: str) -> Any:
    m = re.search(r'<script type="application/json" id="opdata">(.*?)</script>', page, re.S)
    assert m
    return json.loads(m.group(1))


@pytest.mark.parametrize("name,fmt,model_name", INVALID_FILES, ids=[f[0] for f in INVALID_FILES])
def test_a_stored_witness_redraws_the_same_counterexample(corpus: Path, name: str, fmt: str,
                                                          model_name: str) -> None:
    model = get_model(model_name)
    ops = read_history(str(corpus / name), fmt, model_name)
    res = check(model, ops, stop_early=False)
    bad = [p for p in res.partitions if p.verdict is Verdict.INVALID]
    assert bad
    for p in bad:
        stored = json.loads(json.dumps({"verdict": "invalid", "witness": witness(p)}))
        again = counterexample(model, ops, stored)
        assert again is not None
        assert [o.id for o in again.ops] == [o.id for o in p.ops]
        assert [(s.op.id, s.state, s.unknown_chain) for s in again.linearization] == [
            (s.op.id, s.state, s.unknown_chain) for s in p.linearization]
        assert [(o.id, ill) for o, ill in again.blocked] == [(o.id, ill) for o, ill in p.blocked]
        one = lin_mod.CheckResult(p.verdict, [p], model.name, 0.0)
        two = lin_mod.CheckResult(again.verdict, [again], model.name, 0.0)
        assert _blob(render_html(model, one)) == _blob(render_html(model, two))


def test_a_witness_that_does_not_fit_the_history_draws_nothing() -> None:
    model = get_model("kv")
    assert counterexample(model, [], {"verdict": "invalid"}) is None
    assert counterexample(model, [], {"verdict": "invalid",
                                      "witness": {"order": [5], "blocked": [[6, True]]}}) is None


@pytest.fixture
def stale(tmp_path: Path) -> tuple[str, dict[str, Any]]:
    results = str(tmp_path)
    return results, store_synthetic_run(results, "20260101T000002-s2", seed=2, stale=True)


def test_the_report_never_searches_again(stale, monkeypatch) -> None:
    results, run = stale

    def no_search(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("the report ran the linearizability search")

    monkeypatch.setattr(lin_mod, "search_partition", no_search)
    with store.opened(results) as db:
        data = report_data(db, store.resolve_run(db, run["id"]))
    bad = [k for k in run["checks"]["linearizability"]["keys"] if k["verdict"] == "invalid"]
    assert bad and [it["key"] for it in data["lin"] if it.get("html")] == [
        k["key"] for k in bad]
    assert render_report(data).count('<iframe class="counterexample"') == len(bad)


def test_a_verdict_stored_without_its_witness_says_how_to_get_it(stale) -> None:
    results, run = stale
    lin = run["checks"]["linearizability"]
    for k in lin["keys"]:
        k.pop("witness", None)
    conn = sqlite3.connect(store.db_path(results))
    with conn:
        conn.execute("update checks set detail = ? where run = ? and checker = ?",
                     [json.dumps(lin), run["id"], "linearizability"])
    conn.close()
    with store.opened(results) as db:
        page = render_report(report_data(db, store.resolve_run(db, run["id"])))
    assert '<iframe class="counterexample"' not in page
    assert f"<code>cutover check {run['id']}</code> stores it" in page


def test_the_first_violation_time_is_one_rule() -> None:
    v = {"node": "n1", "index": 12}
    ev = [("n2", 500, EventKind.HALT, {"index": 13}),  # another entry
          ("n3", 400, EventKind.PROGRESS, {"commit": 20}),  # another node's copy
          ("n1", 900, EventKind.PROGRESS, {"commit": 11}),  # not yet past it
          ("n1", 800, EventKind.STOP, {"commit": 12}),
          ("n2", 700, EventKind.HALT, {"index": 12}),
          ("n1", 100, "mystery", {"commit": 99, "index": 12})]  # unknown kinds prove nothing
    assert entry_time(v, ev) == 700
    assert entry_time(v, ev[:4]) == 800
    assert entry_time({**v, "t": 50}, ev[:3]) == 50
    assert entry_time(v, ev[:3], default=42) == 42
    assert entry_time({"node": "n1"}, ev, default=None) is None


def test_event_kinds_the_ui_draws_and_those_it_does_not_know() -> None:
    assert event_category(EventKind.HALT, {}) == "halt"
    assert event_category("halt", {}) == "halt"  # as stored: a plain string
    assert event_category(EventKind.ENCRYPTION_APPLIED, {"what": "marker-fresh"}) \
        == "marker applied"
    for kind in ("cutover-applied", "marker-applied", "digest", "mystery"):
        assert event_category(kind, {"index": 1}) is None
    assert all(k == k.value and isinstance(k, str) for k in EventKind)
