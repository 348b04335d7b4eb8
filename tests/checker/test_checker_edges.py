"""Edge cases of the linearizability checker and its readers, one behaviour per test."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from checker import UNKNOWN, HistoryError, Op, Verdict, check, get_model, read_history
from checker.edn import EdnError, Keyword, loads_all
from checker.explain import explain
from checker.readers import parse_jepsen_maps
from tests.checker import bruteforce
from tests.conftest import write_file

MODELS = ["register", "cas-register", "kv"]


def mk(*specs: tuple) -> list[Op]:
    """Ops from (process, f, value, output, call, ret[, key]); ids in call order."""
    ops = []
    for s in sorted(specs, key=lambda s: s[4]):
        proc, f, value, output, call, ret = s[:6]
        key = s[6] if len(s) > 6 else None
        ops.append(Op(len(ops), proc, f, key, value, output, call, ret))
    return ops


def verdict(model: str, ops: list[Op], **kw: Any) -> Verdict:
    """The checker's verdict, after making sure the brute-force oracle agrees."""
    res = check(get_model(model), ops, **kw)
    if len(ops) <= 8:
        oracle = bruteforce.linearizable(model, ops) is not None
        assert res.verdict is (Verdict.VALID if oracle else Verdict.INVALID)
    return res.verdict


def edn_ops(tmp_path: Path, text: str, model: str = "cas-register") -> list[Op]:
    return read_history(write_file(tmp_path, "h.edn", text), "jepsen-edn", model)


# ------------------------------------------------------------------ trivial histories

@pytest.mark.parametrize("model", MODELS)
def test_empty_history_is_valid(model: str) -> None:
    res = check(get_model(model), [])
    assert res.verdict is Verdict.VALID
    assert res.failures() == []


@pytest.mark.parametrize("fmt", ["jepsen-edn", "jsonl", "porcupine-etcd", "porcupine-kv"])
def test_empty_file_is_valid(tmp_path: Path, fmt: str) -> None:
    ops = read_history(write_file(tmp_path, "empty", "\n\n"), fmt)
    assert ops == []
    assert check(get_model("kv"), ops).verdict is Verdict.VALID


@pytest.mark.parametrize("model", MODELS)
def test_only_indeterminate_ops_is_valid(model: str) -> None:
    specs = [(f"p{i}", "write", i, UNKNOWN, i, None, "k") for i in range(6)]
    specs.append(("q", "read", None, UNKNOWN, 7, None, "k"))
    if model != "register":
        specs.append(("c", "cas", (3, 9), UNKNOWN, 8, None, "k"))
    ops = mk(*specs)
    if model != "kv":
        ops = [Op(o.id, o.process, o.f, None, o.value, o.output, o.call, o.ret) for o in ops]
    assert verdict(model, ops) is Verdict.VALID


def test_only_info_ops_from_edn(tmp_path: Path) -> None:
    ops = edn_ops(tmp_path, "\n".join(
        f"{{:process {p}, :type :{t}, :f :write, :value {p}}}"
        for p in range(4) for t in ("invoke", "info")))
    assert len(ops) == 4 and all(o.ret is None and o.output is UNKNOWN for o in ops)
    assert check(get_model("cas-register"), ops).verdict is Verdict.VALID


# ------------------------------------------------------------------ values and intervals

def test_repeated_values() -> None:
    # write 1; write 2; write 1; read 1: fine, the value came back.
    base = [("a", "write", 1, None, 0, 1), ("a", "write", 2, None, 2, 3),
            ("a", "write", 1, None, 4, 5)]
    assert verdict("register", mk(*base, ("b", "read", None, 1, 6, 7))) is Verdict.VALID
    # ... but 2 cannot be read after the second write of 1 returned.
    assert verdict("register", mk(*base, ("b", "read", None, 2, 6, 7))) is Verdict.INVALID
    # Reads of 1, 2, 1 need the two writes of 1 on either side of the write of 2.
    reads = [("b", "read", None, 1, 1, 2), ("b", "read", None, 2, 3, 4),
             ("b", "read", None, 1, 5, 6)]
    conc = [("w1", "write", 1, None, 0, 10), ("w2", "write", 2, None, 0.5, 10)]
    assert verdict("register", mk(*conc, ("w3", "write", 1, None, 0.7, 10), *reads)) \
        is Verdict.VALID
    assert verdict("register", mk(*conc, *reads)) is Verdict.INVALID


