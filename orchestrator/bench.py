"""Benchmarks that print figures (never timed assertions in tests).

`cutover bench checker` measures the linearizability checker on Porcupine's corpus and
on a large generated history, the figures the checker issue asks for.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import click


def default_corpus() -> Path:
    """The corpus ships beside the repository, in `shared/corpus/porcupine`."""
    return Path(__file__).resolve().parents[2] / "shared" / "corpus" / "porcupine"


def _timed_check(path: str, fmt: str, model: str) -> tuple[str, float]:
    from checker import check, get_model, read_history

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
    from checker import check, get_model, read_history
    from checker.synth import inject_stale_read, simulate_kv, write_jsonl

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


@click.group()
def bench() -> None:
    """Benchmarks that print figures."""


@bench.command("checker")
@click.option("--corpus", type=click.Path(file_okay=False), default=None,
              help="Porcupine corpus directory (default: shared/corpus/porcupine beside "
                   "the repository).")
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True,
              help="Median of this many checks per corpus file.")
@click.option("--ops", type=click.IntRange(min=1), default=100_000, show_default=True)
@click.option("--keys", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--clients", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
def bench_checker(corpus: str | None, repeat: int, ops: int, keys: int, clients: int,
                  seed: int) -> None:
    """Check time on the Porcupine corpus and on a generated history."""
    cdir = Path(corpus) if corpus else default_corpus()
    if not (cdir / "verdicts.tsv").is_file():
        raise click.ClickException(f"no corpus at {cdir} (expected verdicts.tsv there); "
                                   "pass --corpus DIR")
    click.echo(f"cpus={os.cpu_count()}")
    bench_corpus(cdir, repeat)
    bench_generated(ops, keys, clients, seed)


def _percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _load_worker(endpoints: dict[str, str], ids: list[int], start: float, stop: float,
                 keys: int, seed: int, out: Any) -> None:
    """One client process: a thread per client, closed loop until `stop`."""
    import random
    import threading

    from .client import Client

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
    import multiprocessing

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


def _election_ms(cluster, kills: int) -> list[float]:
    """Kill the leader, time until a write succeeds on a new leader; restart it."""
    from .client import Client

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
                    raise click.ClickException("no new leader within 30 s")
            out.append((time.perf_counter() - t0) * 1000)
        cluster.start_node(leader)
    return out


@bench.command("cluster")
@click.option("--nodes", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--clients", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--seconds", type=click.FloatRange(min=1), default=10.0, show_default=True)
@click.option("--keys", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--kills", type=click.IntRange(min=0), default=10, show_default=True,
              help="Leader kills for the election figure.")
@click.option("--seed", type=int, default=1, show_default=True)
def bench_cluster(nodes: int, clients: int, seconds: float, keys: int, kills: int,
                  seed: int) -> None:
    """Throughput, latency and election time of a real cluster (fsync on, no faults)."""
    from .cluster import Cluster

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
