"""HTML from templates: the one jinja2 environment of the UI.

Templates live in `orchestrator/ui/templates/`, CSS in `orchestrator/ui/static/`
(package data, so an installed cutover finds them). Pages inline their CSS: a report
is one file that opens offline, and a Content-Security-Policy forbids every fetch and
every script or style that does not carry the page's nonce, so the served pages keep
that promise too.

Autoescaping is on, and every value goes through `checker.visualize.esc` (the one
escape of the project's pages, also used by the SVG helpers): a value that is
already `Markup` (a plot drawn by `orchestrator.ui.plots`) is inserted as it is.
"""
from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup

from checker.visualize import csp, esc, new_nonce, swatch
from orchestrator.ui.svg import secs, targets_text
from orchestrator.ui.text import check_line

VERDICT_CLASSES = ("valid", "invalid", "unknown", "aborted", "error", "running", "crashed")


def verdict_class(verdict: str | None, status: str | None = None) -> str:
    """The CSS class suffix of a verdict; a run without one shows its status."""
    v = verdict or status or "running"
    return v if v in VERDICT_CLASSES else "unknown"


def _finalize(value: Any) -> Any:
    return value if isinstance(value, Markup) else Markup(esc(value))


@cache
def asset(name: str) -> Markup:
    """A file of `orchestrator/ui/static/`, to inline in a page."""
    text = (resources.files("orchestrator.ui") / "static" / name).read_text(encoding="utf-8")
    return Markup(text)


@cache
def environment() -> jinja2.Environment:
    """Built once per process: jinja2 compiles each template on first use and keeps it."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("orchestrator.ui", "templates"),
                             autoescape=True, finalize=_finalize, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    env.globals.update(asset=asset, verdict_class=verdict_class, check_line=check_line,
                       swatch=lambda color, cls="sw": Markup(swatch(color, cls)))
    env.filters.update(secs=secs, targets=targets_text,
                       dash=lambda v: "-" if v is None else v)
    return env


def page(template: str, *, nonce: str | None = None, **context: Any) -> str:
    """Render one template of `orchestrator/ui/templates/`. `nonce` is the page's CSP
    nonce (`checker.visualize.csp`; a server sends the same one in its header); a fresh
    one by default."""
    nonce = nonce or new_nonce()
    return environment().get_template(template).render(csp=Markup(csp(nonce)), nonce=nonce,
                                                       **context)
