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
import math
import mimetypes
import os
import shutil
import sqlite3
import stat
import sys
import tempfile
import threading
import time
import urllib.parse
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import sqlite_utils

from checker.visualize import csp, new_nonce
from orchestrator import store
from orchestrator.errors import ReviewError
from orchestrator.store.export import history_text
from orchestrator.ui.data import DEFAULT_MAX_OPS, report_data
from orchestrator.ui.render import page
from orchestrator.ui.report import render_report
from orchestrator.ui.runlist import index_page
from orchestrator.ui.trend import trend_page

SECRET_NAMES = frozenset({"kek"})
TEXT_SUFFIXES = (".json", ".jsonl", ".log", ".txt", ".md", ".edn", ".html", ".csv")

Identity = tuple[int, int]  # (device, inode): what a file is, whatever its name or path


def kek_identities(results: str, run_dirs: list[str] | tuple[str, ...] = ()) -> set[Identity]:
    """(device, inode) of every run's KEK: `RESULTS/*/kek` and the `kek` of each run dir
    given (those the database names). A hard link or symlink to any of them, under any
    name, in any run, is the key itself."""
    paths = [os.path.join(d, "kek") for d in run_dirs]
    try:
        paths += [os.path.join(results, n, "kek") for n in os.listdir(results)]
    except OSError:
        pass
    out: set[Identity] = set()
    for p in paths:
        try:
            st = os.stat(p)
        except (OSError, ValueError):
            continue
        out.add((st.st_dev, st.st_ino))
    return out


def is_secret(run_dir: str, path: str, keks: set[Identity] | None = None) -> bool:
    """A file that holds key material: by name anywhere in the run dir, or the very
    file of a KEK (this run's, or any of `keks`) under another name or link."""
    if os.path.basename(path) in SECRET_NAMES:
        return True
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return False
    ids = set(keks or ())
    try:
        own = os.stat(os.path.join(run_dir, "kek"))
        ids.add((own.st_dev, own.st_ino))
    except OSError:
        pass
    return (st.st_dev, st.st_ino) in ids


def safe_path(run_dir: str, rel: str) -> str | None:
    """The real path of `rel` inside `run_dir`, or None when it leaves the directory,
    does not exist or is secret."""
    if "\0" in rel:
        return None
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


