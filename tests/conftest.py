"""Helpers more than one test file needs, written once.

Plain helpers are imported (`from tests.conftest import write_file`); the Porcupine
corpus is also a fixture, because a test that needs it must fail, loudly, where the
corpus is missing: a skipped test reads as a passed one in a CI summary.

The hooks at the end hold each test to its tier markers (docs/testing.md).
"""
from __future__ import annotations

import base64
import concurrent.futures.process
import multiprocessing.process
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[1]
# Porcupine's test corpus, vendored (tests/data/porcupine/SOURCE.md says from where).
CORPUS = REPO / "tests" / "data" / "porcupine"
EXAMPLES = REPO / "examples"
_SCRIPT = REPO / ".venv" / "bin" / "cutover"
# The `cutover` command as a user runs it (the venv's script when there is one).
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "orchestrator.cli"]

T = TypeVar("T")


@pytest.fixture
def corpus() -> Path:
    """The Porcupine corpus directory; a test asking for it fails when it is absent."""
    if not (CORPUS / "verdicts.tsv").is_file():
        pytest.fail(f"Porcupine corpus not found: expected {CORPUS / 'verdicts.tsv'} (it "
                    f"ships with the repository, in tests/data/porcupine)")
    return CORPUS


def write_file(tmp_path: Path, name: str, text: str | bytes) -> str:
    """Put `text` in `tmp_path/name` and return the path as a string (what the readers
    and the CLI take)."""
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return str(p)


def wait_for(pred: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `pred` until it returns something true (returned); fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def secret_forms(secret: bytes) -> list[str]:
    """Every way a key could show up in text."""
    return [
        repr(secret)[2:-1],  # the escaped bytes, however they are quoted
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.b64encode(secret).decode().rstrip("="),
        base64.urlsafe_b64encode(secret).decode(),
    ]


def assert_no_key_material(blob: str | bytes, secret: bytes) -> None:
    """Neither the key's bytes nor any text form of it is in `blob`."""
    if isinstance(blob, bytes):
        assert secret not in blob, "key material leaked (raw bytes)"
        forms: list[str | bytes] = [f.encode() for f in secret_forms(secret)]
    else:
        forms = list(secret_forms(secret))
    for form in forms:
        assert form not in blob, "key material leaked"


# ------------------------------------------------------------------------ the tiers
# A test with none of the markers real, sim, dask, browser, stress is in the fast tier
# (`make check`, docs/testing.md). So that the markers stay true, a test that starts, in this process, node or
# switchboard processes, a simulated run, a pool of simulator workers or a Dask cluster
# without the marker of that kind fails and says which marker it needs. A CLI child is out
# of sight: a test that runs `cutover run` (or sim, hunt, matrix) as a subprocess is marked
# by hand, by what the command does.

_current: list[pytest.Item] = []
_untiered: dict[str, str] = {}  # nodeid -> what it did without its marker


class TierError(RuntimeError):
    """A test did what its markers say it does not do."""


def _needs(marker: str, what: str) -> None:
    if not _current or _current[-1].get_closest_marker(marker) is not None:
        return
    item = _current[-1]
    msg = (f"{item.nodeid} {what} but is not marked `{marker}`: add @pytest.mark.{marker} "
           f"to it (or to its module: pytestmark), see docs/testing.md")
    _untiered.setdefault(item.nodeid, msg)
    raise TierError(msg)


def _wrap(cls: type, name: str, check: Callable[..., None]) -> None:
    orig = getattr(cls, name)
    if getattr(orig, "_tier_guard", False):
        return

    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        check(self)
        return orig(self, *args, **kwargs)

    guarded._tier_guard = True  # type: ignore[attr-defined]
    setattr(cls, name, guarded)


def _process_start(proc: multiprocessing.process.BaseProcess) -> None:
    target = getattr(proc, "_target", None)
    where = f"{getattr(target, '__module__', '')}.{getattr(target, '__name__', '')}"
    if where in ("orchestrator.real.cluster._node_entry", "orchestrator.real.switchboard._switchboard_child"):
        _needs("real", "starts a node or switchboard process")


def _install_guards() -> None:
    """Wrap what the heavy tiers start; modules not imported yet are wrapped once they are
    (this runs before every test)."""
    _wrap(multiprocessing.process.BaseProcess, "start", _process_start)
    _wrap(concurrent.futures.process.ProcessPoolExecutor, "__init__",
          lambda _s: _needs("sim", "starts a process pool (the simulator's workers)"))
    if (world := getattr(sys.modules.get("orchestrator.sim.run"), "SimWorld", None)) is not None:
        _wrap(world, "__init__", lambda _s: _needs("sim", "runs a simulated run"))
    if (local := getattr(sys.modules.get("distributed"), "LocalCluster", None)) is not None:
        _wrap(local, "__init__", lambda _s: _needs("dask", "starts a Dask cluster"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    _install_guards()
    _current.append(item)
    try:
        yield
    finally:
        _current.pop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # The TierError fails the test where it is raised; this fails it too where the code
    # under test caught it (a harness turns exceptions into one-line errors).
    outcome = yield
    report = outcome.get_result()
    msg = _untiered.get(item.nodeid)
    if msg and report.when == "call" and report.passed:
        report.outcome = "failed"
        report.longrepr = msg
