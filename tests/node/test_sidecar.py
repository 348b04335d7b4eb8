"""sidecar.json: defaults, round trip, atomic replace, corruption, epochs, only wrapped keys."""

from __future__ import annotations

import base64
import json
import os

import pytest

from node import sidecar
from node.keystore import Kek, Keystore, WrappedKey, generate_dek
from node.sidecar import Sidecar, SidecarError, bump_epoch, load, next_epoch, save

KEK = Kek(bytes(range(1, 33)))


def populated(keystore: Keystore | None = None) -> tuple[Sidecar, dict[int, bytes]]:
    ks = keystore or Keystore(KEK)
    deks = {1: generate_dek(), 2: generate_dek()}
    ks.install(1, deks[1], "raft", 4)
    ks.install(2, deks[2], "raft", 40)
    s = Sidecar(
        raft_applied_index=41,
        raft_envelope_cutover_index=12,
        active_raft_dek=2,
        keys=ks.export_wrapped(),
        local_epoch=7,
    )
    return s, deks


def test_missing_file_means_defaults(tmp_path) -> None:
    s = load(tmp_path)
    assert s == Sidecar(0, 0, 0, {}, 0)
    assert load(tmp_path / "no-such-dir") == Sidecar()
    assert not (tmp_path / "sidecar.json").exists()  # loading never writes


def test_save_load_round_trip(tmp_path) -> None:
    s, deks = populated()
    save(tmp_path, s)
    back = load(tmp_path)
    assert back == s
    ks = Keystore(KEK)
    ks.import_wrapped(back.keys)
    assert ks.get(1) == deks[1] and ks.get(2) == deks[2]
    doc = json.loads((tmp_path / "sidecar.json").read_text())
    assert doc["raft_envelope_cutover_index"] == 12
    assert doc["active_raft_dek"] == 2
    assert doc["local_epoch"] == 7
    assert set(doc["keys"]) == {"1", "2"}
    assert set(doc["keys"]["2"]) == {"wrapped", "purpose", "created_index"}
    assert base64.b64decode(doc["keys"]["2"]["wrapped"]) == s.keys[2].wrapped


def test_file_holds_no_raw_dek(tmp_path) -> None:
    s, deks = populated()
    save(tmp_path, s)
    raw = (tmp_path / "sidecar.json").read_bytes()
    for dek in deks.values():
        assert dek not in raw
        for form in (dek.hex(), base64.b64encode(dek).decode(), dek.hex().upper()):
            assert form.encode() not in raw


def test_raw_dek_cannot_be_put_in_a_sidecar(tmp_path) -> None:
    s = Sidecar(active_raft_dek=1, keys={1: generate_dek()})  # type: ignore[dict-item]
    with pytest.raises(SidecarError, match="WrappedKey"):
        save(tmp_path, s)
    assert not (tmp_path / "sidecar.json").exists()


def test_hand_edited_raw_dek_is_corrupt(tmp_path) -> None:
    s, deks = populated()
    save(tmp_path, s)
    path = tmp_path / "sidecar.json"
    doc = json.loads(path.read_text())
    doc["keys"]["1"]["wrapped"] = base64.b64encode(deks[1]).decode()
    path.write_text(json.dumps(doc))
    with pytest.raises(SidecarError, match="not a KEK-wrapped DEK"):
        load(tmp_path)


def test_leftover_temp_file_is_ignored(tmp_path) -> None:
    s, _ = populated()
    save(tmp_path, s)
    # A crash between writing the temp file and the rename leaves this behind.
    (tmp_path / "sidecar.json.tmp").write_bytes(b'{"half": writ')
    assert load(tmp_path) == s
    s.raft_applied_index = 50
    save(tmp_path, s)  # and a later save still works
    assert load(tmp_path).raft_applied_index == 50
    assert not (tmp_path / "sidecar.json.tmp").exists()


def test_crash_before_rename_keeps_the_old_file(tmp_path, monkeypatch) -> None:
    old, _ = populated()
    save(tmp_path, old)
    new = Sidecar(**{f: getattr(old, f) for f in old.__slots__})
    new.raft_applied_index = 99

    def crash(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        save(tmp_path, new)
    monkeypatch.undo()
    assert (tmp_path / "sidecar.json.tmp").exists()  # the new bytes were only in the temp file
    assert load(tmp_path) == old
    save(tmp_path, new)
    assert load(tmp_path) == new


def test_first_save_crash_leaves_no_sidecar(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError):
        save(tmp_path, Sidecar(local_epoch=1))
    monkeypatch.undo()
    assert load(tmp_path) == Sidecar()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"\xff\xfe",
        b"[]",
        b"null",
        b'{"format": 1}',
        b"{'single': 'quotes'}",
    ],
)
def test_corrupt_file_names_the_file(tmp_path, content) -> None:
    path = tmp_path / "sidecar.json"
    path.write_bytes(content)
    with pytest.raises(SidecarError) as ei:
        load(tmp_path)
    assert str(path) in str(ei.value)
    assert ei.value.file == path
    assert path.read_bytes() == content  # never reset


