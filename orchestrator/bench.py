"""Benchmarks that print figures (never timed assertions in tests).

`cutover bench checker`: the linearizability checker on Porcupine's corpus and on a
large generated history. `cutover bench cluster`: a real cluster's throughput, latency
and election time. `cutover bench edn`: our EDN reader and writer against the
`edn_format` package.
"""
from __future__ import annotations

import multiprocessing
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click

from checker import check, get_model, read_history
from checker.edn import dumps_op, loads_all
from checker.synth import inject_stale_read, simulate_kv, write_jsonl
from orchestrator.real.client import Client
from orchestrator.real.cluster import Cluster


class BenchError(RuntimeError):
    """A benchmark that cannot run as asked; the message is for the user."""


def default_corpus() -> Path:
    """Porcupine's corpus, vendored in the repository (tests/data/porcupine): a clone
    alone benchmarks."""
    return Path(__file__).resolve().parents[1] / "tests" / "data" / "porcupine"


def _timed_check(path: str, fmt: str, model: str) -> tuple[str, float]:
    ops = read_history(path, fmt, model)
    t0 = time.perf_counter()
    res = check(get_model(model), ops, timeout=60)
    return res.verdict.value, time.perf_counter() - t0


def bench_corpus(corpus: Path, repeat: int) -> float:
    """Check every corpus file `repeat` times; print per-set totals and the slowest file."""
    rows = (corpus / "verdicts.tsv").read_text().splitlines()[1:]
    expected = {r.split("\t")[0]: r.split("\t")[1].strip() == "true" for r in rows if r}
    grand = 0.0
    for prefix, fmt, model in (("etcd/", "porcupine-etcd", "cas-register"),
                               ("kv/", "porcupine-kv", "kv")):
        files = sorted(f for f in expected if f.startswith(prefix))
        per_file: dict[str, float] = {}
        wrong = []
        for f in files:
            times = []
            for _ in range(repeat):
                verdict, secs = _timed_check(str(corpus / f), fmt, model)
                times.append(secs)
            per_file[f] = statistics.median(times)
            if (verdict == "valid") != expected[f]:
                wrong.append(f)
        total = sum(per_file.values())
        grand += total
        slowest = max(per_file, key=per_file.__getitem__)
        click.echo(f"corpus {prefix[:-1]:<4} files={len(files)} total_s={total:.3f} "
                   f"max_s={per_file[slowest]:.3f} ({slowest}) "
                   f"verdicts_ok={len(files) - len(wrong)}/{len(files)}"
                   + (f" WRONG={','.join(wrong)}" if wrong else ""))
    click.echo(f"corpus total_s={grand:.3f}")
    return grand


def bench_generated(ops: int, keys: int, clients: int, seed: int) -> None:
    """A big valid kv history, then the same with one provably stale read."""
    events = simulate_kv(ops, keys, clients, seed)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "history.jsonl")
        for label in ("generated", "stale-read"):
            if label == "stale-read":
                inject_stale_read(events, seed)
            write_jsonl(path, events)
            t0 = time.perf_counter()
            hist = read_history(path, "jsonl", "kv")
            t1 = time.perf_counter()
            res = check(get_model("kv"), hist, timeout=120)
            t2 = time.perf_counter()
            click.echo(f"{label:<10} ops={ops} keys={keys} clients={clients} "
                       f"verdict={res.verdict.value} parse_s={t1 - t0:.2f} "
                       f"check_s={t2 - t1:.2f} total_s={t2 - t0:.2f}")


def _percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _load_worker(endpoints: dict[str, str], ids: list[int], start: float, stop: float,
                 keys: int, seed: int, out: Any) -> None:
    """One client process: a thread per client, closed loop until `stop`."""
    lats: list[float] = []
    oks = [0]
    lock = threading.Lock()

    def worker(w: int) -> None:
        rng = random.Random(seed * 1000 + w)
        mine: list[float] = []
        n = 0
        with Client(endpoints, timeout=1.0) as c:
            while time.monotonic() < start:
                time.sleep(0.01)
            while time.monotonic() < stop:
                key = f"k{rng.randrange(keys)}"
                t0 = time.perf_counter()
                if rng.random() < 0.5:
                    r = c.invoke("read", key)
                else:
                    n += 1
                    r = c.invoke("write", key, f"w{w}-{n}")
                if r.type == "ok":
                    mine.append((time.perf_counter() - t0) * 1000)
        with lock:
            lats.extend(mine)
            oks[0] += len(mine)

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((oks[0], lats))


