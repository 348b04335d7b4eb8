"""The wrapped-payload format: layout, tamper detection, nonce uniqueness."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from node import sidecar
from node.envelope import (
    HEADER_LEN,
    NONCE_LEN,
    OVERHEAD,
    NonceExhaustedError,
    NonceSource,
    UnwrapError,
    is_wrapped_shape,
    make_nonce,
    parse_header,
    unwrap,
    wrap,
)
from node.payload import lease_payload, user_payload

DEK1 = bytes(range(32))
DEK2 = bytes(range(100, 132))
KEYS = {1: DEK1, 7: DEK2}


def lookup(key_id: int) -> bytes | None:
    return KEYS.get(key_id)


def nonce(counter: int = 1) -> bytes:
    return make_nonce(3, 9, counter)


def test_overhead_and_layout_offsets() -> None:
    assert OVERHEAD == 34 and HEADER_LEN == 18
    pt = b"hello, raft"
    n = nonce(0x0102030405060708)
    out = wrap(DEK2, 0xA1B2C3D4 & 0x7FFFFFFF, n, pt)
    assert len(out) == len(pt) + 34
    assert out[0] == 0x01
    assert out[1] == 0x00
    assert out[2:6] == (0xA1B2C3D4 & 0x7FFFFFFF).to_bytes(4, "big")
    assert out[6:18] == n
    assert n == struct.pack(">HHQ", 3, 9, 0x0102030405060708)
    # Independent decryption pins the AAD to exactly b"R" | version | key_id.
    aad = b"R" + b"\x01" + out[2:6]
    assert len(aad) == 6
    assert AESGCM(DEK2).decrypt(n, out[18:], aad) == pt
    with pytest.raises(Exception):  # noqa: B017 - any AAD other than the documented one
        AESGCM(DEK2).decrypt(n, out[18:], b"R\x01")


def test_empty_plaintext_is_exactly_overhead() -> None:
    out = wrap(DEK1, 1, nonce(), b"")
    assert len(out) == OVERHEAD
    assert unwrap(lookup, out) == b""


@settings(max_examples=150, deadline=None)
@given(
    pt=st.binary(min_size=0, max_size=4096),
    key_id=st.sampled_from(sorted(KEYS)),
    counter=st.integers(1, 2**64 - 1),
)
def test_round_trip(pt: bytes, key_id: int, counter: int) -> None:
    out = wrap(KEYS[key_id], key_id, nonce(counter), pt)
    assert len(out) == len(pt) + OVERHEAD
    assert parse_header(out) == (key_id, nonce(counter))
    assert is_wrapped_shape(out)
    assert unwrap(lookup, out) == pt
    if len(pt) >= 8:
        assert pt not in out  # the payload really is encrypted


def test_round_trip_real_payloads() -> None:
    for pt in (user_payload({"f": "write", "key": "k", "value": 5}), lease_payload("n1", 4)):
        assert unwrap(lookup, wrap(DEK1, 1, nonce(), pt)) == pt


def expected_code(pos: int) -> str:
    if pos == 0:
        return "bad-version"
    if pos == 1:
        return "bad-flag"
    if 2 <= pos < 6:
        return "unknown-key"  # 1 ^ 0xff in any key-id byte names no installed key
    return "auth-failed"


def test_flipping_any_single_byte_is_detected() -> None:
    pt = user_payload({"f": "write", "key": "x", "value": 123456})
    out = wrap(DEK1, 1, nonce(), pt)
    for pos in range(len(out)):
        bad = bytearray(out)
        bad[pos] ^= 0xFF
        with pytest.raises(UnwrapError) as ei:
            unwrap(lookup, bytes(bad))
        assert ei.value.code == expected_code(pos), pos


@settings(max_examples=200, deadline=None)
@given(data=st.data(), pt=st.binary(max_size=64))
def test_any_single_bit_or_byte_change_is_detected(data: st.DataObject, pt: bytes) -> None:
    out = wrap(DEK1, 1, nonce(), pt)
    pos = data.draw(st.integers(0, len(out) - 1))
    mask = data.draw(st.integers(1, 255))
    bad = bytearray(out)
    bad[pos] ^= mask
    with pytest.raises(UnwrapError):
        unwrap(lambda k: {1: DEK1, 1 ^ mask: DEK1}.get(k), bytes(bad))


def test_truncation_and_extension_are_detected() -> None:
    out = wrap(DEK1, 1, nonce(), b"0123456789")
    for n in range(len(out)):
        with pytest.raises(UnwrapError) as ei:
            unwrap(lookup, out[:n])
        assert ei.value.code == ("too-short" if n < OVERHEAD else "auth-failed")
    with pytest.raises(UnwrapError) as ei:
        unwrap(lookup, out + b"\x00")
    assert ei.value.code == "auth-failed"


def test_rewritten_key_id_fails_authentication() -> None:
    # Both ids resolve to the same DEK: only the AAD can notice the rewrite.
    out = wrap(DEK1, 1, nonce(), b"payload")
    bad = out[:2] + (2).to_bytes(4, "big") + out[6:]
    with pytest.raises(UnwrapError) as ei:
        unwrap(lambda k: DEK1 if k in (1, 2) else None, bad)
    assert ei.value.code == "auth-failed"
    assert ei.value.key_id == 2
    assert "authentication failed" in str(ei.value)


def test_rewritten_version_fails() -> None:
    out = wrap(DEK1, 1, nonce(), b"payload")
    with pytest.raises(UnwrapError) as ei:
        unwrap(lookup, b"\x02" + out[1:])
    assert ei.value.code == "bad-version"
    with pytest.raises(UnwrapError) as ei:
        unwrap(lookup, out[:1] + b"\x01" + out[2:])
    assert ei.value.code == "bad-flag"


def test_wrong_key_and_unknown_key() -> None:
    out = wrap(DEK1, 1, nonce(), b"payload")
    with pytest.raises(UnwrapError) as ei:
        unwrap(lambda k: DEK2, out)
    assert ei.value.code == "auth-failed"
    with pytest.raises(UnwrapError) as ei:
        unwrap(lambda k: None, out)
    assert ei.value.code == "unknown-key"
    assert str(ei.value) == "unknown key id 1"
    zero = out[:2] + bytes(4) + out[6:]
    with pytest.raises(UnwrapError) as ei:
        unwrap(lambda k: DEK1, zero)  # id 0 means "no key", even if lookup says otherwise
    assert ei.value.code == "unknown-key"
    with pytest.raises(UnwrapError) as ei:
        unwrap(lambda k: DEK1[:16], out)  # an AES-128 key must not be accepted quietly
    assert ei.value.code == "bad-key"


def test_error_messages_do_not_leak_key_bytes() -> None:
    out = wrap(DEK1, 1, nonce(), b"payload")
    with pytest.raises(UnwrapError) as ei:
        unwrap(lambda k: DEK2, out)
    text = str(ei.value) + repr(ei.value)
    assert DEK2.hex() not in text and DEK1.hex() not in text


def test_cleartext_payloads_are_not_wrapped_shape() -> None:
    for pt in (user_payload({"f": "read", "key": "k" * 40}), lease_payload("n1", 2) * 3):
        assert not is_wrapped_shape(pt)
        assert parse_header(pt) is None
    assert parse_header(b"\x01\x00" + bytes(31)) is None  # one byte short


def test_wrap_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        wrap(DEK1[:16], 1, nonce(), b"x")
    with pytest.raises(ValueError):
        wrap(DEK1, 0, nonce(), b"x")
    with pytest.raises(ValueError):
        wrap(DEK1, 2**32, nonce(), b"x")
    with pytest.raises(ValueError):
        wrap(DEK1, 1, bytes(NONCE_LEN - 1), b"x")


def test_nonces_unique_within_a_process() -> None:
    src = NonceSource(5, 3)
    seen = [src.next() for _ in range(50_000)]
    assert len(set(seen)) == len(seen)
    assert seen[0] == struct.pack(">HHQ", 5, 3, 1)  # counter starts at 1
    assert all(len(n) == NONCE_LEN for n in seen[:10])


def test_nonce_source_refuses_unbumped_epoch_and_bad_ids() -> None:
    with pytest.raises(ValueError):
        NonceSource(1, 0)
    with pytest.raises(ValueError):
        NonceSource(1, 0x10000)
    with pytest.raises(ValueError):
        NonceSource(0x10000, 1)


def test_counter_overflow_raises() -> None:
    src = NonceSource(1, 1, start=2**64 - 2)
    assert src.next()[-8:] == (2**64 - 2).to_bytes(8, "big")
    assert src.next()[-8:] == (2**64 - 1).to_bytes(8, "big")
    with pytest.raises(NonceExhaustedError):
        src.next()
    with pytest.raises(NonceExhaustedError):  # and stays exhausted
        src.next()


def test_nonces_unique_across_restarts_and_nodes(tmp_path) -> None:
    """Simulated restarts: each start bumps the durable epoch, then draws fresh nonces."""
    seen: set[tuple[int, bytes]] = set()
    total = 0
    for node_num in (1, 2, 3):
        data_dir = tmp_path / f"n{node_num}"
        data_dir.mkdir()
        for _restart in range(15):
            epoch = sidecar.bump_epoch(data_dir)
            src = NonceSource(node_num, epoch)
            for i in range(40):
                key_id = 1 if i % 2 else 7
                out = wrap(KEYS[key_id], key_id, src.next(), b"v%d" % i)
                header = parse_header(out)
                assert header is not None
                seen.add(header)
                total += 1
    assert len(seen) == total
