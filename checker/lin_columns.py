"""A history as columns: what a million-operation check holds while it runs.

`read_history` hands out one `Op` per operation (an object, and a dict of metadata):
about 350 bytes each, so a million-op history costs its checker a third of a GB before
the search starts, and parsing it is one Python object per event. Here the history is
parallel columns (arrays of positions and times, lists of references to interned keys,
values and processes: each distinct value is one object, however many events carry it),
and `Op`s are made only for the partition being checked (`Columns.ops`), then dropped.

JSON lines, the format `cutover export` and the benchmarks write, are read at close to
disk speed: a block of lines is matched by one regular expression per line shape (the
two shapes cutover writes), each distinct key, value and process token decoded once.
A block holding anything else (blank lines, other fields, floats, escapes) is read by the
ordinary per-line path (`readers._json_batch` and `readers.normalize_map`), so the two
cannot disagree; any error re-reads the file with `read_history`, whose message (file,
line, expectation) is the one the user gets. Other formats are read by `read_history`
and kept as their `Op`s.
"""
from __future__ import annotations

import ctypes
import json
import multiprocessing as mp
import os
import pickle
import re
import signal
import stat
import sys
from array import array
from collections.abc import Iterator, Sequence
from itertools import repeat
from operator import itemgetter
from typing import Any

from .history import UNKNOWN, Op, freeze
from .models import FUNCTIONS
from .readers import (
    DEFAULT_MODEL,
    FORMATS,
    MAX_LINE_BYTES,
    _json_batch,
    normalize_map,
    read_history,
)

_NONE = -1  # `ret` of an indeterminate op; `time` of an op without one
_BLOCK = 4 << 20  # bytes of whole lines matched per block
_NO_META: dict[str, Any] = {}  # shared by the ops a search makes and drops

# The two shapes cutover writes: `checker.synth.write_jsonl` and `cutover export`. The
# patterns are loose where the line's cost is (a key, a value, a process is any run of
# plain characters): each distinct token is checked once, when it is first decoded
# (`_JsonlReader._token`), and anything that is not plain JSON sends the file to the
# per-line reader.
_TOK = rb'(?:"[^"\n]*"|[-0-9]+)'
_KEY = rb"(" + _TOK + rb")"
_VALUE = rb"(\[[^\]\n]*\]|" + _TOK + rb"|null)"
_PROC = rb"([^,\n]+)"
_INT = rb"-?(?:0|[1-9][0-9]{0,17})"
_STR = rb'"[^"\\\x00-\x1f]*"'
_SYNTH = re.compile(rb'^\{"type":"(invoke|ok|fail|info)","f":"([a-z]+)","key":' + _KEY
                    + rb',"value":' + _VALUE + rb',"process":' + _PROC
                    + rb',"time":(' + _INT + rb')()\}\r?$', re.M)
_EXPORT = re.compile(rb'^\{"index":' + _INT + rb',"time":(' + _INT + rb'),"process":' + _PROC
                     + rb',"type":"(invoke|ok|fail|info)","f":"([a-z]+)","key":' + _KEY
                     + rb',"value":' + _VALUE + rb'(?:,"node":(' + _STR + rb'))?'
                     + rb'(?:,"error":' + _STR + rb')?\}\r?$', re.M)
_PLAIN_STR = re.compile(rb'"[^"\\\x00-\x1f]*"')
_PLAIN_INT = re.compile(_INT)
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


class _Fallback(Exception):
    """The fast path met something it does not judge itself: read the slow way."""


