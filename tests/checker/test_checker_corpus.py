"""Porcupine's own test corpus: every file gets the verdict Porcupine expects.

The corpus is vendored in tests/data/porcupine (its SOURCE.md says from where). It is
required: a missing corpus is a failure with a message saying where it was looked for.
"""
from __future__ import annotations

import csv
import subprocess

import pytest

from checker import Verdict, check, get_model, read_history
from tests.conftest import CLI, CORPUS, REPO

VERDICTS = CORPUS / "verdicts.tsv"


def _entries() -> list[tuple[str, bool]]:
    if not VERDICTS.is_file():
        return []
    with VERDICTS.open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [(r["file"], {"true": True, "false": False}[r["linearizable"]]) for r in rows]


ENTRIES = _entries()
FORMAT = {"etcd": "porcupine-etcd", "kv": "porcupine-kv"}


def _fmt(name: str) -> str:
    return FORMAT[name.split("/", 1)[0]]


def test_corpus_is_present() -> None:
    assert VERDICTS.is_file(), (
        f"Porcupine corpus not found: expected {VERDICTS} (it ships with the repository, "
        f"in tests/data/porcupine)")
    assert len(ENTRIES) >= 50, f"{VERDICTS} lists only {len(ENTRIES)} files"
    for name, _ in ENTRIES:
        assert (CORPUS / name).is_file(), f"{VERDICTS} names {name}, which is missing"
    kinds = {name.split("/", 1)[0] for name, _ in ENTRIES}
    assert kinds == {"etcd", "kv"}, kinds
    expected = {ok for _, ok in ENTRIES}
    assert expected == {True, False}


def _cases() -> list:
    if not ENTRIES:  # fail loudly rather than collect zero cases (pytest would skip)
        return [pytest.param("<corpus missing>", True, True, id="corpus-missing")]
    cases = []
    for name, ok in ENTRIES:
        stops = (True, False) if name.startswith("kv/") else (True,)
        for stop in stops:
            cases.append(pytest.param(name, ok, stop,
                                      id=f"{name}-{'stop' if stop else 'all'}"))
    return cases


@pytest.mark.parametrize(("name", "linearizable", "stop_early"), _cases())
def test_corpus_verdict(name: str, linearizable: bool, stop_early: bool) -> None:
    assert ENTRIES, f"Porcupine corpus not found: expected {VERDICTS}"
    fmt = _fmt(name)
    ops = read_history(str(CORPUS / name), fmt)
    assert ops, f"{name}: no operations read"
    model = get_model("cas-register" if fmt == "porcupine-etcd" else "kv")
    # Checking every partition of an invalid history to the end can be very expensive
    # (c50-bad has keys that no search settles in minutes); the verdict must not wait for
    # them: once one key is invalid, the history is, and the rest may stay `unknown`.
    timeout = 3.0 if not (stop_early or linearizable) else 60.0
    res = check(model, ops, timeout=timeout, stop_early=stop_early)
    want = Verdict.VALID if linearizable else Verdict.INVALID
    assert res.verdict is want, (
        f"{name}: expected {want.value}, got {res.verdict.value}: "
        + "; ".join(p.reason for p in res.partitions if p.reason))
    if linearizable:
        assert not res.failures()
        assert all(p.verdict is Verdict.VALID for p in res.partitions)
        return
    bad = [p for p in res.partitions if p.verdict is Verdict.INVALID]
    assert bad and all(p.blocked for p in bad)
    for p in res.partitions:
        if p.verdict is Verdict.UNKNOWN:
            assert p.reason, f"{name}: key {p.key!r} is unknown without a reason"


def test_kv_corpus_partitions_by_key() -> None:
    ops = read_history(str(CORPUS / "kv" / "c10-ok.txt"), "porcupine-kv")
    res = check(get_model("kv"), ops)
    keys = {o.key for o in ops}
    assert len(keys) > 1
    assert len(res.partitions) == len(keys)
    assert {p.key for p in res.partitions} == keys
    for p in res.partitions:
        assert {o.key for o in p.ops} == {p.key}


