"""The KEK file, DEK wrapping, the keystore, and that no key bytes ever get printed."""

from __future__ import annotations

import os
import pickle
import stat

import pytest

from node.envelope import unwrap, wrap
from node.keystore import (
    WRAPPED_DEK_LEN,
    DekUnwrapError,
    Kek,
    KeyFileError,
    Keystore,
    KeystoreError,
    WrappedKey,
    generate_dek,
    is_wrapped_dek_shape,
    load_kek,
    write_kek,
)
from tests.conftest import assert_no_key_material

KEK_BYTES = bytes(range(200, 232))


def test_write_then_load_kek(tmp_path) -> None:
    path = tmp_path / "kek"
    kek = write_kek(path, KEK_BYTES)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == KEK_BYTES
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
    loaded = load_kek(path)
    blob = kek.wrap_dek(b"\x11" * 32)
    assert loaded.unwrap_dek(blob) == b"\x11" * 32


def test_write_kek_is_0600_even_with_permissive_umask(tmp_path) -> None:
    old = os.umask(0)
    try:
        write_kek(tmp_path / "kek")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "kek").stat().st_mode) == 0o600
    assert len((tmp_path / "kek").read_bytes()) == 32


def test_write_kek_refuses_to_overwrite(tmp_path) -> None:
    path = tmp_path / "kek"
    write_kek(path, KEK_BYTES)
    with pytest.raises(KeyFileError, match="already exists"):
        write_kek(path)
    assert path.read_bytes() == KEK_BYTES
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o004])
def test_load_kek_refuses_group_or_world_access(tmp_path, mode) -> None:
    path = tmp_path / "kek"
    write_kek(path, KEK_BYTES)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="0600") as ei:
        load_kek(path)
    assert str(path) in str(ei.value)
    assert_no_key_material(str(ei.value), KEK_BYTES)


def test_load_kek_accepts_owner_only_modes(tmp_path) -> None:
    path = tmp_path / "kek"
    write_kek(path, KEK_BYTES)
    os.chmod(path, 0o400)
    loaded = load_kek(path)
    # the key read back is the one written: it opens what the original wrapped
    assert loaded.unwrap_dek(Kek(KEK_BYTES).wrap_dek(b"\x22" * 32)) == b"\x22" * 32


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64, 65])
def test_load_kek_refuses_wrong_size(tmp_path, size) -> None:
    path = tmp_path / "kek"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, (KEK_BYTES * 3)[:size])
    os.close(fd)
    with pytest.raises(KeyFileError, match="32 raw bytes"):
        load_kek(path)