class Columns:
    """Operations in call order as parallel columns; `ops(indices)` makes `Op`s.

    Index i is the i-th operation by call (the id `read_history` would give it, once
    failed ops are dropped: `ids` maps when some were)."""

    def __init__(self) -> None:
        self.call = array("q")
        self.ret = array("q")  # _NONE: indeterminate
        self.time = array("q")  # the invoke's time, _NONE when it had none
        self.f: list[str] = []
        self.key: list[Any] = []
        self.value: list[Any] = []
        self.output: list[Any] = []
        self.process: list[Any] = []
        self.node: list[Any] = []
        self.dropped = 0  # failed ops still in the columns (ret == -2)
        self.ids: array | None = None
        self.source: list[Op] | None = None  # read another way: the ops themselves

    def __len__(self) -> int:
        return len(self.source) if self.source is not None else len(self.call) - self.dropped

    @classmethod
    def from_ops(cls, ops: list[Op]) -> Columns:
        """Ops read another way, kept as they are (their objects are the history)."""
        c = cls()
        c.source = ops
        return c

    def partitions(self, model: Any) -> list[Sequence[int]]:
        """The model's partitions as index lists, in the order `model.partition` gives
        them (a kv key's first appearance); only kv splits."""
        if self.source is not None:
            if getattr(model, "name", "") != "kv":
                parts = model.partition(self.source)
                pos = {id(o): i for i, o in enumerate(self.source)}
                return [array("q", [pos[id(o)] for o in p]) for p in parts if p]
            keys: Sequence[Any] = [freeze(o.key) for o in self.source]
            n = len(self.source)
        else:
            keys = self.key
            n = len(self.call)
        if getattr(model, "name", "") != "kv":
            one = array("q", (i for i in range(n) if self.source is not None
                              or self.ret[i] != -2))
            return [one] if one else []
        by_key: dict[Any, array] = {}
        ret = self.ret
        skip = self.source is None and self.dropped
        for i, k in enumerate(keys):
            if skip and ret[i] == -2:
                continue
            a = by_key.get(k)
            if a is None:
                a = by_key[k] = array("q")
            a.append(i)
        return list(by_key.values())

    def key_of(self, i: int) -> Any:
        return self.source[i].key if self.source is not None else self.key[i]

    def ops(self, idx: Sequence[int], meta: bool = True) -> list[Op]:
        """The `Op`s at these indices: made now, for one partition's check. Without
        `meta` they share one empty metadata dict (the search never reads it; whatever
        it reports is made again with it)."""
        if self.source is not None:
            src = self.source
            return [src[i] for i in idx]
        if not meta:
            return self._bare(idx)
        out = []
        call, ret, time, f, key = self.call, self.ret, self.time, self.f, self.key
        value, output, process, node, ids = (self.value, self.output, self.process,
                                             self.node, self.ids)
        for i in idx:
            r = ret[i]
            t = time[i]
            nd = node[i]
            meta = {} if t == _NONE and nd is None else (
                {"time": t} if nd is None else {"time": t, "node": nd} if t != _NONE
                else {"node": nd})
            out.append(Op(i if ids is None else ids[i], process[i], f[i], key[i], value[i],
                          output[i], call[i], None if r == _NONE else r, meta))
        return out

    def _bare(self, idx: Sequence[int]) -> list[Op]:
        if len(idx) < 2:
            return [self.ops(idx)[0]] if idx else []
        get = itemgetter(*idx)  # one C-level gather per column, then `Op` by `map`
        rets = [None if r == _NONE else r for r in get(self.ret)]
        ids = idx if self.ids is None else get(self.ids)
        return list(map(Op, ids, get(self.process), get(self.f), get(self.key),
                        get(self.value), get(self.output), get(self.call), rets,
                        repeat(_NO_META)))

    def all_ops(self) -> list[Op]:
        if self.source is not None:
            return self.source
        ret = self.ret
        return self.ops([i for i in range(len(ret)) if ret[i] != -2])


class LazyOps(Sequence):
    """A partition's ops, made when someone looks (a report of an invalid key, a test):
    a valid partition of a big history costs nothing after its check."""

    def __init__(self, cols: Columns, idx: Sequence[int]) -> None:
        self._cols = cols
        self._idx = idx

    def _list(self) -> list[Op]:
        return self._cols.ops(self._idx)

    def __len__(self) -> int:
        return len(self._idx)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return self._cols.ops(self._idx[i])
        return self._cols.ops([self._idx[i]])[0]

    def __iter__(self) -> Iterator[Op]:
        return iter(self._list())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return self._list() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LazyOps({len(self)} ops)"


def read_columns(path: str, fmt: str, model: str | None = None,
                 workers: int = 1) -> Columns:
    """`read_history`, as columns: JSON lines at close to disk speed (a big file in
    `workers` processes, a byte range each), every format with the same ops, verdicts
    and errors as `read_history`."""
    model = model or DEFAULT_MODEL.get(fmt, "kv")
    if fmt != "jsonl" or fmt not in FORMATS:
        return Columns.from_ops(read_history(path, fmt, model))
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise _Fallback
        if workers > 1 and st.st_size >= _PARALLEL_BYTES and _can_fork():
            return _read_parallel(path, model, st.st_size, workers)
        with open(path, "rb") as fh:
            return _ids(_JsonlReader(path, model).read(fh))
    except Exception:  # noqa: BLE001 - whatever it is, the per-line reader judges it
        pass  # (outside this block: the fast path's columns are garbage by then)
    # It says precisely what is wrong (file, line, expectation), or reads what the fast
    # path does not; its promise (ops or one HistoryError) is ours.
    return Columns.from_ops(read_history(path, fmt, model))


