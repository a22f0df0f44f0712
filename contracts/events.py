"""The event envelope every stage speaks (contract v1)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

SCHEMA_VERSION = 1

#: A JSON object as parsed from the wire. Typed ``Any`` rather than pydantic's ``JsonValue``
#: on purpose: the body was already parsed as JSON, so re-validating every nested value
#: costs ~30% of ingest CPU and can find nothing.
JsonObject = dict[str, Any]

IdentifierValue = Annotated[str, StringConstraints(min_length=1, max_length=256)]
#: Custom identifier types are allowed: lower snake case, e.g. ``loyalty_card``.
IDENTIFIER_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
IdentifierTypeName = Annotated[str, StringConstraints(pattern=IDENTIFIER_TYPE.pattern)]


class IdentifierType(StrEnum):
    """Identifier types the platform knows natively (custom ones are plain strings)."""

    MEMBER_ID = "member_id"
    CUSTOMER_ID = "customer_id"
    EMAIL = "email"
    PHONE = "phone"
    WECHAT_UNIONID = "wechat_unionid"
    WECHAT_OPENID = "wechat_openid"
    PLATFORM_USER_ID = "platform_user_id"
    COMPANY_ID = "company_id"
    DEVICE_ID = "device_id"
    ANONYMOUS_ID = "anonymous_id"


#: Strongest first: the partition key of an event is its strongest identifier.
#: Types not listed (custom ones) rank after platform_user_id and before company_id.
IDENTIFIER_STRENGTH: tuple[str, ...] = (
    IdentifierType.MEMBER_ID,
    IdentifierType.CUSTOMER_ID,
    IdentifierType.WECHAT_UNIONID,
    IdentifierType.EMAIL,
    IdentifierType.PHONE,
    IdentifierType.WECHAT_OPENID,
    IdentifierType.PLATFORM_USER_ID,
    IdentifierType.COMPANY_ID,
    IdentifierType.DEVICE_ID,
    IdentifierType.ANONYMOUS_ID,
)


class EventType(StrEnum):
    """Segment's six call types plus the domain events the profile understands."""

    IDENTIFY = "identify"
    TRACK = "track"
    PAGE = "page"
    SCREEN = "screen"
    GROUP = "group"
    ALIAS = "alias"
    # Domain events (a Segment ``track`` whose event name normalises to one of these
    # is typed as it; the original name is kept in ``name``).
    ORDER_COMPLETED = "order_completed"
    ORDER_REFUNDED = "order_refunded"
    STORE_VISITED = "store_visited"
    TICKET_OPENED = "ticket_opened"
    TICKET_RESOLVED = "ticket_resolved"
    FOLLOW_UP_COMPLETED = "follow_up_completed"
    SURVEY_ANSWERED = "survey_answered"
    POINTS_EARNED = "points_earned"
    POINTS_REDEEMED = "points_redeemed"
    COUPON_REDEEMED = "coupon_redeemed"
    MEMBER_LEVEL_CHANGED = "member_level_changed"
    OPPORTUNITY_STAGE_CHANGED = "opportunity_stage_changed"
    CONSENT_UPDATED = "consent_updated"


SEGMENT_CALL_TYPES = frozenset(
    EventType(name) for name in ("identify", "track", "page", "screen", "group", "alias")
)


class Channel(StrEnum):
    """Where an interaction happened; a write key is bound to one."""

    POS = "pos"
    MEMBER_APP = "member_app"
    WEB = "web"
    MINI_PROGRAM = "mini_program"
    DELIVERY = "delivery"
    SERVICE_DESK = "service_desk"
    SURVEY = "survey"
    CRM = "crm"
    ERP = "erp"
    EXHIBITION = "exhibition"
    OTHER = "other"


class Identifier(BaseModel):
    """One typed identifier of the subject of an event, normalised at ingest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: IdentifierTypeName
    value: IdentifierValue
    #: False when the value could not be normalised (e.g. an unparseable phone); identity
    #: never links profiles through such an identifier (its ledger says ``invalid``).
    normalized: bool = True
    #: With field encryption on, ``value`` is the blind index of the normalised value
    #: (``~`` + 22 characters) and this is the value sealed under the identifier's own key
    #: (docs/privacy.md); None when the value is kept as it is.
    sealed: str | None = None

    def key(self) -> str:
        """Return ``type:value``, the identifier's stable string form."""
        return f"{self.type}:{self.value}"


