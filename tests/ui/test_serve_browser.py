"""`cutover serve` in a real headless Chromium, driven through chromedriver's W3C
WebDriver HTTP API with urllib (no selenium needed).

What a person would check by eye: the index shows every run with its verdict color,
a report draws its plots (SVGs with a real size and content) and its counterexample,
and the browser console stays free of errors (a blocked fetch, a script error or a
missing resource would all show there).

Needs the Debian packages `chromium` and `chromium-driver` (CI installs them, see
`.ci/run`); without a Chromium the module is skipped and says why.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator import store
from orchestrator.nightly.trend import Point, TrendData
from orchestrator.ui.trend import render_trend
from orchestrator.ui.web import serving
from tests.ui.test_review import store_synthetic_run, synthetic_results

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


def _find_chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser",
                 "google-chrome", "google-chrome-stable"):
        if name and (path := shutil.which(name)):
            return path
    return None


CHROMIUM = _find_chromium()
pytestmark = [pytest.mark.browser, pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium found (install the Debian packages chromium and "
                             "chromium-driver, or set CHROMIUM=/path/to/chrome)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    """The few W3C WebDriver commands these tests need."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = ""

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())["value"]
        except urllib.error.HTTPError as e:
            raise AssertionError(f"webdriver {method} {path}: {e.read()[:600]!r}") from None

    def start(self, chromium: str) -> None:
        caps = {"browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--no-first-run",
                    "--window-size=1280,1000"]},
                "goog:loggingPrefs": {"browser": "ALL"}}
        value = self.call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
        self.session = value["sessionId"]

    def s(self, path: str, body: Any = None, method: str = "POST") -> Any:
        return self.call(method, f"/session/{self.session}{path}", body)

    def get(self, url: str) -> None:
        self.s("/url", {"url": url})

    def js(self, script: str, *args: Any) -> Any:
        return self.s("/execute/sync", {"script": script, "args": list(args)})

    def logs(self) -> list[dict[str, Any]]:
        return self.s("/se/log", {"type": "browser"})

    def quit(self) -> None:
        if self.session:
            try:
                self.s("", method="DELETE")
            except (AssertionError, OSError):
                pass


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    driver = shutil.which("chromedriver")
    if driver is None:
        pytest.fail("Chromium is installed but chromedriver is not (Debian: chromium-driver)")
    port = _free_port()
    proc = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wd = WebDriver(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if wd.call("GET", "/status").get("ready"):
                    break
            except (OSError, AssertionError):
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("chromedriver did not become ready within 30 s")
            time.sleep(0.05)
        assert CHROMIUM is not None
        wd.start(CHROMIUM)
        yield wd
    finally:
        wd.quit()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[tuple[str, dict[str, Any]]]:
    results = str(tmp_path_factory.mktemp("served"))
    runs = synthetic_results(results)
    # Runs without a pass/fail verdict: one unknown, one aborted and one whose
    # orchestrator died (both grey).
    db = store.open_db(results)
    with db.conn:
        for rid, verdict, started in (("20260101T000004-s4", "unknown", "04"),
                                      ("20260101T000005-s5", "aborted", "05"),
                                      ("20260101T000006-s6", "crashed", "06")):
            status = {"unknown": "done"}.get(verdict, verdict)
            db.conn.execute("insert into runs (id, started, seed, workload, nemesis, config, "
                            "status, verdict, exit_code, run_dir) values (?,?,?,?,?,?,?,?,?,?)",
                            [rid, f"2026-01-01T00:00:{started}.000+00:00", 4, "kv", "none",
                             "{}", status, verdict,
                             {"unknown": 2, "aborted": 130}.get(verdict), rid])
            runs[verdict] = {"id": rid, "verdict": verdict}
    db.conn.close()
    # a failed run with a default run's worth of faults (tests/ui/test_review.py)
    runs["busy"] = store_synthetic_run(results, "20260101T000007-s7", seed=2, stale=True,
                                       busy=True, started="2026-01-01T00:00:07.000+00:00")
    with serving(results) as url:
        yield url, runs


def _rgb(css: str) -> tuple[int, int, int]:
    nums = css[css.index("(") + 1:css.index(")")].split(",")
    r, g, b = (int(float(x)) for x in nums[:3])
    return r, g, b


def _errors(wd: WebDriver) -> list[str]:
    return [e["message"] for e in wd.logs() if e.get("level") == "SEVERE"]


def test_index_shows_every_run_in_its_verdict_color(browser: WebDriver, site) -> None:
    base, runs = site
    browser.get(base + "/")
    rows = browser.js("""return Array.from(document.querySelectorAll('tr.run')).map(r => ({
        run: r.dataset.run, verdict: r.dataset.verdict, cls: r.className,
        bg: getComputedStyle(r.querySelector('td.v')).backgroundColor}));""")
    seen = {r["run"]: r for r in rows}
    assert set(seen) == {r["id"] for r in runs.values()}
    for run in runs.values():
        row = seen[run["id"]]
        assert row["verdict"] == run["verdict"] and f"verdict-{run['verdict']}" in row["cls"]
        r, g, b = _rgb(row["bg"])
        if run["verdict"] == "valid":
            assert g > r + 40 and g > b + 40, row  # green
        elif run["verdict"] == "invalid":
            assert r > g + 80 and r > b + 80, row  # red
        elif run["verdict"] == "unknown":
            assert r > g > b and r - b > 120, row  # orange
        else:
            assert max(r, g, b) - min(r, g, b) < 20 and 60 < r < 200, row  # grey
    assert _errors(browser) == []
    # The console log does reach us (else "no errors" above would prove nothing).
    browser.js("console.error('cutover-probe');")
    assert any("cutover-probe" in m for m in _errors(browser))


def test_report_renders_plots_and_counterexample(browser: WebDriver, site) -> None:
    base, runs = site
    stale = runs["stale"]
    browser.get(f"{base}/run/{stale['id']}/")
    info = browser.js("""
        const box = e => { const b = e.getBoundingClientRect(); return [b.width, b.height]; };
        return {
          verdict: document.getElementById('verdict').dataset.verdict,
          plots: Array.from(document.querySelectorAll('svg.plot')).map(s => ({
            id: s.id, size: box(s), marks: s.querySelectorAll('rect,circle,polyline').length})),
          frames: Array.from(document.querySelectorAll('iframe.counterexample')).map(box),
          ops: Array.from(document.querySelectorAll('#timeline rect.op')).filter(
            r => box(r)[0] > 0 && box(r)[1] > 0).length,
        };""")
    assert info["verdict"] == "invalid"
    plots = {p["id"]: p for p in info["plots"]}
    for pid in ("timeline", "latency", "throughput"):
        assert pid in plots, plots.keys()
        w, h = plots[pid]["size"]
        assert w > 100 and h > 50 and plots[pid]["marks"] > 0, plots[pid]
    assert info["ops"] > 0
    assert info["frames"] and all(w > 100 and h > 100 for w, h in info["frames"])
    # Inside the counterexample: the visualization drew its own SVG.
    frame = browser.s("/element", {"using": "css selector", "value": "iframe.counterexample"})
    browser.s("/frame", {"id": frame})
    inner = browser.js("""const s = document.querySelector('svg.lanes, section svg, svg:not([width="0"])');
        const b = s ? s.getBoundingClientRect() : {width: 0, height: 0};
        return {n: document.querySelectorAll('svg').length, w: b.width, h: b.height,
                verdict: (document.getElementById('verdict') || {}).textContent};""")
    browser.s("/frame", {"id": None})
    assert inner["n"] > 0 and inner["w"] > 0 and inner["h"] > 0, inner
    assert "invalid" in (inner["verdict"] or "")
    assert _errors(browser) == []


def test_i1_report_and_file_browser(browser: WebDriver, site) -> None:
    base, runs = site
    leak = runs["leak"]
    browser.get(f"{base}/run/{leak['id']}/")
    info = browser.js("""const s = document.getElementById('i1-timeline');
        const b = s.getBoundingClientRect();
        return {w: b.width, h: b.height,
                rows: document.querySelectorAll('table.i1-violations tbody tr').length};""")
    assert info["w"] > 100 and info["h"] > 20 and info["rows"] >= 1
    assert _errors(browser) == []
    browser.get(f"{base}/run/{leak['id']}/files/")
    names = browser.js("return Array.from(document.querySelectorAll('ul.files a'))"
                       ".map(a => a.textContent);")
    assert "config.json" in names and "nodes/" in names and "kek" not in names
    assert _errors(browser) == []


def test_the_counterexample_script_runs_under_the_reports_nonce(browser: WebDriver,
                                                                site) -> None:
    """The counterexample frame inherits the report's CSP (no 'unsafe-inline'): its
    script carries the report's nonce, so hovering an op still shows the tooltip."""
    base, runs = site
    browser.get(f"{base}/run/{runs['stale']['id']}/")
    frame = browser.s("/element", {"using": "css selector", "value": "iframe.counterexample"})
    browser.s("/frame", {"id": frame})
    tip = browser.js("""const g = document.querySelector('[data-i]');
        g.dispatchEvent(new MouseEvent('mouseover', {bubbles: true, clientX: 50, clientY: 50}));
        const t = document.getElementById('tip');
        return {hidden: t.hidden, text: t.textContent};""")
    browser.s("/frame", {"id": None})
    assert tip["hidden"] is False and tip["text"].strip(), tip
    assert _errors(browser) == []


def test_a_script_without_the_nonce_does_not_run(browser: WebDriver, site) -> None:
    """What an injection would add (a <script> of its own) is refused by the policy."""
    base, runs = site
    for path in ("/", f"/run/{runs['leak']['id']}/", f"/run/{runs['leak']['id']}/files/"):
        browser.get(base + path)
        ran = browser.js("""const s = document.createElement('script');
            s.textContent = 'window.injected = 1;';
            document.body.appendChild(s);
            return window.injected === 1;""")
        assert ran is False, path
        assert any("Content Security Policy" in m for m in _errors(browser)), path


# ------------------------------------------------------------- issue 23: the evidence


def _window(wd: WebDriver, width: int, height: int = 900) -> None:
    wd.s("/window/rect", {"width": width, "height": height})


BOXES = """const sel = arguments[0];
    return Array.from(document.querySelectorAll(sel)).map(e => {
      const b = e.getBoundingClientRect();
      return {text: e.textContent, l: b.left, r: b.right, t: b.top, b: b.bottom};
    });"""


def _overlaps(boxes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(a["text"], b["text"]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
            if a["l"] < b["r"] - 0.5 and b["l"] < a["r"] - 0.5
            and a["t"] < b["b"] - 0.5 and b["t"] < a["b"] - 0.5]


def test_a_failed_runs_page_leads_with_its_evidence(browser: WebDriver, site) -> None:
    """At 1400 px: the violation marker is on every plot, and the counterexample starts
    within the first screen below the first-violation box."""
    base, runs = site
    _window(browser, 1400)
    try:
        browser.get(f"{base}/run/{runs['busy']['id']}/")
        info = browser.js("""
            const box = document.getElementById('first-violation').getBoundingClientRect();
            const cx = document.getElementById('counterexample').getBoundingClientRect();
            const marks = {};
            for (const id of ['timeline', 'latency', 'throughput']) {
              marks[id] = Array.from(document.querySelectorAll(
                `#${id} .violation-marker line`)).map(l => l.getBoundingClientRect().height);
            }
            return {box_top: box.top, box_bottom: box.bottom, cx_top: cx.top,
                    cx_h: cx.height, screen: window.innerHeight, marks: marks,
                    link: document.querySelector('#first-violation a[href="#counterexample"]')
                          !== null};""")
        for plot, heights in info["marks"].items():
            assert heights and all(h > 50 for h in heights), (plot, info["marks"])
        assert info["link"]
        assert info["cx_h"] > 200
        assert 0 <= info["cx_top"] - info["box_bottom"] < info["screen"], info
        assert _errors(browser) == []
    finally:
        _window(browser, 1280, 1000)


@pytest.mark.parametrize("width", [1400, 900])
def test_no_two_fault_labels_overlap_on_the_timeline(browser: WebDriver, site,
                                                     width: int) -> None:
    base, runs = site
    _window(browser, width)
    try:
        browser.get(f"{base}/run/{runs['busy']['id']}/")
        labels = browser.js(BOXES, "#timeline text.faultlabel")
        lanes = browser.js("return Array.from(document.querySelectorAll("
                           "'#timeline g.faultlane')).map(g => g.dataset.family);")
        plot = browser.js(BOXES, "#timeline")[0]
        assert len(lanes) == len(set(lanes)) >= 8, lanes  # one lane per family
        assert len(labels) >= len(lanes), labels
        assert _overlaps(labels) == []
        assert all(b["l"] >= plot["l"] and b["r"] <= plot["r"] + 0.5 for b in labels), \
            "a label is clipped at the plot's edge"
        assert _errors(browser) == []
    finally:
        _window(browser, 1280, 1000)


def test_the_run_list_counts_and_filters(browser: WebDriver, site) -> None:
    base, runs = site
    browser.get(base + "/")
    counts = browser.js("return Object.fromEntries(Array.from(document.querySelectorAll("
                        "'#counts a.count')).map(a => [a.dataset.verdict, +a.dataset.count]));")
    verdicts = [r["verdict"] for r in runs.values()]
    assert counts == {v: verdicts.count(v) for v in set(verdicts)}
    href = browser.js("return document.querySelector("
                      "'.facet[data-dim=verdict] a[data-value=invalid]').href;")
    browser.get(href)
    shown = browser.js("return Array.from(document.querySelectorAll('tr.run'))"
                       ".map(r => r.dataset.verdict);")
    assert shown and set(shown) == {"invalid"} and len(shown) == verdicts.count("invalid")
    assert _errors(browser) == []


def test_trend_text_never_overlaps(browser: WebDriver, tmp_path) -> None:
    """Long build names in the legend, twelve matrices on the axis, and builds with the
    same rate at the same matrix: no two texts overlap and no two points coincide."""
    builds = ["fixed", "no-barrier", "snapshot-install-no-cutover",
              "elastickv: stale-check-first", "barrier-release-on-timeout",
              "leader-unapplied-marker", "raw-admin-proposer"]
    matrices = [{"id": f"m{i:02d}", "started": f"2026-01-{i + 1:02d}T03:00:00"}
                for i in range(12)]
    series = {b: [Point(m["id"], m["started"], "abc", b, 10, 10, 0, 3.0) for m in matrices]
              for b in builds}
    path = tmp_path / "trend.html"
    path.write_text(render_trend(TrendData(matrices, series)), encoding="utf-8")
    _window(browser, 1400)
    try:
        browser.get(path.as_uri())
        for i in range(2):
            sel = f"svg.trend:nth-of-type({i + 1}) text"
            texts = browser.js(f"""const s = document.querySelectorAll('svg.trend')[{i}];
                return Array.from(s.querySelectorAll('text')).map(e => {{
                  const b = e.getBoundingClientRect();
                  return {{text: e.textContent, l: b.left, r: b.right, t: b.top,
                           b: b.bottom}}; }});""")
            assert len(texts) > len(builds), sel
            assert _overlaps(texts) == [], sel
        pts = browser.js("""return Array.from(document.querySelectorAll('svg.trend')[0]
            .querySelectorAll('circle.pt')).map(c => [c.getAttribute('cx'),
                                                      c.getAttribute('cy')].join());""")
        assert len(pts) == len(builds) * len(matrices) == len(set(pts))
        assert _errors(browser) == []
    finally:
        _window(browser, 1280, 1000)