_PARALLEL_BYTES = 32 << 20  # below this, forking costs more than it saves


def _can_fork() -> bool:
    return "fork" in mp.get_all_start_methods() and not mp.current_process().daemon


def reap(procs: list[Any], conns: list[Any]) -> None:
    """However a forked read or check ends: no worker left running, no pipe left open."""
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(timeout=5)
    for c in conns:
        c.close()


def die_with_parent(parent: int) -> None:
    """First thing in a forked worker: be killed when the parent dies (Linux's
    PR_SET_PDEATHSIG), or go now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(0)


def _ranges(path: str, size: int, n: int) -> list[tuple[int, int]]:
    """`n` byte ranges of whole lines."""
    cuts = [0]
    with open(path, "rb") as fh:
        for k in range(1, n):
            fh.seek(max(cuts[-1], size * k // n))
            fh.readline()
            cuts.append(min(fh.tell(), size))
    cuts.append(size)
    return [(a, b) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def _read_range(path: str, model: str, start: int, end: int) -> _JsonlReader:
    r = _JsonlReader(path, model, chunk=True)
    with open(path, "rb") as fh:
        fh.seek(start)
        r.read(fh, end - start)
    return r


def _chunk_worker(conn: Any, parent: int, path: str, model: str, start: int,
                  end: int) -> None:
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        r = _read_range(path, model, start, end)
        conn.send_bytes(pickle.dumps((r.cols, r.orphans, r.open, r.pos, r.invoked),
                                     protocol=pickle.HIGHEST_PROTOCOL))
    except BaseException:  # noqa: BLE001 - the parent reads the file the slow way
        try:
            conn.send_bytes(b"")
        except OSError:
            pass
    finally:
        conn.close()
        os._exit(0)


def _read_parallel(path: str, model: str, size: int, workers: int) -> Columns:
    """The first range read here while forked workers read the others; then the ranges
    are stitched in order (`_stitch`). Anything odd: `_Fallback`."""
    ctx = mp.get_context("fork")
    ranges = _ranges(path, size, workers)
    procs, conns = [], []
    try:
        for a, b in ranges[1:]:
            rd, wr = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_chunk_worker, daemon=True,
                            args=(wr, os.getpid(), path, model, a, b))
            p.start()
            wr.close()
            procs.append(p)
            conns.append(rd)
        first = _read_range(path, model, *ranges[0])
        if first.orphans:
            raise _Fallback
        out = first.cols
        state = (dict(first.open), first.pos)
        for rd in conns:
            data = rd.recv_bytes()
            if not data:
                raise _Fallback
            state = _stitch(out, state, pickle.loads(data))
        return _ids(out)
    except EOFError:
        raise _Fallback from None
    finally:
        reap(procs, conns)


def _stitch(out: Columns, state: tuple[dict[Any, int], int], part: tuple) -> tuple:
    """Append a range's columns to `out`: its completions of ops invoked before it close
    them, its positions move by the positions before it."""
    cols, orphans, open_end, npos, invoked = part
    opened, pos0 = state
    base = len(out.call)
    ended = {p for p, *_ in orphans}
    if any(p in invoked and p not in ended for p in opened):
        raise _Fallback  # an invoke on a process still busy from before the range
    for p, typ, f, value, at in orphans:
        i = opened.pop(p, None)
        if i is None or out.f[i] != f:
            raise _Fallback
        if typ == "ok":
            out.output[i] = value
            out.ret[i] = at + pos0
        elif typ == "fail":
            out.ret[i] = -2
            out.dropped += 1
    out.call.extend(array("q", [c + pos0 for c in cols.call]))
    out.ret.extend(array("q", [r if r < 0 else r + pos0 for r in cols.ret]))
    out.time.extend(cols.time)
    for name in ("f", "key", "value", "output", "process", "node"):
        getattr(out, name).extend(getattr(cols, name))
    out.dropped += cols.dropped
    for p, i in open_end.items():
        opened[p] = i + base
    return opened, pos0 + npos


def _ids(c: Columns) -> Columns:
    """Op ids as `read_history` gives them: positions once failed ops are dropped."""
    if c.dropped:
        ids = array("q", bytes(8 * len(c.call)))
        n = 0
        for i, r in enumerate(c.ret):
            ids[i] = n
            if r != -2:
                n += 1
        c.ids = ids
    return c


_F_BYTES = {f: f.decode() for fs in FUNCTIONS.values() for f in (x.encode() for x in fs)}
_TYPES = {b"invoke": 0, b"ok": 1, b"fail": 2, b"info": 3}


class _JsonlReader:
    """Pairs events straight into columns; `_Fallback` when anything is off."""

    def __init__(self, path: str, model: str, chunk: bool = False) -> None:
        self.path = path
        self.model = model
        self.allowed = FUNCTIONS.get(model)
        self.independent = model == "kv"
        self.cols = Columns()
        self.open: dict[Any, int] = {}
        self.pos = 0
        # A chunk of the file read by a worker (`_read_parallel`): completions of ops
        # invoked before it are kept for the stitch, as are the processes it invoked on.
        self.chunk = chunk
        self.orphans: list[tuple[Any, str, str, Any, int]] = []
        self.invoked: set[Any] = set()
        self.fs = {f.encode(): f for f in (self.allowed or _F_BYTES.values())}
        self.tokens: dict[bytes, Any] = {}  # raw JSON token -> its (interned) value
        self.values: dict[Any, Any] = {}  # value -> the one object standing for it

    def read(self, fh: Any, size: int | None = None) -> Columns:
        """The file from where `fh` stands, `size` bytes of it (None: to the end)."""
        carry = b""
        while True:
            want = _BLOCK if size is None else min(_BLOCK, size)
            block = fh.read(want) if want else b""
            if size is not None:
                size -= len(block)
            if not block:
                break
            block = carry + block
            cut = block.rfind(b"\n") + 1
            if cut == 0:
                if len(block) > MAX_LINE_BYTES:
                    raise _Fallback
                carry = block
                continue
            carry = block[cut:]
            if len(block) > MAX_LINE_BYTES and max(map(len, block[:cut].split(b"\n"))) \
                    > MAX_LINE_BYTES:
                raise _Fallback  # the reader's limit for one line: its error says so
            self._block(block[:cut])
        if carry:
            self._block(carry + b"\n")
        return self._finish()

    def _token(self, raw: bytes) -> Any:
        """The value of a key, value, process or node token, decoded once (and checked:
        the patterns let through more than plain JSON) and interned."""
        v = self.tokens.get(raw)
        if v is None and raw not in self.tokens:
            if _PLAIN_STR.fullmatch(raw):
                v = raw[1:-1].decode("utf-8")
            elif _PLAIN_INT.fullmatch(raw):
                v = int(raw)
            else:
                if _SURROGATE.search(raw):
                    raise _Fallback  # `read_history` says which line
                v = freeze(json.loads(raw))  # strict: what it refuses, the slow way says
            v = self.values.setdefault(v, v)
            self.tokens[raw] = v
        return v

    def _block(self, block: bytes) -> None:
        lines = block.count(b"\n")
        for pat, order in ((_SYNTH, _SYNTH_ORDER), (_EXPORT, _EXPORT_ORDER)):
            rows = pat.findall(block)
            if len(rows) == lines:
                self._rows(rows, order)
                return
            if rows:
                self._mixed(pat, order, block)
                return
        self._slow(block)

    def _mixed(self, pat: re.Pattern, order: tuple[int, ...] | None, block: bytes) -> None:
        """Runs of lines of the shape, and the lines between them read the slow way
        (an export's nemesis events), in the history's order."""
        rows: list[tuple[bytes, ...]] = []
        end = 0
        for m in pat.finditer(block):
            gap = block[end:m.start()]
            if gap.strip():
                self._rows(rows, order)
                rows = []
                self._slow(gap if gap.endswith(b"\n") else gap + b"\n")
            rows.append(m.groups())
            end = m.end()
        self._rows(rows, order)
        if block[end:].strip():
            self._slow(block[end:])

    # Kept whole on purpose: one loop over every event of the history, state in locals.
    def _rows(self, rows: list[tuple[bytes, ...]], order: tuple[int, ...] | None) -> None:
        if order is not None:
            rows = [tuple(r[j] if j >= 0 else b"" for j in order) for r in rows]
        c = self.cols
        call, ret, time, fcol, kcol = c.call, c.ret, c.time, c.f, c.key
        vcol, ocol, pcol, ncol = c.value, c.output, c.process, c.node
        opened = self.open
        invoked = self.invoked
        orphans = self.orphans
        chunk = self.chunk
        tok = self.tokens
        token = self._token
        fs = self.fs
        pos = self.pos
        dropped = 0
        for typ, fb, kb, vb, pb, tb, nb in rows:
            f = fs.get(fb)
            if f is None:
                raise _Fallback
            if pb == b'"nemesis"':
                continue
            p = tok.get(pb)
            if p is None:
                p = token(pb)
            if typ == b"invoke":
                if p in opened:
                    raise _Fallback
                v = tok.get(vb)
                if v is None and vb != b"null":
                    v = token(vb)
                if f == "cas" and (v.__class__ is not tuple or len(v) != 2):
                    raise _Fallback
                k = tok.get(kb)
                if k is None:
                    k = token(kb)
                t = int(tb)
                if t == _NONE:
                    raise _Fallback
                opened[p] = len(call)
                invoked.add(p)
                call.append(pos)
                ret.append(_NONE)
                time.append(t)
                fcol.append(f)
                kcol.append(k)
                vcol.append(None if f == "read" or f == "get" else v)
                ocol.append(UNKNOWN)
                pcol.append(p)
                ncol.append(token(nb) if nb else None)
                pos += 1
                continue
            i = opened.pop(p, None)
            if i is None:
                if not chunk or p in invoked:
                    raise _Fallback
                out = None
                if typ == b"ok":
                    out = True if f == "cas" else token(vb) if f == "read" or f == "get" else None
                orphans.append((p, typ.decode(), f, out, pos))
                pos += typ == b"ok"
                continue
            if fcol[i] != f:
                raise _Fallback
            if typ == b"ok":
                if f == "cas":
                    ocol[i] = True
                elif f == "read" or f == "get":
                    v = tok.get(vb)
                    ocol[i] = v if v is not None or vb == b"null" else token(vb)
                else:
                    ocol[i] = None
                ret[i] = pos
                pos += 1
            elif typ == b"fail":
                ret[i] = -2
                dropped += 1
        self.pos = pos
        c.dropped += dropped

    def _slow(self, block: bytes) -> None:
        """A block the shapes do not cover, line by line as `read_history` reads it."""
        nums, lines = [], []
        for ln, line in enumerate(block.split(b"\n"), 1):
            if line.strip():
                nums.append(ln)  # line numbers of the block: an error re-reads the file
                lines.append(line)
        if not lines:
            return
        for ln, m in _json_batch(self.path, nums, lines):
            ev = normalize_map(self.path, ln, m, self.model, self.independent, False)
            if ev is not None:
                self._event(*ev)

    def _event(self, typ: str, proc: Any, f: str, key: Any, value: Any, meta: Any) -> None:
        c = self.cols
        if typ == "invoke":
            if proc in self.open:
                raise _Fallback
            self.open[proc] = len(c.call)
            self.invoked.add(proc)
            c.call.append(self.pos)
            c.ret.append(_NONE)
            t = (meta or {}).get("time")
            if t is not None and (t.__class__ is not int or t == _NONE
                                  or not -2**63 <= t < 2**63):
                raise _Fallback  # kept exactly only in an Op's meta
            c.time.append(_NONE if t is None else t)
            c.f.append(f)
            c.key.append(key)
            c.value.append(value)
            c.output.append(UNKNOWN)
            c.process.append(proc)
            nd = (meta or {}).get("node")
            if meta and "node" in meta and nd is None:
                raise _Fallback
            c.node.append(nd)
            self.pos += 1
            return
        i = self.open.pop(proc, None)
        if i is None:
            if not self.chunk or proc in self.invoked:
                raise _Fallback
            self.orphans.append((proc, typ, f, value if typ == "ok" else None, self.pos))
            self.pos += typ == "ok"
            return
        if c.f[i] != f:
            raise _Fallback
        if typ == "ok":
            c.output[i] = value
            c.ret[i] = self.pos
            self.pos += 1
        elif typ == "fail":
            c.ret[i] = -2
            c.dropped += 1

    def _finish(self) -> Columns:
        return self.cols


# Positions of (type, f, key, value, process, time, node) in each shape's groups.
_SYNTH_ORDER = None  # already so
_EXPORT_ORDER = (2, 3, 4, 5, 1, 0, 6)
