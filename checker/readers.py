"""History readers: Porcupine's etcd and kv logs, Jepsen EDN, and our JSON lines.

Every reader produces `Op`s through `EventPairer`, so pairing rules live in one place.
Errors are `HistoryError`s naming the file, the line and what was expected.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from .edn import EdnError, iter_forms
from .history import UNKNOWN, EventPairer, HistoryError, Op, freeze

FORMATS = ("porcupine-etcd", "porcupine-kv", "jepsen-edn", "jsonl")
DEFAULT_MODEL = {"porcupine-etcd": "cas-register", "porcupine-kv": "kv",
                 "jepsen-edn": "cas-register", "jsonl": "kv"}


def read_history(path: str, fmt: str, model: str | None = None) -> list[Op]:
    """Read `path` in format `fmt`; `model` tells how to find keys in Jepsen ops."""
    if fmt not in FORMATS:
        raise HistoryError(path, None, f"unknown format {fmt!r}; expected one of "
                                       f"{', '.join(FORMATS)}")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as e:
        raise HistoryError(path, None, f"cannot read: {e}") from None
    model = model or DEFAULT_MODEL[fmt]
    if fmt == "porcupine-etcd":
        return parse_etcd(path, text)
    if fmt == "porcupine-kv":
        return parse_jepsen_maps(path, _edn_maps(path, text), "kv", porcupine_kv=True)
    if fmt == "jepsen-edn":
        return parse_jepsen_maps(path, _edn_maps(path, text), model)
    return parse_jepsen_maps(path, _json_maps(path, text), model)


_ETCD = re.compile(r"^\s*INFO\s+jepsen\.util\s+-\s+(\S+)\s+:(\w+)\s+:(\w+)\s+(.*?)\s*$")
_CAS = re.compile(r"^\[\s*(-?\d+)\s+(-?\d+)\s*\]$")


def _etcd_value(path: str, line: int, f: str, raw: str) -> Any:
    if raw == "nil":
        return None
    if raw == ":timed-out":
        return UNKNOWN
    if f == "cas":
        m = _CAS.match(raw)
        if not m:
            raise HistoryError(path, line, f"expected a cas value like [1 2], found {raw!r}")
        return (int(m.group(1)), int(m.group(2)))
    try:
        return int(raw)
    except ValueError:
        raise HistoryError(path, line, f"expected nil or an integer, found {raw!r}") from None


def parse_etcd(path: str, text: str) -> list[Op]:
    """Porcupine's etcd logs: a failed cas happened and did not match (Porcupine's
    semantics), a timed-out read is dropped, a timed-out write or cas stays open."""
    p = EventPairer(path)
    for ln, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _ETCD.match(line)
        if not m:
            raise HistoryError(path, ln, "expected 'INFO jepsen.util - PROCESS :TYPE :F VALUE'")
        proc_s, kind, f, raw = m.groups()
        try:
            proc = int(proc_s)
        except ValueError:
            raise HistoryError(path, ln, f"expected an integer process, found {proc_s!r}") from None
        if f not in ("read", "write", "cas"):
            raise HistoryError(path, ln, f"expected :read, :write or :cas, found :{f}")
        value = _etcd_value(path, ln, f, raw)
        if kind == "invoke":
            p.invoke(ln, proc, f, None, None if f == "read" else value)
        elif kind == "ok":
            p.complete(ln, proc, "ok", True if f == "cas" else value)
        elif kind == "fail" and f == "cas":
            p.complete(ln, proc, "fail", False, keep_failed=True)
        elif kind in ("fail", "info"):
            p.complete(ln, proc, kind)
        else:
            raise HistoryError(path, ln, f"expected :invoke, :ok, :fail or :info, found :{kind}")
    return p.finish()


def _edn_maps(path: str, text: str) -> Iterable[tuple[int, Any]]:
    try:
        forms = list(iter_forms(text))
    except EdnError as e:
        raise HistoryError(path, e.line, f"malformed EDN: {e}") from None
    if len(forms) == 1 and isinstance(forms[0][1], list):
        line0 = forms[0][0]
        return [(line0, x) for x in forms[0][1]]
    return forms


def _json_maps(path: str, text: str) -> Iterable[tuple[int, Any]]:
    lines = text.splitlines()
    try:
        # One C-level parse of the whole file; line-by-line only to locate an error.
        objs = json.loads("[" + ",".join(ln for ln in lines if ln.strip()) + "]")
    except json.JSONDecodeError:
        objs = None
    if objs is not None:
        nums = [i for i, ln in enumerate(lines, 1) if ln.strip()]
        return zip(nums, objs, strict=True)
    for ln, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError as e:
            raise HistoryError(path, ln, f"expected one JSON object per line ({e.msg})") from None
    raise HistoryError(path, None, "expected one JSON object per line")


def parse_jepsen_maps(path: str, maps: Iterable[tuple[int, Any]], model: str,
                      porcupine_kv: bool = False) -> list[Op]:
    """Jepsen ops: `:fail` dropped, `:info` indeterminate, invoke values filled in by the
    completion (reads). Keys come from `:key`, else (kv model) from an independent
    `[key value]` tuple."""
    p = EventPairer(path)
    independent = model == "kv" and not porcupine_kv
    for ln, m in maps:
        if not isinstance(m, dict):
            raise HistoryError(path, ln, f"expected an operation map, found {_short(m)}")
        typ = m.get("type")
        proc = m.get("process")
        f = m.get("f")
        if typ is None or f is None or "process" not in m:
            raise HistoryError(path, ln, "expected an operation map with :type, :f and :process")
        if proc.__class__ is not int:
            proc = freeze(proc)
            if proc == "nemesis":
                continue
        if typ.__class__ is not str:
            typ = str(typ)
        if f.__class__ is not str:
            f = str(f)
        value = m.get("value")
        key = m.get("key")
        if key is None and independent and value.__class__ is list and len(value) == 2 \
                and "key" not in m:
            key, value = value[0], value[1]
        if key.__class__ is list or key.__class__ is dict:
            key = freeze(key)
        if f == "cas" and typ == "invoke":
            if not isinstance(value, list | tuple) or len(value) != 2:
                raise HistoryError(path, ln, f"expected a cas value [from to], found "
                                             f"{_short(value)}")
        if value.__class__ in (list, dict, tuple):
            value = freeze(value)  # states must be hashable: values become tuples
        if typ == "invoke":
            p.invoke(ln, proc, f, key, None if f in ("read", "get") else value,
                     meta=_meta(m))
        elif typ in ("ok", "fail", "info"):
            opened = p.open.get(proc)
            if opened is not None and f != opened.f:
                raise HistoryError(path, ln, f"completion :f {f!r} does not match the invoke's "
                                             f":f {opened.f!r} (event {opened.call})")
            if typ == "ok":
                out = True if f == "cas" else value if f in ("read", "get") else None
                if porcupine_kv and f == "get" and out is None:
                    out = ""
                p.complete(ln, proc, "ok", out)
            else:
                p.complete(ln, proc, typ)
        else:
            raise HistoryError(path, ln, f"expected :type :invoke, :ok, :fail or :info, "
                                         f"found {typ!r}")
    return p.finish()


def _meta(m: dict) -> dict[str, Any] | None:
    if "time" not in m and "node" not in m:
        return None
    return {k: m[k] for k in ("time", "node") if k in m}


def _short(x: Any) -> str:
    s = repr(x)
    return s if len(s) < 60 else s[:57] + "..."
