"""Helpers more than one test file needs, written once.

Plain helpers are imported (`from tests.conftest import write_file`); the Porcupine
corpus is also a fixture, because a test that needs it must fail, loudly, where the
corpus is missing: a skipped test reads as a passed one in a CI summary.
"""
from __future__ import annotations

import base64
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

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
