"""The checker's two paths: the modules mypyc compiled at install, and their source.

The same source runs both ways, so the answers must be the same: the vendored corpus is
checked in two fresh processes, one forced to pure Python (`CUTOVER_PURE_PYTHON=1`),
and every verdict, counterexample, linearization and configuration count must agree.
The path in use is visible (`checker.compiled()`, `cutover bench checker`), and a stale
build (the source edited after the install compiled it) never runs.

`CUTOVER_EXPECT_COMPILED=1` (set by .ci/run) makes a pure-Python fallback a failure: on
a machine with a compiler, a fallback means the build broke (e.g. a mypy error in a
compiled module), which would otherwise only show as a slower checker.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from checker import _native
from tests.conftest import CLI, REPO

# Prints {"compiled": ..., "module": <lin_search's file>, "results": {file: canonical}}.
_DUMP = r"""
import json, sys
from pathlib import Path
import checker, checker.lin_search
from checker import check, get_model, read_history

def canon(res):
    return [res.verdict.value, [
        [p.verdict.value, p.configurations, p.reason, repr(p.key),
         [(s.op.id, repr(s.state), s.unknown_chain) for s in p.linearization],
         [(o.id, ill) for o, ill in p.blocked]] for p in res.partitions]]

corpus = Path(sys.argv[1])
out = {}
for f in sorted(corpus.glob("etcd/*.log")) + sorted(corpus.glob("kv/*.txt")):
    kv = f.parent.name == "kv"
    ops = read_history(str(f), "porcupine-kv" if kv else "porcupine-etcd")
    model = get_model("kv" if kv else "cas-register")
    # Every key of the valid kv files too (not only until one is invalid).
    for stop in (True, False) if kv and "-ok" in f.name else (True,):
        res = check(model, ops, stop_early=stop, workers=1)
        out[f"{f.parent.name}/{f.name} stop_early={stop}"] = canon(res)
print(json.dumps({"compiled": checker.compiled(), "status": checker._native.status(),
                  "module": checker.lin_search.__file__, "results": out}))
"""


def _env(pure: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != _native.ENV}
    if pure:
        env[_native.ENV] = "1"
    return env


def _built() -> bool:
    """Whether the install compiled the modules (their extension files are here)."""
    return all(list((REPO / "checker").glob(f"{m.rsplit('.', 1)[1]}.*.so"))
               for m in _native.MODULES)


def test_both_paths_give_the_same_verdicts_and_counterexamples() -> None:
    corpus = str(REPO / "tests" / "data" / "porcupine")
    procs = {pure: subprocess.Popen([sys.executable, "-c", _DUMP, corpus], cwd=REPO,
                                    env=_env(pure), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for pure in (True, False)}
    got = {}
    for pure, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        got[pure] = json.loads(out)
    assert got[True]["compiled"] is False and got[True]["module"].endswith(".py")
    assert "CUTOVER_PURE_PYTHON" in got[True]["status"]
    assert got[False]["compiled"] is _built(), got[False]["status"]
    pure, native = got[True]["results"], got[False]["results"]
    assert len(pure) == 59  # 50 etcd files, 6 kv files, the 3 valid ones again (every key)
    assert pure.keys() == native.keys()
    for name in pure:
        assert native[name] == pure[name], f"{name}: the compiled path answers differently"
    assert sum(r[0] == "invalid" for r in pure.values()) > 0


def test_the_path_in_use_is_reported() -> None:
    args = [*CLI, "bench", "checker", "--skip-corpus", "--ops", "300", "--keys", "3",
            "--clients", "3", "--workers", "1"]
    for pure in (True, False):
        r = subprocess.run(args, cwd=REPO, env=_env(pure), capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith("checker: "))
        if pure:
            assert line == "checker: pure Python (CUTOVER_PURE_PYTHON=1)"
        elif _built():
            assert line == "checker: compiled (mypyc)"
        else:
            assert line.startswith("checker: pure Python (")


def test_an_install_that_should_compile_did() -> None:
    if os.environ.get("CUTOVER_EXPECT_COMPILED", "") in ("", "0"):
        pytest.skip("CUTOVER_EXPECT_COMPILED is not set (a machine may install pure Python)")
    r = subprocess.run([sys.executable, "-c", "import checker._native as n; print(n.status())"],
                       cwd=REPO, env=_env(False), capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "compiled (mypyc)", (
        f"the checker runs as {r.stdout.strip()!r}: the install did not compile it "
        "(`pip install -v -e .` shows why; setup.py)")


def test_a_stale_build_is_never_run(tmp_path: Path) -> None:
    if not _built():
        pytest.skip("the checker is not compiled here: nothing can be stale")
    # A copy of the package with its compiled modules, then one source edited after.
    shutil.copytree(REPO / "checker", tmp_path / "checker",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for lib in REPO.glob("cutover_checker__mypyc.*.so"):
        shutil.copy(lib, tmp_path)
    probe = ("import checker, checker.lin_search as s; "
             "print(checker.compiled(), s.__file__.endswith('.py'), s.__file__)")
    env = {**_env(False), "PYTHONPATH": str(tmp_path)}

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-W", "always", "-c", probe], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=60)

    fresh = run()
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.split()[:2] == ["True", "False"]
    assert fresh.stdout.split()[2].startswith(str(tmp_path))
    src = tmp_path / "checker" / "lin_search.py"
    src.write_text(src.read_text() + "\n# edited after the build\n")
    stale = run()
    assert stale.returncode == 0, stale.stderr
    assert stale.stdout.split()[:2] == ["False", "True"]
    assert "compiled from an older source" in stale.stderr
    assert stale.stderr.count("RuntimeWarning") == 1
