"""Property tests for the linearizability checker (hypothesis).

(a) Histories recorded from concurrent clients driving a real sequential object are
    always valid, however the clients interleave, crash (`info`, applied or not, or
    left open) or fail (not applied).
(b) On small random histories the checker agrees with the brute-force oracle in
    `tests/checker/bruteforce.py`, and its witness / counterexample is checked independently.
(c) A provably stale read injected into a recorded history is always caught.

Hypothesis prints the failing example and how to reproduce it; failures are also kept in
its example database (`.hypothesis/`) and replayed first on the next run.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from checker import UNKNOWN, Op, Verdict, check, get_model, read_history
from checker.readers import parse_jepsen_maps
from tests.checker import bruteforce

PROPS = settings(deadline=None, max_examples=150, print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow,
                                        HealthCheck.function_scoped_fixture])


# ============================================================== recording a real object

class Kw(str):
    """Written as an EDN keyword."""


def to_edn(x: Any) -> str:
    if x is None:
        return "nil"
    if x is True:
        return "true"
    if x is False:
        return "false"
    if isinstance(x, Kw):
        return ":" + x
    if isinstance(x, str):
        return json.dumps(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, list | tuple):
        return "[" + " ".join(to_edn(v) for v in x) + "]"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{to_edn(k)} {to_edn(v)}" for k, v in x.items()) + "}"
    raise TypeError(x)


@dataclass
class Pending:
    f: str
    key: Any
    value: Any
    applied: bool = False
    result: Any = None
    matched: bool = True


class Recorder:
    """Clients running ops against one real sequential object, recording Jepsen events.

    Every op is invoked, then linearized (applied to the object, atomically, which is
    where its result comes from), then returned; a client may instead fail the op
    before it is applied (`fail`: not applied), or crash before or after applying it
    (`info`, or no completion at all); a crashed process is retired and replaced.
    """

    def __init__(self, rnd: random.Random, kind: str, unique: bool) -> None:
        self.rnd = rnd
        self.kind = kind  # register | cas-register | kv | kv-str
        self.unique = unique
        self.fresh = 0
        self.obj: dict[Any, Any] = {}
        self.events: list[dict[str, Any]] = []
        self.next_proc = 0

    # --- the object
    def _val(self) -> int:
        self.fresh += 1
        return self.fresh if self.unique else self.rnd.randrange(3)

    def new_op(self) -> Pending:
        r = self.rnd
        if self.kind == "kv-str":
            key = r.choice(["k1", "k2"])
            f = r.choice(["get", "get", "put", "append"])
            if f == "get":
                return Pending(f, key, None)
            self.fresh += 1
            n = self.fresh if self.unique else r.randrange(2)
            return Pending(f, key, f"<{n}>" if f == "put" else f"+{n};")
        key = r.choice(["a", "b", "c"]) if self.kind == "kv" else None
        fs = ["read", "write"] + (["cas", "cas"] if self.kind != "register" else [])
        f = r.choice(fs)
        if f == "read":
            return Pending(f, key, None)
        if f == "write":
            return Pending(f, key, self._val())
        cur = self.obj.get(key)
        expected = cur if r.random() < 0.6 else r.choice([None, 0, 1, 2, self.fresh])
        return Pending(f, key, (expected, self._val()))

    def apply(self, p: Pending) -> None:
        cur = self.obj.get(p.key)
        if p.f in ("read", "get"):
            p.result = ("" if cur is None else cur) if p.f == "get" else cur
        elif p.f in ("write", "put"):
            self.obj[p.key] = p.value
        elif p.f == "append":
            self.obj[p.key] = ("" if cur is None else cur) + p.value
        elif p.f == "cas":
            p.matched = cur == p.value[0]
            if p.matched:
                self.obj[p.key] = p.value[1]
        p.applied = True

    # --- events
    def emit(self, proc: int, typ: str, p: Pending, done: bool = False) -> None:
        value = p.value
        if p.f in ("read", "get"):
            value = p.result if done else None
        ev: dict[str, Any] = {"process": proc, "type": typ, "f": p.f, "value": value}
        if p.key is not None:
            ev["key"] = p.key
        self.events.append(ev)

    def run(self, n_clients: int, n_ops: int, p_fail: float, p_crash: float,
            p_silent: float) -> list[dict[str, Any]]:
        r = self.rnd
        procs = list(range(n_clients))
        self.next_proc = n_clients
        pending: dict[int, Pending | None] = dict.fromkeys(procs)
        budget = n_ops
        while True:
            live = [c for c in pending if pending[c] is not None or budget > 0]
            if not live:
                break
            c = r.choice(live)
            p = pending[c]
            if p is None:
                p = pending[c] = self.new_op()
                budget -= 1
                self.emit(c, "invoke", p)
                continue
            x = r.random()
            if not p.applied and x < p_fail:
                self.emit(c, "fail", p)  # definitely not applied
                pending[c] = None
                continue
            if x < p_fail + p_crash:  # crash, before or after applying
                if r.random() < 0.5 and not p.applied:
                    self.apply(p)
                if r.random() < p_silent:
                    del pending[c]  # never completes: open at the end of the history
                else:
                    self.emit(c, "info", p)
                    del pending[c]
                pending[self.next_proc] = None
                self.next_proc += 1
                continue
            if not p.applied:
                self.apply(p)
                continue
            if p.f == "cas" and not p.matched:
                self.emit(c, "fail", p)  # compared unequal: a Jepsen cas :fail
            else:
                self.emit(c, "ok", p, done=True)
            pending[c] = None
        return self.events


KINDS = ["register", "cas-register", "kv", "kv-str"]
READER_MODEL = {"register": "register", "cas-register": "cas-register", "kv": "kv",
                "kv-str": "kv"}


def as_tuples(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Jepsen's `independent` encoding: `:value [key value]` and no `:key`."""
    out = []
    for ev in events:
        ev = dict(ev)
        ev["value"] = [ev.pop("key"), ev["value"]]
        out.append(ev)
    return out