def _good_doc(tmp_path) -> dict:
    s, _ = populated()
    save(tmp_path, s)
    return json.loads((tmp_path / "sidecar.json").read_text())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(format=2),
        lambda d: d.update(extra=1),
        lambda d: d.pop("local_epoch"),
        lambda d: d.update(local_epoch=70000),
        lambda d: d.update(local_epoch=True),
        lambda d: d.update(raft_applied_index=-1),
        lambda d: d.update(raft_envelope_cutover_index="12"),
        lambda d: d.update(active_raft_dek=2**32),
        lambda d: d.update(active_raft_dek=3),  # not among the keys
        lambda d: d["keys"].update({"01": d["keys"]["1"]}),
        lambda d: d["keys"].update({"0": d["keys"]["1"]}),
        lambda d: d["keys"]["1"].update(wrapped="@@not base64@@"),
        lambda d: d["keys"]["1"].update(created_index=-5),
        lambda d: d["keys"]["1"].pop("purpose"),
        lambda d: d.update(keys=[]),
    ],
)
def test_structurally_wrong_file_is_corrupt(tmp_path, mutate) -> None:
    doc = _good_doc(tmp_path)
    mutate(doc)
    (tmp_path / "sidecar.json").write_text(json.dumps(doc))
    with pytest.raises(SidecarError, match="corrupt"):
        load(tmp_path)


def test_duplicate_field_is_corrupt(tmp_path) -> None:
    doc = _good_doc(tmp_path)
    text = json.dumps(doc)[:-1] + ', "local_epoch": 1}'
    (tmp_path / "sidecar.json").write_text(text)
    with pytest.raises(SidecarError, match="duplicate"):
        load(tmp_path)


def test_save_refuses_to_move_backwards(tmp_path) -> None:
    s, _ = populated()
    save(tmp_path, s)
    for change, match in (
        ({"raft_applied_index": 40}, "raft_applied_index"),
        ({"raft_envelope_cutover_index": 0}, "cutover index"),
        ({"raft_envelope_cutover_index": 13}, "cutover index"),
        ({"keys": {2: s.keys[2]}}, "drop key id 1"),
        ({"keys": {1: WrappedKey(KEK.wrap_dek(generate_dek()), "raft", 4), 2: s.keys[2]}},
         "replace the wrapped DEK of key id 1"),
    ):
        t = Sidecar(**{f: getattr(s, f) for f in s.__slots__})
        for k, v in change.items():
            setattr(t, k, v)
        with pytest.raises(SidecarError, match=match):
            save(tmp_path, t)
        assert load(tmp_path) == s


def test_save_refuses_impossible_states(tmp_path) -> None:
    with pytest.raises(SidecarError, match="no raft DEK is active"):
        save(tmp_path, Sidecar(raft_envelope_cutover_index=5))
    with pytest.raises(SidecarError, match="not among the keys"):
        save(tmp_path, Sidecar(active_raft_dek=1))
    assert not (tmp_path / "sidecar.json").exists()


def test_cutover_set_once_from_zero(tmp_path) -> None:
    ks = Keystore(KEK)
    rec = ks.install(1, generate_dek(), "raft", 2)
    save(tmp_path, Sidecar(raft_applied_index=2, active_raft_dek=1, keys={1: rec}))
    s = load(tmp_path)
    s.raft_envelope_cutover_index = 9
    s.raft_applied_index = 9
    save(tmp_path, s)
    assert load(tmp_path).raft_envelope_cutover_index == 9


def test_epoch_bumps_persist_across_restarts(tmp_path) -> None:
    s, _ = populated()
    s.local_epoch = 0
    save(tmp_path, s)
    epochs = [bump_epoch(tmp_path) for _ in range(5)]  # five "start-ups"
    assert epochs == [1, 2, 3, 4, 5]
    after = load(tmp_path)
    assert after.local_epoch == 5
    assert after.keys == s.keys and after.raft_envelope_cutover_index == 12  # nothing else moved


def test_epoch_on_a_fresh_dir_starts_at_one(tmp_path) -> None:
    assert bump_epoch(tmp_path) == 1
    assert load(tmp_path) == Sidecar(local_epoch=1)


def test_epoch_never_wraps_the_last_one_refuses_the_next_start(tmp_path) -> None:
    """Issue 12: the epoch used to wrap 65535 -> 1, so the 65,536th start repeated the
    nonce prefixes of the first. Now the bump refuses, the file names itself, and the
    spent epoch stays on disk (a refused start changes nothing)."""
    assert next_epoch(0) == 1
    assert next_epoch(65534) == 65535
    with pytest.raises(sidecar.EpochExhaustedError):
        next_epoch(65535)
    save(tmp_path, Sidecar(local_epoch=65535))
    with pytest.raises(SidecarError, match="last one"):
        bump_epoch(tmp_path)
    assert load(tmp_path).local_epoch == 65535


def test_bump_epoch_refuses_a_corrupt_sidecar(tmp_path) -> None:
    path = tmp_path / sidecar.SIDECAR_NAME
    path.write_text("garbage")
    with pytest.raises(SidecarError):
        bump_epoch(tmp_path)
    assert path.read_text() == "garbage"