def test_ops_open_at_the_end(tmp_path: Path) -> None:
    text = ("{:process 0, :type :invoke, :f :write, :value 3}\n"
            "{:process 1, :type :invoke, :f :read, :value nil}\n"
            "{:process 1, :type :ok, :f :read, :value 3}\n")
    ops = edn_ops(tmp_path, text)
    assert [(o.f, o.ret) for o in ops] == [("write", None), ("read", 2)]
    assert check(get_model("cas-register"), ops).verdict is Verdict.VALID
    # A read of 3 that returned before the write was even invoked is not.
    text = ("{:process 1, :type :invoke, :f :read, :value nil}\n"
            "{:process 1, :type :ok, :f :read, :value 3}\n"
            "{:process 0, :type :invoke, :f :write, :value 3}\n")
    ops = edn_ops(tmp_path, text)
    assert check(get_model("cas-register"), ops).verdict is Verdict.INVALID


def test_indeterminate_cas_applies_iff_it_matches() -> None:
    matches = ("c", "cas", (None, 1), UNKNOWN, 0, None)
    never = ("c", "cas", (5, 1), UNKNOWN, 0, None)
    read1 = ("r", "read", None, 1, 1, 2)
    assert verdict("cas-register", mk(matches, read1)) is Verdict.VALID
    assert verdict("cas-register", mk(never, read1)) is Verdict.INVALID
    # Once applied it stays applied: 1, then nil is impossible.
    assert verdict("cas-register", mk(matches, read1, ("r", "read", None, None, 3, 4))) \
        is Verdict.INVALID


def test_completed_read_with_unknown_output_is_always_legal() -> None:
    ops = mk(("a", "write", 1, None, 0, 1), ("b", "read", None, UNKNOWN, 2, 3),
             ("b", "read", None, 1, 4, 5))
    assert verdict("register", ops) is Verdict.VALID


def test_cas_on_plain_register_is_illegal() -> None:
    ops = mk(("a", "cas", (None, 1), True, 0, 1))
    assert check(get_model("register"), ops).verdict is Verdict.INVALID
    assert check(get_model("cas-register"), ops).verdict is Verdict.VALID


# ------------------------------------------------------------------ fail semantics

FAILED_WRITE = [
    {"process": 0, "type": "invoke", "f": "write", "value": 5},
    {"process": 0, "type": "fail", "f": "write", "value": 5},
    {"process": 1, "type": "invoke", "f": "read", "value": None},
    {"process": 1, "type": "ok", "f": "read", "value": None},
]


def _as_edn(m: dict) -> str:
    def v(x: Any) -> str:
        return "nil" if x is None else str(x)
    return ("{" + ", ".join(f":{k} {':' + x if k in ('type', 'f') else v(x)}"
                            for k, x in m.items()) + "}")


@pytest.mark.parametrize("fmt", ["jepsen-edn", "jsonl"])
def test_failed_op_is_ignored(tmp_path: Path, fmt: str) -> None:
    def run(maps: list[dict]) -> tuple[list[Op], Verdict]:
        text = "\n".join(json.dumps(m) if fmt == "jsonl" else _as_edn(m) for m in maps)
        ops = read_history(write_file(tmp_path, "h", text + "\n"), fmt, "cas-register")
        return ops, check(get_model("cas-register"), ops).verdict

    ops, v = run(FAILED_WRITE)
    assert [o.f for o in ops] == ["read"] and v is Verdict.VALID
    # The failed write did not happen: reading its value is a violation.
    stale = [dict(m) for m in FAILED_WRITE]
    stale[3]["value"] = 5
    ops, v = run(stale)
    assert v is Verdict.INVALID


def test_failed_cas_differs_between_etcd_and_jepsen(tmp_path: Path) -> None:
    """Porcupine's etcd logs: a failed cas happened and compared unequal. Jepsen: it did
    not happen. After `write 1`, `cas [1 2]` failing is a violation only in etcd."""
    etcd = ("INFO  jepsen.util - 0\t:invoke\t:write\t1\n"
            "INFO  jepsen.util - 0\t:ok\t:write\t1\n"
            "INFO  jepsen.util - 1\t:invoke\t:cas\t[1 2]\n"
            "INFO  jepsen.util - 1\t:fail\t:cas\t[1 2]\n")
    ops = read_history(write_file(tmp_path, "e.log", etcd), "porcupine-etcd")
    assert [o.f for o in ops] == ["write", "cas"] and ops[1].output is False
    assert check(get_model("cas-register"), ops).verdict is Verdict.INVALID
    ops = edn_ops(tmp_path, "{:process 0 :type :invoke :f :write :value 1}"
                            "{:process 0 :type :ok :f :write :value 1}"
                            "{:process 1 :type :invoke :f :cas :value [1 2]}"
                            "{:process 1 :type :fail :f :cas :value [1 2]}")
    assert [o.f for o in ops] == ["write"]
    assert check(get_model("cas-register"), ops).verdict is Verdict.VALID