def write_history(events: list[dict[str, Any]], path: Path, fmt: str) -> None:
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(ev) + "\n" for ev in events))
    else:
        lines = [to_edn({Kw(k): (Kw(v) if k in ("type", "f") else v) for k, v in ev.items()})
                 for ev in events]
        path.write_text("\n".join(lines) + "\n")


@st.composite
def recorded(draw: Any, kinds: Sequence[str] = tuple(KINDS), unique: bool | None = None,
             max_ops: int = 40) -> tuple[str, list[dict[str, Any]], Recorder]:
    kind = draw(st.sampled_from(kinds))
    uniq = draw(st.booleans()) if unique is None else unique
    rnd = draw(st.randoms(use_true_random=False))
    rec = Recorder(rnd, kind, uniq)
    events = rec.run(n_clients=draw(st.integers(1, 5)), n_ops=draw(st.integers(0, max_ops)),
                     p_fail=draw(st.sampled_from([0.0, 0.05, 0.15])),
                     p_crash=draw(st.sampled_from([0.0, 0.05, 0.15])),
                     p_silent=draw(st.sampled_from([0.0, 0.5])))
    return kind, events, rec


@pytest.fixture(scope="module")
def hist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("histories")


def load(events: list[dict[str, Any]], kind: str, fmt: str, tuples: bool,
         path: Path) -> list[Op]:
    if tuples:
        events = as_tuples(events)
    write_history(events, path, fmt)
    return read_history(str(path), fmt, READER_MODEL[kind])


def assert_witness(model: str, res: Any) -> None:
    """Every partition's linearization is a real linearization (checked independently);
    for a single register, the states reported after each step are the true ones."""
    for part in res.partitions:
        order = [s.op for s in part.linearization]
        why = bruteforce.check_witness(model, part.ops, order)
        assert why is None, f"bad witness for key {part.key!r}: {why}"
        states = bruteforce.states_after(model, order)
        assert states is not None
        if model in ("register", "cas-register"):
            assert [s.state for s in part.linearization] == states


