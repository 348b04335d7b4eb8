"""A small EDN reader and writer: enough of the format for Jepsen histories.

Reading (`iter_forms`, `loads_all`) supports maps, vectors, lists, sets, keywords, symbols, strings with escapes,
integers (with N suffix), floats, ratios as floats, characters, nil/true/false,
`;` comments, `#_` discard, commas as whitespace, and tagged literals (the tag is
dropped, the value kept). Keywords become `Keyword`, a `str` subclass, so `:ok` and
"ok" compare equal, which is what a history reader wants.

Writing (`dumps`, `dumps_op`) covers what `cutover export` writes: nil, booleans,
numbers, strings, vectors and maps, with keyword keys and keyword `:type` / `:f`.
Reader and writer sit side by side so one file says what "our EDN" is.

Why not the `edn_format` package: on a 100,000-op history this reader is several
times faster (`cutover bench edn`; the figure is in docs/checker.md), and a history is
the biggest thing the checker reads.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

from .history import NAN


class Keyword(str):
    """An EDN keyword, without its leading colon."""

    __slots__ = ()

    def __repr__(self) -> str:
        return ":" + str.__str__(self)


class Symbol(str):
    """An EDN symbol."""

    __slots__ = ()


class EdnError(ValueError):
    """Malformed EDN, or EDN beyond the reader's limits; carries the 1-based line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


# Limits that keep a hostile file from costing more than its size in memory, or a
# traceback: collections nest at most MAX_DEPTH deep (a Jepsen op is 3 or 4 levels), one
# token (a string, a symbol, a number) is at most MAX_TOKEN_BYTES long, and an integer
# has at most MAX_INT_DIGITS digits (Python's own limit for converting text).
MAX_DEPTH = 100
MAX_TOKEN_BYTES = 16 << 20
MAX_INT_DIGITS = 4300

_LIM = MAX_TOKEN_BYTES - 1
# One token per match, after any whitespace and commas. Every repetition is a single
# character class (constant memory in `re`, whatever the length) and bounded by the
# token limit; strings and comments are scanned by `_string` and `bytes.find`.
_TOKEN = re.compile(rb"""[\s,]*(?:
    (?P<atom>[^\s,\[\]{}()";\\\#][^\s,\[\]{}()";]{0,%d})
  | (?P<open>[\[{(]|\#\{)
  | (?P<close>[\]})])
  | (?P<str>")
  | (?P<comment>;)
  | (?P<discard>\#_)
  | (?P<special>\#\#(?:NaN|-Inf|Inf)(?![^\s,\[\]{}()";]))
  | (?P<tag>\#[A-Za-z][^\s,\[\]{}()"]{0,%d})
  | (?P<char>\\(?:newline|space|tab|return|u[0-9a-fA-F]{4}|[\x00-\x7f]|[\xc0-\xff][\x80-\xbf]{0,3}))
  | (?P<atom2>[^\s,\[\]{}()";]{1,%d})
  | (?P<end>\Z)
)""" % (_LIM, _LIM, MAX_TOKEN_BYTES), re.VERBOSE | re.DOTALL)
_STR_STOP = re.compile(rb'["\\]')
_FLOAT = re.compile(rb"[+-]?\d+(\.\d*)?([eE][+-]?\d+)?M?\Z")
_RATIO = re.compile(rb"([+-]?\d+)/(\d+)\Z")
_INT = re.compile(rb"[+-]?\d+N?\Z")
_ESC = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "b": "\b", "f": "\f",
        "/": "/"}
_CHARS = {b"newline": "\n", b"space": " ", b"tab": "\t", b"return": "\r"}
_CLOSE = {b"[": b"]", b"(": b")", b"{": b"}", b"#{": b"}"}
_INF = float("inf")
_SPECIAL = {b"##NaN": NAN, b"##Inf": _INF, b"##-Inf": -_INF}
_CACHE_MAX = 100_000  # interned keywords, symbols and short strings (a history repeats them)
_BLOCK = 8 << 20  # bytes read at a time from a file
_KEEP = MAX_TOKEN_BYTES + 64  # buffered ahead of the next token, so no token is cut


