"""I1's byte half: the workload's plaintext tokens, looked for in the nodes' files.

The structural half trusts the node's own formats; this half does not: it looks for the
workload's plaintext tokens written after T (monotonic ``time_ns``, strictly greater than
T) in the raw bytes, so cleartext that reached the disk by a path the formats do not
describe is still found. Where it looks: the bytes of every WAL entry record whose index
is above C (truncated ones too), every torn WAL tail when C != 0 (its index is unknown),
the data region of every snapshot file whose index is above C (unless the caller
passes ``scan_snapshot_data=False``), and every file of the elastickv profile's durable
KV store (``fsm/``, `node.fsmstore`), whose values that profile's storage envelope seals
(docs/protocol.md, row 11; a fixed-profile node has no such directory). Tokens shorter than `MIN_TOKEN_LEN` bytes are
ignored: random ciphertext would contain them by chance. Leftover ``*.tmp`` snapshot
files are not scanned (start-up prunes them).
"""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from node.fsmstore import FSM_DIR
from node.types import Entry
from node.wal import WalRecord

from .entries import DecodedLog, decode, entry_key
from .nodes import Node
from .report import Collector

MIN_TOKEN_LEN = 6
PATTERN_PREFIX = 256  # a match of a token's first 256 bytes counts as a match


def scan_nodes(nodes: list[Node], decoded: DecodedLog, cut: int, cut_time: int | None,
               tokens: Iterable[tuple[bytes, int]], scan_snapshots: bool, col: Collector,
               notes: list[str]) -> dict[str, int]:
    """Add a finding to `col` for every token hit; returns what was scanned (I1's
    ``byte_scan`` summary)."""
    toks, considered, short = _tokens_after(tokens, cut, cut_time)
    scan = {"tokens_after_cutover": considered, "tokens_too_short": short,
            "wal_records_scanned": 0, "wal_bytes_scanned": 0, "snapshots_scanned": 0,
            "hits": 0}
    if short:
        notes.append(f"{short} post-cutover token(s) shorter than {MIN_TOKEN_LEN} bytes "
                     f"were not looked for")
    if toks:
        pat = token_pattern(toks)
        for n in nodes:
            hits = _Hits(n, cut_time, toks, scan, col)
            _scan_wal(hits, n, decoded, cut, pat)
            if scan_snapshots:
                _scan_snapshots(hits, n, cut, pat)
            _scan_store(hits, n, pat)
    return scan


def _tokens_after(tokens: Iterable[tuple[bytes, int]], cut: int,
                  cut_time: int | None) -> tuple[dict[bytes, int], int, int]:
    """(pattern prefix -> earliest write time, tokens considered, tokens too short) of
    the tokens written after the cutover (all of them when T is unknown)."""
    toks: dict[bytes, int] = {}
    short = considered = 0
    for tok, t in tokens:
        tok = tok.encode() if isinstance(tok, str) else bytes(tok)
        if not cut or (cut_time is not None and t <= cut_time):
            continue
        considered += 1
        if len(tok) < MIN_TOKEN_LEN:
            short += 1
            continue
        key = tok[:PATTERN_PREFIX]
        toks[key] = min(t, toks.get(key, t))
    return toks, considered, short


def token_pattern(tokens: Iterable[bytes]) -> re.Pattern[bytes]:
    """One regex for all tokens, shaped as a trie so that scanning stays linear."""
    trie: dict[int, Any] = {}
    for tok in tokens:
        cur = trie
        for b in tok:
            cur = cur.setdefault(b, {})
        cur[-1] = {}

    def emit(node: dict[int, Any]) -> bytes:
        if -1 in node:  # a token ends here: that is already a match
            return b""
        alts = [re.escape(bytes([b])) + emit(node[b]) for b in sorted(node)]
        return alts[0] if len(alts) == 1 else b"(?:" + b"|".join(alts) + b")"

    return re.compile(emit(trie), re.DOTALL)


