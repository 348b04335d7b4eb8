"""History readers: Porcupine's etcd and kv logs, Jepsen EDN, and our JSON lines.

Every reader produces `Op`s through `EventPairer`, so pairing rules live in one place.
Errors are `HistoryError`s naming the file, the line and what was expected: whatever a
file holds, reading it ends in ops or in one such error, never another exception.

Memory is bounded by what the checker keeps (the ops), not by the file: every format is
read as a stream (lines, or EDN in blocks), one line or token is at most
`MAX_LINE_BYTES` / `checker.edn.MAX_TOKEN_BYTES`, and values nest at most
`checker.edn.MAX_DEPTH` deep. A 50 MB file of any kind costs at most 500 MB of RSS
(`tests/orchestrator/test_hostile_input.py` measures it).
"""
from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO

from .edn import MAX_DEPTH, MAX_INT_DIGITS, MAX_TOKEN_BYTES, EdnError, iter_history
from .history import NAN, UNKNOWN, EventPairer, HistoryError, Op, freeze
from .models import FUNCTIONS

FORMATS = ("porcupine-etcd", "porcupine-kv", "jepsen-edn", "jsonl")
DEFAULT_MODEL = {"porcupine-etcd": "cas-register", "porcupine-kv": "kv",
                 "jepsen-edn": "cas-register", "jsonl": "kv"}
MAX_LINE_BYTES = MAX_TOKEN_BYTES  # one line of a line format is one token
_JSON_BATCH = 2048  # lines parsed by one json.loads: C speed, bounded memory


_SNIFF_BYTES = 65536  # the first ops of any format, after a long comment header
_EDN_F = re.compile(rb":f\s+:([\w-]+)")
_EDN_MAP = re.compile(rb"\{[^{}]*\}")
_EDN_CLIENT = re.compile(rb":process\s+-?\d")
_KV_FS = {b"append", b"get", b"put"}  # Porcupine's kv tests
_REGISTER_FS = {b"read", b"write", b"cas"}  # Jepsen's register and cas-register tests


def infer_format(path: str) -> tuple[str, str] | None:
    """The format of a history file, and the model its ops call for, when its first
    bytes leave no doubt; else None. So
    `cutover lin FILE` needs no `--format` for the common files and a guess is never
    made: Porcupine's etcd logs begin with `INFO  jepsen.util`, JSON lines with `{"`,
    EDN ops with `{:` (Porcupine's kv tests use :append/:get/:put, Jepsen's register
    tests :read/:write/:cas) or a vector `[`, after blank lines and `;` comments. Jepsen
    ops with a `:key` are a kv history (what `cutover export` writes)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError:
        return None
    lines = head.removeprefix(b"\xef\xbb\xbf").splitlines()
    while lines and (not lines[0].strip() or lines[0].lstrip().startswith(b";")):
        lines.pop(0)  # blank lines and EDN comments before the first op
    text = b"\n".join(lines).lstrip()
    if _ETCD_HEAD.match(text):
        return "porcupine-etcd", DEFAULT_MODEL["porcupine-etcd"]
    if text.startswith(b'{"'):
        return "jsonl", DEFAULT_MODEL["jsonl"]
    if text.startswith(b"{:") or text.startswith(b"["):
        # The client ops' functions (a nemesis op, `:process :nemesis`, says nothing).
        ops = [m for m in _EDN_MAP.findall(head) if _EDN_CLIENT.search(m)]
        fs = {f for m in ops for f in _EDN_F.findall(m)}
        if fs and fs <= _KV_FS:
            return "porcupine-kv", "kv"
        if fs and fs <= _REGISTER_FS:
            keyed = any(b":key " in m or b":key," in m for m in ops)
            return "jepsen-edn", "kv" if keyed else DEFAULT_MODEL["jepsen-edn"]
    return None


_ETCD_HEAD = re.compile(rb"INFO\s+jepsen\.util\s+-")


def read_history(path: str, fmt: str, model: str | None = None) -> list[Op]:
    """Read `path` in format `fmt`; `model` tells how to find keys in Jepsen ops and
    which operations (`:f`) the history may hold."""
    if fmt not in FORMATS:
        raise HistoryError(path, None, f"unknown format {fmt!r}; expected one of "
                                       f"{', '.join(FORMATS)}")
    model = model or DEFAULT_MODEL[fmt]
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the open forever
            raise HistoryError(path, None, "not a regular file")
        with open(path, "rb") as fh:
            if fmt == "porcupine-etcd":
                return parse_etcd(path, _text_lines(path, fh))
            if fmt == "porcupine-kv":
                return parse_jepsen_maps(path, _edn_maps(path, fh), "kv", porcupine_kv=True)
            if fmt == "jepsen-edn":
                return parse_jepsen_maps(path, _edn_maps(path, fh), model)
            return parse_jepsen_maps(path, _json_maps(path, fh), model)
    except OSError as e:
        raise HistoryError(path, None, f"cannot read: {e.strerror or e}") from None
    except MemoryError:
        raise HistoryError(path, None, "out of memory while reading it") from None


def _lines(path: str, fh: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a binary file, each line at most MAX_LINE_BYTES."""
    ln = 0
    while True:
        line = fh.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        ln += 1
        if len(line) > MAX_LINE_BYTES:
            raise HistoryError(path, ln, f"a line longer than {MAX_LINE_BYTES} bytes (the "
                                         f"reader's limit for one line)")
        yield ln, line