def _load(endpoints: dict[str, str], clients: int, seconds: float, keys: int,
          seed: int, procs: int = 4) -> tuple[int, list[float]]:
    """Closed-loop clients, 50/50 reads and writes; returns (acked ops, latencies ms).

    Clients run in a few processes (threads inside each), so the load generator's own
    GIL does not become the bottleneck being measured.
    """
    ctx = multiprocessing.get_context("spawn")
    q = ctx.SimpleQueue()
    procs = max(1, min(procs, clients))
    start = time.monotonic() + 2.0  # every process is up by then: all start together
    stop = start + seconds
    groups = [list(range(clients))[i::procs] for i in range(procs)]
    ps = [ctx.Process(target=_load_worker, args=(endpoints, g, start, stop, keys, seed, q),
                      daemon=True) for g in groups]
    for p in ps:
        p.start()
    acked, lats = 0, []
    for _ in ps:
        a, ls = q.get()
        acked += a
        lats.extend(ls)
    for p in ps:
        p.join()
    return acked, lats


def _election_ms(cluster: Cluster, kills: int) -> list[float]:
    """Kill the leader, time until a write succeeds on a new leader; restart it."""
    out = []
    for i in range(kills):
        leader = cluster.wait_leader()
        with Client(cluster.endpoints(), timeout=0.2, deadline=0.5) as c:
            assert c.invoke("write", "election", f"before-{i}").type == "ok"
            t0 = time.perf_counter()
            cluster.kill(leader)
            while True:
                r = c.invoke("write", "election", f"after-{i}")
                if r.type == "ok" and r.node != leader:
                    break
                if time.perf_counter() - t0 > 30:
                    raise BenchError("no new leader within 30 s")
            out.append((time.perf_counter() - t0) * 1000)
        cluster.start_node(leader)
    return out


def bench_cluster(nodes: int, clients: int, seconds: float, keys: int, kills: int,
                  seed: int) -> None:
    """Throughput, latency and election time of a real cluster (fsync on, no faults)."""
    with tempfile.TemporaryDirectory() as d, Cluster(os.path.join(d, "bench"), nodes,
                                                     seed=seed) as cl:
        cl.start()
        cl.wait_leader()
        acked, lats = _load(cl.endpoints(), clients, seconds, keys, seed)
        el = _election_ms(cl, kills) if kills else []
    ops = acked / seconds
    election = statistics.median(el) if el else float("nan")
    click.echo(f"nodes={nodes} clients={clients} ops_per_s={ops:.0f} "
               f"p50_ms={_percentile(lats, 0.5):.1f} p99_ms={_percentile(lats, 0.99):.1f} "
               f"election_ms={election:.0f}")


def edn_history(ops: int, seed: int) -> str:
    """A generated kv history of `ops` operations as `cutover export` writes it (one
    Jepsen op map per line)."""
    events = simulate_kv(ops, 8, 10, seed)
    return "".join(dumps_op({"index": i, "time": e["time"], "process": e["process"],
                             "type": e["type"], "f": e["f"], "key": e["key"],
                             "value": e["value"]}) + "\n" for i, e in enumerate(events))


def bench_edn(ops: int, seed: int) -> None:
    """Our EDN reader and writer against the `edn_format` package on one history: the
    figure that decides whether `checker/edn.py` is worth keeping (docs/checker.md)."""
    try:
        import edn_format  # start-up choice: an optional package, only this bench uses it
    except ImportError:
        raise BenchError("the edn_format package is not installed "
                         "(pip install 'cutover[bench]')") from None
    text = edn_history(ops, seed)
    t0 = time.perf_counter()
    ours = loads_all(text)
    t1 = time.perf_counter()
    theirs = edn_format.loads_all(text)
    t2 = time.perf_counter()
    if len(ours) != len(theirs):
        raise BenchError(f"the readers disagree: {len(ours)} forms vs {len(theirs)}")
    t3 = time.perf_counter()
    for m in ours:
        dumps_op(m)
    t4 = time.perf_counter()
    for m in theirs:
        edn_format.dumps(m)
    t5 = time.perf_counter()
    click.echo(f"edn ops={ops} events={len(ours)} bytes={len(text.encode())} "
               f"read_ours_s={t1 - t0:.2f} read_edn_format_s={t2 - t1:.2f} "
               f"read_speedup={(t2 - t1) / (t1 - t0):.1f} "
               f"write_ours_s={t4 - t3:.2f} write_edn_format_s={t5 - t4:.2f}")
