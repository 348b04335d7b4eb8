"""`cutover serve` and `cutover report` against someone who can write into the results
directory or the database (issue 15, attack 7, and `report --from` of attack 6).

Each test names its attack. The server must answer every request (never hang, never
500 for a bad request), never send a KEK under any name or link, never leave the
results directory, and every page it sends carries a nonce-based CSP without
'unsafe-inline'. Nothing here may write the database: its sha256 is compared.
"""
from __future__ import annotations

import io
import os
import re
import shutil
import sqlite3
import time
import urllib.error
import urllib.request
import zipfile
from http.client import HTTPConnection
from typing import Any

import pytest

from orchestrator import store
from orchestrator.ui.web import serving
from tests.ui.test_review import _assert_bad, cli, db_state, store_synthetic_run


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Any:
    results = str(tmp_path_factory.mktemp("hostile-serve"))
    a = store_synthetic_run(results, "20260301T000001-s11", seed=11,
                            started="2026-03-01T00:00:01.000+00:00")
    b = store_synthetic_run(results, "20260301T000002-s12", seed=12, stale=True,
                            started="2026-03-01T00:00:02.000+00:00")
    # The attacks, prepared by someone who can write into the results directory:
    os.link(os.path.join(b["dir"], "kek"), os.path.join(a["dir"], "notes.txt"))
    os.link(os.path.join(a["dir"], "nodes", "n2.log"), os.path.join(a["dir"], "twin.log"))
    os.mkfifo(os.path.join(a["dir"], "nodes", "n1", "pipe.log"))
    before = db_state(results)
    with serving(results) as url:
        yield url, results, a, b
    assert db_state(results) == before, "serving wrote the database"


