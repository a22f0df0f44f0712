"""Write keys: one per source, bound to a channel, stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from functools import lru_cache
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, StringConstraints, field_validator

from contracts.events import Channel, IdentifierType, IdentifierTypeName

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class Source(BaseModel):
    """A channel integration that may send events with its write key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    channel: Channel
    #: What Segment's ``userId`` means for this source (a POS sends member numbers,
    #: a web shop its customer ids).
    user_id_type: IdentifierTypeName = IdentifierType.CUSTOMER_ID
    #: What Segment's ``anonymousId`` means for this source: a mini-program that sends the
    #: WeChat openid there says ``wechat_openid``.
    anonymous_id_type: IdentifierTypeName = IdentifierType.ANONYMOUS_ID
    key_sha256: Sha256Hex
    #: IANA time zone of the times this source sends without an offset (a POS or ERP that
    #: writes local wall-clock time, e.g. ``Asia/Shanghai``); None reads them as UTC.
    timezone: str | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                _zone(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {value!r} (an IANA name)") from exc
        return value

    def local(self, value: datetime | None) -> datetime | None:
        """Give a time sent without an offset this source's zone; leave others as they are."""
        if value is None or value.tzinfo is not None or self.timezone is None:
            return value
        return value.replace(tzinfo=_zone(self.timezone))


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def hash_key(write_key: str) -> str:
    """Hash a write key for storage; keys are random 128-bit+ tokens, so no salt is needed."""
    return hashlib.sha256(write_key.encode()).hexdigest()


def new_key() -> str:
    """Mint a new write key."""
    return "wk_" + secrets.token_urlsafe(24)


class SourceRegistry:
    """Look sources up by write key without ever holding the keys themselves."""

    def __init__(self, sources: list[Source]) -> None:
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate source names in {names}")
        self._by_hash = {s.key_sha256: s for s in sources}
        self._by_name = {s.name: s for s in sources}

    def authenticate(self, write_key: str | None) -> Source | None:
        """Return the source owning ``write_key``, or None."""
        if not write_key:
            return None
        # A dict lookup on the digest leaks at most timing about the hash, which does
        # not help anyone find a key (a preimage would be needed).
        return self._by_hash.get(hash_key(write_key))

    def by_hash(self, key_sha256: str) -> Source | None:
        """Return the source whose write key hashes to ``key_sha256``, or None."""
        return self._by_hash.get(key_sha256)

    def named(self, name: str) -> Source | None:
        """Return the source called ``name``, or None."""
        return self._by_name.get(name)

    def __len__(self) -> int:
        return len(self._by_hash)