class _Reader:
    """One pass over one document. Iterative: the collections being read are a stack,
    so depth costs no Python recursion (a 100,000-deep file is an error, not a crash)."""

    def __init__(self, data: bytes, fh: BinaryIO | None = None) -> None:
        self.data = data
        self.fh = fh  # more input to read in blocks, or None: `data` is all of it
        self.eof = fh is None
        self.line_pos = 0  # a position in `data` whose line is `line_no`
        self.line_no = 1
        self.atoms: dict[bytes, Any] = {b"nil": None, b"true": True, b"false": False}
        self.strings: dict[bytes, str] = {}

    def refill(self, pos: int) -> int:
        """Drop what was read, append the next block; returns where `pos` is now.
        Called between tokens whenever less than a whole token's limit is buffered, so
        no token is ever cut in two and a file costs a bounded buffer, not its size."""
        assert self.fh is not None
        self.line_no += self.data.count(b"\n", self.line_pos, pos)
        self.line_pos = 0
        blocks = [self.data[pos:]]
        have = len(blocks[0])
        while True:  # at least one block: a caller may be waiting for more
            block = self.fh.read(_BLOCK)
            if not block:
                self.eof = True
                break
            blocks.append(block)
            have += len(block)
            if have >= _KEEP + _BLOCK:
                break
        self.data = b"".join(blocks)
        return 0

    def line_at(self, pos: int) -> int:
        """The line of byte `pos` of the buffer; positions are asked for in increasing
        order, so counting newlines from the last answer keeps the pass linear."""
        self.line_no += self.data.count(b"\n", self.line_pos, pos)
        self.line_pos = pos
        return self.line_no

    def error(self, pos: int, message: str) -> EdnError:
        return EdnError(self.line_at(pos), message)

    # -- tokens -------------------------------------------------------------------

    def atom(self, tok: bytes, pos: int) -> Any:
        """A symbol, keyword or number (nil/true/false and repeated atoms are cached)."""
        if len(tok) >= MAX_TOKEN_BYTES:
            raise self.error(pos, f"a token longer than {MAX_TOKEN_BYTES - 1} bytes (the "
                                  f"reader's limit for one token)")
        v = self.atoms.get(tok, _MISSING)
        if v is not _MISSING:
            return v
        c = tok[0]
        if c == 58:  # ':'
            if len(tok) == 1:
                raise self.error(pos, "a lone ':' is not a keyword")
            v = Keyword(self.text(tok[1:], pos))
        elif 48 <= c <= 57 or (c in (43, 45) and len(tok) > 1 and 48 <= tok[1] <= 57):
            return self.number(tok, pos)
        else:
            v = Symbol(self.text(tok, pos))
        if len(self.atoms) < _CACHE_MAX:
            self.atoms[tok] = v
        return v

    def number(self, tok: bytes, pos: int) -> Any:
        if tok.isdigit() and len(tok) <= MAX_INT_DIGITS:
            return int(tok)
        if _INT.match(tok):
            digits = len(tok.rstrip(b"N").lstrip(b"+-"))
            if digits > MAX_INT_DIGITS:
                raise self.error(pos, f"an integer of {digits} digits (the limit is "
                                      f"{MAX_INT_DIGITS})")
            return int(tok.rstrip(b"N"))
        if _FLOAT.match(tok):
            return float(tok.rstrip(b"M"))
        m = _RATIO.match(tok)
        if m:
            a, b = m.groups()
            if max(len(a), len(b)) > MAX_INT_DIGITS:
                raise self.error(pos, f"a ratio with more than {MAX_INT_DIGITS} digits")
            if int(b) == 0:
                raise self.error(pos, f"ratio {tok.decode()} divides by zero")
            try:
                return int(a) / int(b)
            except OverflowError:
                raise self.error(pos, f"ratio {tok.decode()} does not fit a float") from None
        raise self.error(pos, f"malformed number {self.text(tok, pos)!r}")

    def text(self, raw: bytes, pos: int) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(pos, "text that is not valid UTF-8") from None

    def string(self, pos: int) -> tuple[str, int]:
        """The string whose opening quote ends at `pos`, and the position after it."""
        data = self.data
        limit = min(len(data), pos + MAX_TOKEN_BYTES + 1)
        i = pos
        escaped = False
        while True:
            m = _STR_STOP.search(data, i, limit)
            if m is None:
                if limit < len(data):
                    raise self.error(pos, f"a string longer than {MAX_TOKEN_BYTES} bytes "
                                          f"(the reader's limit for one token)")
                raise self.error(pos, "a string that is never closed")
            j = m.start()
            if data[j] == 34:  # '"'
                break
            escaped = True
            i = j + 2
        raw = data[pos:j]
        if not escaped and len(raw) <= 32:
            s = self.strings.get(raw)
            if s is None:
                s = self.text(raw, pos)
                if len(self.strings) < _CACHE_MAX:
                    self.strings[raw] = s
            return s, j + 1
        s = self.text(raw, pos)
        return (_unescape(s, lambda msg: self.error(pos, msg)) if escaped else s), j + 1

    def char(self, tok: bytes, pos: int) -> str:
        body = tok[1:]
        if body in _CHARS:
            return _CHARS[body]
        if len(body) == 5 and body[:1] == b"u":
            cp = int(body[1:], 16)
            if 0xD800 <= cp <= 0xDFFF:
                raise self.error(pos, f"character \\{body.decode()} is a lone surrogate")
            return chr(cp)
        return self.text(body, pos)

    # -- forms --------------------------------------------------------------------

    # Kept whole on purpose: the reader's hot loop (one regex match per token, locals only) over histories of millions of tokens.
    def forms(self, stream_first: bool = False) -> Iterator[tuple[int, Any]]:
        """(line, form) for each top-level form. With `stream_first`, a first form that
        is a vector or list is not built: its elements are yielded one by one as they
        are read (a whole history in one vector then costs one op at a time)."""
        data = self.data
        match = _TOKEN.match
        atom = self.atom
        atoms_get = self.atoms.get
        stack: list[list[Any]] = []  # frames: [items, close, start line, prefixes, opener]
        cur: list[Any] | None = None  # stack[-1]
        top_prefixes: list[str] = []
        streaming = None  # the frame whose elements are yielded
        first = True
        pos = 0
        refill_at = -1 if self.eof else len(data) - _KEEP
        while True:
            if pos > refill_at and not self.eof:
                pos = self.refill(pos)
                data = self.data
                refill_at = len(data) - _KEEP if not self.eof else len(data) + 1
            m = match(data, pos)
            if m is None:
                raise self.error(pos, f"unexpected character {data[pos:pos + 1]!r}")
            kind = m.lastgroup
            pos = m.end()
            if kind == "atom":
                tok = m.group(1)
                value = atoms_get(tok, _MISSING)
                if value is _MISSING:
                    value = atom(tok, m.start(1))
                if cur is not None and cur is not streaming and not cur[3]:
                    cur[0].append(value)  # the common case: a scalar inside a collection
                    continue
                start = m.start(1)
            elif kind == "str":
                start = m.start(kind)
                value, pos = self.string(pos)
                if cur is not None and cur is not streaming and not cur[3]:
                    cur[0].append(value)
                    continue
            elif kind == "open":
                start = m.start(kind)
                if len(stack) >= MAX_DEPTH:
                    raise self.error(start, f"collections nested deeper than {MAX_DEPTH} "
                                            f"(the reader's limit)")
                opener = m.group(kind)
                cur = [[], _CLOSE[opener], self.line_at(start), None, opener]
                stack.append(cur)
                if stream_first and first and len(stack) == 1 and opener in (b"[", b"("):
                    streaming = cur
                first = False
                continue
            elif kind == "close":
                start = m.start(kind)
                tok = m.group(kind)
                if not stack:
                    raise self.error(start, f"unexpected {tok.decode()!r}")
                frame = stack.pop()
                cur = stack[-1] if stack else None
                items, close, fstart, prefixes, opener = frame
                if tok != close:
                    raise self.error(start, f"expected {close.decode()!r} to close "
                                            f"{opener.decode()!r} from line {fstart}, "
                                            f"found {tok.decode()!r}")
                if prefixes:
                    raise self.error(start, "expected a form after a tag or #_, found "
                                            f"{tok.decode()!r}")
                if frame is streaming:
                    streaming = None
                    continue  # its elements are out already; it is not a form itself
                start = -fstart  # negative: already a line, not a position
                if opener == b"{":
                    if len(items) % 2:
                        raise EdnError(fstart, "a map needs an even number of forms")
                    it = iter(items)
                    try:
                        value = dict(zip(it, it, strict=True))
                    except TypeError:  # a collection as a key: keys must hash
                        it = iter(items)
                        value = {_hashable(k): v for k, v in zip(it, it, strict=True)}
                else:
                    value = items
            elif kind == "atom2":  # an atom that starts like a dispatch (`#1`)
                start = m.start(kind)
                tok = m.group(kind)
                if len(tok) >= MAX_TOKEN_BYTES:
                    raise self.error(start, f"a token longer than {MAX_TOKEN_BYTES - 1} "
                                            f"bytes (the reader's limit for one token)")
                value = atom(tok, start)
            elif kind == "comment":
                nl = data.find(b"\n", pos)
                while nl < 0 and not self.eof:
                    pos = self.refill(pos)
                    data = self.data
                    refill_at = len(data) - _KEEP if not self.eof else len(data) + 1
                    nl = data.find(b"\n", pos)
                pos = len(data) if nl < 0 else nl
                continue
            elif kind == "discard" or kind == "tag":
                p = "d" if kind == "discard" else "t"
                if cur is not None:
                    if cur[3] is None:
                        cur[3] = []
                    cur[3].append(p)
                else:
                    top_prefixes.append(p)
                first = False if p == "t" else first
                continue
            elif kind == "special":
                start = m.start(kind)
                value = _SPECIAL[m.group(kind)]
            elif kind == "char":
                start = m.start(kind)
                value = self.char(m.group(kind), start)
            else:  # the end of the buffer
                if not self.eof:
                    refill_at = -1  # whitespace ran to the end of the buffer: read on
                    continue
                if cur is not None:
                    raise EdnError(cur[2], f"{cur[4].decode()!r} opened here is never closed")
                if top_prefixes:
                    raise self.error(pos, "expected a form, found the end of the input")
                return
            # A form is complete: a tag keeps it, a #_ drops it.
            prefixes = cur[3] if cur is not None else top_prefixes
            if prefixes:
                while prefixes and prefixes[-1] == "t":
                    prefixes.pop()
                if prefixes and prefixes[-1] == "d":
                    prefixes.pop()
                    continue
            if cur is not None and cur is not streaming:
                cur[0].append(value)
            else:
                if cur is None:
                    first = False
                yield (-start if start < 0 else self.line_at(start)), value


