"""What each distinct log entry is: a no-op, cleartext, an envelope or malformed.

A committed entry sits on every replica; decoding it once per distinct (index, term,
kind, data) keeps a five-node check from opening every envelope five times, and gives
every invariant the same answer about one entry. The key learning (`keys.py`) fills in
`inner` and `error` of the envelopes that open, so the verdicts of I1, I4, I6 and I7 all
rest on one attempt per entry.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from node import payload as pl
from node.encstate import as_int
from node.envelope import parse_header
from node.types import Entry, EntryKind

from .nodes import Node

EntryKey = tuple[int, int, int, bytes]  # (index, term, kind, data): one distinct entry


@dataclass(slots=True)
class Decoded:
    """One distinct entry (index, term, kind, data) and what it turned out to be."""

    status: str  # noop | clear | wrapped | malformed
    payload: bytes = b""  # the (possibly wrapped) payload after the proposal envelope
    key_id: int | None = None
    nonce: bytes | None = None
    inner: bytes | None = None  # plaintext of a wrapped payload that opened
    error: str | None = None  # why it is malformed / does not open

    @property
    def cleartext(self) -> bytes | None:
        if self.status == "clear":
            return self.payload
        return self.inner

    @property
    def opcode(self) -> int | None:
        p = self.cleartext
        return p[0] if p else None


DecodedLog = dict[EntryKey, Decoded]


def decode(e: Entry) -> Decoded:
    """An entry as found on disk, before any key is tried on it."""
    if e.kind is not EntryKind.NORMAL or not e.data:
        return Decoded("noop")  # no-ops carry no payload and are never wrapped
    try:
        _, payload = pl.decode_proposal(e.data)
    except pl.PayloadError as err:
        return Decoded("malformed", error=str(err))
    if not payload:
        return Decoded("malformed", error="empty payload")
    head = parse_header(payload)
    if head is None:
        return Decoded("clear", payload)
    return Decoded("wrapped", payload, head[0], head[1])


def entry_key(e: Entry) -> EntryKey:
    return (e.index, e.term, int(e.kind), e.data)


def decode_cluster(nodes: list[Node]) -> tuple[DecodedLog, dict[EntryKey, list[str]]]:
    """Every distinct durable entry of the cluster, decoded once, and the nodes holding
    each (in node order)."""
    decoded: DecodedLog = {}
    holders: dict[EntryKey, list[str]] = defaultdict(list)
    for n in nodes:
        for rec in n.log.values():
            e: Entry = rec.value  # type: ignore[assignment]
            k = entry_key(e)
            if k not in decoded:
                decoded[k] = decode(e)
            holders[k].append(n.name)
    return decoded, holders


def op_name(p: bytes | None) -> str | None:
    """A payload's opcode as a person reads it (`rotate-dek`, `user`, ...)."""
    if not p:
        return None
    op = p[0]
    if op == pl.OP_ROTATION:
        sub = p[1] if len(p) > 1 else None
        if sub == pl.SUB_ROTATE_DEK:
            return "rotate-dek"
        if sub == pl.SUB_ENABLE_ENVELOPE:
            return "enable-raft-envelope"
        return "rotation/?" if sub is None else f"rotation/0x{sub:02x}"
    return pl.OPCODE_NAMES.get(op, f"0x{op:02x}")


def is_marker(p: bytes | None) -> bool:
    return bool(p) and len(p) >= 2 and p[0] == pl.OP_ROTATION and p[1] == pl.SUB_ENABLE_ENVELOPE


def install_of(p: bytes | None) -> tuple[int, bytes, str] | str | None:
    """(key id, wrapped DEK, purpose) of a bootstrap/rotate payload, an error, or None."""
    if not p:
        return None
    try:
        if p[0] == pl.OP_BOOTSTRAP:
            body, what = pl.decode_body(p), "bootstrap"
        elif p[0] == pl.OP_ROTATION and len(p) > 1 and p[1] == pl.SUB_ROTATE_DEK:
            body, what = pl.rotation_body(p)[1], "rotate"
        else:
            return None
    except pl.PayloadError as e:
        return str(e)
    kid = as_int(body.get("id")) if isinstance(body, dict) else None
    wrapped = body.get("wrapped") if isinstance(body, dict) else None
    if kid is None or not isinstance(wrapped, bytes):
        return f"malformed {what} body (need id and wrapped bytes)"
    return kid, wrapped, what