def open_served(path: str, keks: set[Identity]) -> tuple[int, os.stat_result] | None:
    """An open descriptor on `path` when it may be served, else None. Opened without
    blocking (a FIFO would hang the request forever) and without following a last
    symlink, then checked on the descriptor itself, so what is checked is what is sent:
    a regular file, with one link (a hard link could be a key under another name), that
    is no run's KEK."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except (OSError, ValueError):
        return None
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 \
                and (st.st_dev, st.st_ino) not in keks:
            return fd, st
    except OSError:
        pass
    os.close(fd)
    return None


def _listable(full: str, keks: set[Identity]) -> tuple[bool, int] | None:
    """(is a directory, size) of a directory entry shown in a listing, or None when it
    is not shown: a secret, a link to a KEK, anything but a regular file with one link
    or a directory."""
    try:
        st = os.stat(full)
    except (OSError, ValueError):
        return None
    if stat.S_ISDIR(st.st_mode):
        return True, 0
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or (st.st_dev, st.st_ino) in keks:
        return None
    return False, st.st_size


def zip_run(run_dir: str, history: str | None, out: Any,
            keks: set[Identity] | None = None) -> int:
    """Zip the run dir into the file object `out`: its regular files that may be served
    (`open_served`; symlinks are skipped), plus `history.jsonl`; returns the number of
    files written."""
    root = os.path.realpath(run_dir)
    base = os.path.basename(root)
    keks = set(keks or ()) | kek_identities(os.path.dirname(root), (root,))
    n = 0
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in SECRET_NAMES
                                 and not os.path.islink(os.path.join(dirpath, d)))
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                if name in SECRET_NAMES or os.path.islink(full):
                    continue
                got = open_served(full, keks)
                if got is None:
                    continue
                fd, st = got
                with os.fdopen(fd, "rb") as src:
                    when = time.localtime(max(st.st_mtime, 315532800))[:6]  # zip: >= 1980
                    info = zipfile.ZipInfo(os.path.join(base, os.path.relpath(full, root)),
                                           date_time=when)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    with z.open(info, "w") as dst:
                        shutil.copyfileobj(src, dst)
                n += 1
        if history is not None:
            z.writestr(os.path.join(base, "history.jsonl"), history)
            n += 1
    return n


def files_page(run_id: str, run_dir: str, rel: str, full: str,
               keks: set[Identity] | None = None, nonce: str | None = None) -> str:
    """`/run/<id>/files/<rel>`: a directory of the run (never its secrets, nor anything
    that may not be served: see `open_served`)."""
    q = urllib.parse.quote(run_id)
    root = os.path.realpath(run_dir)
    keks = set(keks or ())
    up = None
    if rel:
        up = f"/run/{q}/files/" + urllib.parse.quote("/".join(rel.rstrip("/").split("/")[:-1]))
    files = []
    for name in sorted(os.listdir(full)):
        p = os.path.join(full, name)
        real = os.path.realpath(p)
        if name in SECRET_NAMES or is_secret(run_dir, p, keks) \
                or (real != root and not real.startswith(root + os.sep)):
            continue
        shown = _listable(real, keks)
        if shown is None:
            continue
        href = f"/run/{q}/files/" + urllib.parse.quote(
            (rel.rstrip("/") + "/" if rel else "") + name)
        if shown[0]:
            files.append({"name": name, "href": href + "/", "dir": True})
        else:
            files.append({"name": name, "href": href, "dir": False, "size": shown[1]})
    return page("files.html", nonce=nonce, title=f"{run_id} files", run_id=run_id,
                run_href=f"/run/{q}/", rel=rel, up=up, files=files)


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
        self._head = head
        self._nonce = new_nonce()
        try:
            url = urllib.parse.urlsplit(self.path)
            path = urllib.parse.unquote(url.path, errors="strict")
            query = urllib.parse.parse_qs(url.query, errors="strict")
        except ValueError:
            return self._error(400, "the request's URL is not valid")
        try:
            if "\0" in path or any("\0" in v for vs in query.values() for v in vs):
                return self._error(400, "a NUL byte in the request")
            if path == "/":
                return self._send(200, index_page(self.results, self._nonce,
                                                  {k: v[-1] for k, v in query.items()}))
            if path == "/trend":
                return self._send(200, trend_page(self.results, self._nonce))
            if path == "/favicon.ico":
                return self._send(204, b"", "image/x-icon")
            parts = path.split("/", 3)
            if len(parts) >= 3 and parts[1] == "run" and parts[2]:
                return self._run(parts[2], parts[3] if len(parts) > 3 else "", query)
            return self._error(404, f"no page {path}")
        except store.AmbiguousRun as e:
            return self._error(400, str(e))
        except (store.NoSuchRun, store.UnsafeRunDir, ReviewError) as e:
            return self._error(404, str(e))
        except store.StoreError as e:
            return self._error(500, str(e))
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
            if rest in ("", "report", "report.html"):
                return self._report(db, row, query)
            run_dir = store.run_dir_of(self.results, row)
            others = []
            for r in store.runs(db):
                try:
                    others.append(store.run_dir_of(self.results, r))
                except store.StoreError:
                    continue
            keks = kek_identities(self.results, others)
            if rest == "download.zip":
                history = history_text(db, row, "jsonl")
                return self._zip(row, run_dir, history, keks)
        if rest == "files" or rest.startswith("files/"):
            rel = rest[len("files/"):] if rest.startswith("files/") else ""
            full = safe_path(run_dir, rel)
            if full is not None and os.path.isdir(full):
                return self._send(200, files_page(row["id"], run_dir, rel, full, keks,
                                                  self._nonce))
            got = None if full is None else open_served(full, keks)
            if got is None:
                return self._error(404, f"no file {rel!r} in run {row['id']}")
            return self._file(full, *got)
        return self._error(404, f"no page {rest!r} for run {row['id']}")

    def _report(self, db: sqlite_utils.Database, row: dict[str, Any],
                query: dict[str, list[str]]) -> None:
        def num(name: str) -> float | None:
            v = query.get(name, [None])[0]
            if v in (None, ""):
                return None
            try:
                x = float(v)
            except ValueError:
                x = math.nan
            if not math.isfinite(x):
                raise ReviewError(f"?{name}= expects a number of seconds, not {v[:40]!r}")
            return x

        try:
            raw = query.get("max_ops", [""])[0]
            max_ops = int(raw) if raw else DEFAULT_MAX_OPS
            if not 1 <= max_ops <= 10_000_000:
                raise ValueError
            from_s, to_s = num("from"), num("to")
        except ValueError:
            return self._error(400, "?max_ops= expects a whole number of ops, at least 1")
        except ReviewError as e:
            return self._error(400, str(e))
        q = urllib.parse.quote(row["id"])

        def page_ref(a: int, b: int) -> dict[str, str]:
            extra = "" if max_ops == DEFAULT_MAX_OPS else f"&max_ops={max_ops}"
            return {"href": f"/run/{q}/?from={a / 1e9:.9f}&to={b / 1e9:.9f}{extra}"}

        links = {"all runs": "/", "files": f"/run/{q}/files/",
                 "download zip": f"/run/{q}/download.zip",
                 "whole run": f"/run/{q}/"}
        try:
            data = report_data(db, row, from_s=from_s, to_s=to_s, max_ops=max_ops,
                               page_ref=page_ref, links=links)
            text = render_report(data)
        except ReviewError as e:
            return self._error(400, str(e))
        return self._send(200, text, nonce=data["nonce"])

    def _file(self, full: str, fd: int, st: os.stat_result) -> None:
        ctype = mimetypes.guess_type(full)[0] or "application/octet-stream"
        if full.endswith(TEXT_SUFFIXES):
            ctype = "text/plain; charset=utf-8"
        with os.fdopen(fd, "rb") as fh:
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(st.st_size))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Content-Security-Policy", "default-src 'none'")
            self.end_headers()
            if not self._head:
                shutil.copyfileobj(_Limited(fh, st.st_size), self.wfile)
        return None

    def _zip(self, row: dict[str, Any], run_dir: str, history: str,
             keks: set[Identity]) -> None:
        if not os.path.isdir(run_dir):
            return self._error(404, f"run {row['id']}: its directory is missing")
        with tempfile.SpooledTemporaryFile(max_size=32 << 20) as tmp:
            zip_run(run_dir, history, tmp, keks)
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

    def _send(self, code: int, body: str | bytes, ctype: str = "text/html; charset=utf-8",
              nonce: str | None = None) -> None:
        """One response; an HTML page carries the policy of its nonce (the page's own
        meta tag says the same)."""
        data = body.encode("utf-8", "backslashreplace") if isinstance(body, str) else body
        self.send_response(code)
        if code != 204:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if ctype.startswith("text/html"):
            self.send_header("Content-Security-Policy", csp(nonce or self._nonce))
        self.end_headers()
        if not self._head and code != 204:
            self.wfile.write(data)

    def _error(self, code: int, message: str) -> None:
        self._send(code, page("error.html", nonce=self._nonce, title=f"error {code}",
                              code=code, message=message))


class _Limited:
    """At most `size` bytes of a file: what the Content-Length promised, even if the
    file grew since."""

    def __init__(self, fh: Any, size: int) -> None:
        self.fh = fh
        self.left = size

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        data = self.fh.read(self.left if n < 0 else min(n, self.left))
        self.left -= len(data)
        return data


class ResultsServer(ThreadingHTTPServer):
    """The HTTP server over one results directory (the `cutover serve` command)."""

    daemon_threads = True

    def __init__(self, results: str, address: tuple[str, int], verbose: bool = False) -> None:
        self.results = results
        self.verbose = verbose
        super().__init__(address, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A browser that closes its connection (a reload, a closed tab) is routine, not a
        traceback on the user's terminal; anything else is still printed."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


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


__all__ = ["Handler", "ResultsServer", "index_page", "files_page", "is_secret", "kek_identities",
           "make_server", "open_served", "safe_path", "serving", "zip_run"]
