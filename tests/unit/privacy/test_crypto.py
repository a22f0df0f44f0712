"""Blind indexes, envelopes, master keys, masking: the pure parts of field encryption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from privacy.crypto import (
    DataKey,
    MasterKeyError,
    MasterKeys,
    envelope_kid,
    is_blind,
    is_sealed,
    kid_of,
)
from privacy.reveal import mask
from privacy.seal import month_day


def test_blind_indexes_are_equal_for_equal_values_and_keyed() -> None:
    keys, other = MasterKeys.generate(), MasterKeys.generate()
    a = keys.blind("phone", "+8613800138000")
    assert a == keys.blind("phone", "+8613800138000")
    assert a != keys.blind("phone", "+8613800138001")
    assert a != keys.blind("member_id", "+8613800138000")  # the type is part of the index
    assert a != other.blind("phone", "+8613800138000")  # another deployment's index key
    assert is_blind(a) and len(a) == 23 and "8613800138000" not in a


def test_envelopes_open_only_under_their_key_and_are_deterministic() -> None:
    key = DataKey("abcdefghijkl", b"k" * 64)
    sealed = key.seal({"street": "1 Nanjing Rd", "zip": "200001"})
    assert is_sealed(sealed) and envelope_kid(sealed) == "abcdefghijkl"
    assert "Nanjing" not in sealed
    assert key.seal({"street": "1 Nanjing Rd", "zip": "200001"}) == sealed
    assert key.open(sealed) == {"street": "1 Nanjing Rd", "zip": "200001"}
    with pytest.raises(ValueError, match="not sealed under this key"):
        DataKey("abcdefghijkl", b"x" * 64).open(sealed)
    # The kid is bound as associated data: an envelope moved to another kid does not open.
    moved = sealed.replace("abcdefghijkl", "abcdefghijkm")
    with pytest.raises(ValueError):
        DataKey("abcdefghijkm", b"k" * 64).open(moved)


def test_a_phone_envelope_fits_a_redis_listpack_value() -> None:
    key = DataKey(kid_of(MasterKeys.generate().blind("phone", "+8613800138000")), b"k" * 64)
    assert len(key.seal("+8613800138000")) <= 64


def test_master_keys_round_trip_and_refuse_bad_material(tmp_path: Path) -> None:
    keys = MasterKeys.generate()
    path = tmp_path / "keys" / "master.json"
    keys.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = MasterKeys.load(path)
    assert loaded == keys
    dek = b"d" * 64
    assert loaded.unwrap("k1", loaded.wrap("k1", dek)) == dek
    rotated = loaded.rotated("k2")
    assert rotated.current == "k2" and set(rotated.keks) == {"k1", "k2"}
    assert rotated.unwrap("k1", loaded.wrap("k1", dek)) == dek
    with pytest.raises(KeyError):
        rotated.unwrap("k2", loaded.wrap("k1", dek))
    bad = json.loads(keys.dumps()) | {"current": "k9"}
    with pytest.raises(MasterKeyError, match="k9"):
        MasterKeys.parse(json.dumps(bad))
    with pytest.raises(MasterKeyError, match="32 bytes"):
        MasterKeys.parse(json.dumps(json.loads(keys.dumps()) | {"index_key": "AAAA"}))
    with pytest.raises(MasterKeyError, match="cdp keys init"):
        MasterKeys.load(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("kind", "value", "masked"),
    [
        ("phone", "+8613800138000", "138****8000"),
        ("mobile", "13800138000", "138****8000"),
        ("email", "li.lei@example.com", "l***@example.com"),
        ("birthday", "1990-06-30", "****-06-30"),
        ("member_id", "M0000123", "M0****23"),
        ("name", "Li", "**"),
        ("name", "Li Lei", "L*****"),
        (
            "address",
            {"city": "Shanghai", "street": "1 Nanjing Rd"},
            {"city": "Sh****ai", "street": "1 ********Rd"},
        ),
        ("age", 42, "***"),
    ],
)
def test_masks_keep_only_what_identifies_nobody(kind: str, value: object, masked: object) -> None:
    assert mask(kind, value) == masked


def test_month_day_of_dates_only() -> None:
    assert month_day("1990-06-30") == "--06-30"
    assert month_day("1990-06-30T08:00:00Z") == "--06-30"
    assert month_day("June 30") is None
    assert month_day(19900630) is None
