"""The care processor's reading of profile dates (sealed or not)."""

from __future__ import annotations

from types import SimpleNamespace

from care.processor import _trait_change, anchor_of


def test_dates_are_read_from_traits_and_account_fields() -> None:
    p = SimpleNamespace(traits={"birthday": "1990-06-30"}, account={"since": "2019-03-01"})
    assert anchor_of(p, "trait.birthday") == (1990, 6, 30)
    assert anchor_of(p, "account.since") == (2019, 3, 1)
    assert anchor_of(p, "trait.anniversary") is None


def test_a_sealed_birthday_reads_as_its_month_and_day() -> None:
    p = SimpleNamespace(traits={"birthday": "v1.abc.def", "birthday_md": "--02-29"}, account={})
    assert anchor_of(p, "trait.birthday") == (None, 2, 29)
    sealed_only = SimpleNamespace(traits={"birthday": "v1.abc.def"}, account={})
    assert anchor_of(sealed_only, "trait.birthday") is None


def test_the_fold_change_names_of_date_fields() -> None:
    assert _trait_change("trait.birthday") == "trait:birthday"
    assert _trait_change("account.since") == "trait:account.since"