def _text_lines(path: str, fh: BinaryIO) -> Iterator[tuple[int, str]]:
    for ln, line in _lines(path, fh):
        try:
            yield ln, line.decode("utf-8")
        except UnicodeDecodeError:
            raise HistoryError(path, ln, "not valid UTF-8") from None


_ETCD = re.compile(r"^\s*INFO\s+jepsen\.util\s+-\s+(\S+)\s+:(\w+)\s+:(\w+)\s+(.*?)\s*$")
_CAS = re.compile(r"^\[\s*(-?\d+)\s+(-?\d+)\s*\]$")
_INTEGER = re.compile(r"[+-]?[0-9]+\Z")


def _etcd_value(path: str, line: int, f: str, raw: str) -> Any:
    if raw == "nil":
        return None
    if raw == ":timed-out":
        return UNKNOWN
    if f == "cas":
        m = _CAS.match(raw)
        if not m:
            raise HistoryError(path, line, f"expected a cas value like [1 2], "
                                           f"found {_short(raw)}")
        return (_etcd_int(path, line, m.group(1)), _etcd_int(path, line, m.group(2)))
    return _etcd_int(path, line, raw)


def _etcd_int(path: str, line: int, raw: str) -> int:
    if not _INTEGER.match(raw):
        raise HistoryError(path, line, f"expected nil or an integer, found {_short(raw)}")
    if len(raw.lstrip("+-")) > MAX_INT_DIGITS:
        raise HistoryError(path, line, f"an integer of more than {MAX_INT_DIGITS} digits")
    return int(raw)


def parse_etcd(path: str, lines: str | Iterable[tuple[int, str]]) -> list[Op]:
    """Porcupine's etcd logs: a failed cas happened and did not match (Porcupine's
    semantics), a timed-out read is dropped, a timed-out write or cas stays open.
    `lines` is the log's text, or (line number, line) pairs."""
    p = EventPairer(path)
    if isinstance(lines, str):
        lines = enumerate(lines.splitlines(), 1)
    for ln, line in lines:
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


def _edn_maps(path: str, fh: BinaryIO) -> Iterator[tuple[int, Any]]:
    try:
        forms = iter_history(fh)
        first = next(forms, None)
        if first is None:
            return
        second = next(forms, None)
        if second is None and isinstance(first[1], list):
            # One form holding the ops that was not streamed (a tagged vector,
            # `#jepsen/history [...]`): its elements are the ops, as before.
            line0 = first[0]
            yield from ((line0, x) for x in first[1])
            return
        yield first
        if second is not None:
            yield second
            yield from forms
    except EdnError as e:
        raise HistoryError(path, e.line, f"malformed EDN: {e}") from None


def _json_maps(path: str, fh: BinaryIO) -> Iterator[tuple[int, Any]]:
    nums: list[int] = []
    lines: list[bytes] = []
    for ln, line in _lines(path, fh):
        if not line.strip():
            continue
        nums.append(ln)
        lines.append(line)
        if len(lines) >= _JSON_BATCH:
            yield from _json_batch(path, nums, lines)
            nums, lines = [], []
    if lines:
        yield from _json_batch(path, nums, lines)


def _json_batch(path: str, nums: list[int], lines: list[bytes]) -> Iterable[tuple[int, Any]]:
    """One C-level parse of a batch of lines; line by line only to locate an error (or
    when a line holds more than one value, which would shift the rest)."""
    try:
        objs = json.loads(b"[" + b",".join(lines) + b"]")
    except (ValueError, RecursionError):
        objs = None
    if not isinstance(objs, list) or len(objs) != len(lines):
        objs = [_json_line(path, ln, line) for ln, line in zip(nums, lines, strict=True)]
    for ln, line, obj in zip(nums, lines, objs, strict=True):
        if line.count(b"[") + line.count(b"{") > MAX_DEPTH and _too_deep(obj):
            raise HistoryError(path, ln, f"values nested deeper than {MAX_DEPTH} (the "
                                         f"reader's limit)")
        if _SURROGATE.search(line) and _lone_surrogate(obj):
            raise HistoryError(path, ln, "a string with a lone surrogate (\\ud800-\\udfff "
                                         "without its pair) is not text")
    return zip(nums, objs, strict=True)