class IdentifierIn(BaseModel):
    """An identifier as a channel posts it (ingest normalises, and may seal, it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: IdentifierTypeName
    value: IdentifierValue
    #: Accepted for compatibility and ignored: ingest decides after normalising.
    normalized: bool = True


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class Event(BaseModel):
    """An accepted interaction, as written to ``cdp.events.raw``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    event_id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    type: EventType
    #: Track event name or page/screen name as the channel sent it.
    name: str | None = None
    channel: Channel
    #: The source (write key owner) that sent it, e.g. ``pos-shanghai``.
    source: str
    identifiers: Annotated[list[Identifier], Field(min_length=1, max_length=64)]
    #: alias only: the id the subject was known by before.
    previous_id: str | None = None
    #: group only: the account the subject belongs to.
    group_id: str | None = None
    traits: JsonObject = Field(default_factory=dict)
    properties: JsonObject = Field(default_factory=dict)
    #: purpose -> granted, e.g. ``{"marketing_sms": false}``.
    consent: dict[str, bool] = Field(default_factory=dict)
    context: JsonObject = Field(default_factory=dict)
    #: When the event happened by the client's clock.
    original_timestamp: datetime
    #: When the client sent it by its clock (None when the client did not say).
    sent_at: datetime | None = None
    #: When ingest received it (server clock).
    received_at: datetime
    #: Skew-corrected event time: received_at - (sent_at - original_timestamp).
    timestamp: datetime

    @field_validator("original_timestamp", "sent_at", "received_at", "timestamp")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _aware(value)

    def strongest_identifier(self) -> Identifier:
        """Return the identifier used as the partition key."""
        return min(self.identifiers, key=lambda i: identifier_rank(i.type))

    def partition_key(self) -> bytes:
        """Return the Kafka key: the strongest identifier as ``type:value``."""
        return self.strongest_identifier().key().encode()


def identifier_rank(type_name: str) -> int:
    """Rank an identifier type, 0 strongest; custom types sit before company_id."""
    try:
        return 2 * IDENTIFIER_STRENGTH.index(type_name)
    except ValueError:
        return 2 * IDENTIFIER_STRENGTH.index(IdentifierType.COMPANY_ID) - 1


#: The earliest time an event may claim. No channel of a CDP has earlier events; such times
#: are almost always a unit error (seconds read as milliseconds: 12345 is 1970-01-01T03:25)
#: or a default date (0001-01-01), and they would sort before every trait's source priority.
MIN_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)

#: How far past its receive time an event may claim to have happened before that is taken
#: for a client clock error (or a local time read as UTC): the event is then placed at its
#: receive time, and ``original_timestamp`` keeps the claim. A time years ahead would
#: otherwise keep a profile "active in the last 30 days" until then.
MAX_FUTURE = timedelta(minutes=10)


def corrected_timestamp(
    original: datetime | None, sent_at: datetime | None, received_at: datetime
) -> datetime:
    """Correct client clock skew the way Segment does.

    ``timestamp = received_at - (sent_at - original_timestamp)``: the delay the client
    measured on its own clock, applied to the server clock. Without ``sent_at`` the
    original timestamp is trusted; without either, the receive time is used. A result more
    than ``MAX_FUTURE`` after the receive time is replaced by the receive time.
    """
    received_at = _aware(received_at)
    if original is None:
        return received_at
    original = _aware(original)
    corrected = original if sent_at is None else received_at - (_aware(sent_at) - original)
    return received_at if corrected > received_at + MAX_FUTURE else corrected


class EventIn(BaseModel):
    """A native event as a channel posts it to ``POST /v1/events``.

    Channel and source come from the write key; ingest stamps ``received_at`` and
    computes ``timestamp``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    type: EventType
    name: Annotated[str, StringConstraints(max_length=200)] | None = None
    identifiers: Annotated[list[IdentifierIn], Field(min_length=1, max_length=64)]
    previous_id: str | None = None
    group_id: str | None = None
    traits: JsonObject = Field(default_factory=dict)
    properties: JsonObject = Field(default_factory=dict)
    consent: dict[str, bool] = Field(default_factory=dict)
    context: JsonObject = Field(default_factory=dict)
    original_timestamp: datetime | None = None
    sent_at: datetime | None = None


class ResolvedEvent(BaseModel):
    """An event with the profile identity resolved it to (``cdp.events.resolved``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    event: Event
    #: The profile the event belongs to; empty when only junk identifiers were present.
    profile_id: str
    #: Where the event was read from in ``cdp.events.raw``: the idempotence watermark.
    raw_partition: int
    raw_offset: int
    #: Profiles this event caused to be merged into ``profile_id``.
    merged: list[str] = Field(default_factory=list)
    #: Its place in the one order in which identity resolved events, across every worker
    #: (0: not recorded). Resolution depends on the order events meet, so a rebuild from
    #: history replays them in this order.
    resolution: int = Field(default=0, ge=0)
