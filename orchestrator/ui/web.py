"""`cutover serve`: the results directory in a browser (stdlib `http.server` only).

Routes:

``/``                          every run, newest first, colored by verdict
``/run/<id>/``                 the run's report, rendered on request; ``?from=&to=``
                               (seconds into the run) and ``?max_ops=`` window it, and a
                               long history gets links to its other pages
``/run/<id>/files/<path>``     a browser of the run directory
``/run/<id>/download.zip``     the run directory plus `history.jsonl`, as one zip
``/trend``                     the recorded matrices over time, and their flakes

The KEK never leaves the machine this way: the `kek` file is neither listed, nor served,
nor zipped, whatever path (or symlink) leads to it, and no page prints key material
(reports hold key ids only). Paths are resolved and must stay inside the run directory.
Bound to 127.0.0.1 unless `--host` says otherwise: the run files are a test lab's, not
something to publish by accident.

Each request opens its own database connection (SQLite connections are per thread)
and the database is only read, so the server can run next to `cutover run`.
"""
from __future__ import annotations

import contextlib
import mimetypes
import os
import shutil
import sqlite3
import tempfile
import threading
import urllib.parse
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import sqlite_utils

from .. import store
from ..errors import ReviewError
from ..export import history_text
from .data import DEFAULT_MAX_OPS, report_data
from .render import CSP, page, verdict_class
from .report import render_report
from .trend import trend_page

SECRET_NAMES = frozenset({"kek"})
TEXT_SUFFIXES = (".json", ".jsonl", ".log", ".txt", ".md", ".edn", ".html", ".csv")


def is_secret(run_dir: str, path: str) -> bool:
    """A file that holds key material: by name anywhere in the run dir, or the very
    file the run's KEK is (a symlink or hard link to it under another name)."""
    if os.path.basename(path) in SECRET_NAMES:
        return True
    kek = os.path.join(run_dir, "kek")
    try:
        return os.path.exists(kek) and os.path.samefile(path, kek)
    except OSError:
        return False


def safe_path(run_dir: str, rel: str) -> str | None:
    """The real path of `rel` inside `run_dir`, or None when it leaves the directory,
    does not exist or is secret."""
    root = os.path.realpath(run_dir)
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." or p in SECRET_NAMES for p in parts):
        return None
    full = os.path.realpath(os.path.join(root, *parts))
    if full != root and not full.startswith(root + os.sep):
        return None
    if not os.path.exists(full) or is_secret(run_dir, full):
        return None
    return full


def zip_run(run_dir: str, history: str | None, out: Any) -> int:
    """Zip the run dir (minus secrets and symlinks leaving it) into the file object
    `out`; returns the number of files written."""
    root = os.path.realpath(run_dir)
    base = os.path.basename(root)
    n = 0
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in SECRET_NAMES
                                 and not os.path.islink(os.path.join(dirpath, d)))
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                real = os.path.realpath(full)
                if (is_secret(run_dir, full) or not real.startswith(root + os.sep)
                        or not os.path.isfile(real)):
                    continue
                z.write(real, os.path.join(base, os.path.relpath(full, root)))
                n += 1
        if history is not None:
            z.writestr(os.path.join(base, "history.jsonl"), history)
            n += 1
    return n


def _duration(s: Any) -> str:
    return "" if s is None else f"{float(s):.1f}s"


def index_page(results: str) -> str:
    """`/`: every run, newest first, its verdict cell colored."""
    with store.opened(results) as db:
        rows = store.runs(db)
    runs = [{"id": r["id"], "href": f"/run/{urllib.parse.quote(r['id'])}/",
             "verdict": verdict_class(r.get("verdict"), r.get("status")),
             "started": str(r.get("started") or "").replace("T", " ")[:19],
             "duration": _duration(r.get("duration_s")), "workload": r.get("workload"),
             "nemesis": r.get("nemesis"), "bugs": r.get("bugs") or "-", "seed": r.get("seed"),
             "summary": r.get("summary") or ""} for r in rows]
    return page("index.html", title="cutover results", runs=runs)


def files_page(run_id: str, run_dir: str, rel: str, full: str) -> str:
    """`/run/<id>/files/<rel>`: a directory of the run (never its secrets)."""
    q = urllib.parse.quote(run_id)
    up = None
    if rel:
        up = f"/run/{q}/files/" + urllib.parse.quote("/".join(rel.rstrip("/").split("/")[:-1]))
    files = []
    for name in sorted(os.listdir(full)):
        p = os.path.join(full, name)
        if is_secret(run_dir, p):
            continue
        href = f"/run/{q}/files/" + urllib.parse.quote(
            (rel.rstrip("/") + "/" if rel else "") + name)
        if os.path.isdir(p):
            files.append({"name": name, "href": href + "/", "dir": True})
            continue
        try:
            size = os.path.getsize(p)
        except OSError:
            continue
        files.append({"name": name, "href": href, "dir": False, "size": size})
    return page("files.html", title=f"{run_id} files", run_id=run_id, run_href=f"/run/{q}/",
                rel=rel, up=up, files=files)


