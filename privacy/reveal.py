"""The read boundary: sealed values leave the platform masked, or in clear with ``pii:read``.

Decryption happens only here, in the API process answering a read. A value whose data key was
shredded (or never existed) reads as ``ERASED``.
"""

from __future__ import annotations

import re
from typing import Any

from privacy.crypto import DataKey, envelope_kid, is_sealed
from privacy.keystore import KeyStore

#: The scope a token needs to read sensitive values in clear.
PII_READ = "pii:read"
#: What a value reads as once its key was destroyed.
ERASED = "[erased]"

_DIGITS = re.compile(r"\d")
_PHONES = frozenset({"phone", "mobile", "contact_phone", "receiver_phone"})


def _mask_text(kind: str, text: str) -> str:
    if "@" in text and (kind in ("email",) or "." in text.partition("@")[2]):
        local, _, domain = text.partition("@")
        return f"{local[:1]}***@{domain}"
    if kind in _PHONES or (len(_DIGITS.findall(text)) >= 7 and text.lstrip("+").isdigit()):
        digits = text[3:] if text.startswith("+86") else text.lstrip("+")
        if len(digits) >= 7:
            return f"{digits[:3]}****{digits[-4:]}"
    if len(text) >= 10 and text[4:5] == "-" and text[7:8] == "-" and text[:4].isdigit():
        return "****" + text[4:10]  # a date: the month and day stay (they are kept anyway)
    if len(text) <= 2:
        return "*" * len(text)
    if len(text) < 8:
        return text[0] + "*" * (len(text) - 1)
    return f"{text[:2]}{'*' * (len(text) - 4)}{text[-2:]}"


def mask(kind: str, value: Any) -> Any:
    """A value as a reader without ``pii:read`` sees it: ``138****8000``, ``l***@example.com``.

    ``kind`` is the field's name (``phone``, ``traits.phone``): it picks the mask.
    """
    kind = kind.rpartition(".")[2]
    if isinstance(value, str):
        return _mask_text(kind, value)
    if isinstance(value, dict):
        return {k: mask(str(k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(kind, v) for v in value]
    if value is None or isinstance(value, bool):
        return value
    return "***"


def _envelopes(value: Any, found: list[str]) -> None:
    if is_sealed(value):
        found.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _envelopes(v, found)
    elif isinstance(value, list):
        for v in value:
            _envelopes(v, found)


class Revealer:
    """Opens envelopes at the read boundary, then masks them unless the reader may see them."""

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys

    async def _keys(self, envelopes: list[str]) -> dict[str, DataKey | None]:
        return await self.keys.keys(envelope_kid(e) for e in envelopes)

    @staticmethod
    def _open(keys: dict[str, DataKey | None], envelope: str) -> tuple[bool, Any]:
        key = keys.get(envelope_kid(envelope))
        if key is None:
            return False, None
        try:
            return True, key.open(envelope)
        except ValueError:  # sealed under a key that was shredded and created anew
            return False, None

    async def document(self, doc: Any, clear: bool, ids: dict[str, str] | None = None) -> Any:
        """``doc`` (any JSON) with every envelope opened and masked (or clear).

        ``ids`` maps stored identifiers (``type:~blind``) to their sealed values: such strings
        anywhere in ``doc`` become ``type:<value>`` (masked or clear).
        """
        found: list[str] = []
        _envelopes(doc, found)
        found.extend((ids or {}).values())
        if not found:
            return doc
        keys = await self._keys(found)

        def show(kind: str, envelope: str) -> Any:
            ok, value = self._open(keys, envelope)
            if not ok:
                return ERASED
            return value if clear else mask(kind, value)

        def walk(kind: str, value: Any) -> Any:
            if isinstance(value, str):
                if is_sealed(value):
                    return show(kind, value)
                if ids and value in ids:
                    type_name = value.partition(":")[0]
                    return f"{type_name}:{show(type_name, ids[value])}"
                return value
            if isinstance(value, dict):
                return {k: walk(str(k), v) for k, v in value.items()}
            if isinstance(value, list):
                return [walk(kind, v) for v in value]
            return value

        return walk("", doc)