_MISSING = object()


def _hashable(k: Any) -> Any:
    """A map key that is itself a collection, as a value that hashes (lists become
    tuples, maps sorted item tuples); depth is bounded by the reader's limit."""
    if isinstance(k, list):
        return tuple(_hashable(x) for x in k)
    if isinstance(k, dict):
        return tuple(sorted(((_hashable(a), _hashable(b)) for a, b in k.items()), key=repr))
    return k


def _unescape(s: str, error: Any) -> str:
    out = []
    i = 0
    n = len(s)
    while i < n:
        j = s.find("\\", i)
        if j < 0:
            out.append(s[i:])
            break
        out.append(s[i:j])
        if j + 1 >= n:
            raise error("a string ending in a lone backslash")
        c = s[j + 1]
        if c == "u":
            cp = _hex4(s, j + 2, error)
            i = j + 6
            if 0xD800 <= cp <= 0xDBFF and s.startswith("\\u", i):
                lo = _hex4(s, i + 2, error)
                if 0xDC00 <= lo <= 0xDFFF:
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                    i += 6
            if 0xD800 <= cp <= 0xDFFF:
                raise error(f"\\u{cp:04x} in a string is a lone surrogate")
            out.append(chr(cp))
            continue
        out.append(_ESC.get(c, c))
        i = j + 2
    return "".join(out)