# ============================================================== (a) recorded => valid

@PROPS
@given(rec=recorded(), fmt=st.sampled_from(["jepsen-edn", "jsonl"]), tuples=st.booleans())
def test_recorded_histories_are_valid(rec: Any, fmt: str, tuples: bool, hist_dir: Path) -> None:
    kind, events, _ = rec
    tuples = tuples and fmt == "jepsen-edn" and kind in ("kv", "kv-str")
    note(f"kind={kind} fmt={fmt} tuples={tuples} events={len(events)}")
    ops = load(events, kind, fmt, tuples, hist_dir / f"h.{fmt}")
    types = Counter(ev["type"] for ev in events)
    assert len(ops) == types["invoke"] - types["fail"]  # failed ops dropped, others kept
    assert sum(o.ret is None for o in ops) == types["invoke"] - types["ok"] - types["fail"]
    res = check(get_model(READER_MODEL[kind]), ops, timeout=20)
    assert res.verdict is Verdict.VALID, res
    assert_witness(READER_MODEL[kind], res)


def test_recorder_produces_every_kind_of_event() -> None:
    """The generator itself: crashes, failures, open ops and cas mismatches do occur."""
    seen: Counter[str] = Counter()
    for seed in range(40):
        rec = Recorder(random.Random(seed), "cas-register", unique=False)
        events = rec.run(4, 30, p_fail=0.15, p_crash=0.15, p_silent=0.5)
        seen.update(ev["type"] for ev in events)
        seen.update(f"{ev['type']}-{ev['f']}" for ev in events)
        opened = Counter(ev["process"] for ev in events if ev["type"] == "invoke")
        closed = Counter(ev["process"] for ev in events if ev["type"] != "invoke")
        seen["open-at-end"] += sum((opened - closed).values())
    for kind in ("invoke", "ok", "fail", "info", "fail-cas", "ok-cas", "open-at-end"):
        assert seen[kind] > 0, kind


# ============================================================== (b) agrees with the oracle

VALS = [None, 0, 1, 2]


@st.composite
def op_spec(draw: Any, model: str) -> tuple[str, Any, Any, Any]:
    """(f, key, value, output-if-completed), outputs drawn at random."""
    key = None
    if model == "kv":
        key = draw(st.sampled_from(["a", "b", "s"]))
        if key == "s":
            f = draw(st.sampled_from(["get", "put", "append"]))
            if f == "get":
                return f, key, None, draw(st.sampled_from(["", "x", "y", "xy", "yx", UNKNOWN]))
            return f, key, draw(st.sampled_from(["x", "y"])), None
    fs = ["read", "write"] + (["cas"] if model != "register" else [])
    f = draw(st.sampled_from(fs))
    if f == "read":
        return f, key, None, draw(st.sampled_from([*VALS, UNKNOWN]))
    if f == "write":
        return f, key, draw(st.sampled_from(VALS[1:])), None
    value = (draw(st.sampled_from(VALS)), draw(st.sampled_from(VALS[1:])))
    return f, key, value, draw(st.sampled_from([True, True, False, UNKNOWN]))


@st.composite
def small_history(draw: Any, model: str, max_ops: int = 7, indeterminate: int = 20) -> list[Op]:
    """Random intervals: each op's call and return are events in a random interleaving;
    about `indeterminate` % of the ops never return."""
    n = draw(st.integers(1, max_ops))
    specs = [draw(op_spec(model)) for _ in range(n)]
    completes = [draw(st.integers(0, 99)) >= indeterminate for _ in range(n)]
    events = list(range(n)) + [i for i in range(n) if completes[i]]
    seq = draw(st.permutations(events))
    call: dict[int, int] = {}
    ret: dict[int, int] = {}
    for t, i in enumerate(seq):
        (ret if i in call else call)[i] = t
    ops = []
    for i in sorted(range(n), key=call.__getitem__):
        f, key, value, out = specs[i]
        done = i in ret
        ops.append(Op(len(ops), f"p{i}", f, key, value, out if done else UNKNOWN,
                      call[i], ret.get(i)))
    return ops