class _Hits:
    """Turns a match in one node's bytes into an I1 finding, counted in the summary."""

    def __init__(self, n: Node, cut_time: int | None, toks: dict[bytes, int],
                 scan: dict[str, int], col: Collector) -> None:
        self.n, self.cut_time, self.toks, self.scan, self.col = n, cut_time, toks, scan, col

    def hit(self, m: re.Match[bytes], where: str, index: int | None = None,
            term: int | None = None, opcode: int | None = None, **extra: Any) -> None:
        self.scan["hits"] += 1
        self.col.result.nodes[self.n.name]["byte_hits"] += 1
        tok = m.group(0)
        t = self.toks.get(tok)
        when = ("after the cutover" if self.cut_time is None
                else f"at {t}, after the cutover at {self.cut_time}")
        shown = tok[:64].decode("utf-8", "replace")
        self.col.add(self.n.name, index, term, opcode,
                     f"plaintext token {shown!r} (written {when}) in {where}", half="bytes",
                     token=shown, token_time_ns=t, **extra)


def _scan_wal(hits: _Hits, n: Node, decoded: DecodedLog, cut: int,
              pat: re.Pattern[bytes]) -> None:
    """Every entry record above C, durable or not, and every torn tail, file by file."""
    by_file: dict[Path, list[WalRecord]] = defaultdict(list)
    for rec in n.records:
        if rec.value.index > cut:  # type: ignore[union-attr]
            by_file[rec.file].append(rec)
    torn_by_file = {t.file: t for t in n.torn}
    scan = hits.scan
    for path in sorted(set(by_file) | set(torn_by_file)):
        try:
            data = path.read_bytes()
        except OSError as err:
            hits.col.add(n.name, None, None, None, f"cannot read {n.rel(path)} for the byte "
                         f"scan: {err.strerror}", half="bytes")
            continue
        for rec in by_file.get(path, ()):
            e: Entry = rec.value  # type: ignore[assignment]
            scan["wal_records_scanned"] += 1
            scan["wal_bytes_scanned"] += rec.length
            for m in pat.finditer(data, rec.offset, rec.offset + rec.length):
                d = decoded.get(entry_key(e)) or decode(e)
                durable = n.log.get(e.index) is rec
                state = "durable" if durable else "not in the durable log"
                hits.hit(m, f"the WAL record of entry {e.index} ({state})", index=e.index,
                         term=e.term, opcode=d.opcode, file=n.rel(path), offset=m.start(),
                         durable=durable)
        torn = torn_by_file.get(path)
        if torn is not None:
            scan["wal_bytes_scanned"] += len(data) - torn.offset
            for m in pat.finditer(data, torn.offset):
                hits.hit(m, "a torn WAL tail", file=n.rel(path), offset=m.start())


def _scan_snapshots(hits: _Hits, n: Node, cut: int, pat: re.Pattern[bytes]) -> None:
    """The data region of every snapshot above C (the KV image, cleartext unless the
    node wraps it)."""
    for snap in n.snapshots:
        s = snap.header.index
        if s <= cut:
            continue
        hits.scan["snapshots_scanned"] += 1
        for m in pat.finditer(snap.data):
            hits.hit(m, f"the data region of snapshot {s}", index=s, term=snap.header.term,
                     file=n.rel(snap.path) if snap.path else None,
                     offset=snap.data_offset + m.start())


def _scan_store(hits: _Hits, n: Node, pat: re.Pattern[bytes]) -> None:
    """The elastickv profile's durable KV store, every file of it (the base and its
    journals): its values rest there sealed once the storage envelope is on, which the
    harness turns on right after the bootstrap, long before T. A token written after T
    in cleartext there is a node that stores values without the envelope."""
    d = Path(n.path) / FSM_DIR
    if not d.is_dir():
        return
    for p in sorted(d.iterdir()):
        if not p.is_file() or p.name.endswith(".tmp"):
            continue
        data = p.read_bytes()
        hits.scan["store_files_scanned"] = hits.scan.get("store_files_scanned", 0) + 1
        for m in pat.finditer(data):
            hits.hit(m, f"the durable KV store file {p.name}", file=n.rel(p),
                     offset=m.start())
