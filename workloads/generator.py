"""The register and kv workloads (see the package docstring)."""
from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Any

# The checker model that judges each workload's history (`checker.models`).
MODEL_OF: dict[str, str] = {"register": "kv", "kv": "kv", "reads": "kv"}
# Each workload's (read, write, cas) shares. `reads` is an idle cluster that clients
# still read from: nothing a user writes moves a store's applied index (the elastickv
# profile's row 7), which is what some hazards need (docs/findings/
# registration-replay-halts-restart.md).
MIXES: dict[str, tuple[float, float, float]] = {"register": (0.5, 0.35, 0.15),
                                                "kv": (0.5, 0.35, 0.15),
                                                "reads": (1.0, 0.0, 0.0)}
WORKLOADS = tuple(MODEL_OF)
TOKEN_PREFIX = "tok-"


@dataclass(frozen=True, slots=True)
class OpSpec:
    """One operation to invoke: `f` on `key`; `value` for write, (from, to) for cas."""

    f: str
    key: str
    value: Any = None

    def as_history_value(self) -> Any:
        """The invoke's value as the history records it (cas: [from, to])."""
        return list(self.value) if self.f == "cas" else self.value


class Workload:
    """A seeded op mix over `keys` keys: reads 50%, writes 35%, cas 15% by default.

    Thread-safe: the client workers share one instance. A cas compares against the
    last value this workload wrote to the key, so it succeeds often enough to matter.
    """

    def __init__(self, name: str, keys: int, seed: int, *, run_tag: str = "",
                 mix: tuple[float, float, float] = (0.5, 0.35, 0.15)) -> None:
        if name not in MODEL_OF:
            raise ValueError(f"unknown workload {name!r}; expected one of {', '.join(WORKLOADS)}")
        if keys < 1:
            raise ValueError("a workload needs at least one key")
        self.name = name
        self.keys = [f"k{i}" for i in range(1 if name == "register" else keys)]
        self.model = MODEL_OF[name]
        self.mix = mix
        self.tag = run_tag or f"{seed % 100000:05d}"
        self._rng = random.Random(seed)
        self._n = 0
        self._last: dict[str, str] = {}
        self._lock = threading.Lock()

    def token(self, n: int) -> str:
        """The n-th unique value: long enough (>= 6 bytes) for the byte scan."""
        return f"{TOKEN_PREFIX}{self.tag}-{n:07d}"

    def next_op(self) -> OpSpec:
        with self._lock:
            key = self._rng.choice(self.keys)
            r = self._rng.random()
            if r < self.mix[0]:
                return OpSpec("read", key)
            self._n += 1
            new = self.token(self._n)
            prev = self._last.get(key)
            self._last[key] = new
            if r < self.mix[0] + self.mix[1] or prev is None:
                return OpSpec("write", key, new)
            return OpSpec("cas", key, (prev, new))

    def final_reads(self) -> list[OpSpec]:
        """One read of every key, for the end of the run."""
        return [OpSpec("read", k) for k in self.keys]


def make_workload(name: str, keys: int, seed: int, run_tag: str = "") -> Workload:
    return Workload(name, keys, seed, run_tag=run_tag, mix=MIXES.get(name, MIXES["kv"]))
