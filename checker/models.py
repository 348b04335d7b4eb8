"""Sequential specifications, Porcupine-style: init / step / partition / describe.

A model is a small object; states must be hashable and compare with `==`, because the
search merges configurations whose states are equal (that is what keeps it bounded).
`step(state, op)` returns `(legal, new_state)`; an op whose `output` is `UNKNOWN` is an
op nobody saw complete, so the model must accept any outcome consistent with the state.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Protocol

from .history import UNKNOWN, Op, freeze

# The hash of this file's source, baked in by the build when it compiles the module
# (setup.py); "" in the source itself (see `checker._native`).
SOURCE_HASH = ""


class Model(Protocol):
    """What the checker needs from a model; see the module docstring."""

    name: str

    def init(self) -> Any: ...

    def step(self, state: Any, op: Op) -> tuple[bool, Any]: ...

    def partition(self, ops: list[Op]) -> list[list[Op]]: ...

    def readonly(self, op: Op) -> bool: ...

    def describe_op(self, op: Op) -> str: ...

    def describe_state(self, state: Any) -> str: ...


def _same(a: Any, b: Any) -> bool:
    """`checker.history.same`, here so that a compiled model calls it natively."""
    return a is b or bool(a == b)


def _fmt(v: Any) -> str:
    return "nil" if v is None else repr(v) if isinstance(v, str) else str(v)


def _describe(op: Op) -> str:
    out = op.output
    if op.f in ("read", "get"):
        res = "?" if out is UNKNOWN else _fmt(out)
        return f"{op.f}({'' if op.key is None else _fmt(op.key)}) -> {res}"
    if op.f == "cas":
        a, b = op.value
        res = "?" if out is UNKNOWN else ("ok" if out else "fail")
        return f"cas({_key(op)}{_fmt(a)}, {_fmt(b)}) -> {res}"
    res = "?" if out is UNKNOWN else "ok"
    return f"{op.f}({_key(op)}{_fmt(op.value)}) -> {res}"


def _key(op: Op) -> str:
    return "" if op.key is None else f"{_fmt(op.key)}, "


class CasRegister:
    """One register with read / write / cas; absent (None) at the start.

    A cas whose output is True happened and matched; False means it happened and did
    not match (Porcupine's etcd semantics; Jepsen `fail` ops never reach the model);
    UNKNOWN applies iff it matches at its linearization point. A read with an unknown
    output is always legal.
    """

    name = "cas-register"
    allow_cas = True

    def init(self) -> Any:
        return None

    def step(self, state: Any, op: Op) -> tuple[bool, Any]:
        return self.step_parts(state, op.f, op.value, op.output)

    def step_parts(self, state: Any, f: str, value: Any, out: Any) -> tuple[bool, Any]:
        """`step` on an op's parts: the search reads them once per op, not per step."""
        if f == "read":
            return (out is UNKNOWN or _same(out, state)), state
        if f == "write":
            return True, value
        if f == "cas" and self.allow_cas:
            a, b = value
            if out is UNKNOWN:
                return True, (b if _same(state, a) else state)
            if out:
                return _same(state, a), b
            return not _same(state, a), state
        return False, state

    def partition(self, ops: list[Op]) -> list[list[Op]]:
        return [ops]

    def readonly(self, op: Op) -> bool:
        return op.f == "read"

    def overwrites(self, op: Op) -> bool:
        """A write sets the state whatever it was: what came just before is erased."""
        return op.f == "write"

    def describe_op(self, op: Op) -> str:
        return _describe(op)

    def describe_state(self, state: Any) -> str:
        return _fmt(state)


class Register(CasRegister):
    """A plain read/write register (a cas op is illegal here)."""

    name = "register"
    allow_cas = False


class KV:
    """A map of independent keys, split per key (P-compositionality).

    Two vocabularies: Porcupine's kv corpus (get / put / append on strings that start
    empty) and ours (read / write / cas on values that start absent).
    """

    name = "kv"

    def __init__(self) -> None:
        self._reg: CasRegister = CasRegister()

    def init(self) -> Any:
        return None

    def step(self, state: Any, op: Op) -> tuple[bool, Any]:
        return self.step_parts(state, op.f, op.value, op.output)

    def step_parts(self, state: Any, f: str, value: Any, out: Any) -> tuple[bool, Any]:
        """`step` on an op's parts: the search reads them once per op, not per step."""
        if f == "get":
            cur = "" if state is None else state
            return (out is UNKNOWN or _same(out, cur)), state
        if f == "put":
            return True, value
        if f == "append":
            cur = "" if state is None else state
            if not isinstance(cur, str) or not isinstance(value, str):
                return False, state  # appending to a number, or a number: never legal
            return True, cur + value
        return self._reg.step_parts(state, f, value, out)

    def partition(self, ops: list[Op]) -> list[list[Op]]:
        by_key: dict[Any, list[Op]] = defaultdict(list)
        for op in ops:
            by_key[freeze(op.key)].append(op)
        return list(by_key.values())

    def readonly(self, op: Op) -> bool:
        return op.f in ("read", "get")

    def overwrites(self, op: Op) -> bool:
        return op.f in ("write", "put")

    def describe_op(self, op: Op) -> str:
        return _describe(op)

    def describe_state(self, state: Any) -> str:
        return _fmt("" if state is None else state) if isinstance(state, str) else _fmt(state)


MODELS: dict[str, type] = {"register": Register, "cas-register": CasRegister, "kv": KV}
# The operations (`f`) each model judges; readers refuse any other, naming the line.
FUNCTIONS: dict[str, frozenset[str]] = {
    "register": frozenset({"read", "write"}),
    "cas-register": frozenset({"read", "write", "cas"}),
    "kv": frozenset({"read", "write", "cas", "get", "put", "append"}),
}


def get_model(name: str) -> Model:
    """The model called `name`; raises KeyError naming the known ones."""
    try:
        return MODELS[name]()
    except KeyError:
        raise KeyError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}") from None
