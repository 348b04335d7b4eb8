"""Operations as the linearizability checker sees them.

A history on disk is a sequence of events (invoke, then ok / fail / info). The checker
works on *operations*: one call paired with its completion. Times are event positions
(the order of the history), which is all real-time order needs and which keeps
histories without clocks (Porcupine's etcd logs) and with clocks (ours) on one footing.

Jepsen semantics: `ok` happened inside its interval; `fail` did not happen and is
dropped; `info` (or still open at the end) may take effect at any point after its call,
or never: such an op has `ret = None` and `output = UNKNOWN`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class _Unknown:
    """Sentinel for an output nobody observed (a timeout, a crash)."""

    _inst: _Unknown | None = None

    def __new__(cls) -> _Unknown:
        if cls._inst is None:
            cls._inst = super().__new__(cls)
        return cls._inst

    def __repr__(self) -> str:
        return "?"

    def __reduce__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()


@dataclass(slots=True)
class Op:
    """One operation: `f` on `key` with input `value`; `output` is what came back."""

    id: int
    process: Any
    f: str
    key: Any
    value: Any
    output: Any
    call: int
    ret: int | None  # None: indeterminate, open until the end of time
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def indeterminate(self) -> bool:
        return self.ret is None


# The one NaN of every history. Jepsen compares values as values, so a NaN written and
# then read back is the same value; Python's `nan == nan` is False, but containers and
# dicts compare by identity first, so one shared NaN object makes states, keys and reads
# agree. `same` is the comparison the models use for bare values.
NAN: float = float("nan")


def freeze(v: Any) -> Any:
    """A hashable equivalent of a value (lists become tuples, maps sorted item tuples,
    every NaN the one `NAN`): keys partition the history and states are merged by hash,
    so both must hash. Readers bound the nesting (`checker.edn.MAX_DEPTH`), so the
    recursion here is shallow."""
    if isinstance(v, list | tuple):
        return tuple(freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted(((freeze(k), freeze(x)) for k, x in v.items()), key=repr))
    if v.__class__ is float and v != v:
        return NAN
    return v


def same(a: Any, b: Any) -> bool:
    """Value equality as Jepsen means it: `==`, except that NaN equals NaN (readers
    hand out the one `NAN`, so identity settles it, inside collections too)."""
    return a is b or a == b


def process_sort_key(p: Any) -> tuple[int, Any]:
    """Processes in lane order: numbers first by value (also numbers stored as text,
    as the results database keeps them), then the rest (nemesis, final-N) by name."""
    if isinstance(p, bool):
        return (1, str(p))
    if isinstance(p, int | float):
        return (0, p)
    s = str(p)
    if s.lstrip("-").isdigit():
        return (0, int(s))
    return (1, s)


class HistoryError(ValueError):
    """A history that cannot be read; the message names file, line and expectation."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


class EventPairer:
    """Turns a stream of invoke/completion events into `Op`s, keyed by process.

    Every reader feeds it, so the pairing rules (a completion needs an open invoke, a
    second invoke on a busy process is an error, `fail` is dropped, open ops become
    indeterminate at the end) are written once.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.pos = 0
        self.open: dict[Any, Op] = {}
        self.ops: list[Op] = []
        self._next_id = 0

    def invoke(self, line: int, process: Any, f: str, key: Any, value: Any,
               meta: dict[str, Any] | None = None) -> None:
        if process in self.open:
            raise HistoryError(self.path, line,
                               f"invoke on process {process!r} which already has an open "
                               f"operation (invoked at event {self.open[process].call}); "
                               f"expected a completion first")
        op = Op(self._next_id, process, f, key, value, UNKNOWN, self.pos, None, meta or {})
        self._next_id += 1
        self.pos += 1
        self.open[process] = op

    def complete(self, line: int, process: Any, kind: str, output: Any = UNKNOWN,
                 keep_failed: bool = False) -> Op | None:
        """Close the open op of `process` as ok / fail / info; returns it unless dropped."""
        op = self.open.pop(process, None)
        if op is None:
            raise HistoryError(self.path, line,
                               f"{kind} for process {process!r} without a matching invoke")
        if kind == "ok" or (kind == "fail" and keep_failed):
            op.output = output
            op.ret = self.pos
            self.pos += 1
            self.ops.append(op)
            return op
        if kind == "fail":
            return None
        if kind == "info":
            self.ops.append(op)  # stays open: may happen at any time after its call
            return op
        raise HistoryError(self.path, line, f"unknown completion type {kind!r}; "
                                            "expected ok, fail or info")

    def finish(self) -> list[Op]:
        """Ops still open at the end are indeterminate, exactly like `info`."""
        self.ops.extend(self.open.values())
        self.open.clear()
        self.ops.sort(key=lambda o: o.call)
        for i, op in enumerate(self.ops):
            op.id = i
        return self.ops
