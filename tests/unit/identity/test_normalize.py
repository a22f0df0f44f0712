import pytest

from identity.normalize import normalize, normalize_email, normalize_phone

FULLWIDTH = "+" + "8613800138000".translate({ord(d): ord(d) + 0xFEE0 for d in "0123456789"})


@pytest.mark.parametrize(
    "raw", ["+86 138-0013-8000", "13800138000", "138 0013 8000", "+8613800138000", FULLWIDTH]
)
def test_chinese_mobile_numbers_in_any_format_become_one_e164(raw: str) -> None:
    assert normalize_phone(raw) == "+8613800138000"


def test_default_region_is_configurable() -> None:
    assert normalize_phone("020 7946 0018", "GB") == "+442079460018"
    assert normalize_phone("020 7946 0018", "CN") != "+442079460018"


@pytest.mark.parametrize("raw", ["123", "", "not a phone", "000000"])
def test_unparseable_phones_are_none(raw: str) -> None:
    assert normalize_phone(raw) is None


def test_email_is_trimmed_and_lower_cased() -> None:
    assert normalize_email("  Li.Wei@Example.COM ") == "li.wei@example.com"


@pytest.mark.parametrize("raw", ["nope", "a@b", "@example.com", "a b@example.com"])
def test_malformed_emails_are_none(raw: str) -> None:
    assert normalize_email(raw) is None


def test_identifiers_that_do_not_normalise_are_kept_and_flagged() -> None:
    ident = normalize("phone", " 123 ")
    assert (ident.value, ident.normalized) == ("123", False)


def test_opaque_ids_keep_their_case() -> None:
    assert normalize("wechat_openid", " oAbC_x ").value == "oAbC_x"