def test_load_kek_refuses_missing_and_directories(tmp_path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_kek(tmp_path / "nope")
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(KeyFileError):
        load_kek(d)


def test_wrap_unwrap_round_trip_and_randomized() -> None:
    kek = Kek(KEK_BYTES)
    dek = generate_dek()
    a, b = kek.wrap_dek(dek), kek.wrap_dek(dek)
    assert len(a) == WRAPPED_DEK_LEN and is_wrapped_dek_shape(a)
    assert a != b  # random nonce: equal DEKs do not look equal on disk
    assert kek.unwrap_dek(a) == dek and kek.unwrap_dek(b) == dek
    assert dek not in a


def test_tampered_wrapped_dek_refused_at_every_position() -> None:
    kek = Kek(KEK_BYTES)
    blob = kek.wrap_dek(generate_dek())
    for pos in range(len(blob)):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises(DekUnwrapError):
            kek.unwrap_dek(bytes(bad))
    for bad in (blob[:-1], blob + b"\x00", b""):
        with pytest.raises(DekUnwrapError):
            kek.unwrap_dek(bad)


def test_other_kek_refused() -> None:
    blob = Kek(KEK_BYTES).wrap_dek(generate_dek())
    with pytest.raises(DekUnwrapError, match="authentication"):
        Kek.generate().unwrap_dek(blob)


def test_keystore_is_the_unwrap_lookup() -> None:
    ks = Keystore(Kek(KEK_BYTES))
    d1, d2 = generate_dek(), generate_dek()
    ks.install(1, d1, "raft", 3)
    ks.install(2, d2, "raft", 10)
    assert ks.ids() == [1, 2] and len(ks) == 2 and 2 in ks
    assert ks.get(1) == d1 and ks.get(0) is None and ks.get(99) is None
    old = wrap(d1, 1, bytes(12), b"before rotation")
    new = wrap(d2, 2, bytes(12), b"after rotation")
    assert unwrap(ks.get, old) == b"before rotation"
    assert unwrap(ks.get, new) == b"after rotation"


def test_keystore_install_rules() -> None:
    ks = Keystore(Kek(KEK_BYTES))
    dek = generate_dek()
    rec = ks.install(1, dek, "raft", 3)
    assert ks.install(1, dek, "raft", 3) is rec  # replay: no-op, same wrapped bytes
    assert ks.install_wrapped(1, rec.wrapped, "raft", 3) is rec
    with pytest.raises(KeystoreError, match="different DEK"):
        ks.install(1, generate_dek(), "raft", 3)
    assert ks.get(1) == dek
    for bad_id in (0, -1, 2**32, True):
        with pytest.raises(KeystoreError):
            ks.install(bad_id, generate_dek(), "raft", 1)
    with pytest.raises(KeystoreError):
        ks.install(2, dek[:16], "raft", 1)


def test_install_wrapped_refuses_tamper_and_adds_nothing() -> None:
    kek = Kek(KEK_BYTES)
    ks = Keystore(kek)
    blob = bytearray(kek.wrap_dek(generate_dek()))
    blob[-1] ^= 0x80
    with pytest.raises(DekUnwrapError):
        ks.install_wrapped(5, bytes(blob), "raft", 1)
    assert ks.ids() == []


def test_export_import_round_trip() -> None:
    kek = Kek(KEK_BYTES)
    a = Keystore(kek)
    d1, d2 = generate_dek(), generate_dek()
    a.install(1, d1, "raft", 3)
    a.install(4, d2, "raft", 17)
    exported = a.export_wrapped()
    assert list(exported) == [1, 4]
    assert exported == a.export_wrapped()  # stable: no re-wrapping on export
    for rec in exported.values():
        assert d1 not in rec.wrapped and d2 not in rec.wrapped
    b = Keystore(Kek(KEK_BYTES))
    b.import_wrapped(exported)
    assert b.get(1) == d1 and b.get(4) == d2
    assert b.record(4) == WrappedKey(exported[4].wrapped, "raft", 17)
    assert b.export_wrapped() == exported


def test_import_is_all_or_nothing() -> None:
    kek = Kek(KEK_BYTES)
    good = WrappedKey(kek.wrap_dek(generate_dek()), "raft", 1)
    raw = bytearray(kek.wrap_dek(generate_dek()))
    raw[20] ^= 1
    bad = WrappedKey(bytes(raw), "raft", 2)
    ks = Keystore(kek)
    with pytest.raises(DekUnwrapError):
        ks.import_wrapped({1: good, 2: bad})
    assert ks.ids() == []


def test_wrapped_key_refuses_raw_dek() -> None:
    with pytest.raises(ValueError, match="not a KEK-wrapped DEK"):
        WrappedKey(generate_dek(), "raft", 1)


def test_repr_and_str_never_show_keys(tmp_path) -> None:
    kek = write_kek(tmp_path / "kek", KEK_BYTES)
    dek = generate_dek()
    ks = Keystore(kek)
    rec = ks.install(9, dek, "raft", 1)
    texts = [repr(kek), str(kek), repr(ks), str(ks), repr(rec), str(rec),
             repr(ks.export_wrapped()), f"{kek} {ks!r} {ks}", repr(load_kek(tmp_path / "kek"))]
    for text in texts:
        assert_no_key_material(text, KEK_BYTES)
        assert_no_key_material(text, dek)
        assert_no_key_material(text, rec.wrapped)
    assert "9" in repr(ks)  # ids are fine to show
    slot_text = repr(ks._slots)  # the internal holder too
    assert_no_key_material(slot_text, dek)


def test_key_holders_refuse_pickling() -> None:
    kek = Kek(KEK_BYTES)
    with pytest.raises(TypeError):
        pickle.dumps(kek)
    with pytest.raises(TypeError):
        pickle.dumps(Keystore(kek))
