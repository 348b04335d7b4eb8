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
from typing import Any


class Keyword(str):
    """An EDN keyword, without its leading colon."""

    __slots__ = ()

    def __repr__(self) -> str:
        return ":" + str.__str__(self)


class Symbol(str):
    """An EDN symbol."""

    __slots__ = ()


class EdnError(ValueError):
    """Malformed EDN; carries the 1-based line of the problem."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


_TOKEN = re.compile(r"""
    (?P<ws>[\s,]+)
  | (?P<comment>;[^\n]*)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<open>\#\{|[\[{(])
  | (?P<close>[\]})])
  | (?P<discard>\#_)
  | (?P<tag>\#[A-Za-z][^\s,\[\]{}()"]*)
  | (?P<char>\\(?:newline|space|tab|return|u[0-9a-fA-F]{4}|\S))
  | (?P<atom>[^\s,\[\]{}()";]+)
""", re.VERBOSE | re.DOTALL)

_INT = re.compile(r"[+-]?\d+N?$")
_FLOAT = re.compile(r"[+-]?\d+(\.\d*)?([eE][+-]?\d+)?M?$")
_RATIO = re.compile(r"[+-]?\d+/\d+$")
_ESC = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "b": "\b", "f": "\f"}
_CHARS = {"newline": "\n", "space": " ", "tab": "\t", "return": "\r"}
_CLOSE = {"[": "]", "(": ")", "{": "}", "#{": "}"}


def _unescape(s: str) -> str:
    if "\\" not in s:
        return s
    out = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            n = s[i + 1]
            if n == "u" and i + 5 < len(s):
                out.append(chr(int(s[i + 2:i + 6], 16)))
                i += 6
                continue
            out.append(_ESC.get(n, n))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _atom(tok: str, line: int) -> Any:
    if tok == "nil":
        return None
    if tok == "true":
        return True
    if tok == "false":
        return False
    if tok[0] == ":":
        if len(tok) == 1:
            raise EdnError(line, "a lone ':' is not a keyword")
        return Keyword(tok[1:])
    if _INT.match(tok):
        return int(tok.rstrip("N"))
    if _FLOAT.match(tok):
        return float(tok.rstrip("M"))
    if _RATIO.match(tok):
        a, b = tok.split("/")
        return int(a) / int(b)
    if tok[0].isdigit():
        raise EdnError(line, f"malformed number {tok!r}")
    return Symbol(tok)


def iter_forms(text: str) -> Iterator[tuple[int, Any]]:
    """Yield (line, form) for each top-level form of `text`."""
    tokens = _tokens(text)
    for line, kind, tok in tokens:
        yield line, _form(line, kind, tok, tokens)


def _tokens(text: str) -> Iterator[tuple[int, str, str]]:
    line = 1
    pos = 0
    n = len(text)
    match = _TOKEN.match
    while pos < n:
        m = match(text, pos)
        if m is None:
            raise EdnError(line, f"unexpected character {text[pos]!r}")
        kind = m.lastgroup or ""
        tok = m.group()
        if kind not in ("ws", "comment"):
            yield line, kind, tok
        line += tok.count("\n")
        pos = m.end()


def _form(line: int, kind: str, tok: str, tokens: Iterator[tuple[int, str, str]]) -> Any:
    if kind == "atom":
        return _atom(tok, line)
    if kind == "str":
        return _unescape(tok[1:-1])
    if kind == "char":
        body = tok[1:]
        if body in _CHARS:
            return _CHARS[body]
        if len(body) == 5 and body[0] == "u":
            return chr(int(body[1:], 16))
        return body
    if kind == "open":
        items = []
        close = _CLOSE[tok]
        for l2, k2, t2 in tokens:
            if k2 == "close":
                if t2 != close:
                    raise EdnError(l2, f"expected {close!r} to close {tok!r} from line {line}, "
                                       f"found {t2!r}")
                break
            if k2 == "discard":
                _next_form(l2, tokens)
                continue
            items.append(_form(l2, k2, t2, tokens))
        else:
            raise EdnError(line, f"{tok!r} opened here is never closed")
        if tok == "{":
            if len(items) % 2:
                raise EdnError(line, "a map needs an even number of forms")
            try:
                return {items[i]: items[i + 1] for i in range(0, len(items), 2)}
            except TypeError:
                return {_key(items[i]): items[i + 1] for i in range(0, len(items), 2)}
        if tok == "#{":
            return items
        return items
    if kind == "close":
        raise EdnError(line, f"unexpected {tok!r}")
    if kind == "discard":
        _next_form(line, tokens)
        return _next_form(line, tokens)
    if kind == "tag":
        return _next_form(line, tokens)
    raise EdnError(line, f"unexpected {tok!r}")


def _key(k: Any) -> Any:
    return tuple(_key(x) for x in k) if isinstance(k, list) else k


def _next_form(line: int, tokens: Iterator[tuple[int, str, str]]) -> Any:
    for l2, k2, t2 in tokens:
        return _form(l2, k2, t2, tokens)
    raise EdnError(line, "expected a form, found the end of the input")


def loads_all(text: str) -> list[Any]:
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
    if isinstance(v, int | float):
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
