"""`cutover lin` as a user runs it: exit codes, one-line errors, --tsv, --html.

Contract: exit 0 valid, 1 invalid, 2 unknown, >= 3 the harness could not do its job,
with exactly one line `error: FILE[:LINE]: ...` on stderr and never a traceback.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CLI, EXAMPLES, REPO, write_file


def lin(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "lin", *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO)


def no_traceback(p: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in p.stdout + p.stderr, p.stderr


def one_error_line(p: subprocess.CompletedProcess, *parts: str) -> str:
    """Exit >= 3, no traceback, one `error:` line on stderr containing `parts`."""
    no_traceback(p)
    assert p.returncode >= 3, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: "), lines[0]
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


OK = ("{:process 0 :type :invoke :f :write :value 1}\n"
      "{:process 0 :type :ok :f :write :value 1}\n"
      "{:process 1 :type :invoke :f :read :value nil}\n"
      "{:process 1 :type :ok :f :read :value 1}\n")
BAD = OK.replace(":ok :f :read :value 1", ":ok :f :read :value 2")


def pathological_edn(n: int = 20) -> str:
    """n concurrent writes, then reads of 0, 1, 0 inside them: the search must try the
    orders of the writes exhaustively before it can say `invalid`."""
    lines = [f"{{:process {i} :type :invoke :f :write :value {i}}}" for i in range(n)]
    for v in (0, 1, 0):
        lines += ["{:process 99 :type :invoke :f :read :value nil}",
                  f"{{:process 99 :type :ok :f :read :value {v}}}"]
    lines += [f"{{:process {i} :type :ok :f :write :value {i}}}" for i in range(n)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ verdict exit codes

def test_valid_exits_0(tmp_path: Path) -> None:
    p = lin("--format", "jepsen-edn", write_file(tmp_path, "ok.edn", OK))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("valid")
    assert p.stderr == ""


def test_invalid_exits_1_and_explains(tmp_path: Path) -> None:
    p = lin("--format", "jepsen-edn", write_file(tmp_path, "bad.edn", BAD))
    assert p.returncode == 1, p.stderr
    assert p.stdout.startswith("invalid")
    assert "read() -> 2" in p.stdout
    no_traceback(p)


def test_unknown_exits_2(tmp_path: Path) -> None:
    path = write_file(tmp_path, "hard.edn", pathological_edn())
    p = lin("--format", "jepsen-edn", "--model", "register", "--timeout", "0.05", path)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stdout.startswith("unknown") and "timed out" in p.stdout
    p = lin("--format", "jepsen-edn", "--timeout", "0.05", "--tsv", path)
    assert p.returncode == 2
    assert p.stdout.split("\t")[:2] == [path, "unknown"]


def test_worst_verdict_wins(tmp_path: Path) -> None:
    ok, bad = write_file(tmp_path, "ok.edn", OK), write_file(tmp_path, "bad.edn", BAD)
    p = lin("--format", "jepsen-edn", ok, bad, ok)
    assert p.returncode == 1
    assert len(p.stdout.splitlines()) == 3
    p = lin("--format", "jepsen-edn", "--tsv", ok, ok)
    assert p.returncode == 0
    assert [ln.split("\t")[1] for ln in p.stdout.splitlines()] == ["valid", "valid"]


# ------------------------------------------------------------------ bad input

def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.edn")
    one_error_line(lin("--format", "jepsen-edn", path), path)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    one_error_line(lin("--format", "jsonl", str(tmp_path)), str(tmp_path))


def test_not_utf8(tmp_path: Path) -> None:
    path = write_file(tmp_path, "bin.edn", b"\xff\xfe\x00garbage")
    one_error_line(lin("--format", "jepsen-edn", path), path)


@pytest.mark.parametrize(("fmt", "text", "line"), [
    ("porcupine-etcd", "INFO  jepsen.util - 0\t:invoke\t:read\tnil\nthis is not a log line\n", 2),
    ("porcupine-etcd", "INFO  jepsen.util - 0\t:invoke\t:write\tbanana\n", 1),
    ("porcupine-etcd", "INFO  jepsen.util - 0\t:invoke\t:cas\t[1]\n", 1),
    ("jsonl", '{"process": 0, "type": "invoke", "f": "read"}\n\n{oops\n', 3),
    ("jsonl", '{"process": 0, "type": "invoke", "f": "read"}\n"just a string"\n', 2),
    ("jepsen-edn", "{:process 0 :type :invoke :f :read}\n42\n", 2),
    ("jepsen-edn", "{:process 0 :type :invoke :f :read}\n\n{:process 0 :type\n", 3),
    ("jepsen-edn", "{:process 0 :f :read}\n", 1),
    ("porcupine-kv", '{:process 0, :type :invoke, :f :get, :key "1", :value nil}\n]\n', 2),
], ids=["etcd-garbage", "etcd-value", "etcd-cas", "jsonl-syntax", "jsonl-not-map",
        "edn-not-map", "edn-unclosed", "edn-no-type", "kv-stray"])
def test_unparseable_line(tmp_path: Path, fmt: str, text: str, line: int) -> None:
    path = write_file(tmp_path, "h.txt", text)
    one_error_line(lin("--format", fmt, path), f"{path}:{line}:")


@pytest.mark.parametrize(("fmt", "text", "line"), [
    ("porcupine-etcd", "INFO  jepsen.util - 0\t:invoke\t:read\tnil\n"
                       "INFO  jepsen.util - 3\t:ok\t:read\t1\n", 2),
    ("jepsen-edn", "{:process 0 :type :ok :f :write :value 1}\n", 1),
    ("jsonl", '{"process": 0, "type": "invoke", "f": "write", "value": 1}\n'
              '{"process": 0, "type": "ok", "f": "write", "value": 1}\n'
              '{"process": 0, "type": "info", "f": "write", "value": 1}\n', 3),
], ids=["etcd", "edn", "jsonl-twice"])
def test_return_without_invoke(tmp_path: Path, fmt: str, text: str, line: int) -> None:
    path = write_file(tmp_path, "h.txt", text)
    msg = one_error_line(lin("--format", fmt, path), f"{path}:{line}:")
    assert "invoke" in msg


def test_unknown_format(tmp_path: Path) -> None:
    msg = one_error_line(lin("--format", "yaml", write_file(tmp_path, "ok.edn", OK)), "yaml")
    assert "--format" in msg


def test_unknown_model(tmp_path: Path) -> None:
    msg = one_error_line(lin("--format", "jepsen-edn", "--model", "queue",
                             write_file(tmp_path, "ok.edn", OK)), "queue")
    assert "--model" in msg


@pytest.mark.parametrize("args", [[], ["--format", "jsonl"], ["--timeout", "-1"]],
                         ids=["nothing", "no-files", "negative-timeout"])
def test_bad_usage(args: list[str]) -> None:
    p = lin(*args)
    one_error_line(p)


def test_bad_file_among_good_ones(tmp_path: Path) -> None:
    ok = write_file(tmp_path, "ok.edn", OK)
    bad = write_file(tmp_path, "broken.edn", "{:process 0 :type :ok :f :read :value 1}\n")
    p = lin("--format", "jepsen-edn", "--tsv", ok, bad, ok)
    one_error_line(p, f"{bad}:1:")
    assert [ln.split("\t")[:2] for ln in p.stdout.splitlines()] == [[ok, "valid"],
                                                                    [ok, "valid"]]


@pytest.mark.parametrize(("text", "model", "codes"), [
    # Vector, map and set values: legal EDN and plausible Jepsen values.
    ("{:process 0 :type :invoke :f :write :value [1 2]}\n"
     "{:process 0 :type :ok :f :write :value [1 2]}\n"
     "{:process 1 :type :invoke :f :read :value nil}\n"
     "{:process 1 :type :ok :f :read :value [1 2]}\n", "cas-register", {0}),
    ("{:process 0 :type :invoke :f :write :value {:a 1}}\n"
     "{:process 0 :type :info :f :write :value {:a 1}}\n"
     "{:process 1 :type :invoke :f :read :value nil}\n"
     "{:process 1 :type :ok :f :read :value {:a 1}}\n", "cas-register", {0}),
    ("{:process 0 :type :invoke :f :write :value #{1}}\n"
     "{:process 0 :type :ok :f :write :value #{1}}\n", "register", {0}),
    # Appending a string to an integer: an illegal op (invalid) or bad input, not a crash.
    ('{:process 0 :type :invoke :f :write :key "k" :value 1}\n'
     '{:process 0 :type :ok :f :write :key "k" :value 1}\n'
     '{:process 0 :type :invoke :f :append :key "k" :value "x"}\n'
     '{:process 0 :type :ok :f :append :key "k" :value "x"}\n', "kv", {1, 3}),
], ids=["vector-value", "map-value", "set-value", "append-to-int"])
def test_odd_values_never_crash(tmp_path: Path, text: str, model: str, codes: set) -> None:
    p = lin("--format", "jepsen-edn", "--model", model, write_file(tmp_path, "h.edn", text))
    no_traceback(p)
    assert p.returncode in codes, (p.returncode, p.stdout, p.stderr)
    if p.returncode == 3:
        one_error_line(p, "h.edn")


@pytest.mark.parametrize("value", ["5", "nil", '"ab"'])
def test_malformed_cas_value(tmp_path: Path, value: str) -> None:
    text = (f"{{:process 0 :type :invoke :f :cas :value {value}}}\n"
            f"{{:process 0 :type :ok :f :cas :value {value}}}\n")
    path = write_file(tmp_path, "h.edn", text)
    one_error_line(lin("--format", "jepsen-edn", path), f"{path}:1:")


INDEPENDENT = ("{:process 0, :type :invoke, :f :write, :value [:x 1]}\n"
               "{:process 0, :type :ok, :f :write, :value [:x 1]}\n"
               "{:process 1, :type :invoke, :f :write, :value [:y 2]}\n"
               "{:process 1, :type :ok, :f :write, :value [:y 2]}\n"
               "{:process 3, :type :invoke, :f :read, :value [:x nil]}\n"
               "{:process 3, :type :ok, :f :read, :value [:x READ]}\n")


def test_independent_tuples_with_model_kv(tmp_path: Path) -> None:
    ok = write_file(tmp_path, "ok.edn", INDEPENDENT.replace("READ", "1"))
    bad = write_file(tmp_path, "bad.edn", INDEPENDENT.replace("READ", "2"))
    p = lin("--format", "jepsen-edn", "--model", "kv", ok)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "2 partitions" in p.stdout
    p = lin("--format", "jepsen-edn", "--model", "kv", bad)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "key" in p.stdout and "x" in p.stdout


def test_independent_tuples_without_model_kv(tmp_path: Path) -> None:
    """Forgetting `--model kv`: the [key value] vectors are then register values. Any
    verdict or a one-line error will do; a traceback will not."""
    p = lin("--format", "jepsen-edn", write_file(tmp_path, "ind.edn", INDEPENDENT.replace("READ", "1")))
    no_traceback(p)
    assert p.returncode in (0, 1, 3), (p.returncode, p.stderr)
    if p.returncode == 3:
        one_error_line(p, "ind.edn")


# ------------------------------------------------------------------ --html

def test_html_written(tmp_path: Path) -> None:
    out = tmp_path / "bad.html"
    p = lin("--format", "jepsen-edn", "--html", str(out), write_file(tmp_path, "bad.edn", BAD))
    no_traceback(p)
    assert p.returncode == 1, p.stderr
    text = out.read_text()
    assert "<html" in text.lower() and "</html>" in text.lower()
    # Several files: one page each in the directory.
    outdir = tmp_path / "pages"
    p = lin("--format", "jepsen-edn", "--html", str(outdir), write_file(tmp_path, "ok.edn", OK),
            str(tmp_path / "bad.edn"))
    assert p.returncode == 1, p.stderr
    assert sorted(x.name for x in outdir.iterdir()) == ["bad.edn.html", "ok.edn.html"]


# ------------------------------------------------------------------ the examples

def test_examples() -> None:
    ok = EXAMPLES / "register-ok.edn"
    bad = EXAMPLES / "register-bad.edn"
    assert ok.is_file() and bad.is_file()
    assert ok.read_text().lstrip().startswith(";"), "register-ok.edn needs a comment header"
    p = lin("--format", "jepsen-edn", str(ok))  # what `make run` does
    assert p.returncode == 0, p.stdout + p.stderr
    p = lin("--format", "jepsen-edn", str(bad))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "invalid" in p.stdout


# --------------------------------------------------------------- the format from the file


def test_the_format_and_model_are_told_from_the_file(tmp_path: Path) -> None:
    """Without --format each file's first bytes decide, and the verdict is the one the
    explicit flags give; a file whose bytes leave doubt is refused, never guessed."""
    corpus = REPO / "tests" / "data" / "porcupine"
    etcd = str(corpus / "etcd" / "etcd_000.log")
    kv = str(corpus / "kv" / "c01-bad.txt")
    for path, fmt in ((etcd, "porcupine-etcd"), (kv, "porcupine-kv"),
                      (str(EXAMPLES / "register-bad.edn"), "jepsen-edn")):
        told, given = lin(path), lin("--format", fmt, path)
        no_traceback(told)
        def timeless(out: str) -> str:  # the check's seconds differ between two runs
            return re.sub(r", [0-9.]+ s\)", ")", out)

        assert (told.returncode, timeless(told.stdout)) == \
            (given.returncode, timeless(given.stdout)), path
    # Jepsen ops with a :key are a kv history (what `cutover export` writes), after the
    # export's comment lines.
    keyed = write_file(tmp_path, "export.edn",
                       "; cutover run r1 (seed 1): one op map per line.\n"
                       "{:process 0, :type :invoke, :f :write, :key \"k1\", :value 1}\n"
                       "{:process 0, :type :ok, :f :write, :key \"k1\", :value 1}\n"
                       "{:process 1, :type :invoke, :f :read, :key \"k2\", :value nil}\n"
                       "{:process 1, :type :ok, :f :read, :key \"k2\", :value 1}\n")
    p = lin(keyed)
    assert p.returncode == 1 and "model kv" in p.stdout, p.stdout + p.stderr
    assert lin(write_file(tmp_path, "ok.edn", OK)).returncode == 0
    # A nemesis op's :f says nothing about the client's model.
    mixed = write_file(tmp_path, "mixed.edn", "{:process :nemesis, :type :info, "
                       ":f :start-partition, :value nil}\n" + OK)
    assert lin(mixed).returncode == 0
    for name, text in (("odd.txt", "hello\n"),
                       ("queue.edn", "{:process 0 :type :invoke :f :enqueue :value 1}\n")):
        one_error_line(lin(write_file(tmp_path, name, text)), name, "--format")
