"""Synthetic histories from a real sequential object driven by concurrent clients.

Used by the checker benchmark and the property tests: a history produced this way is
linearizable by construction (each op takes effect at one instant inside its interval),
so any `invalid` verdict on it is a checker bug; `inject_stale_read` then makes one
provably non-linearizable.
"""
from __future__ import annotations

import json
import random
from typing import Any


def simulate_kv(n_ops: int, keys: int, clients: int, seed: int,
                crash_rate: float = 0.002, read_ratio: float = 0.5) -> list[dict[str, Any]]:
    """Jepsen-style events (invoke/ok/fail/info) for `n_ops` ops on `keys` registers.

    Every written value is unique, so an overwritten value never comes back; clients
    interleave at random between invoke, the instant the op takes effect, and the
    reply. A crashed client's op is `info` (applied or not) and the client gets a new
    process id, as in Jepsen.
    """
    rng = random.Random(seed)
    store: dict[str, Any] = {}
    events: list[dict[str, Any]] = []
    # per client: None (idle) or [process, f, key, value, phase, output]
    slots: list[list[Any] | None] = [None] * clients
    procs = list(range(clients))
    next_proc = clients
    counter = 0
    started = 0
    t = 0

    def emit(typ: str, proc: int, f: str, key: str, value: Any) -> None:
        nonlocal t
        t += rng.randint(1, 1000)
        events.append({"type": typ, "f": f, "key": key, "value": value, "process": proc,
                       "time": t})

    while started < n_ops or any(s is not None for s in slots):
        c = rng.randrange(clients)
        s = slots[c]
        if s is None:
            if started >= n_ops:
                continue
            started += 1
            key = f"k{rng.randrange(keys)}"
            r = rng.random()
            if r < read_ratio:
                f, value = "read", None
            elif r < read_ratio + (1 - read_ratio) * 0.6:
                counter += 1
                f, value = "write", f"v{counter}"
            else:
                counter += 1
                cur = store.get(key)
                frm = cur if rng.random() < 0.7 and cur is not None else f"v{rng.randint(1, counter)}"
                f, value = "cas", [frm, f"v{counter}"]
            slots[c] = [procs[c], f, key, value, 0, None]
            emit("invoke", procs[c], f, key, value)
        elif s[4] == 0:
            if rng.random() < crash_rate:  # crash before taking effect
                emit("info", s[0], s[1], s[2], s[3])
                slots[c] = None
                procs[c] = next_proc
                next_proc += 1
                continue
            f, key, value = s[1], s[2], s[3]
            if f == "read":
                s[5] = store.get(key)
            elif f == "write":
                store[key] = value
                s[5] = value
            else:
                ok = store.get(key) == value[0]
                if ok:
                    store[key] = value[1]
                s[5] = ok
            s[4] = 1
        else:
            proc, f, key, value, _, out = s
            slots[c] = None
            if rng.random() < crash_rate:  # took effect, reply lost
                emit("info", proc, f, key, value)
                procs[c] = next_proc
                next_proc += 1
            elif f == "read":
                emit("ok", proc, f, key, out)
            elif f == "cas" and not out:
                emit("fail", proc, f, key, value)
            else:
                emit("ok", proc, f, key, value)
    return events


def inject_stale_read(events: list[dict[str, Any]], seed: int) -> tuple[int, Any]:
    """Make one completed read return a value provably overwritten before it began.

    Picks a read R on key k and two ok writes w1, w2 on k with w1 returning before w2
    was invoked and w2 returning before R was invoked; R now returns w1's (unique)
    value. Returns (event index changed, the stale value).
    """
    rng = random.Random(seed)
    invoke_at: dict[Any, int] = {}
    opened: dict[int, int] = {}
    writes: dict[str, list[tuple[int, int, Any]]] = {}  # key -> (invoke idx, ok idx, value)
    reads: list[tuple[int, int, str]] = []
    for i, e in enumerate(events):
        if e["type"] == "invoke":
            invoke_at[e["process"]] = i
            continue
        j = invoke_at.pop(e["process"])
        opened[i] = j
        if e["type"] == "ok" and e["f"] == "write":
            writes.setdefault(e["key"], []).append((j, i, e["value"]))
        elif e["type"] == "ok" and e["f"] == "read":
            reads.append((j, i, e["key"]))
    rng.shuffle(reads)
    for j, i, key in reads:
        ws = [w for w in writes.get(key, []) if w[1] < j]
        for w2 in reversed(ws):
            older = [w1 for w1 in ws if w1[1] < w2[0]]
            if older:
                stale = older[-1][2]
                if events[i]["value"] != stale:
                    events[i]["value"] = stale
                    return i, stale
    raise ValueError("no read can be made provably stale in this history")


def write_jsonl(path: str, events: list[dict[str, Any]]) -> None:
    """Our own export format: one JSON object per line."""
    with open(path, "w", encoding="utf-8") as fh:
        for e in events:
            fh.write(json.dumps(e, separators=(",", ":")))
            fh.write("\n")