def _hex4(s: str, i: int, error: Any) -> int:
    h = s[i:i + 4]
    if len(h) != 4 or not all(c in "0123456789abcdefABCDEF" for c in h):
        raise error(f"\\u{h} is not a \\u escape (four hex digits)")
    return int(h, 16)


def _data(text: str | bytes) -> bytes:
    return text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)


def iter_forms(text: str | bytes) -> Iterator[tuple[int, Any]]:
    """Yield (line, form) for each top-level form of `text`."""
    return _Reader(_data(text)).forms()


def iter_history(source: str | bytes | BinaryIO) -> Iterator[tuple[int, Any]]:
    """(line, op) for each op of a history: a vector (or list) of ops, whose ops are
    yielded as they are read, or top-level forms one after another (one per line, as
    Jepsen writes `history.edn`). `source` is the text, or a binary file read in blocks
    (memory: one block and one token ahead, plus the ops the caller keeps)."""
    if isinstance(source, str | bytes):
        return _Reader(_data(source)).forms(stream_first=True)
    return _Reader(b"", source).forms(stream_first=True)


def loads_all(text: str | bytes) -> list[Any]:
    """Every top-level form of `text`."""
    return [f for _, f in iter_forms(text)]


# --------------------------------------------------------------------------- writing

_KEYWORD = re.compile(r"^[A-Za-z*+!_?<>=][\w*+!?<>=.\-]*$")
_KEYWORD_FIELDS = ("type", "f")


def dumps(v: Any) -> str:
    """A value as EDN (the subset Jepsen histories use); anything else as a string."""
    if v is None:
        return "nil"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, float):
        if v != v:
            return "##NaN"
        if v in (_INF, -_INF):
            return "##Inf" if v > 0 else "##-Inf"
        return repr(v)
    if isinstance(v, int):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list | tuple):
        return "[" + " ".join(dumps(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key_text(k)} {dumps(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v))


def _key_text(k: Any) -> str:
    """Map keys as keywords when they can be one (`:key_id`), else as values."""
    return f":{k}" if isinstance(k, str) and _KEYWORD.match(k) else dumps(k)


def dumps_op(ev: Mapping[str, Any]) -> str:
    """One Jepsen op map: `:type` and `:f` are keywords, the process `:nemesis` too,
    and a kv op's key goes in `:key` (our `lin --model kv` and Jepsen's newer
    histories) while `:value` stays the op's own value."""
    parts = []
    for k, v in ev.items():
        if (k in _KEYWORD_FIELDS or (k == "process" and v == "nemesis")) \
                and _KEYWORD.match(str(v)):
            parts.append(f":{k} :{v}")
        else:
            parts.append(f":{k} {dumps(v)}")
    return "{" + ", ".join(parts) + "}"
