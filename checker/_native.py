"""Which path the checker runs: the modules mypyc compiled at install, or their source.

`checker/__init__.py` calls `select()` before anything imports the search, so the choice
is made once per process, for every compiled module together:

* `CUTOVER_PURE_PYTHON=1` (checked here, at import) forces the source;
* a compiled module that fails to import (a half-built or foreign build) falls back;
* a compiled module whose baked-in `SOURCE_HASH` is not the hash of the `.py` beside it
  is stale (the source was edited after the install compiled it): it would silently run
  old code, so the source is loaded instead, with one warning saying how to rebuild.

Both paths run the same source, so they give the same verdicts and counterexamples
(`tests/checker/test_compiled.py` checks the corpus both ways).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

# Compiled by setup.py (its COMPILED), loaded in this order (lin_search imports models).
MODULES = ("checker.models", "checker.lin_search", "checker.lin_refute")
ENV = "CUTOVER_PURE_PYTHON"

_status: dict[str, object] = {"compiled": False, "reason": "not selected yet"}


def _source(name: str) -> Path:
    return Path(__file__).resolve().parent / (name.rsplit(".", 1)[1] + ".py")


def _load_source(name: str) -> ModuleType:
    """The module from its .py, in place of any compiled one (imports that follow get
    this one from sys.modules)."""
    loader = importlib.machinery.SourceFileLoader(name, str(_source(name)))
    spec = importlib.util.spec_from_file_location(name, str(_source(name)), loader=loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    package, _, child = name.rpartition(".")
    if package in sys.modules:  # `checker.lin_search` as an attribute names this one too
        setattr(sys.modules[package], child, mod)
    return mod


def _is_compiled(mod: ModuleType) -> bool:
    return isinstance(getattr(mod, "__loader__", None), importlib.machinery.ExtensionFileLoader)


def _pure(reason: str) -> None:
    for name in MODULES:
        sys.modules.pop(name, None)
    for name in MODULES:
        _load_source(name)
    _status.update(compiled=False, reason=reason)


def select() -> None:
    """Import the compiled modules if they are there and current, else the source."""
    if any(name in sys.modules for name in MODULES):
        return  # chosen already (a re-import of the package)
    if os.environ.get(ENV, "") not in ("", "0"):
        _pure(f"pure Python ({ENV}={os.environ[ENV]})")
        return
    try:
        mods = [importlib.import_module(name) for name in MODULES]
    except ImportError as e:
        _pure(f"pure Python (a compiled module did not load: {e})")
        return
    if not all(_is_compiled(m) for m in mods):
        _pure("pure Python (not compiled at install: see docs/checker.md, "
              "\"The compiled path\")")
        return
    for name, mod in zip(MODULES, mods, strict=True):
        baked = getattr(mod, "SOURCE_HASH", "")
        try:
            now = hashlib.sha256(_source(name).read_bytes()).hexdigest()
        except OSError:  # installed without its source: nothing newer to run instead
            continue
        if baked != now:
            reason = (f"pure Python ({name} was compiled from an older source; "
                      "`make install` or `pip install -e .` compiles it again)")
            warnings.warn(f"cutover: {reason}", RuntimeWarning, stacklevel=3)
            _pure(reason)
            return
    _status.update(compiled=True, reason="compiled (mypyc)")


def compiled() -> bool:
    """Whether the checker's search runs compiled (mypyc) in this process."""
    return bool(_status["compiled"])


def status() -> str:
    """Which path and why, in words (`cutover bench checker` prints it)."""
    return str(_status["reason"])