def describe(ops: list[Op]) -> str:
    return "\n".join(f"  {o.process} {o.f} key={o.key!r} value={o.value!r} "
                     f"out={o.output!r} [{o.call}, {o.ret}]" for o in ops)


def agree(model: str, ops: list[Op], stats: Counter[str], memo: bool = False) -> None:
    note("history:\n" + describe(ops))
    witness = bruteforce.linearizable(model, ops, memo=memo)
    expected = Verdict.VALID if witness is not None else Verdict.INVALID
    stats[expected.value] += 1
    stats["indeterminate"] += any(o.ret is None for o in ops)
    for stop_early in (True, False) if model == "kv" else (True,):
        res = check(get_model(model), ops, timeout=20, stop_early=stop_early)
        assert res.verdict is expected, (
            f"checker says {res.verdict.value}, brute force says {expected.value} "
            f"(stop_early={stop_early}); oracle witness: {witness}")
    if expected is Verdict.VALID:
        assert_witness(model, res)
        return
    # The counterexample: a legal, real-time consistent prefix and blocked ops outside it.
    bad = [p for p in res.partitions if p.verdict is Verdict.INVALID]
    assert bad
    for part in bad:
        prefix = [s.op for s in part.linearization]
        assert bruteforce.replay(model, prefix)
        assert bruteforce.respects_real_time(prefix)
        assert part.blocked, "an invalid partition names no blocked op"
        in_prefix = {id(o) for o in prefix}
        assert all(id(o) not in in_prefix for o, _ in part.blocked)
        assert bruteforce.linearizable(model, part.ops, memo=True) is None


@pytest.mark.parametrize("model", ["register", "cas-register", "kv"])
def test_agrees_with_bruteforce(model: str) -> None:
    stats: Counter[str] = Counter()

    @settings(PROPS, max_examples=300)
    @given(ops=small_history(model))
    def run(ops: list[Op]) -> None:
        agree(model, ops, stats)

    run()
    # Both verdicts must actually have been exercised, with indeterminate ops in play.
    assert stats["valid"] >= 20 and stats["invalid"] >= 20, stats
    assert stats["indeterminate"] >= 20, stats


@pytest.mark.parametrize("model", ["register", "cas-register"])
def test_agrees_with_bruteforce_many_indeterminate(model: str) -> None:
    """Longer histories where half the ops never return: the lazy, memoized handling of
    indeterminate ops in the checker gets exercised against the plain definition."""
    stats: Counter[str] = Counter()

    @settings(PROPS, max_examples=150)
    @given(ops=small_history(model, max_ops=10, indeterminate=50))
    def run(ops: list[Op]) -> None:
        agree(model, ops, stats, memo=True)

    run()
    assert stats["valid"] >= 10 and stats["invalid"] >= 10, stats


@settings(PROPS, max_examples=200)
@given(model=st.sampled_from(["register", "cas-register", "kv"]), data=st.data())
def test_bruteforce_oracle_matches_the_literal_definition(model: str, data: Any) -> None:
    """The depth-first oracle (with and without memo) against every subset x every
    permutation, on tiny sizes."""
    ops = data.draw(small_history(model, max_ops=5, indeterminate=35))
    note("history:\n" + describe(ops))
    witness = bruteforce.linearizable(model, ops)
    naive = bruteforce.linearizable_naive(model, ops)
    assert (witness is not None) == naive
    assert (bruteforce.linearizable(model, ops, memo=True) is not None) == naive
    if witness is not None:
        assert bruteforce.check_witness(model, ops, witness) is None


# ============================================================== (c) stale reads are caught