def test_etcd_timed_out_ops(tmp_path: Path) -> None:
    etcd = ("INFO  jepsen.util - 0\t:invoke\t:write\t1\n"
            "INFO  jepsen.util - 0\t:info\t:write\t:timed-out\n"
            "INFO  jepsen.util - 1\t:invoke\t:read\tnil\n"
            "INFO  jepsen.util - 1\t:fail\t:read\t:timed-out\n"
            "INFO  jepsen.util - 2\t:invoke\t:read\tnil\n"
            "INFO  jepsen.util - 2\t:ok\t:read\t1\n"
            "INFO  jepsen.util - 3\t:invoke\t:read\tnil\n"
            "INFO  jepsen.util - 3\t:ok\t:read\tnil\n")
    ops = read_history(write_file(tmp_path, "e.log", etcd), "porcupine-etcd")
    assert [(o.f, o.ret is None) for o in ops] == [("write", True), ("read", False),
                                                  ("read", False)]
    # The timed-out write may take effect (read 1) and then nil cannot come back.
    assert check(get_model("cas-register"), ops).verdict is Verdict.INVALID
    assert check(get_model("cas-register"), ops[:2]).verdict is Verdict.VALID


# ------------------------------------------------------------------ partitions

def test_partitions_with_one_op() -> None:
    ops = mk(*[(f"p{i}", "write", i, None, i, i + 0.5, f"k{i}") for i in range(5)],
             ("r", "read", None, None, 9, 10, "other"))
    res = check(get_model("kv"), ops)
    assert res.verdict is Verdict.VALID
    assert len(res.partitions) == 6
    assert all(len(p.ops) == 1 for p in res.partitions)
    bad = mk(("r", "read", None, 7, 0, 1, "lonely"), ("w", "write", 1, None, 2, 3, "x"))
    res = check(get_model("kv"), bad, stop_early=False)
    assert res.verdict is Verdict.INVALID
    assert [(p.key, p.verdict) for p in res.partitions] == [("lonely", Verdict.INVALID),
                                                            ("x", Verdict.VALID)]


def test_kv_keys_are_independent() -> None:
    # Per key each history is fine; as one register it would not be.
    ops = mk(("a", "write", 1, None, 0, 1, "x"), ("b", "write", 2, None, 2, 3, "y"),
             ("c", "read", None, 1, 4, 5, "x"), ("d", "read", None, 2, 6, 7, "y"))
    assert verdict("kv", ops) is Verdict.VALID


def test_stop_early_leaves_other_partitions_unknown_or_done() -> None:
    ops = mk(("r", "read", None, 7, 0, 1, "bad"),
             *[(f"p{i}", "write", i, None, 2 + i, 2.5 + i, f"k{i}") for i in range(3)])
    full = check(get_model("kv"), ops, stop_early=False)
    assert [p.verdict for p in full.partitions].count(Verdict.VALID) == 3
    early = check(get_model("kv"), ops, stop_early=True)
    assert early.verdict is Verdict.INVALID
    for p in early.partitions:
        if p.verdict is Verdict.UNKNOWN:
            assert "invalid" in p.reason


# ------------------------------------------------------------------ resource bounds

def pathological(n: int = 20) -> list[Op]:
    """n concurrent writes of distinct values spanning reads of 0, 1, 0: invalid, but
    only an exhaustive search over the orders of the writes can tell."""
    specs = [(f"w{i}", "write", i, None, i, 100 + i) for i in range(n)]
    specs += [("r", "read", None, v, n + 2 * j, n + 2 * j + 1) for j, v in enumerate([0, 1, 0])]
    return mk(*specs)


def test_pathological_history_is_invalid_when_small() -> None:
    assert verdict("register", pathological(4)) is Verdict.INVALID
    assert check(get_model("register"), pathological(8)).verdict is Verdict.INVALID


