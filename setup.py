"""Builds the checker's hot modules with mypyc, when it can (docs/checker.md, "The
compiled path"). Everything else about the package is in pyproject.toml.

Why a setup.py: mypyc's build hook (`mypyc.build.mypycify`) is setuptools'. The modules
in `COMPILED` are compiled from copies whose `SOURCE_HASH = ""` line carries the hash of
the source they were made from; `checker._native` compares it with the source next to
the compiled module at import, so a stale build is never run in place of newer code.

Compiling is optional: without mypy, a C compiler or Python's headers, or with
`CUTOVER_PURE_PYTHON=1` set, the install still succeeds, says so, and the checker runs
the same source as plain Python.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# The checker's search, its models and its early refutation: where a check spends its
# time (docs/checker.md, "The compiled path").
COMPILED = ["checker/lin_search.py", "checker/models.py", "checker/lin_refute.py"]
# What the compiled modules import from the package: type-checked with them, not compiled.
ALONGSIDE = ["checker/history.py", "checker/lin_result.py"]
STAGE = Path("build") / "mypyc-src"
GROUP = "cutover_checker__mypyc"  # the shared library of the compiled modules (top level)
HASH_LINE = 'SOURCE_HASH = ""'


def _say(msg: str) -> None:
    print(f"cutover: {msg}", file=sys.stderr, flush=True)


def source_hash(path: Path) -> str:
    """The hash `checker._native` compares: of the source file's bytes as they are."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stage() -> list[str]:
    """Copies of the compiled modules (hash baked in) and of what they import, in a
    package of their own under build/, so mypyc names them checker.*."""
    pkg = STAGE / "checker"
    if STAGE.exists():
        shutil.rmtree(STAGE)
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for rel in ALONGSIDE:
        shutil.copyfile(ROOT / rel, STAGE / rel)
    out = []
    for rel in COMPILED:
        text = (ROOT / rel).read_text()
        if text.count(HASH_LINE) != 1:
            raise RuntimeError(f"{rel} must hold the line {HASH_LINE!r} exactly once")
        digest = source_hash(ROOT / rel)
        (STAGE / rel).write_text(text.replace(HASH_LINE, f'SOURCE_HASH = "{digest}"'))
        out.append(str(STAGE / rel))
    return out


def _remove_builds() -> None:
    """Compiled modules an earlier install left in the tree (an editable install builds
    in place): when this one does not compile, none may stay (`checker._native` would
    also refuse a stale one, by its hash)."""
    for rel in COMPILED + [GROUP]:
        stem = Path(rel).with_suffix("")
        for path in (ROOT / stem.parent).glob(f"{stem.name}.*.so"):
            path.unlink(missing_ok=True)
            _say(f"removed {path.relative_to(ROOT)}, an earlier build")


def _extensions() -> list:
    if os.environ.get("CUTOVER_PURE_PYTHON", "") not in ("", "0"):
        _say("CUTOVER_PURE_PYTHON is set: the checker is installed as pure Python")
        _remove_builds()
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _say("mypyc is not available: the checker is installed as pure Python")
        _remove_builds()
        return []
    try:
        return mypycify(_stage(), opt_level="3", group_name=GROUP.removesuffix("__mypyc"))
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a failed compile is not a failed install
        _say(f"mypyc could not compile the checker ({e!r}): installed as pure Python")
        _remove_builds()
        return []


class OptionalBuildExt(build_ext):
    """build_ext that leaves the pure-Python path in place when compiling fails (no C
    compiler, no Python headers): the install succeeds and says so."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - CCompilerError, DistutilsExecError, OSError...
            for path in self.get_outputs():  # no half-built set may stay behind
                try:
                    os.remove(path)
                except OSError:
                    pass
            _say(f"compiling the checker failed ({e}): installed as pure Python")


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