class Handler(BaseHTTPRequestHandler):
    """One request; `server.results` is the results directory. A new page is a route
    in `do_GET` / `_run` and a template in `templates/`."""

    server_version = "cutover-serve"
    protocol_version = "HTTP/1.1"

    @property
    def results(self) -> str:
        return self.server.results  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib name
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:  # noqa: N802 - stdlib name
        url = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(url.path)
        query = urllib.parse.parse_qs(url.query)
        self._head = head
        try:
            if path == "/":
                return self._send(200, index_page(self.results))
            if path == "/trend":
                return self._send(200, trend_page(self.results))
            if path == "/favicon.ico":
                return self._send(204, b"", "image/x-icon")
            parts = path.split("/", 3)
            if len(parts) >= 3 and parts[1] == "run" and parts[2]:
                return self._run(parts[2], parts[3] if len(parts) > 3 else "", query)
            return self._error(404, f"no page {path}")
        except (ReviewError, store.StoreError) as e:
            return self._error(404 if "no run" in str(e) else 500, str(e))
        except sqlite3.DatabaseError as e:
            return self._error(500, str(e))
        except (BrokenPipeError, ConnectionResetError):
            return None
        except Exception as e:  # a bug: answer (the browser would hang on keep-alive)
            self.log_error("internal error on %s: %r", self.path, e)
            return self._error(500, f"internal error: {e}")

    def _run(self, ref: str, rest: str, query: dict[str, list[str]]) -> None:
        with store.opened(self.results) as db:
            row = store.resolve_run(db, ref)
            run_dir = store.run_dir_of(self.results, row)
            if rest in ("", "report", "report.html"):
                return self._report(db, row, query)
            if rest == "download.zip":
                history = history_text(db, row, "jsonl")
                return self._zip(row, run_dir, history)
        if rest == "files" or rest.startswith("files/"):
            rel = rest[len("files/"):] if rest.startswith("files/") else ""
            full = safe_path(run_dir, rel)
            if full is None:
                return self._error(404, f"no file {rel!r} in run {row['id']}")
            if os.path.isdir(full):
                return self._send(200, files_page(row["id"], run_dir, rel, full))
            return self._file(full)
        return self._error(404, f"no page {rest!r} for run {row['id']}")

    def _report(self, db: sqlite_utils.Database, row: dict[str, Any],
                query: dict[str, list[str]]) -> None:
        def num(name: str) -> float | None:
            v = query.get(name, [None])[0]
            if v in (None, ""):
                return None
            try:
                return float(v)
            except ValueError:
                raise ReviewError(f"?{name}= expects a number of seconds") from None

        max_ops = int(num("max_ops") or DEFAULT_MAX_OPS)
        q = urllib.parse.quote(row["id"])

        def page_ref(a: int, b: int) -> dict[str, str]:
            extra = "" if max_ops == DEFAULT_MAX_OPS else f"&max_ops={max_ops}"
            return {"href": f"/run/{q}/?from={a / 1e9:.9f}&to={b / 1e9:.9f}{extra}"}

        links = {"all runs": "/", "files": f"/run/{q}/files/",
                 "download zip": f"/run/{q}/download.zip",
                 "whole run": f"/run/{q}/"}
        try:
            text = render_report(report_data(db, row, from_s=num("from"), to_s=num("to"),
                                             max_ops=max_ops, page_ref=page_ref, links=links))
        except ReviewError as e:
            return self._error(400, str(e))
        return self._send(200, text)

    def _file(self, full: str) -> None:
        ctype = mimetypes.guess_type(full)[0] or "application/octet-stream"
        if full.endswith(TEXT_SUFFIXES):
            ctype = "text/plain; charset=utf-8"
        try:
            size = os.path.getsize(full)
            fh = open(full, "rb")  # noqa: SIM115 - closed below after streaming
        except OSError as e:
            return self._error(404, f"cannot read {os.path.basename(full)}: {e.strerror}")
        with fh:
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(size))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy", "default-src 'none'")
            self.end_headers()
            if not self._head:
                shutil.copyfileobj(fh, self.wfile)
        return None

    def _zip(self, row: dict[str, Any], run_dir: str, history: str) -> None:
        if not os.path.isdir(run_dir):
            return self._error(404, f"run {row['id']}: its directory is missing")
        with tempfile.SpooledTemporaryFile(max_size=32 << 20) as tmp:
            zip_run(run_dir, history, tmp)
            size = tmp.tell()
            tmp.seek(0)
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(size))
            self.send_header("Content-Disposition",
                             f'attachment; filename="{row["id"]}.zip"')
            self.end_headers()
            if not self._head:
                shutil.copyfileobj(tmp, self.wfile)
        return None

    def _send(self, code: int, body: str | bytes, ctype: str = "text/html; charset=utf-8") -> None:
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(code)
        if code != 204:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if ctype.startswith("text/html"):
            self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        if not self._head and code != 204:
            self.wfile.write(data)

    def _error(self, code: int, message: str) -> None:
        self._send(code, page("error.html", title=f"error {code}", code=code, message=message))


class ResultsServer(ThreadingHTTPServer):
    """The HTTP server over one results directory (the `cutover serve` command)."""

    daemon_threads = True

    def __init__(self, results: str, address: tuple[str, int], verbose: bool = False) -> None:
        self.results = results
        self.verbose = verbose
        super().__init__(address, Handler)


def make_server(results: str, host: str = "127.0.0.1", port: int = 8080,
                verbose: bool = False) -> ResultsServer:
    """A bound server (port 0: any free one; see `server_address`), not yet serving."""
    return ResultsServer(results, (host, port), verbose)


@contextlib.contextmanager
def serving(results: str, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """A server on a background thread for the length of a `with`; yields its base URL
    (tests and tools that want the UI without blocking)."""
    httpd = make_server(results, host, port)
    t = threading.Thread(target=httpd.serve_forever, daemon=True, name="cutover-serve")
    t.start()
    try:
        h, p = httpd.server_address[:2]
        yield f"http://{h}:{p}"
    finally:
        httpd.shutdown()
        httpd.server_close()


__all__ = ["Handler", "ResultsServer", "index_page", "files_page", "is_secret", "make_server",
           "safe_path", "serving", "zip_run"]
