"""Reviewing stored runs: list, show, check, report, export, and the web server's pages.

One short real run (3 nodes, no nemesis) is recorded once for the module; everything
else is synthetic runs stored through the same `Recorder` a real run uses: a valid
one, one with a stale read (not linearizable) and one whose checker found cleartext
above the cutover (I1). Expectations come from what is stored, never from constants.
"""
from __future__ import annotations

import hashlib
import html
import io
import json
import os
import re
import shutil
import sqlite3
import urllib.error
import urllib.request
import zipfile
from http.client import HTTPConnection
from typing import Any

import pytest
from click.testing import CliRunner

from checker import suite
from checker.synth import inject_stale_read, simulate_kv
from orchestrator import store
from orchestrator.cli import main
from orchestrator.real.run import RunConfig, execute
from orchestrator.store import opened
from orchestrator.ui import DEFAULT_MAX_OPS
from orchestrator.ui.data import report_data
from orchestrator.ui.web import serving
from tests.conftest import assert_no_key_material

SCALE_NS = 10_000  # ns per time unit of checker.synth's histories


# --------------------------------------------------------------------------- helpers


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def db_state(results: str) -> tuple[str, dict[str, int]]:
    """The database's bytes (hash) and row counts: "nothing modified" made checkable."""
    path = store.db_path(results)
    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    counts = {}
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        for t in ("runs", "ops", "nemesis", "node_events", "log_entries", "checks"):
            try:
                counts[t] = conn.execute(f"select count(*) from {t}").fetchone()[0]
            except sqlite3.DatabaseError:
                counts[t] = -1
        conn.close()
    except sqlite3.DatabaseError:
        pass
    return digest, counts


def _fake_cutover(c: int, t_cut: int, bad: dict[str, Any]) -> dict[str, Any]:
    """A cutover checker result shaped like `checker.suite.check_invariants`'s."""
    titles = {"I1": "no cleartext above the cutover", "I2": "one cutover", "I3": "no halts",
              "I4": "convergence", "I5": "nonce uniqueness", "I6": "keys precede use"}
    inv = {k: {"name": k, "title": t, "valid": True, "first_violation": None,
               "violation_count": 0, "violations": [], "nodes": {}, "summary": {}}
           for k, t in titles.items()}
    inv["I1"].update(valid=False, first_violation=bad, violation_count=1, violations=[bad])
    sentence = (f"I1 no cleartext above the cutover violated at node {bad['node']}, index "
                f"{bad['index']}, term {bad['term']} (C = {c}): {bad['reason']}")
    return {"valid": "invalid", "cutover": c, "cutover_time_ns": t_cut, "invariants": inv,
            "nodes": {n: {"sidecar": {"cutover": c, "active_raft_dek": 1,
                                      "raft_applied_index": 15}} for n in ("n1", "n2", "n3")},
            "errors": [], "notes": [], "first_violation": sentence, "first_violation_ns": None,
            "failing": "I1"}


# A default run's nemesis, roughly: twenty windows of many kinds, several overlapping,
# and the operator's cutover records (fractions of the run: start, stop).
BUSY_FAULTS = [("restart", ["n1"], .04, .07), ("reorder", ["n1", "n2", "n3"], .12, .25),
               ("pause", ["n3"], .23, .31), ("pause", ["n1"], .30, .36),
               ("slow-out", ["n2"], .30, .37), ("slow-out", ["n3"], .35, .37),
               ("delay", ["n1", "n2", "n3"], .38, .40), ("pause", ["n1", "n2"], .39, .44),
               ("halves", [], .41, .46), ("snapshot", ["n3"], .42, .42),
               ("delay", ["n1", "n2", "n3"], .42, .44), ("kill", ["n3"], .50, .52),
               ("loss", ["n1", "n2", "n3"], .58, .60), ("reorder", ["n1", "n2", "n3"], .60, .64),
               ("kill", ["n2"], .63, .70), ("cut-in", ["n1"], .68, .82),
               ("duplicate", ["n1", "n2", "n3"], .78, .80), ("loss", ["n1", "n2", "n3"], .80, .84),
               ("slow-in", ["n3"], .80, .81), ("kill-power", ["n1"], .85, .88),
               ("clock-skew", ["n2"], .86, .90), ("corrupt-entry", ["n2"], .97, .98)]