def get(url: str, timeout: float = 15) -> tuple[int, bytes, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def raw_get(base: str, path: str, timeout: float = 15) -> int:
    host, port = base.removeprefix("http://").split(":")
    c = HTTPConnection(host, int(port), timeout=timeout)
    try:
        c.request("GET", path)
        return c.getresponse().status
    finally:
        c.close()


def test_a_hard_link_to_another_runs_kek_is_neither_listed_served_nor_zipped(site) -> None:
    base, _, a, b = site
    code, body, _ = get(f"{base}/run/{a['id']}/files/")
    assert code == 200
    listing = body.decode()
    assert "config.json" in listing
    assert "notes.txt" not in listing and "twin.log" not in listing
    assert raw_get(base, f"/run/{a['id']}/files/notes.txt") == 404
    # A second link to any file could be a key under another name: neither is served.
    assert raw_get(base, f"/run/{a['id']}/files/twin.log") == 404
    assert raw_get(base, f"/run/{a['id']}/files/nodes/n2.log") == 404
    assert raw_get(base, f"/run/{a['id']}/files/nodes/n1.log") == 200
    code, body, _ = get(f"{base}/run/{a['id']}/download.zip")
    assert code == 200
    z = zipfile.ZipFile(io.BytesIO(body))
    assert not any(n.endswith(("notes.txt", "twin.log", "n2.log", "/kek")) for n in z.namelist())
    for n in z.namelist():
        data = z.read(n)
        assert b["kek"] not in data and a["kek"] not in data


def test_a_fifo_in_a_run_dir_never_blocks_a_request(site) -> None:
    base, _, a, _ = site
    t0 = time.monotonic()
    assert raw_get(base, f"/run/{a['id']}/files/nodes/n1/pipe.log", timeout=10) == 404
    code, body, _ = get(f"{base}/run/{a['id']}/files/nodes/n1/", timeout=10)
    assert code == 200 and b"pipe.log" not in body and b"events.jsonl" in body
    code, body, _ = get(f"{base}/run/{a['id']}/download.zip", timeout=10)
    assert code == 200
    assert not any("pipe.log" in n for n in zipfile.ZipFile(io.BytesIO(body)).namelist())
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("path", [
    "/run/{a}/files/kek%00", "/run/{a}/files/config.json%00.txt", "/run/{a}/?from=inf",
    "/run/{a}/?from=nan", "/run/{a}/?from=1e400", "/run/{a}/?to=-inf", "/run/{a}/?to=abc",
    "/run/{a}/?max_ops=0", "/run/{a}/?max_ops=-3", "/run/{a}/?max_ops=1.5",
    "/run/{a}/?max_ops=abc", "/run/2026/", "/run/{a}/?from=%00", "/run/{a}/files/%ff%fe",
], ids=["kek-nul", "name-nul", "from-inf", "from-nan", "from-1e400", "to-minus-inf",
        "to-abc", "max-ops-0", "max-ops-negative", "max-ops-fraction", "max-ops-abc",
        "ambiguous-prefix", "from-nul", "bad-utf8"])
def test_bad_requests_are_400_not_500(site, path: str) -> None:
    base, _, a, _ = site
    assert raw_get(base, path.format(a=a["id"])) == 400


def test_a_run_dir_edited_out_of_the_results_dir_is_never_followed(site, tmp_path) -> None:
    _, results0, a, _ = site
    results = str(tmp_path / "copy")
    shutil.copytree(results0, results, symlinks=True,
                    ignore=lambda d, names: [n for n in names if n == "pipe.log"])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("root:x:0:0\n")
    conn = sqlite3.connect(store.db_path(results))
    with conn:
        conn.execute("update runs set run_dir = ? where id = ?",
                     [os.path.relpath(outside, results), a["id"]])
    conn.close()
    before = db_state(results)
    with serving(results) as base:
        for path in ("files/passwd", "files/", "download.zip"):
            assert raw_get(base, f"/run/{a['id']}/{path}") == 404, path
    _assert_bad(cli("check", a["id"], "--results", results), "outside the results directory")
    _assert_bad(cli("report", a["id"], "--results", results), "outside the results directory")
    assert not (outside / "report.html").exists()
    assert db_state(results) == before


NONCE = re.compile(r"script-src 'nonce-([A-Za-z0-9_-]{16,})'")


def _assert_nonce_csp(html: str, header: str | None = None) -> str:
    """The page's CSP names one nonce for scripts and styles, allows no inline code, and
    every executable script and every style element carries that nonce."""
    meta = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', html)
    assert meta, html[:500]
    policy = meta.group(1).replace("&#39;", "'").replace("&#x27;", "'")
    for p in filter(None, (policy, header)):
        assert "'unsafe-inline'" not in p and "'unsafe-eval'" not in p, p
        assert "default-src 'none'" in p
    m = NONCE.search(policy)
    assert m, policy
    nonce = m.group(1)
    assert f"style-src 'nonce-{nonce}'" in policy
    if header is not None:
        assert NONCE.search(header).group(1) == nonce
    for tag in re.findall(r"<(?:script|style)\b[^>]*>", html):
        if 'type="application/json"' in tag:
            continue
        assert f'nonce="{nonce}"' in tag, tag
    assert "style=\"" not in html, "an inline style attribute (the CSP blocks it)"
    return nonce


def test_every_page_has_a_nonce_csp_without_unsafe_inline(site, tmp_path) -> None:
    base, results, a, b = site
    nonces = set()
    for path in ("/", f"/run/{a['id']}/", f"/run/{b['id']}/", f"/run/{a['id']}/files/",
                 "/nowhere", f"/run/{a['id']}/?from=abc"):
        code, body, headers = get(base + path)
        assert headers["Content-Security-Policy"], path
        nonces.add(_assert_nonce_csp(body.decode(), headers["Content-Security-Policy"]))
    assert len(nonces) == 6, "a nonce is used once"
    # The stale run's report embeds a counterexample page: same nonce (its policy is the
    # report's, inherited by the srcdoc frame).
    _, body, headers = get(f"{base}/run/{b['id']}/")
    page = body.decode()
    nonce = _assert_nonce_csp(page, headers["Content-Security-Policy"])
    frames = re.findall(r'srcdoc="([^"]*)"', page)
    assert frames
    import html as htmlmod

    for f in frames:
        assert _assert_nonce_csp(htmlmod.unescape(f)) == nonce
    # The files the commands write: a report, and `lin --html`'s page.
    out = str(tmp_path / "r.html")
    assert cli("report", b["id"], "--results", results, "-o", out).exit_code == 0
    _assert_nonce_csp(open(out).read())
    hist = tmp_path / "h.edn"
    hist.write_text("{:process 0 :type :invoke :f :write :value 1}\n"
                    "{:process 0 :type :ok :f :write :value 1}\n"
                    "{:process 1 :type :invoke :f :read :value nil}\n"
                    "{:process 1 :type :ok :f :read :value 2}\n")
    page_out = str(tmp_path / "lin.html")
    r = cli("lin", str(hist), "--format", "jepsen-edn", "--html", page_out)
    assert r.exit_code == 1, r.output
    _assert_nonce_csp(open(page_out).read())


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "-inf"])
def test_report_from_a_non_finite_number_is_one_line(site, tmp_path, value: str) -> None:
    _, results0, a, _ = site
    results = str(tmp_path / "copy")
    shutil.copytree(results0, results, symlinks=True,
                    ignore=lambda d, names: [n for n in names if n == "pipe.log"])
    before = db_state(results)
    for flag in ("--from", "--to"):
        _assert_bad(cli("report", a["id"], "--results", results, flag, value,
                        "-o", str(tmp_path / "r.html")), flag)
    assert db_state(results) == before