def _json_line(path: str, ln: int, line: bytes) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise HistoryError(path, ln, f"expected one JSON object per line ({e.msg})") from None
    except RecursionError:
        raise HistoryError(path, ln, f"values nested deeper than {MAX_DEPTH} (the reader's "
                                     f"limit)") from None
    except UnicodeDecodeError:
        raise HistoryError(path, ln, "not valid UTF-8") from None
    except ValueError as e:  # an integer too long to convert, and the like
        msg = (f"an integer of more than {MAX_INT_DIGITS} digits" if "digits" in str(e)
               else str(e).splitlines()[0])
        raise HistoryError(path, ln, f"expected one JSON object per line ({msg})") from None


_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def _walk(obj: Any) -> Iterator[Any]:
    """Every value inside `obj` with its depth (iterative: `obj` may nest deeply)."""
    stack = [(obj, 1)]
    while stack:
        v, d = stack.pop()
        yield v, d
        if isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
        elif isinstance(v, dict):
            stack.extend((x, d + 1) for kv in v.items() for x in kv)


def _too_deep(obj: Any) -> bool:
    return any(d > MAX_DEPTH for _, d in _walk(obj))


def _lone_surrogate(obj: Any) -> bool:
    for v, _ in _walk(obj):
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


def parse_jepsen_maps(path: str, maps: Iterable[tuple[int, Any]], model: str,
                      porcupine_kv: bool = False) -> list[Op]:
    """Jepsen ops: `:fail` dropped, `:info` indeterminate, invoke values filled in by the
    completion (reads). Keys come from `:key`, else (kv model) from an independent
    `[key value]` tuple."""
    p = EventPairer(path)
    independent = model == "kv" and not porcupine_kv
    for ln, m in maps:
        ev = normalize_map(path, ln, m, model, independent, porcupine_kv)
        if ev is None:
            continue
        typ, proc, f, key, value, meta = ev
        if typ == "invoke":
            p.invoke(ln, proc, f, key, value, meta=meta)
            continue
        opened = p.open.get(proc)
        if opened is not None and f != opened.f:
            raise HistoryError(path, ln, f"completion :f {f!r} does not match the invoke's "
                                         f":f {opened.f!r} (event {opened.call})")
        if typ == "ok":
            p.complete(ln, proc, "ok", value)
        else:
            p.complete(ln, proc, typ)
    return p.finish()


def normalize_map(path: str, ln: int, m: Any, model: str, independent: bool,
                  porcupine_kv: bool) -> tuple[str, Any, str, Any, Any, Any] | None:
    """One Jepsen op map as (type, process, f, key, value, meta), or None for the
    nemesis: the one reading of a map, shared by `parse_jepsen_maps` and the columnar
    reader (`checker.lin_columns`), so the two cannot read a history differently. An
    invoke's value is its input (None for a read); an `ok`'s is its output."""
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
            return None
    if typ.__class__ is not str:
        typ = str(typ)
    if f.__class__ is not str:
        f = str(f)
    allowed = FUNCTIONS.get(model)
    if allowed is not None and f not in allowed:
        # Checked against the model, an unknown operation would just be "illegal"
        # and read as a violation; it is a history the model cannot judge.
        raise HistoryError(path, ln, f"unknown :f {_short(f)} for model {model} "
                                     f"(expected one of {', '.join(sorted(allowed))})")
    value = m.get("value")
    key = m.get("key")
    if key is None and independent and value.__class__ is list and len(value) == 2 \
            and "key" not in m:
        key, value = value[0], value[1]
    if key.__class__ in (list, dict, float):
        key = freeze(key)
    if f == "cas" and typ == "invoke":
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise HistoryError(path, ln, f"expected a cas value [from to], found "
                                         f"{_short(value)}")
    if value.__class__ in (list, dict, tuple):
        value = freeze(value)  # states must be hashable: values become tuples
    elif value.__class__ is float and value != value:
        value = NAN  # the one NaN, so a NaN read back equals the NaN written
    if typ == "invoke":
        return typ, proc, f, key, None if f in ("read", "get") else value, _meta(m)
    if typ == "ok":
        out = True if f == "cas" else value if f in ("read", "get") else None
        if porcupine_kv and f == "get" and out is None:
            out = ""
        return typ, proc, f, key, out, None
    if typ in ("fail", "info"):
        return typ, proc, f, key, UNKNOWN, None
    raise HistoryError(path, ln, f"expected :type :invoke, :ok, :fail or :info, "
                                 f"found {typ!r}")


def _meta(m: dict) -> dict[str, Any] | None:
    if "time" not in m and "node" not in m:
        return None
    return {k: m[k] for k in ("time", "node") if k in m}


def _short(x: Any) -> str:
    s = repr(x)
    return s if len(s) < 60 else s[:57] + "..."
