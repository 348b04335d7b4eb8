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
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click

from checker import Verdict, check, get_model, read_history
from checker.edn import dumps_op, loads_all
from checker.lin_columns import read_columns
from checker.linearizability import check_history, default_workers
from checker.synth import inject_stale_read, simulate_kv, write_jsonl
from orchestrator.real.client import Client
from orchestrator.real.cluster import Cluster


class BenchError(RuntimeError):
    """A benchmark that cannot run as asked; the message is for the user."""


def default_corpus() -> Path:
    """Porcupine's corpus, vendored in the repository (tests/data/porcupine): a clone
    alone benchmarks."""
    return Path(__file__).resolve().parents[1] / "tests" / "data" / "porcupine"


def _timed_check(path: str, fmt: str, model: str, workers: int | None) -> tuple[str, float]:
    ops = read_history(path, fmt, model)
    t0 = time.perf_counter()
    res = check(get_model(model), ops, timeout=60, workers=workers)
    return res.verdict.value, time.perf_counter() - t0


def bench_corpus(corpus: Path, repeat: int, workers: int | None = None) -> float:
    """Check every corpus file `repeat` times; print per-set totals (of each file's
    median, and of its best) and the slowest file, then every kv file (Porcupine's
    `Kv*Clients*` benchmarks, side by side)."""
    rows = (corpus / "verdicts.tsv").read_text().splitlines()[1:]
    expected = {r.split("\t")[0]: r.split("\t")[1].strip() == "true" for r in rows if r}
    grand = 0.0
    for prefix, fmt, model in (("etcd/", "porcupine-etcd", "cas-register"),
                               ("kv/", "porcupine-kv", "kv")):
        files = sorted(f for f in expected if f.startswith(prefix))
        per_file: dict[str, float] = {}
        best: dict[str, float] = {}
        wrong = []
        for f in files:
            times = []
            for _ in range(repeat):
                verdict, secs = _timed_check(str(corpus / f), fmt, model, workers)
                times.append(secs)
            per_file[f] = statistics.median(times)
            best[f] = min(times)
            if (verdict == "valid") != expected[f]:
                wrong.append(f)
        total = sum(per_file.values())
        grand += total
        slowest = max(per_file, key=per_file.__getitem__)
        click.echo(f"corpus {prefix[:-1]:<4} files={len(files)} total_s={total:.3f} "
                   f"best_total_s={sum(best.values()):.3f} "
                   f"max_s={per_file[slowest]:.3f} ({slowest}) "
                   f"verdicts_ok={len(files) - len(wrong)}/{len(files)}"
                   + (f" WRONG={','.join(wrong)}" if wrong else ""))
        if prefix == "kv/":
            for f in files:
                click.echo(f"  {f:<16} median_s={per_file[f]:.4f} best_s={best[f]:.4f}")
    click.echo(f"corpus total_s={grand:.3f}")
    return grand


def _cpu() -> float:
    """CPU seconds of this process and its finished workers: on a shared machine, the
    figure that does not depend on what else runs."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _hwm_mb() -> float:
    """This process's peak RSS since its exec (VmHWM; `ru_maxrss` would also count
    the moment the fork before the exec shared the benchmark's generated events)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _parse_and_check(path: str, workers: int | None, max_rss_mb: float) -> dict[str, Any]:
    """What `cutover lin FILE` does, in a process of its own so that its peak memory is
    its own: the reading, the check, and the peaks of this process and of its workers."""
    n = workers or default_workers()
    t0 = time.perf_counter()
    c0 = _cpu()
    cols = read_columns(path, "jsonl", "kv", workers=n)
    t1 = time.perf_counter()
    c1 = _cpu()
    res = check_history(get_model("kv"), cols, timeout=300, workers=n, max_rss_mb=max_rss_mb)
    t2 = time.perf_counter()
    c2 = _cpu()
    bad = [p for p in res.partitions if p.verdict is not Verdict.VALID]
    return {"verdict": res.verdict.value, "parse_s": t1 - t0, "check_s": t2 - t1,
            "parse_cpu_s": c1 - c0, "check_cpu_s": c2 - c1,
            "rss_mb": _hwm_mb(),
            "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "reasons": sorted({p.reason for p in bad if p.reason})[:2]}


def _measured(conn: Any, path: str, workers: int | None, max_rss_mb: float) -> None:
    conn.send(_parse_and_check(path, workers, max_rss_mb))
    conn.close()


def bench_generated(ops: int, keys: int, clients: int, seed: int, workers: int | None = None,
                    max_rss_mb: float = 400.0) -> None:
    """A big valid kv history, then the same with one provably stale read, each read and
    checked as `cutover lin` does it (with `max_rss_mb`, the default cap), in a fresh
    process: the wall time, split into reading and checking, and peak memory."""
    events = simulate_kv(ops, keys, clients, seed)
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as d:
        paths = {}
        for label in ("generated", "stale-read"):
            if label == "stale-read":
                inject_stale_read(events, seed)
            paths[label] = os.path.join(d, f"{label}.jsonl")
            write_jsonl(paths[label], events)
        del events
        n = workers or default_workers()
        for label, path in paths.items():
            rd, wr = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_measured, args=(wr, path, workers, max_rss_mb))
            proc.start()
            wr.close()
            try:
                r = rd.recv()
            except EOFError:
                raise BenchError(f"the check of the {label} history died "
                                 f"(exit {proc.join() or proc.exitcode})") from None
            finally:
                proc.join()
            click.echo(f"{label:<10} ops={ops} keys={keys} clients={clients} workers={n} "
                       f"load={os.getloadavg()[0]:.1f} "
                       f"verdict={r['verdict']} parse_s={r['parse_s']:.2f} "
                       f"check_s={r['check_s']:.2f} total_s={r['parse_s'] + r['check_s']:.2f} "
                       f"parse_cpu_s={r['parse_cpu_s']:.2f} check_cpu_s={r['check_cpu_s']:.2f} "
                       f"peak_rss_mb={r['rss_mb']:.0f} "
                       f"worker_peak_rss_mb={r['worker_rss_mb']:.0f}"
                       + (f" reasons={r['reasons']}" if r["reasons"] else ""))


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
