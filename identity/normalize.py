"""Normalise identifier values so the same person's identifiers compare equal."""

from __future__ import annotations

import unicodedata
from functools import lru_cache

import phonenumbers

from contracts.events import IDENTIFIER_TYPE, Identifier, IdentifierType

DEFAULT_REGION = "CN"


def normalize_email(value: str) -> str | None:
    """Trim and lower-case an email; None when it is not shaped like one."""
    cleaned = unicodedata.normalize("NFKC", value).strip().lower()
    local, at, domain = cleaned.partition("@")
    if not at or not local or "." not in domain or " " in cleaned:
        return None
    return cleaned


@lru_cache(maxsize=200_000)
def normalize_phone(value: str, default_region: str = DEFAULT_REGION) -> str | None:
    """Return the E.164 form of a phone number, or None when it does not parse as valid.

    Numbers without a country code are read in ``default_region`` (mainland China by
    default), so ``138-0013-8000`` and ``+86 138 0013 8000`` both give ``+8613800138000``.
    """
    cleaned = unicodedata.normalize("NFKC", value).strip()
    try:
        parsed = phonenumbers.parse(cleaned, default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def normalize_generic(value: str) -> str:
    """Trim an opaque id; ids are case-sensitive (WeChat openids are)."""
    return unicodedata.normalize("NFKC", value).strip()


def normalize(type_name: str, value: str, default_region: str = DEFAULT_REGION) -> Identifier:
    """Normalise one identifier; keep the trimmed raw value, flagged, when it can't be."""
    trimmed = normalize_generic(value)
    normalised: str | None
    if type_name == IdentifierType.EMAIL:
        normalised = normalize_email(trimmed)
    elif type_name == IdentifierType.PHONE:
        normalised = normalize_phone(trimmed, default_region)
    else:
        normalised = trimmed
    if normalised is None:
        return Identifier(type=type_name, value=trimmed, normalized=False)
    return Identifier(type=type_name, value=normalised)


class BadIdentifier(ValueError):
    """An identifier a reader asked about that no profile can hold; ``field`` says which part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def parse_identifier(
    type_name: str, value: str, default_region: str = DEFAULT_REGION
) -> Identifier:
    """An identifier to look up, normalised like ingest normalises it.

    Raises ``BadIdentifier`` for a type that is no identifier type, a blank value, or a value
    that fails its type's validation (such values never link a profile, so none holds them).
    """
    kind = type_name.strip().lower()
    if not IDENTIFIER_TYPE.match(kind):
        raise BadIdentifier("type", f"{type_name!r} is not an identifier type (e.g. email, phone)")
    if not normalize_generic(value):
        raise BadIdentifier("value", "value is blank")
    ident = normalize(kind, value, default_region)
    if not ident.normalized:
        raise BadIdentifier("value", f"{value!r} is not a valid {kind}")
    return ident