def test_timeout_gives_unknown() -> None:
    t0 = time.monotonic()
    res = check(get_model("register"), pathological(), timeout=0.05)
    elapsed = time.monotonic() - t0
    assert res.verdict is Verdict.UNKNOWN
    assert "timed out" in res.partitions[0].reason
    assert elapsed < 2.0, f"a 0.05 s timeout took {elapsed:.2f} s"
    assert "timed out" in explain(get_model("register"), res)


def test_tiny_max_configs_gives_unknown_mentioning_memory() -> None:
    res = check(get_model("register"), pathological(), max_configs=1000, timeout=30)
    assert res.verdict is Verdict.UNKNOWN
    reason = res.partitions[0].reason
    assert "memory" in reason, reason
    assert res.partitions[0].configurations <= 5000


# ------------------------------------------------------------------ counterexample

def test_counterexample_content() -> None:
    ops = mk(("a", "write", 1, None, 0, 1), ("a", "write", 2, None, 2, 3),
             ("b", "read", None, 1, 4, 5))
    model = get_model("register")
    res = check(model, ops)
    assert res.verdict is Verdict.INVALID
    (part,) = res.partitions
    assert [(s.op.f, s.op.value, s.state) for s in part.linearization] == [
        ("write", 1, 1), ("write", 2, 2)]
    assert [(op.f, op.output, illegal) for op, illegal in part.blocked] == [("read", 1, True)]
    text = explain(model, res)
    assert text.startswith("invalid")
    assert "2 of 3 completed ops" in text
    assert "read() -> 1" in text and "illegal in this state" in text
    assert "from state 2" in text


def test_counterexample_with_indeterminate_chain() -> None:
    # An info write of 3 is needed to explain the first read; the second read is stale.
    ops = mk(("a", "write", 3, UNKNOWN, 0, None), ("b", "read", None, 3, 1, 2),
             ("c", "write", 4, None, 3, 4), ("b", "read", None, 3, 5, 6))
    res = check(get_model("register"), ops)
    assert res.verdict is Verdict.INVALID
    (part,) = res.partitions
    steps = [(s.op.f, s.op.value, s.unknown_chain) for s in part.linearization]
    assert steps[:2] == [("write", 3, True), ("read", None, False)]
    assert [op.call for op, _ in part.blocked] == [5]
    assert "indeterminate, applied" in explain(get_model("register"), res)


# ------------------------------------------------------------------ EDN

def test_edn_scalars_and_collections() -> None:
    forms = loads_all(r'''
        ; a comment, then commas as whitespace
        nil, true false 42 -7 3.5 12345678901234567890N 1/2
        "tab\there \"quoted\" back\\slash \u00e9" :ok :jepsen.history/op sym
        [1 [2 {:a {:b nil}}]] (1 2) #{3} \a #_ "discarded" #inst "2020-01-01" {[1 2] :x}
    ''')
    assert forms[:8] == [None, True, False, 42, -7, 3.5, 12345678901234567890, 0.5]
    assert forms[8] == 'tab\there "quoted" back\\slash é'
    assert isinstance(forms[9], Keyword) and forms[9] == "ok" and repr(forms[9]) == ":ok"
    assert forms[10] == "jepsen.history/op"
    assert forms[12] == [1, [2, {"a": {"b": None}}]]
    assert forms[13] == [1, 2] and forms[14] == [3] and forms[15] == "a"
    assert forms[16] == "2020-01-01"
    assert forms[17] == {(1, 2): "x"}
    assert len(forms) == 18


@pytest.mark.parametrize("text", ["[1 2", "{:a}", "(1 2]", ")", "#_"])
def test_edn_malformed(text: str) -> None:
    with pytest.raises(EdnError):
        loads_all(text)


def test_edn_error_line(tmp_path: Path) -> None:
    with pytest.raises(HistoryError) as e:
        edn_ops(tmp_path, "{:process 0 :type :invoke :f :read}\n\n{:process 1 :type\n")
    assert e.value.line == 3
    assert str(e.value).startswith(str(tmp_path / "h.edn") + ":3:")


JEPSEN = r'''; a Jepsen history with everything a reader meets
{:type :invoke, :f :write, :value 1, :process 0, :time 10, :index 0}
{:type :info, :f :start, :value nil, :process :nemesis, :time 11}
{:type :ok, :f :write, :value 1, :process 0, :time 20, :index 1, :extra {:nested {:map [1 2]}}}
{:type :invoke, :f :read, :value nil, :process 1, :time 30}
{:type :invoke, :f :cas, :value [1 2], :process 2, :time 31}
{:type :info, :f :start, :value "partition \"n1\"", :process :nemesis, :time 32}
{:type :ok, :f :read, :value 1, :process 1, :time 40}
{:type :info, :f :cas, :value [1 2], :process 2, :time 50, :error :timeout}
{:type :invoke, :f :read, :value nil, :process 3, :time 60}
{:type :ok, :f :read, :value 2, :process 3, :time 70}
'''