def test_etcd_reader_semantics() -> None:
    """Spot checks of the etcd log reading against the raw lines of one file."""
    path = CORPUS / "etcd" / "etcd_000.log"
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    ops = read_history(str(path), "porcupine-etcd")
    invokes = sum(":invoke" in ln for ln in lines)
    failed_reads = sum(":fail" in ln and ":read" in ln for ln in lines)
    # Every invoke is an op, except reads that failed (unknown result, dropped).
    assert len(ops) == invokes - failed_reads
    infos = sum(":info" in ln for ln in lines)
    assert sum(o.ret is None for o in ops) >= infos
    failed_cas = [o for o in ops if o.f == "cas" and o.output is False]
    assert len(failed_cas) == sum(":fail" in ln and ":cas" in ln for ln in lines)
    assert all(o.ret is not None for o in failed_cas)




def _tsv(files: list[str], fmt: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "lin", "--format", fmt, "--tsv", *extra,
                           *[str(CORPUS / f) for f in files]],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def _parse_tsv(out: str, files: list[str]) -> dict[str, str]:
    lines = out.splitlines()
    assert len(lines) == len(files), out
    got = {}
    for line in lines:
        cols = line.split("\t")
        assert len(cols) == 3, repr(line)
        path, verdict, secs = cols
        assert verdict in ("valid", "invalid", "unknown"), line
        assert float(secs) >= 0, line
        got[path] = verdict
    assert set(got) == {str(CORPUS / f) for f in files}
    return got


@pytest.mark.parametrize(("files", "fmt", "code"), [
    (["etcd/etcd_002.log", "etcd/etcd_005.log"], "porcupine-etcd", 0),
    (["etcd/etcd_000.log", "etcd/etcd_002.log", "etcd/etcd_001.log"], "porcupine-etcd", 1),
    (["kv/c01-ok.txt", "kv/c10-bad.txt"], "porcupine-kv", 1),
    (["kv/c01-ok.txt"], "porcupine-kv", 0),
], ids=["etcd-valid", "etcd-mixed", "kv-mixed", "kv-one"])
def test_cli_tsv(files: list[str], fmt: str, code: int) -> None:
    expected = dict(ENTRIES)
    p = _tsv(files, fmt)
    assert p.returncode == code, p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    got = _parse_tsv(p.stdout, files)
    for f in files:
        assert got[str(CORPUS / f)] == ("valid" if expected[f] else "invalid"), f


def test_cli_tsv_all_partitions() -> None:
    p = _tsv(["kv/c10-bad.txt", "kv/c10-ok.txt"], "porcupine-kv", "--all-partitions")
    assert p.returncode == 1, p.stderr
    got = _parse_tsv(p.stdout, ["kv/c10-bad.txt", "kv/c10-ok.txt"])
    assert list(got.values()) == ["invalid", "valid"]


@pytest.mark.parametrize("name", ["kv/c10-ok.txt", "kv/c10-bad.txt"])
@pytest.mark.parametrize("stop_early", [True, False])
def test_parallel_workers_agree(name: str, stop_early: bool) -> None:
    """Partitions spread over worker processes give the same verdict per key."""
    ops = read_history(str(CORPUS / name), "porcupine-kv")
    model = get_model("kv")
    serial = check(model, ops, timeout=60, stop_early=False, workers=1)
    par = check(model, ops, timeout=60, stop_early=stop_early, workers=2)
    assert par.verdict is serial.verdict
    assert [p.key for p in par.partitions] == [p.key for p in serial.partitions]
    for a, b in zip(par.partitions, serial.partitions, strict=True):
        assert a.ops == b.ops
        if a.verdict is not Verdict.UNKNOWN:  # stop_early may cut some keys short
            assert a.verdict is b.verdict, a.key