BUSY_CUTOVER = [("rotate", ["n1"], .06, .062, {"key_id": 2}),
                ("cutover-requested", None, .29, None, {}),
                ("enable-raft-envelope", ["n1"], .29, .291, {}),
                ("cutover-settled", None, .291, None, {"cutover": 10}),
                ("rotate", ["n1"], .37, .371, {"key_id": 3})]


def record_busy_nemesis(rec: Any, end: int) -> None:
    """`BUSY_FAULTS` and `BUSY_CUTOVER` into a run's nemesis records."""
    for fault, targets, a, b in BUSY_FAULTS:
        if a == b:
            rec.fault(int(a * end), "event", fault, targets)
            continue
        rec.fault(int(a * end), "start", fault, targets)
        rec.fault(int(b * end), "stop", fault, targets)
    for fault, targets, a, b, detail in BUSY_CUTOVER:
        if b is None:
            rec.fault(int(a * end), "event", fault, targets, detail)
        else:
            rec.fault(int(a * end), "start", fault, targets, detail)
            rec.fault(int(b * end), "stop", fault, targets, {})


def store_synthetic_run(results: str, run_id: str, *, seed: int, n_ops: int = 300,
                        stale: bool = False, leak: bool = False, busy: bool = False,
                        started: str = "2026-01-01T00:00:00.000+00:00") -> dict[str, Any]:
    """A run recorded through `Recorder`, with a run directory (config, a KEK, node
    dirs) like `cutover run` leaves; `stale` makes one read stale, `leak` stores a
    cutover check that found a cleartext entry above C on n1, `busy` adds a default
    run's worth of faults (`BUSY_FAULTS`)."""
    events = simulate_kv(n_ops, keys=3, clients=4, seed=seed, crash_rate=0.01)
    if stale:
        inject_stale_read(events, seed)
    run_dir = os.path.join(results, run_id)
    for n in ("n1", "n2", "n3"):
        os.makedirs(os.path.join(run_dir, "nodes", n))
        with open(os.path.join(run_dir, "nodes", n, "events.jsonl"), "w") as fh:
            fh.write(json.dumps({"t": 1, "kind": "start", "node": n}) + "\n")
        with open(os.path.join(run_dir, "nodes", f"{n}.log"), "w") as fh:
            fh.write(f"{n} started\n")
    kek = os.urandom(32)
    kek_path = os.path.join(run_dir, "kek")
    with open(kek_path, "wb") as fh:
        fh.write(kek)
    os.chmod(kek_path, 0o600)
    cfg = {"nodes": 3, "workload": "kv", "keys": 3, "nemesis": "partition", "seed": seed,
           "bugs": ["no-barrier"] if leak else [], "time_limit": 3.0}
    with open(os.path.join(run_dir, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    end = events[-1]["time"] * SCALE_NS
    rec = store.Recorder(results, run_id, 0)
    rec.run_row(started=started, seed=seed, workload="kv", nemesis="partition",
                bugs=",".join(cfg["bugs"]), config=cfg, status="done", run_dir=run_id,
                t0_ns=0, duration_s=end / 1e9)
    for e in events:
        rec.op(e["time"] * SCALE_NS, e["process"], e["type"], e["f"], e["key"], e["value"],
               node="n1")
    rec.fault(end // 4, "start", "partition", ["n1"], {"grudge": "isolate"})
    rec.fault(end // 2, "stop", "partition", ["n1"])
    if busy:
        record_busy_nemesis(rec, end)
    t_cut, t_halt = end // 3, end // 2 + 1000
    evs = [("n1", t_cut - 1000, "marker-proposed", {"index": 10}),
           ("n1", t_cut - 500, "barrier", {"up": True}),
           ("n1", t_cut, "encryption-applied", {"what": "marker-fresh", "index": 10,
                                                "cutover": 10, "active": 1}),
           ("n1", t_cut + 10, "installer", {"cutover": 10, "key_id": 1, "why": "marker"}),
           ("n1", t_cut + 500, "barrier", {"up": False}),
           ("n2", t_halt, "halt", {"index": 12, "term": 1, "reason": "cleartext entry"}),
           ("n2", t_halt + 10, "progress", {"commit": 15, "applied": 11, "digest": "ab"}),
           ("n3", t_halt + 20, "role", {"role": "leader", "term": 2, "leader": "n3"})]
    rec.rows("node_events", [{"node": n, "seq": i, "time_ns": t, "kind": k,
                              "detail": json.dumps(d)} for i, (n, t, k, d) in enumerate(evs)])
    rec.flush()
    db = store.open_db(results)
    rows = list(store.iter_ops(db, run_id))
    checks = {"linearizability": suite.check_linearizability(rows, "kv"),
              "stats": suite.stats(rows),
              "availability": suite.availability(
                  rows, store.fault_windows(store.nemesis_rows(db, run_id)), end)}
    db.conn.close()
    if leak:
        bad = {"node": "n1", "index": 12, "term": 1, "opcode": 0, "opcode_name": "user",
               "reason": "cleartext user entry above the cutover C=10", "half": "structural"}
        checks["cutover"] = _fake_cutover(10, t_cut, bad)
        rec.rows("log_entries", [
            {"node": n, "idx": i, "term": 1, "opcode": 0, "key_id": 1 if i > 10 else None,
             "wrapped": int(i > 10 and not (n == "n1" and i == 12))}
            for n in ("n1", "n2", "n3") for i in range(1, 16)]
            # a new leader's no-op above C: neither wrapped nor cleartext
            + [{"node": "n3", "idx": 16, "term": 2, "opcode": None, "key_id": None,
                "wrapped": 0}])
    rec.rows("checks", [{"checker": k, "valid": v["valid"], "detail": json.dumps(v)}
                        for k, v in checks.items()])
    verdict = suite.worst(v["valid"] for v in checks.values())
    first = suite.first_violation(checks)
    summary = f"{verdict.upper()}" + (f": {first[0]}: {first[1]}" if first else "")
    rec.run_row(verdict=verdict, exit_code=suite.EXIT_CODES[verdict], summary=summary)
    rec.flush()
    rec.close()
    return {"id": run_id, "dir": run_dir, "kek": kek, "verdict": verdict, "checks": checks,
            "ops": len(events) // 2}


def synthetic_results(results: str) -> dict[str, dict[str, Any]]:
    """Three synthetic runs: valid, stale (linearizability invalid), leak (I1 invalid)."""
    return {
        "valid": store_synthetic_run(results, "20260101T000001-s1", seed=1,
                                     started="2026-01-01T00:00:01.000+00:00"),
        "stale": store_synthetic_run(results, "20260101T000002-s2", seed=2, stale=True,
                                     started="2026-01-01T00:00:02.000+00:00"),
        "leak": store_synthetic_run(results, "20260101T000003-s3", seed=3, leak=True,
                                    started="2026-01-01T00:00:03.000+00:00"),
    }


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[str, dict[str, dict[str, Any]]]:
    results = str(tmp_path_factory.mktemp("synth"))
    return results, synthetic_results(results)


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> tuple[str, Any]:
    results = str(tmp_path_factory.mktemp("real"))
    out = execute(RunConfig(nodes=3, time_limit=6, nemesis="none", seed=2024, results=results),
                  out=None, progress=None)
    assert out.exit_code in (0, 1, 2), out.summary
    return results, out


# ------------------------------------------------------------------------ list / show


def test_list_is_newest_first_with_the_run_id_first(synth) -> None:
    results, runs = synth
    r = cli("list", "--results", results)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split()[0] == "RUN" and lines[0].split()[-1] == "VERDICT"
    ids = [ln.split()[0] for ln in lines[1:]]
    by_start = sorted(runs.values(), key=lambda x: x["id"], reverse=True)
    assert ids == [x["id"] for x in by_start]
    for ln in lines[1:]:
        run = next(x for x in runs.values() if x["id"] == ln.split()[0])
        assert ln.split()[-1] == run["verdict"]


def test_show_explains_the_first_violation_and_tabulates_nodes(synth) -> None:
    results, runs = synth
    leak = runs["leak"]
    r = cli("show", leak["id"][:-1], "--results", results)  # a unique prefix works
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert f"verdict: {leak['verdict'].upper()}" in out
    name, sentence, _ = suite.first_violation(leak["checks"])
    assert f"first violation: {name}" in out and sentence in out
    table = out.split("\n\n", 1)[1].splitlines()
    assert table[0].split()[:4] == ["NODE", "C", "DEK", "APPLIED"]
    rows = {ln.split()[0]: ln.split() for ln in table[1:]}
    assert set(rows) == {"n1", "n2", "n3"}
    c = leak["checks"]["cutover"]["cutover"]
    assert all(r[1] == str(c) for r in rows.values())
    # n1 holds one cleartext entry above C (index 12), the others none; n2 halted there.
    assert rows["n1"][5] == "1" and rows["n2"][5] == "0"
    # n3's no-op above C is counted apart (NO-OP), not as cleartext
    assert table[0].split()[-3:] == ["CLEARTEXT", "NO-OP", "HALTED"]
    assert rows["n3"][5] == "0" and rows["n3"][6] == "1" and rows["n1"][6] == "0"
    assert "yes" in rows["n2"][7] and "index 12" in " ".join(rows["n2"])
    assert rows["n1"][7] == "no"


@pytest.mark.real
def test_show_real_run(real) -> None:
    results, outcome = real
    r = cli("show", "latest", "--results", results)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"run {outcome.run_id}")
    assert f"verdict: {outcome.verdict.upper()}" in r.stdout
    for name, res in outcome.checks.items():
        assert re.search(rf"^  {name}\s+{res['valid']}\b", r.stdout, re.M), name
    c = outcome.checks["cutover"].get("cutover")
    node_lines = [ln for ln in r.stdout.splitlines() if re.match(r"^n\d ", ln)]
    assert len(node_lines) == 3
    if c:
        assert all(ln.split()[1] == str(c) for ln in node_lines)


# ------------------------------------------------------------------------------ check


@pytest.mark.real
def test_check_rechecks_a_stored_run_and_rewrites_its_verdicts(real, tmp_path) -> None:
    results0, outcome = real
    results = str(tmp_path / "copy")
    shutil.copytree(results0, results)
    db = sqlite3.connect(store.db_path(results))
    with db:
        db.execute("delete from checks where run = ?", [outcome.run_id])
        db.execute("update runs set verdict = 'unknown', exit_code = 2, summary = 'stale' "
                   "where id = ?", [outcome.run_id])
    db.close()
    r = cli("check", outcome.run_id, "--results", results)
    assert r.exit_code == outcome.exit_code, r.output
    assert r.stdout.splitlines()[-1] == outcome.summary
    with opened(results) as db:
        row = store.resolve_run(db, outcome.run_id)
        stored = store.checks(db, outcome.run_id)
    assert (row["verdict"], row["exit_code"], row["summary"]) == (
        outcome.verdict, outcome.exit_code, outcome.summary)
    assert {k: v["valid"] for k, v in stored.items()} == {
        k: v["valid"] for k, v in outcome.checks.items()}


# --------------------------------------------------------------------------- reports


def _assert_self_contained(text: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text, re.I)
    assert "<script src" not in text and 'rel="stylesheet"' not in text
    assert "@import" not in text and "url(http" not in text


@pytest.mark.real
def test_report_of_a_real_run(real) -> None:
    results, outcome = real
    r = cli("report", "latest", "--results", results)
    assert r.exit_code == 0, r.output
    path = os.path.join(results, outcome.run_id, "report.html")
    assert r.stdout.strip() == path
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    _assert_self_contained(text)
    assert f'id="verdict" data-verdict="{outcome.verdict}"' in text
    for name, res in outcome.checks.items():
        assert f'data-checker="{name}" data-verdict="{res["valid"]}"' in text
    for plot in ("timeline", "latency", "throughput"):
        assert f'id="{plot}"' in text
    assert 'class="op ok"' in text and 'class="pt ok"' in text and 'class="rate ok"' in text
    assert 'data-kind="marker proposed"' in text or not outcome.checks["cutover"].get("cutover")
    with open(os.path.join(results, outcome.run_id, "kek"), "rb") as fh:
        assert_no_key_material(text.encode(), fh.read())


def test_a_halt_the_corrupt_entry_fault_caused_is_labelled_expected(synth) -> None:
    """The designed outcome of corrupt-entry (a halt at the damaged copy, which I3
    excuses) reads as expected in the node table that `show` and the report share;
    any other halt stays a plain one."""
    from orchestrator.ui.data import node_table

    results, runs = synth
    leak = runs["leak"]
    checks = json.loads(json.dumps(leak["checks"]))
    with store.opened(results) as db:
        plain = {r["node"]: r for r in node_table(db, leak["id"], checks)}
        checks["cutover"]["invariants"]["I3"].setdefault("summary", {})["excused"] = [
            {"node": "n2", "index": 12, "term": 1, "reason": "cleartext entry"}]
        labelled = {r["node"]: r for r in node_table(db, leak["id"], checks)}
    assert plain["n2"]["halted"] and "expected" not in plain["n2"]["halt_reason"]
    assert labelled["n2"]["halt_reason"].startswith("expected (the corrupt-entry fault")
    assert "index 12" in labelled["n2"]["halt_reason"]


def test_show_prints_the_counterexample_as_lin_does(synth) -> None:
    """The operations of a stale read are in `show`'s output: the explanation the
    checker stored, line for line as `cutover lin` prints it."""
    results, runs = synth
    stale = runs["stale"]
    r = cli("show", stale["id"], "--results", results)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    head = lines.index("counterexample (as `cutover lin` prints it):")
    bad = [k for k in stale["checks"]["linearizability"]["keys"] if k["verdict"] == "invalid"]
    want = ["  " + ln for ln in bad[0]["explanation"].splitlines()]
    assert lines[head + 1: head + 1 + len(want)] == want
    assert any("cannot be linearized next" in ln for ln in want)
    leak = cli("show", runs["leak"]["id"], "--results", results)
    assert "counterexample" not in leak.stdout  # a cutover violation has none


def test_report_of_a_stale_read_shows_the_counterexample(synth, tmp_path) -> None:
    results, runs = synth
    stale = runs["stale"]
    out = str(tmp_path / "stale.html")
    r = cli("report", stale["id"], "--results", results, "-o", out)
    assert r.exit_code == 0, r.output
    text = open(out, encoding="utf-8").read()
    _assert_self_contained(text)
    lin = stale["checks"]["linearizability"]
    assert lin["valid"] == "invalid"
    assert 'data-verdict="invalid"' in text
    assert html.escape(lin["first_violation"]) in text
    bad = [k["key"] for k in lin["keys"] if k["verdict"] == "invalid"]
    for key in bad:
        assert f'class="key verdict-invalid" data-key="{key}"' in text
    frames = re.findall(r'<iframe class="counterexample"[^>]*srcdoc="([^"]*)"', text)
    assert len(frames) == len(bad)
    page = html.unescape(frames[0])
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and 'id="verdict"' in page
    assert "cannot be linearized next" in text
    for plot in ("timeline", "latency", "throughput"):
        assert f'id="{plot}"' in text
    assert 'data-fault="partition"' in text
    assert_no_key_material(text.encode(), stale["kek"])


def test_report_of_an_i1_violation_shows_entries_and_context(synth, tmp_path) -> None:
    results, runs = synth
    leak = runs["leak"]
    out = str(tmp_path / "leak.html")
    assert cli("report", leak["id"], "--results", results, "-o", out).exit_code == 0
    text = open(out, encoding="utf-8").read()
    i1 = text[text.index('<section id="i1">'):]
    viol = re.search(r'<table class="i1-violations">.*?</table>', i1, re.S).group(0)
    assert re.search(r"<td>n1</td><td>12</td><td>1</td><td>user</td><td>cleartext</td>", viol)
    entries = re.search(r'<table class="i1-entries">.*?</table>', i1, re.S).group(0)
    assert "<td>12</td><td>1</td><td>user</td><td>cleartext</td>" in entries
    assert "<td>13</td><td>1</td><td>user</td><td>wrapped</td>" in entries
    ctx = re.search(r'<table class="i1-context">.*?</table>', i1, re.S).group(0)
    assert "halt" in ctx and "partition" in ctx and "marker-proposed" in ctx
    assert 'id="i1-timeline"' in i1
    assert html.escape(leak["checks"]["cutover"]["first_violation"]) in text


def test_report_windows_a_long_history_into_pages(synth) -> None:
    results, runs = synth
    run = runs["valid"]
    pages: list[tuple[int, int]] = []
    with opened(results) as db:
        row = store.resolve_run(db, run["id"])
        data = report_data(db, row, max_ops=60,
                           page_ref=lambda a, b: pages.append((a, b)) or {"href": "#"})
        total = data["window"]["total_ops"]
        assert total == run["ops"]
        assert data["window"]["shown_ops"] == len(data["ops"]) == 60
        assert len(pages) == -(-total // 60)
        seen = 0
        for a, b in pages:
            d = report_data(db, row, from_s=a / 1e9, to_s=b / 1e9, max_ops=60)
            assert len(d["window"]["pages"]) == 1
            assert d["window"]["shown_ops"] <= 60
            seen += d["window"]["shown_ops"]
        assert seen == total
    r = cli("report", run["id"], "--results", results, "--from", "2", "--to", "1", "-o",
            os.devnull)
    assert r.exit_code == 3 and r.stderr.startswith("error: ")


def test_a_100k_op_history_is_drawn_one_page_at_a_time(tmp_path) -> None:
    results = str(tmp_path)
    events = simulate_kv(100_000, keys=8, clients=10, seed=5)
    db = store.open_db(results, create=True)
    with db.conn:
        db.conn.execute("insert into runs (id, started, seed, workload, nemesis, config, "
                        "status, verdict, exit_code, run_dir) values (?,?,?,?,?,?,?,?,?,?)",
                        ["big", "2026-01-01T00:00:00", 5, "kv", "none", "{}", "done",
                         "valid", 0, "big"])
        db.conn.executemany(
            "insert into ops (run, idx, time_ns, process, type, f, key, value) "
            "values ('big',?,?,?,?,?,?,?)",
            [(i, e["time"] * SCALE_NS, str(e["process"]), e["type"], e["f"], e["key"],
              json.dumps(e["value"])) for i, e in enumerate(events)])
    db.conn.close()
    out = str(tmp_path / "big.html")
    r = cli("report", "big", "--results", results, "-o", out)
    assert r.exit_code == 0, r.output
    text = open(out, encoding="utf-8").read()
    m = re.search(r'data-shown="(\d+)" data-total="(\d+)"', text)
    assert int(m.group(2)) == 100_000 and int(m.group(1)) == DEFAULT_MAX_OPS
    assert text.count('<rect class="op ') == DEFAULT_MAX_OPS
    assert text.count("cutover report big --from") == -(-100_000 // DEFAULT_MAX_OPS) - 1


# ---------------------------------------------------------------------------- export


@pytest.mark.real
@pytest.mark.parametrize("fmt", ["jsonl", "jepsen-edn"])
def test_export_then_lin_gives_the_stored_verdict(synth, real, tmp_path, fmt) -> None:
    cases = [(synth[0], r["id"], r["checks"]["linearizability"]["valid"])
             for r in synth[1].values()]
    cases.append((real[0], real[1].run_id, real[1].checks["linearizability"]["valid"]))
    for results, run_id, verdict in cases:
        out = str(tmp_path / f"{run_id}.{fmt}")
        r = cli("export", run_id, "--results", results, "--format", fmt, "-o", out)
        assert r.exit_code == 0, r.output
        lin = cli("lin", out, "--format", fmt, "--model", "kv")
        assert lin.exit_code == suite.EXIT_CODES[verdict], (run_id, lin.output)
    # stdout by default, the same bytes
    results, run_id, _ = cases[0]
    r = cli("export", run_id, "--results", results, "--format", fmt)
    assert r.exit_code == 0
    assert r.stdout == open(str(tmp_path / f"{run_id}.{fmt}"), encoding="utf-8").read()


def test_export_keeps_every_event_and_the_nemesis(synth) -> None:
    results, runs = synth
    run = runs["stale"]
    r = cli("export", run["id"], "--results", results, "--format", "jsonl")
    evs = [json.loads(ln) for ln in r.stdout.splitlines()]
    client = [e for e in evs if e["process"] != "nemesis"]
    assert len(client) == 2 * run["ops"]
    assert [e["f"] for e in evs if e["process"] == "nemesis"] == ["start-partition",
                                                                   "stop-partition"]
    assert [e["index"] for e in evs] == list(range(len(evs)))
    assert all(isinstance(e["process"], int) for e in client)


# ------------------------------------------------------------------------- bad input


def _assert_bad(r: Any, *words: str) -> None:
    assert r.exit_code == 3, r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output
    for w in words:
        assert w in lines[0], lines[0]


READERS = [["list"], ["show", "latest"], ["check", "latest"], ["report", "latest"],
           ["export", "latest", "--format", "jsonl"], ["serve", "--port", "0"]]


@pytest.mark.parametrize("args", READERS, ids=lambda a: a[0])
def test_missing_foreign_and_corrupt_databases(tmp_path, args) -> None:
    missing = str(tmp_path / "nothing")
    _assert_bad(cli(*args, "--results", missing), "no results database")
    assert not os.path.exists(missing)
    foreign = str(tmp_path / "foreign")
    os.makedirs(foreign)
    conn = sqlite3.connect(store.db_path(foreign))
    conn.execute("create table t (x)")
    conn.commit()
    conn.close()
    before = db_state(foreign)
    _assert_bad(cli(*args, "--results", foreign), "not a cutover results database")
    assert db_state(foreign) == before
    corrupt = str(tmp_path / "corrupt")
    os.makedirs(corrupt)
    with open(store.db_path(corrupt), "wb") as fh:
        fh.write(b"SQLite format 3\0" + os.urandom(4000))
    before = db_state(corrupt)
    _assert_bad(cli(*args, "--results", corrupt), "cutover.db")
    assert db_state(corrupt) == before


@pytest.mark.parametrize("args", [a for a in READERS if a[0] not in ("list", "serve")],
                         ids=lambda a: a[0])
def test_unknown_run_id(synth, args) -> None:
    results, _ = synth
    before = db_state(results)
    argv = [a if a != "latest" else "no-such-run" for a in args]
    _assert_bad(cli(*argv, "--results", results), "no run 'no-such-run'")
    assert db_state(results) == before


@pytest.mark.real
@pytest.mark.parametrize("damage", ["nodes", "kek", "bad-kek", "run-dir"])
def test_check_on_a_run_with_missing_artifacts_changes_nothing(real, tmp_path, damage) -> None:
    results0, outcome = real
    results = str(tmp_path / "copy")
    shutil.copytree(results0, results)
    run_dir = os.path.join(results, outcome.run_id)
    target = {"nodes": os.path.join(run_dir, "nodes"), "kek": os.path.join(run_dir, "kek"),
              "bad-kek": "", "run-dir": run_dir}[damage]
    if damage == "bad-kek":
        with open(os.path.join(run_dir, "kek"), "wb") as fh:
            fh.write(b"short")
    elif os.path.isdir(target):
        shutil.rmtree(target)
    else:
        os.unlink(target)
    before = db_state(results)
    _assert_bad(cli("check", outcome.run_id, "--results", results), outcome.run_id)
    assert db_state(results) == before
    if damage == "run-dir":
        _assert_bad(cli("report", outcome.run_id, "--results", results), "-o")
        out = str(tmp_path / "r.html")
        assert cli("report", outcome.run_id, "--results", results, "-o", out).exit_code == 0
        assert db_state(results) == before


# ---------------------------------------------------------------------------- serve


@pytest.fixture(scope="module")
def server(synth) -> Any:
    results, runs = synth
    # A symlink to the KEK under an innocent name must not leak it either.
    os.symlink("kek", os.path.join(runs["valid"]["dir"], "innocent"))
    with serving(results) as url:
        yield url, runs


def get(url: str) -> tuple[int, bytes, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def raw_get(base: str, path: str) -> int:
    host, port = base.removeprefix("http://").split(":")
    c = HTTPConnection(host, int(port), timeout=30)
    c.request("GET", path)
    code = c.getresponse().status
    c.close()
    return code


def test_serve_index_and_reports(server) -> None:
    base, runs = server
    code, body, headers = get(base + "/")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    text = body.decode()
    for run in runs.values():
        assert (f'class="run verdict-{run["verdict"]}" data-run="{run["id"]}" '
                f'data-verdict="{run["verdict"]}"') in text
    for run in runs.values():
        code, body, _ = get(f"{base}/run/{run['id']}/")
        assert code == 200
        page = body.decode()
        assert f'data-verdict="{run["verdict"]}"' in page and 'id="timeline"' in page
        assert_no_key_material(body, run["kek"])
    code, body, _ = get(f"{base}/run/{runs['valid']['id']}/?max_ops=50")
    page = body.decode()
    links = re.findall(r'href="(/run/[^"]*\?from=[^"]*)"', page)
    assert len(links) == -(-runs["valid"]["ops"] // 50) - 1
    code, body, _ = get(base + html.unescape(links[0]))
    assert code == 200 and 'data-shown="50"' in body.decode()
    assert get(f"{base}/run/{runs['valid']['id']}/?from=abc")[0] == 400
    assert get(f"{base}/run/no-such-run/")[0] == 404
    assert get(f"{base}/elsewhere")[0] == 404


def test_serve_files_never_show_the_kek(server) -> None:
    base, runs = server
    run = runs["valid"]
    code, body, _ = get(f"{base}/run/{run['id']}/files/")
    listing = body.decode()
    assert code == 200 and "config.json" in listing and "nodes/" in listing
    assert ">kek<" not in listing and "innocent" not in listing
    for path in ("kek", "innocent", "nodes/../kek", "%6bek", "../cutover.db",
                 "%2e%2e/cutover.db", "nodes/../../cutover.db"):
        assert raw_get(base, f"/run/{run['id']}/files/{path}") == 404, path
    code, body, headers = get(f"{base}/run/{run['id']}/files/nodes/n1/events.jsonl")
    assert code == 200 and headers["Content-Type"].startswith("text/plain")
    assert json.loads(body.splitlines()[0])["kind"] == "start"
    code, body, headers = get(f"{base}/run/{run['id']}/download.zip")
    assert code == 200 and headers["Content-Type"] == "application/zip"
    z = zipfile.ZipFile(io.BytesIO(body))
    names = z.namelist()
    assert f"{run['id']}/config.json" in names and f"{run['id']}/history.jsonl" in names
    assert f"{run['id']}/nodes/n1/events.jsonl" in names
    assert not any(n.endswith("/kek") or "innocent" in n for n in names)
    for n in names:
        assert_no_key_material(z.read(n), run["kek"])
    hist = z.read(f"{run['id']}/history.jsonl").decode().splitlines()
    assert sum(1 for ln in hist if json.loads(ln)["process"] != "nemesis") == 2 * run["ops"]
