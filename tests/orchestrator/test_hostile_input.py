"""Hostile history files against `cutover lin` and the readers (issue 15).

One test per attack: the exit code (>= 3 for bad input, never 1, which reads as
"invalid"), exactly one `error:` line on stderr and no traceback, and for the big
inputs the peak RSS of `cutover lin`: a 50 MB file of any kind stays under 500 MB.
The property test mutates valid history files at random: reading them ends in ops or
in a `HistoryError`, and checking what was read never raises.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from checker import HistoryError, check, get_model, read_history
from checker.edn import MAX_DEPTH, dumps, dumps_op, loads_all
from checker.explain import explain
from checker.synth import simulate_kv
from tests.conftest import CLI, REPO, write_file

RSS_BOUND_MB = 500
BIG = 50 * 1000 * 1000  # "a 50 MB file"


def lin(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "lin", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def one_error_line(p: subprocess.CompletedProcess, *parts: str) -> str:
    """Exit >= 3, no traceback, one `error:` line on stderr holding every part."""
    assert "Traceback" not in p.stdout + p.stderr, p.stderr[-3000:]
    assert p.returncode >= 3, (p.returncode, p.stdout[-500:], p.stderr[-500:])
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


# Runs a command under an address-space limit (a regression must fail here, not eat a
# shared machine) and prints the peak RSS of its process tree, in MB, on the last line.
_MEASURE = r"""
import resource, subprocess, sys
def limit():
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
p = subprocess.run(sys.argv[1:], capture_output=True, text=True, preexec_fn=limit)
sys.stdout.write(p.stdout)
sys.stderr.write(p.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
sys.exit(p.returncode)
"""


def lin_rss(*args: str) -> tuple[subprocess.CompletedProcess, int]:
    """`cutover lin ARGS` and the peak RSS (MB) of any one of its processes."""
    p = subprocess.run([sys.executable, "-c", _MEASURE, *CLI, "lin", *args],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    out = p.stdout.splitlines()
    rss = int(out[-1])
    p.stdout = "\n".join(out[:-1]) + ("\n" if out[:-1] else "")
    print(f"cutover lin {' '.join(args)}: exit {p.returncode}, peak RSS {rss} MB")
    return p, rss


OK_EDN = ("{:process 0 :type :invoke :f :write :value 1}\n"
          "{:process 0 :type :ok :f :write :value 1}\n"
          "{:process 1 :type :invoke :f :read :value nil}\n"
          "{:process 1 :type :ok :f :read :value 1}\n")


def _op(value: str) -> str:
    """A write of `value` (EDN text) that completes."""
    return (f"{{:process 0 :type :invoke :f :write :value {value}}}\n"
            f"{{:process 0 :type :ok :f :write :value {value}}}\n")


# ----------------------------------------------------------------- deep nesting (6)

@pytest.mark.parametrize("fmt", ["jepsen-edn", "jsonl"])
@pytest.mark.parametrize("where", ["top", "value"])
def test_nesting_100k_deep_is_one_line_not_a_recursion_error(tmp_path: Path, fmt: str,
                                                             where: str) -> None:
    depth = 100_000
    if fmt == "jsonl":
        deep = "[" * depth + "]" * depth
        text = deep if where == "top" else json.dumps(
            {"process": 0, "type": "invoke", "f": "write", "key": "k"})[:-1] \
            + f', "value": {deep}}}'
    else:
        deep = "[" * depth + "]" * depth
        text = deep if where == "top" else _op(deep)
    path = write_file(tmp_path, "deep", text + "\n")
    one_error_line(lin("--format", fmt, path), f"{path}:1:", f"deeper than {MAX_DEPTH}")


def test_nesting_within_the_limit_is_read(tmp_path: Path) -> None:
    v = "[" * (MAX_DEPTH - 3) + "1" + "]" * (MAX_DEPTH - 3)
    p = lin("--format", "jepsen-edn", write_file(tmp_path, "ok.edn", _op(v)))
    assert p.returncode == 0, p.stderr


# ------------------------------------------------------------ values that crashed (6)

@pytest.mark.parametrize(("text", "words"), [
    (_op('"\\uZZZZ"'), ["\\uZZZZ"]),
    (_op('"ab\\u12"'), ["\\u"]),
    (_op("1/0"), ["1/0", "zero"]),
    (_op("9" * 4301), ["4301 digits"]),
    (_op("-" + "9" * 5000), ["5000 digits"]),
    (_op("1" * 400 + "/" + "3" * 5000), ["digits"]),
    (_op('"\\ud83d"'), ["surrogate"]),
    ('{:process 0 :type :invoke :f :write :value "x}\n', ["never closed"]),
], ids=["bad-u-escape", "short-u-escape", "ratio-by-zero", "int-4301-digits",
        "negative-int-5000", "ratio-5000-digits", "lone-surrogate", "unclosed-string"])
def test_edn_values_that_used_to_crash(tmp_path: Path, text: str, words: list[str]) -> None:
    path = write_file(tmp_path, "h.edn", text)
    one_error_line(lin("--format", "jepsen-edn", path), f"{path}:1:", *words)


@pytest.mark.parametrize(("line", "words"), [
    ('{"process": 0, "type": "invoke", "f": "write", "value": "\\uZZZZ"}', ["JSON"]),
    ('{"process": 0, "type": "invoke", "f": "write", "value": ' + "9" * 5000 + "}",
     ["4300 digits"]),
    ('{"process": 0, "type": "invoke", "f": "write", "value": "\\udc00"}', ["surrogate"]),
    ('{"process": 0, "type": "invoke", "f": "write"} {"process": 1}', ["JSON"]),
], ids=["bad-u-escape", "int-5000-digits", "lone-surrogate", "two-values-one-line"])
def test_jsonl_values_that_used_to_crash(tmp_path: Path, line: str, words: list[str]) -> None:
    path = write_file(tmp_path, "h.jsonl", line + "\n")
    one_error_line(lin("--format", "jsonl", path), f"{path}:1:", *words)


def test_a_map_used_as_a_map_key_is_a_value(tmp_path: Path) -> None:
    text = _op("{{:a 1} 2}") + ("{:process 1 :type :invoke :f :read :value nil}\n"
                                "{:process 1 :type :ok :f :read :value {{:a 1} 2}}\n")
    p = lin("--format", "jepsen-edn", write_file(tmp_path, "h.edn", text))
    assert p.returncode == 0, p.stderr
    top = write_file(tmp_path, "top.edn", "{{:a 1} 2}\n")
    one_error_line(lin("--format", "jepsen-edn", top), f"{top}:1:", "operation map")


def test_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    path = str(tmp_path / "h.edn")
    os.mkfifo(path)
    one_error_line(lin("--format", "jepsen-edn", path, timeout=20), path, "regular file")


def test_etcd_integer_over_4300_digits(tmp_path: Path) -> None:
    path = write_file(tmp_path, "h.log", "INFO  jepsen.util - 0\t:invoke\t:write\t"
                      + "7" * 5000 + "\n")
    one_error_line(lin("--format", "porcupine-etcd", path), f"{path}:1:", "4300 digits")


# ------------------------------------------------------------------------ NaN (9)

@pytest.mark.parametrize("fmt", ["jepsen-edn", "jsonl"])
def test_nan_written_then_read_is_valid(tmp_path: Path, fmt: str) -> None:
    if fmt == "jsonl":
        rows = [{"process": 0, "type": "invoke", "f": "write", "key": "a", "value": math.nan},
                {"process": 0, "type": "ok", "f": "write", "key": "a", "value": math.nan},
                {"process": 1, "type": "invoke", "f": "cas", "key": "a",
                 "value": [math.nan, [math.nan, 2]]},
                {"process": 1, "type": "ok", "f": "cas", "key": "a",
                 "value": [math.nan, [math.nan, 2]]},
                {"process": 2, "type": "invoke", "f": "read", "key": "a", "value": None},
                {"process": 2, "type": "ok", "f": "read", "key": "a", "value": [math.nan, 2]}]
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        text = (_op("##NaN") + "{:process 1 :type :invoke :f :cas :value [##NaN [##NaN 2]]}\n"
                "{:process 1 :type :ok :f :cas :value [##NaN [##NaN 2]]}\n"
                "{:process 2 :type :invoke :f :read :value nil}\n"
                "{:process 2 :type :ok :f :read :value [##NaN 2]}\n")
    p = lin("--format", fmt, write_file(tmp_path, "nan", text))
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert p.stdout.startswith("valid")


def test_edn_read_in_blocks_is_edn_read_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader buffers a file block by block: tiny blocks must change nothing."""
    import io

    import checker.edn as edn

    docs = [b'[{:a 1, :b "xy\\"z"} ; comment\n {:c [1 2 3]}   \n\n  #_ {:d 4} {:e ##NaN} ]',
            b"{:process 0 :type :invoke}\n" * 50 + b";" + b"x" * 100 + b'\n{:z #inst "2020"}',
            b"   " * 100 + b"[1 2 3]" + b" " * 200 + b"(:k)"]
    whole = [repr(list(edn.iter_history(d))) for d in docs]
    monkeypatch.setattr(edn, "_BLOCK", 7)
    monkeypatch.setattr(edn, "_KEEP", 64)
    assert [repr(list(edn.iter_history(io.BytesIO(d)))) for d in docs] == whole


def test_our_edn_writer_writes_what_the_reader_reads_back() -> None:
    for v in (math.nan, math.inf, -math.inf, 1.5, -0.0):
        back = loads_all(dumps(v))[0]
        assert (back != back) if v != v else back == v, (v, back)


# ------------------------------------------------------------------ unknown :f (9)

@pytest.mark.parametrize(("fmt", "model", "text", "line"), [
    ("jepsen-edn", "cas-register",
     OK_EDN + "{:process 2 :type :invoke :f :frobnicate :value 1}\n", 5),
    ("jepsen-edn", "register", _op("1") + "{:process 1 :type :invoke :f :cas :value [1 2]}\n",
     3),
    ("jsonl", "kv", '{"process": 0, "type": "invoke", "f": "delete", "key": "a"}\n', 1),
], ids=["edn-frobnicate", "register-cas", "jsonl-delete"])
def test_an_unknown_f_is_refused_naming_the_line(tmp_path: Path, fmt: str, model: str,
                                                 text: str, line: int) -> None:
    path = write_file(tmp_path, "h", text)
    one_error_line(lin("--format", fmt, "--model", model, path), f"{path}:{line}:",
                   "unknown :f", model)


# ------------------------------------------------------------------- memory (5)

def _write_big(path: Path, line_of: Callable[[int], str], size: int = BIG) -> str:
    """Lines from `line_of(i)` until the file holds `size` bytes."""
    with open(path, "w") as fh:
        n, i = 0, 0
        while n < size:
            chunk = "".join(line_of(j) for j in range(i, i + 1000))
            fh.write(chunk)
            n += len(chunk)
            i += 1000
    return str(path)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("big")


def test_a_50mb_edn_string_is_refused_in_bounded_memory(big: Path) -> None:
    path = big / "one-string.edn"
    with open(path, "w") as fh:
        fh.write('{:process 0 :type :invoke :f :write :value "')
        fh.write("a" * BIG)
        fh.write('"}\n')
    p, rss = lin_rss("--format", "jepsen-edn", str(path))
    one_error_line(p, f"{path}:1:", "longer than", "bytes")
    assert rss <= RSS_BOUND_MB


def test_a_50mb_jsonl_line_is_refused_in_bounded_memory(big: Path) -> None:
    path = big / "one-line.jsonl"
    with open(path, "w") as fh:
        fh.write('{"process": 0, "type": "invoke", "f": "write", "value": "')
        fh.write("a" * BIG)
        fh.write('"}\n')
    p, rss = lin_rss("--format", "jsonl", str(path))
    one_error_line(p, f"{path}:1:", "longer than")
    assert rss <= RSS_BOUND_MB


def _history_line(fmt: str) -> Callable[[int], str]:
    """Two events (a write and its ok) per call, as our export writes them (plain
    formatting: generating 50 MB must not take longer than reading it)."""
    def edn(i: int) -> str:
        p, k = i % 10, i % 1000
        return (f'{{:index {2 * i}, :time {1000 * i}, :process {p}, :type :invoke, '
                f':f :write, :key "k{k}", :value {i}, :node "n1"}}\n'
                f'{{:index {2 * i + 1}, :time {1000 * i + 500}, :process {p}, :type :ok, '
                f':f :write, :key "k{k}", :value {i}, :node "n1"}}\n')

    def jsonl(i: int) -> str:
        p, k = i % 10, i % 1000
        return (f'{{"index": {2 * i}, "time": {1000 * i}, "process": {p}, "type": "invoke", '
                f'"f": "write", "key": "k{k}", "value": {i}, "node": "n1"}}\n'
                f'{{"index": {2 * i + 1}, "time": {1000 * i + 500}, "process": {p}, '
                f'"type": "ok", "f": "write", "key": "k{k}", "value": {i}, "node": "n1"}}\n')

    def etcd(i: int) -> str:
        return (f"INFO  jepsen.util - {i % 10}\t:invoke\t:write\t{i}\n"
                f"INFO  jepsen.util - {i % 10}\t:ok\t:write\t{i}\n")

    return {"jepsen-edn": edn, "jsonl": jsonl, "porcupine-etcd": etcd}[fmt]


@pytest.mark.stress
@pytest.mark.parametrize("fmt", ["jepsen-edn", "jsonl", "porcupine-etcd"])
def test_a_50mb_history_is_checked_in_bounded_memory(big: Path, fmt: str) -> None:
    """One register of a quarter of a million ops (the default model of EDN and etcd
    puts every op in one partition): a verdict, or `unknown` at the memory bound."""
    path = _write_big(big / f"history.{fmt}", _history_line(fmt))
    p, rss = lin_rss("--format", fmt, "--timeout", "5", path)
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    assert p.returncode in (0, 2), (p.returncode, p.stdout[-500:], p.stderr[-500:])
    assert rss <= RSS_BOUND_MB


# --------------------------------------------- property: mutations never crash (6)

def _valid_files() -> dict[str, bytes]:
    events = simulate_kv(40, keys=2, clients=3, seed=15)
    edn = "".join(dumps_op({"process": e["process"], "type": e["type"], "f": e["f"],
                            "key": e["key"], "value": e["value"], "time": e["time"]}) + "\n"
                  for e in events)
    jsonl = "".join(json.dumps(e) + "\n" for e in events)
    vector = "[" + edn + "]\n"
    etcd = "".join(f"INFO  jepsen.util - {p}\t:{t}\t:{f}\t{v}\n" for p, t, f, v in [
        (0, "invoke", "write", 1), (1, "invoke", "cas", "[1 2]"), (0, "ok", "write", 1),
        (1, "ok", "cas", "[1 2]"), (2, "invoke", "read", "nil"), (2, "ok", "read", 2),
        (0, "invoke", "cas", "[5 6]"), (0, "fail", "cas", "[5 6]"),
        (1, "invoke", "write", 3), (1, "info", "write", 3)])
    return {"jepsen-edn": edn.encode(), "jsonl": jsonl.encode(),
            "porcupine-kv": vector.encode(), "porcupine-etcd": etcd.encode()}


VALID_FILES = _valid_files()
# Bytes that mean something to a reader, inserted as well as random ones: a random byte
# rarely lands as `\\u` inside a string or as a second `{` before a map.
SNIPPETS = [b"{", b"}", b"[", b"]", b"(", b'"', b"\\", b"\\u", b"\\uZZ", b"/0", b"#_",
            b"#inst ", b"##NaN", b"NaN", b"1e400", b"9" * 4400, b":", b",", b"\n", b"nil",
            b"\xff", b"\\ud800", b"} {", b"[[[[", b'"\\', b"N", b"M", b";"]
MUTATION = st.tuples(st.sampled_from(["flip", "insert", "delete", "dup", "snippet", "snippet",
                                      "snippet"]),
                     st.integers(min_value=0, max_value=1 << 20),
                     st.integers(min_value=0, max_value=255))


@settings(deadline=None, max_examples=1500, derandomize=True, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(sorted(VALID_FILES)), edits=st.lists(MUTATION, min_size=1,
                                                                 max_size=3),
       model=st.sampled_from([None, "kv", "register", "cas-register"]))
def test_random_mutations_of_valid_histories_never_crash(tmp_path: Path, fmt: str,
                                                         edits: list, model: str | None) -> None:
    data = bytearray(VALID_FILES[fmt])
    for kind, pos, byte in edits:
        pos %= len(data) + 1
        if kind == "flip" and pos < len(data):
            data[pos] = byte
        elif kind == "insert":
            data[pos:pos] = bytes([byte])
        elif kind == "delete" and pos < len(data):
            del data[pos]
        elif kind == "dup":
            data[pos:pos] = data[pos:pos + 40]
        elif kind == "snippet":
            data[pos:pos] = SNIPPETS[byte % len(SNIPPETS)]
    note(f"format {fmt}, model {model}, mutated file {bytes(data)!r}")
    path = write_file(tmp_path, "m", bytes(data))
    try:
        ops = read_history(path, fmt, model)
    except HistoryError as e:
        assert "\n" not in str(e)
        return
    m = get_model(model or {"jepsen-edn": "cas-register", "jsonl": "kv",
                            "porcupine-kv": "kv", "porcupine-etcd": "cas-register"}[fmt])
    result = check(m, ops, timeout=5)
    explain(m, result)
    os.remove(path)