def _pair_ops(events: list[dict[str, Any]]) -> list[tuple[int, int | None, dict[str, Any]]]:
    """(invoke index, completion index or None, completion event) per op."""
    open_: dict[Any, int] = {}
    out = []
    for i, ev in enumerate(events):
        if ev["type"] == "invoke":
            open_[ev["process"]] = i
        else:
            out.append((open_.pop(ev["process"]), i, ev))
    return out


@PROPS
@given(rec=recorded(kinds=KINDS, unique=True), fmt=st.sampled_from(["jepsen-edn", "jsonl"]),
       data=st.data())
def test_injected_stale_read_is_invalid(rec: Any, fmt: str, data: Any, hist_dir: Path) -> None:
    """Values written are unique, so the only op that ever produces `v` is `w1`. If `w1`
    returned before `w2` (a different value, same key) was invoked, and the read is
    invoked after `w2` returned, a read of `v` is stale in every linearization."""
    kind, events, rec_ = rec
    writer = "put" if kind == "kv-str" else "write"
    writes = [(c, r, ev) for c, r, ev in _pair_ops(events)
              if ev["type"] == "ok" and ev["f"] == writer]
    pairs = [(w1, w2) for w1 in writes for w2 in writes
             if w1[1] < w2[0] and w1[2].get("key") == w2[2].get("key")
             and w1[2]["value"] != w2[2]["value"]]
    events = list(events)
    if pairs:
        w1, w2 = data.draw(st.sampled_from(pairs), label="overwritten, overwriting")
        key, stale, after = w1[2].get("key"), w1[2]["value"], w2[1]
    else:  # no such pair recorded: add one at the end
        key = {"kv": "a", "kv-str": "k1"}.get(kind)
        vals = [f"<{rec_.fresh + 1}>", f"<{rec_.fresh + 2}>"] if kind == "kv-str" else \
            [rec_.fresh + 1, rec_.fresh + 2]
        for v in vals:
            for typ in ("invoke", "ok"):
                ev = {"process": 10_001, "type": typ, "f": writer, "value": v}
                if key is not None:
                    ev["key"] = key
                events.append(ev)
        stale, after = vals[0], len(events) - 1
    note(f"stale value {stale!r} on key {key!r}, read invoked after event {after}")
    reader = "get" if kind == "kv-str" else "read"
    inv = data.draw(st.integers(after + 1, len(events)), label="read invoked at")
    ret = data.draw(st.integers(inv + 1, len(events) + 1), label="read returns at")
    base = {"process": 10_000, "f": reader}
    if key is not None:
        base["key"] = key
    events.insert(inv, {**base, "type": "invoke", "value": None})
    events.insert(ret, {**base, "type": "ok", "value": stale})
    ops = load(events, kind, fmt, False, hist_dir / f"stale.{fmt}")
    res = check(get_model(READER_MODEL[kind]), ops, timeout=20)
    assert res.verdict is Verdict.INVALID
    bad = [p for p in res.partitions if p.verdict is Verdict.INVALID]
    assert [p.key for p in bad] == [key]


def test_stale_read_by_hand() -> None:
    """The smallest instance of (c), through the Jepsen map reader."""
    maps = [{"process": 0, "type": "invoke", "f": "write", "value": 1},
            {"process": 0, "type": "ok", "f": "write", "value": 1},
            {"process": 0, "type": "invoke", "f": "write", "value": 2},
            {"process": 0, "type": "ok", "f": "write", "value": 2},
            {"process": 1, "type": "invoke", "f": "read", "value": None},
            {"process": 1, "type": "ok", "f": "read", "value": 1}]
    ops = parse_jepsen_maps("mem", enumerate(maps, 1), "register")
    assert check(get_model("register"), ops).verdict is Verdict.INVALID
    # ... and the same read concurrent with the second write is fine.
    maps = maps[:3] + [maps[4], maps[3], maps[5]]
    ops = parse_jepsen_maps("mem", enumerate(maps, 1), "register")
    assert [o.f for o in ops] == ["write", "write", "read"]
    assert ops[2].call < ops[1].ret
    assert check(get_model("register"), ops).verdict is Verdict.VALID
