"""The checker at scale (issue 25): columns, workers, one answer for any number of them.

* `read_columns` reads exactly the ops `read_history` reads (ids, times, nodes,
  indeterminate and failed ops), in one process or in several byte ranges, and a file
  the fast path does not cover ends the same way (the same ops, or the same error).
* `check` and `check_history` give the same verdict and the same counterexample for any
  number of workers, stopping early or not, and leave no worker process behind.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

import checker.lin_columns as lc
import checker.lin_parallel as lp
from checker import HistoryError, Verdict, check, get_model, read_history
from checker.lin_columns import read_columns
from checker.linearizability import check_history
from checker.synth import inject_stale_read, simulate_kv, write_jsonl
from tests.conftest import CLI, CORPUS, REPO, wait_for


def _summary(res: Any) -> list[tuple]:
    """Everything a person reads of a result, with ops as ids."""
    out = []
    for p in res.partitions:
        out.append((p.key, p.verdict.value, p.reason, p.configurations,
                    [(s.op.id, s.state, s.unknown_chain) for s in p.linearization]
                    if p.verdict is not Verdict.VALID else len(p.linearization),
                    [(o.id, ill) for o, ill in p.blocked], [o.id for o in p.ops]))
    return out


def _export_lines(events: list[dict[str, Any]]) -> list[str]:
    """The shape `cutover export` writes, with a nemesis event now and then."""
    out = []
    for i, e in enumerate(events):
        ev = {"index": i, "time": e["time"], "process": e["process"], "type": e["type"],
              "f": e["f"], "key": e["key"], "value": e["value"]}
        if i % 7 == 0:
            ev["node"] = f"n{i % 3 + 1}"
        out.append(json.dumps(ev, separators=(",", ":"), ensure_ascii=False))
        if i % 500 == 250:
            out.append(json.dumps({"index": i, "time": e["time"], "process": "nemesis",
                                   "type": "info", "f": "start-partition",
                                   "value": ["n1"]}, separators=(",", ":")))
    return out


@pytest.mark.parametrize("shape", ["synth", "export", "odd"])
@pytest.mark.parametrize("workers", [1, 3])
def test_columns_read_what_read_history_reads(tmp_path: Path, monkeypatch: Any, shape: str,
                                              workers: int) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    events = simulate_kv(3000, 20, 12, seed, crash_rate=0.02)
    path = tmp_path / "h.jsonl"
    if shape == "synth":
        write_jsonl(str(path), events)
    else:
        lines = _export_lines(events)
        if shape == "odd":  # blank lines, escapes, floats and keys the shapes do not cover
            rng = random.Random(seed)
            for _ in range(40):
                k = rng.randrange(len(lines))
                how = rng.randrange(4)
                if how < 2:
                    lines.insert(k, ["", "  "][how])
                else:
                    lines[k] = [lines[k].replace('"value":', '"value": '),
                                lines[k].replace('"k', '"\\u006b')][how - 2]
        path.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(lc, "_PARALLEL_BYTES", 1)  # a small file in byte ranges too
    cols = read_columns(str(path), "jsonl", "kv", workers=workers)
    want = read_history(str(path), "jsonl", "kv")
    assert shape == "odd" or cols.source is None  # the fast path took the covered shapes
    assert len(cols) == len(want)
    assert cols.all_ops() == want
    assert mp.active_children() == []


@pytest.mark.parametrize("mutation", ["double-invoke", "orphan", "bad-f", "long-int",
                                      "lone-surrogate", "ctrl-char"])
@pytest.mark.parametrize("workers", [1, 2])
def test_columns_fail_as_read_history_fails(tmp_path: Path, monkeypatch: Any, mutation: str,
                                            workers: int) -> None:
    events = simulate_kv(400, 5, 4, 7, crash_rate=0.0)
    lines = [json.dumps(e, separators=(",", ":")) for e in events]
    k = len(lines) * 3 // 4  # in the second byte range
    e = dict(events[k])
    if mutation == "double-invoke":
        lines.insert(k, json.dumps({**e, "type": "invoke"}, separators=(",", ":")))
        lines.insert(k, json.dumps({**e, "type": "invoke"}, separators=(",", ":")))
    elif mutation == "orphan":
        lines.insert(k, json.dumps({**e, "type": "ok", "process": 999},
                                   separators=(",", ":")))
    elif mutation == "bad-f":
        lines[k] = lines[k].replace(f'"f":"{e["f"]}"', '"f":"frob"')
    elif mutation == "long-int":
        lines[k] = lines[k].replace(f'"key":"{e["key"]}"', '"key":' + "9" * 5000)
    elif mutation == "lone-surrogate":
        lines[k] = lines[k].replace(f'"key":"{e["key"]}"', '"key":"\\ud800"')
    else:
        lines[k] = lines[k].replace(f'"key":"{e["key"]}"', '"key":"a\tb"')
    path = tmp_path / "h.jsonl"
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(lc, "_PARALLEL_BYTES", 1)
    with pytest.raises(HistoryError) as slow:
        read_history(str(path), "jsonl", "kv")
    with pytest.raises(HistoryError) as fast:
        read_columns(str(path), "jsonl", "kv", workers=workers)
    assert str(fast.value) == str(slow.value)


def _stale_history(tmp_path: Path, seed: int, bad: int) -> str:
    """A generated history with `bad` provably stale reads (on different keys, most
    likely): several invalid partitions, so which one is reported is a real question."""
    events = simulate_kv(4000, 40, 16, seed)
    for i in range(bad):
        inject_stale_read(events, seed + i)
    path = tmp_path / "stale.jsonl"
    write_jsonl(str(path), events)
    return str(path)


@pytest.fixture
def forks(monkeypatch: Any) -> list[int]:
    """Workers from the first slice on (a small history would be done before the parent
    forks), and how many times the parent did fork."""
    calls: list[int] = []
    real = lp._fork

    def spy(sched: Any, workers: int, *a: Any) -> Any:
        calls.append(workers)
        return real(sched, workers, *a)

    monkeypatch.setattr(lp, "_IN_PROCESS", 0)
    monkeypatch.setattr(lp, "_fork", spy)
    return calls


@pytest.mark.parametrize("stop_early", [True, False])
def test_same_answer_for_any_number_of_workers(tmp_path: Path, stop_early: bool,
                                               forks: list[int]) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    path = _stale_history(tmp_path, seed, 4)
    model = get_model("kv")
    cols = read_columns(path, "jsonl", "kv")
    runs = [check_history(model, cols, timeout=120, workers=w, stop_early=stop_early)
            for w in (1, 2, 3)]
    assert forks == [2, 3]
    assert runs[0].verdict is Verdict.INVALID
    first = _summary(runs[0])
    for r in runs[1:]:
        assert r.verdict is runs[0].verdict
        assert _summary(r) == first
    invalid = [p for p in runs[0].partitions if p.verdict is Verdict.INVALID]
    assert invalid and all(p.blocked for p in invalid)
    if stop_early:
        assert len(invalid) == 1  # the one the rounds find first, whoever looks
    assert mp.active_children() == []


@pytest.mark.parametrize("name", ["kv/c10-bad.txt", "kv/c50-bad.txt", "kv/c50-ok.txt"])
def test_corpus_same_answer_for_any_number_of_workers(name: str, forks: list[int]) -> None:
    ops = read_history(str(CORPUS / name), "porcupine-kv")
    model = get_model("kv")
    runs = [check(model, ops, timeout=60, workers=w) for w in (1, 2, 3)]
    assert forks == [2, 3]
    for r in runs[1:]:
        assert _summary(r) == _summary(runs[0])


def test_a_valid_partition_keeps_nothing_but_can_show_its_linearization(
        tmp_path: Path) -> None:
    events = simulate_kv(2000, 10, 12, 3)
    path = tmp_path / "h.jsonl"
    write_jsonl(str(path), events)
    model = get_model("kv")
    res = check_history(model, read_columns(str(path), "jsonl", "kv"), workers=2)
    assert res.verdict is Verdict.VALID
    for p in res.partitions:
        completed = {o.id for o in p.ops if o.ret is not None and o.f != "read"}
        placed = [s.op for s in p.linearization]
        assert completed <= {o.id for o in placed}
        state = model.init()
        for s in p.linearization:  # a real sequential run of the model
            legal, state = model.step(state, s.op)
            assert legal and state == s.state
        positions = {o.id: k for k, o in enumerate(placed)}
        for a in placed:  # and it respects real time
            for b in placed:
                if a.ret is not None and a.ret < b.call:
                    assert positions[a.id] < positions[b.id]


def test_the_memory_cap_counts_the_check_not_the_history(tmp_path: Path) -> None:
    """Held by a process already past the cap, the history is not the check's growth:
    a valid history stays valid under the smallest cap the CLI allows."""
    events = simulate_kv(3000, 30, 8, 5)
    path = tmp_path / "h.jsonl"
    write_jsonl(str(path), events)
    ballast = bytearray(80 << 20)  # the process holds more than the cap before it starts
    ballast[::4096] = b"x" * len(ballast[::4096])
    res = check_history(get_model("kv"), read_columns(str(path), "jsonl", "kv"),
                        workers=2, max_rss_mb=50)
    assert res.verdict is Verdict.VALID, [p.reason for p in res.failures()]
    del ballast


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc")
def test_workers_die_with_a_killed_parent() -> None:
    """`cutover lin` killed (SIGKILL: nothing of it runs) while its workers search a key
    no search settles: the kernel ends them too (PR_SET_PDEATHSIG)."""
    p = subprocess.Popen([*CLI, "lin", "--workers", "2", "--all-partitions", "--timeout",
                          "120", str(CORPUS / "kv" / "c50-bad.txt")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        kids = wait_for(lambda: len(_children(p.pid)) >= 2 and _children(p.pid),
                        timeout=60, what="the check's workers")
    finally:
        p.kill()
        p.wait()
    wait_for(lambda: not any(_alive(k) for k in kids), timeout=30,
             what=f"workers {kids} to end with their parent")
