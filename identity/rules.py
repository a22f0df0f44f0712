"""Identity rules per identifier type: priority, uniqueness, caps, blocklist, supernodes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from contracts.events import Identifier, IdentifierType, identifier_rank


class TypeRule(BaseModel):
    """How one identifier type takes part in resolution."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Two profiles holding different values of a unique type are never merged.
    unique: bool = False
    #: At most this many values of the type per profile; more are refused, never merged.
    cap: Annotated[int, Field(ge=1)] = 5


DEFAULT_TYPE_RULES: dict[str, TypeRule] = {
    IdentifierType.MEMBER_ID: TypeRule(unique=True, cap=1),
    IdentifierType.WECHAT_UNIONID: TypeRule(unique=True, cap=1),
    IdentifierType.COMPANY_ID: TypeRule(unique=True, cap=1),
    IdentifierType.CUSTOMER_ID: TypeRule(cap=3),
    IdentifierType.EMAIL: TypeRule(cap=3),
    IdentifierType.PHONE: TypeRule(cap=3),
    IdentifierType.WECHAT_OPENID: TypeRule(cap=5),
    IdentifierType.PLATFORM_USER_ID: TypeRule(cap=5),
    IdentifierType.DEVICE_ID: TypeRule(cap=10),
    IdentifierType.ANONYMOUS_ID: TypeRule(cap=50),
}

#: Values that identify nobody, whatever their type (compared after normalisation).
DEFAULT_BLOCKLIST: frozenset[str] = frozenset(
    {
        "0",
        "-1",
        "null",
        "none",
        "nil",
        "undefined",
        "unknown",
        "anonymous",
        "guest",
        "n/a",
        "na",
        "test",
        "test@test.com",
        "test@example.com",
        "noreply@example.com",
        "00000000-0000-0000-0000-000000000000",
        "+8600000000000",
    }
)
_REPEATED = re.compile(r"^(.)\1{3,}$")  # "000000", "11111111", "xxxx"


class IdentityRules(BaseModel):
    """All identity rules; settings override the defaults per type."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    types: dict[str, TypeRule] = Field(default_factory=lambda: dict(DEFAULT_TYPE_RULES))
    #: Rule for custom identifier types not listed in ``types``.
    custom: TypeRule = TypeRule(cap=5)
    #: Extra junk values, per type (``{"email": ["cashier@store.cn"]}``) or for all (``"*"``).
    blocklist: dict[str, list[str]] = Field(default_factory=dict)
    #: An identifier already held by more profiles than this never causes a merge.
    supernode_limit: Annotated[int, Field(ge=1)] = 5
    _extra: dict[str, frozenset[str]] = PrivateAttr(default_factory=dict)

    def rule(self, type_name: str) -> TypeRule:
        """Return the rule of a type (custom types get ``custom``)."""
        return self.types.get(type_name, self.custom)

    def blocked(self, ident: Identifier) -> bool:
        """Return whether an identifier is junk that must never link profiles."""
        value = ident.value.lower()
        if value in DEFAULT_BLOCKLIST or _REPEATED.match(value.lstrip("+")):
            return True
        return value in self._extra.get("*", ()) or value in self._extra.get(ident.type, ())

    def model_post_init(self, context: Any, /) -> None:
        """Lower-case the extra blocklist once: ``blocked`` runs for every identifier."""
        self._extra = {t: frozenset(v.lower() for v in vs) for t, vs in self.blocklist.items()}

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy, with the lower-cased blocklist made again from the copy's own blocklist
        (pydantic copies private attributes as they were, so an updated blocklist would not
        block anything)."""
        copied = super().model_copy(update=update, deep=deep)
        copied.model_post_init(None)
        return copied


def ordered(identifiers: list[Identifier]) -> list[Identifier]:
    """Return identifiers strongest first (the order resolution attributes events in)."""
    return sorted(identifiers, key=lambda i: identifier_rank(i.type))