def test_jepsen_edn_history(tmp_path: Path) -> None:
    ops = edn_ops(tmp_path, JEPSEN)
    assert [(o.process, o.f, o.value, o.output, o.ret is None) for o in ops] == [
        (0, "write", 1, None, False),
        (1, "read", None, 1, False),  # the read's value is filled from its completion
        (2, "cas", (1, 2), UNKNOWN, True),  # :info: indeterminate
        (3, "read", None, 2, False)]
    assert ops[0].meta.get("time") == 10
    assert check(get_model("cas-register"), ops).verdict is Verdict.VALID
    # The indeterminate cas is the only way to read 2.
    assert check(get_model("cas-register"), [o for o in ops if o.f != "cas"]).verdict \
        is Verdict.INVALID


@pytest.mark.parametrize("wrap", ["[{}]", "({})", "[\n{}\n]"])
def test_edn_history_as_one_vector_or_list(tmp_path: Path, wrap: str) -> None:
    body = "\n".join(ln for ln in JEPSEN.splitlines() if ln.startswith("{"))
    ops = edn_ops(tmp_path, wrap.replace("{}", body))
    assert [o.f for o in ops] == ["write", "read", "cas", "read"]
    assert check(get_model("cas-register"), ops).verdict is Verdict.VALID


def test_edn_string_keys_and_escapes(tmp_path: Path) -> None:
    text = ('{:process 0 :type :invoke :f :write :key "k \\"1\\"" :value "a\\nb"}\n'
            '{:process 0 :type :ok :f :write :key "k \\"1\\"" :value "a\\nb"}\n'
            '{:process 1 :type :invoke :f :read :key "k \\"1\\"" :value nil}\n'
            '{:process 1 :type :ok :f :read :key "k \\"1\\"" :value "a\\nb"}\n')
    ops = edn_ops(tmp_path, text, "kv")
    assert {o.key for o in ops} == {'k "1"'}
    assert ops[1].output == "a\nb"
    assert check(get_model("kv"), ops).verdict is Verdict.VALID


INDEPENDENT = '''
{:process 0, :type :invoke, :f :write, :value [:x 1]}
{:process 0, :type :ok, :f :write, :value [:x 1]}
{:process 1, :type :invoke, :f :write, :value [:y 2]}
{:process 1, :type :ok, :f :write, :value [:y 2]}
{:process 2, :type :invoke, :f :cas, :value [:x [1 3]]}
{:process 2, :type :ok, :f :cas, :value [:x [1 3]]}
{:process 3, :type :invoke, :f :read, :value [:x nil]}
{:process 3, :type :ok, :f :read, :value [:x 3]}
{:process 3, :type :invoke, :f :read, :value [:y nil]}
{:process 3, :type :ok, :f :read, :value [:y READ]}
'''


def test_independent_key_value_tuples(tmp_path: Path) -> None:
    ops = edn_ops(tmp_path, INDEPENDENT.replace("READ", "2"), "kv")
    assert [(o.key, o.f, o.value, o.output) for o in ops] == [
        ("x", "write", 1, None), ("y", "write", 2, None), ("x", "cas", (1, 3), True),
        ("x", "read", None, 3), ("y", "read", None, 2)]
    res = check(get_model("kv"), ops)
    assert res.verdict is Verdict.VALID and len(res.partitions) == 2
    bad = edn_ops(tmp_path, INDEPENDENT.replace("READ", "3"), "kv")
    res = check(get_model("kv"), bad, stop_early=False)
    assert res.verdict is Verdict.INVALID
    assert [p.key for p in res.failures()] == ["y"]


# ------------------------------------------------------------------ JSON lines

def test_json_lines(tmp_path: Path) -> None:
    lines = [
        {"process": 0, "type": "invoke", "f": "write", "key": "a", "value": 1, "time": 5},
        {"process": 1, "type": "invoke", "f": "cas", "key": ["b", 1], "value": [None, 7]},
        {"process": 0, "type": "ok", "f": "write", "key": "a", "value": 1},
        {"process": 1, "type": "ok", "f": "cas", "key": ["b", 1], "value": [None, 7]},
        {"process": "nemesis", "type": "info", "f": "kill", "value": None},
        {"process": 2, "type": "invoke", "f": "read", "key": "a", "value": None},
        {"process": 2, "type": "ok", "f": "read", "key": "a", "value": 1},
        {"process": 2, "type": "invoke", "f": "read", "key": ["b", 1], "value": None},
        {"process": 2, "type": "ok", "f": "read", "key": ["b", 1], "value": 7},
    ]
    text = "\n".join(json.dumps(m) for m in lines) + "\n\n"
    ops = read_history(write_file(tmp_path, "h.jsonl", text), "jsonl")  # default model: kv
    assert [(o.key, o.f, o.value, o.output) for o in ops] == [
        ("a", "write", 1, None), (("b", 1), "cas", (None, 7), True), ("a", "read", None, 1),
        (("b", 1), "read", None, 7)]
    assert ops[0].meta == {"time": 5}
    res = check(get_model("kv"), ops)
    assert res.verdict is Verdict.VALID and len(res.partitions) == 2


@pytest.mark.parametrize(("line", "message"), [
    ("not json", "JSON"),
    ("[1, 2]", "operation map"),
    ('{"process": 0, "f": "read"}', ":type"),
    ('{"process": 0, "type": "done", "f": "read"}', "invoke"),
])
def test_json_lines_errors_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    ok = json.dumps({"process": 9, "type": "invoke", "f": "read", "value": None})
    with pytest.raises(HistoryError) as e:
        read_history(write_file(tmp_path, "h.jsonl", f"{ok}\n\n{line}\n"), "jsonl")
    assert e.value.line == 3
    assert message in str(e.value)


def test_mismatched_completion_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(HistoryError) as e:
        edn_ops(tmp_path, "{:process 0 :type :invoke :f :write :value 1}\n"
                          "{:process 0 :type :ok :f :read :value 1}\n")
    assert e.value.line == 2 and ":f" in str(e.value)
    with pytest.raises(HistoryError) as e:
        edn_ops(tmp_path, "{:process 0 :type :invoke :f :write :value 1}\n"
                          "{:process 0 :type :invoke :f :write :value 2}\n")
    assert e.value.line == 2


# ------------------------------------------------------------------ unusual values
# Values a Jepsen history can legitimately hold. The checker must give a verdict (or a
# HistoryError for bad input), never crash with a TypeError.

@pytest.mark.parametrize("value", ["[1 2]", "{:a 1}", "#{1}"])
def test_collection_values_are_checked(tmp_path: Path, value: str) -> None:
    text = (f"{{:process 0 :type :invoke :f :write :value {value}}}\n"
            f"{{:process 0 :type :ok :f :write :value {value}}}\n"
            "{:process 1 :type :invoke :f :read :value nil}\n"
            f"{{:process 1 :type :ok :f :read :value {value}}}\n")
    ops = edn_ops(tmp_path, text)
    assert check(get_model("cas-register"), ops).verdict is Verdict.VALID
    stale = text + ("{:process 0 :type :invoke :f :write :value 5}\n"
                    "{:process 0 :type :ok :f :write :value 5}\n"
                    "{:process 1 :type :invoke :f :read :value nil}\n"
                    f"{{:process 1 :type :ok :f :read :value {value}}}\n")
    assert check(get_model("cas-register"), edn_ops(tmp_path, stale)).verdict \
        is Verdict.INVALID


@pytest.mark.parametrize("value", ["5", "nil", ":x"])
def test_malformed_cas_value_is_a_history_error(tmp_path: Path, value: str) -> None:
    text = (f"{{:process 0 :type :invoke :f :cas :value {value}}}\n"
            f"{{:process 0 :type :ok :f :cas :value {value}}}\n")
    with pytest.raises(HistoryError) as e:
        check(get_model("cas-register"), edn_ops(tmp_path, text))
    assert e.value.line == 1


def test_jepsen_map_reader_directly() -> None:
    maps = [{"process": 0, "type": "invoke", "f": "write", "value": 1},
            {"process": 0, "type": "info", "f": "write", "value": 1},
            {"process": 0, "type": "invoke", "f": "read", "value": None}]
    ops = parse_jepsen_maps("mem", enumerate(maps, 1), "register")
    assert [(o.f, o.ret) for o in ops] == [("write", None), ("read", None)]
