"""Map Segment-spec messages (and RudderStack's variant) to contract events."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import JsonValue, TypeAdapter, ValidationError

from contracts.deadletter import DeadLetterReason
from contracts.events import (
    IDENTIFIER_TYPE,
    MIN_EVENT_TIME,
    SEGMENT_CALL_TYPES,
    Event,
    EventType,
    Identifier,
    IdentifierType,
    corrected_timestamp,
)
from identity.normalize import DEFAULT_REGION, normalize
from ingest.exceptions import Rejected
from ingest.sources import Source

_DATETIME = TypeAdapter(datetime)
_DOMAIN_TYPES = {t.value for t in EventType} - {t.value for t in SEGMENT_CALL_TYPES}
#: Trait keys that carry identifiers, in Segment's spelling and common variants, and the
#: platform's own identifier types under their own names (as Segment's custom identifiers):
#: a mini-program's ``traits.wechat_openid`` is looked up as a ``wechat_openid``. A source
#: mapping adds other fields (docs/sources.md).
TRAIT_IDENTIFIERS: dict[str, str] = {
    "email": IdentifierType.EMAIL,
    "phone": IdentifierType.PHONE,
    "mobile": IdentifierType.PHONE,
    "member_id": IdentifierType.MEMBER_ID,
    "customer_id": IdentifierType.CUSTOMER_ID,
    "wechat_openid": IdentifierType.WECHAT_OPENID,
    "openid": IdentifierType.WECHAT_OPENID,
    "wechat_unionid": IdentifierType.WECHAT_UNIONID,
    "unionid": IdentifierType.WECHAT_UNIONID,
    "platform_user_id": IdentifierType.PLATFORM_USER_ID,
}
MAX_ID_LENGTH = 256


def invalid(field: str, message: str) -> Rejected:
    """Return a 400 rejection naming ``field``."""
    return Rejected(400, DeadLetterReason.INVALID_EVENT, message, field)


def domain_type(event_name: str) -> EventType | None:
    """Map a track event name such as ``Order Completed`` to a domain type, if any."""
    snake = re.sub(r"[^a-z0-9]+", "_", event_name.strip().lower()).strip("_")
    return EventType(snake) if snake in _DOMAIN_TYPES else None


def _object(msg: dict[str, Any], field: str) -> dict[str, JsonValue]:
    value = msg.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(field, f"{field} must be a JSON object, got {type(value).__name__}")
    return value


def _id_string(msg: dict[str, Any], field: str) -> str | None:
    """Read an id that Segment allows as string or number; blank means absent."""
    value = msg.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise invalid(field, f"{field} must be a string or number")
    text = str(value).strip()
    if len(text) > MAX_ID_LENGTH:
        raise invalid(field, f"{field} is longer than {MAX_ID_LENGTH} characters")
    return text or None


def client_time(source: Source, value: datetime | None, field: str) -> datetime | None:
    """A time the client sent, in ``source``'s zone when it has no offset; a 400 naming
    ``field`` when it is before ``MIN_EVENT_TIME``."""
    value = source.local(value)
    if value is None:
        return None
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    if aware < MIN_EVENT_TIME:
        raise invalid(
            field,
            f"{field} {value.isoformat()} is before {MIN_EVENT_TIME.date()}: no event time "
            "(seconds sent as milliseconds, or a default date?)",
        )
    return value


def parse_timestamp(value: Any, field: str) -> datetime | None:
    """Parse an ISO-8601 time; blank means absent; anything else is a 400 on ``field``."""
    if value is None or value == "":
        return None
    try:
        return _DATETIME.validate_python(value)
    except ValidationError as exc:
        raise invalid(field, f"{field} is not an ISO-8601 timestamp: {value!r}") from exc


def _call_type(msg: dict[str, Any], endpoint_type: EventType | None) -> EventType:
    raw = msg.get("type")
    if endpoint_type is not None and raw in (None, endpoint_type.value):
        return endpoint_type
    if endpoint_type is not None:
        raise invalid("type", f"type {raw!r} does not match endpoint /v1/{endpoint_type}")
    if raw is None:
        raise invalid("type", "type is required")
    if raw not in {t.value for t in SEGMENT_CALL_TYPES}:
        allowed = "identify/track/page/screen/group/alias"
        raise invalid("type", f"type must be one of {allowed}: {raw!r}")
    return EventType(raw)


def _id_value(value: Any) -> bool:
    """Whether a trait's value can be an identifier (a non-blank string or a number)."""
    return not isinstance(value, bool) and isinstance(value, str | int) and bool(str(value).strip())


def _external_ids(context: dict[str, JsonValue]) -> list[tuple[str, str]]:
    """Read Segment's ``context.externalIds`` ([{id, type}]) as (type, value) pairs."""
    raw = context.get("externalIds")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid("context.externalIds", "context.externalIds must be a list")
    pairs = []
    for i, item in enumerate(raw):
        field = f"context.externalIds[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("id"), str | int):
            raise invalid(field, f"{field} must be an object with an id")
        id_type = str(item.get("type", "")).strip().lower()
        if not IDENTIFIER_TYPE.match(id_type):
            raise invalid(f"{field}.type", "identifier type must be lower snake case")
        pairs.append((id_type, str(item["id"])))
    return pairs


def _identifiers(
    msg: dict[str, Any],
    traits: dict[str, JsonValue],
    context: dict[str, JsonValue],
    source: Source,
    region: str,
) -> list[Identifier]:
    pairs: list[tuple[str, str]] = []
    user_id = _id_string(msg, "userId")
    if user_id:
        pairs.append((source.user_id_type, user_id))
    anonymous_id = _id_string(msg, "anonymousId")
    if anonymous_id:
        pairs.append((source.anonymous_id_type, anonymous_id))
    if not pairs:
        raise Rejected(
            400,
            DeadLetterReason.MISSING_IDENTIFIER,
            "one of userId or anonymousId is required",
            "userId",
        )
    for key, value in traits.items():
        trait_type = TRAIT_IDENTIFIERS.get(key)
        if trait_type is not None and _id_value(value):
            pairs.append((trait_type, str(value)))
    device = context.get("device")
    device_id = device.get("id") if isinstance(device, dict) else None
    if isinstance(device_id, str) and device_id.strip():
        pairs.append((IdentifierType.DEVICE_ID, device_id))
    pairs.extend(_external_ids(context))
    seen: dict[str, Identifier] = {}
    for id_type, value in pairs:
        ident = normalize(id_type, value[:MAX_ID_LENGTH], region)
        seen.setdefault(ident.key(), ident)
    return list(seen.values())


def _consent(context: dict[str, JsonValue]) -> dict[str, bool]:
    consent = context.get("consent")
    if not isinstance(consent, dict):
        return {}
    prefs = consent.get("categoryPreferences")
    if not isinstance(prefs, dict):
        return {}
    return {str(k): v for k, v in prefs.items() if isinstance(v, bool)}


def _name(msg: dict[str, Any], call: EventType) -> str | None:
    field = "event" if call == EventType.TRACK else "name"
    value = msg.get(field)
    if call == EventType.TRACK and (not isinstance(value, str) or not value.strip()):
        raise invalid("event", "track calls need a non-empty event name")
    if value is not None and not isinstance(value, str):
        raise invalid(field, f"{field} must be a string")
    return value


def from_segment(
    msg: Any,
    *,
    source: Source,
    received_at: datetime,
    batch_sent_at: datetime | None = None,
    endpoint_type: EventType | None = None,
    default_region: str = DEFAULT_REGION,
) -> Event:
    """Turn one Segment-spec message into a contract event or raise ``Rejected``."""
    if not isinstance(msg, dict):
        raise invalid("", "each event must be a JSON object")
    call = _call_type(msg, endpoint_type)
    context = _object(msg, "context")
    # RudderStack's SDK puts identify traits under context.traits; Segment at the top.
    traits = {**_object(context, "traits"), **_object(msg, "traits")}
    name = _name(msg, call)
    event_type = domain_type(name) if call == EventType.TRACK and name else None
    stamped = msg.get("timestamp") or msg.get("originalTimestamp")
    original = client_time(source, parse_timestamp(stamped, "timestamp"), "timestamp")
    sent = parse_timestamp(msg.get("sentAt"), "sentAt") or batch_sent_at
    sent_at = client_time(source, sent, "sentAt")
    group_id = _id_string(msg, "groupId")
    if call == EventType.GROUP and not group_id:
        raise invalid("groupId", "group calls need a groupId")
    previous_id = _id_string(msg, "previousId")
    if call == EventType.ALIAS and not previous_id:
        raise invalid("previousId", "alias calls need a previousId")
    message_id = _id_string(msg, "messageId")
    try:
        return Event(
            event_id=message_id or str(uuid.uuid4()),
            type=event_type or call,
            name=name,
            channel=source.channel,
            source=source.name,
            identifiers=_identifiers(msg, traits, context, source, default_region),
            previous_id=previous_id,
            group_id=group_id,
            traits=traits,
            properties=_object(msg, "properties"),
            consent=_consent(context),
            context={k: v for k, v in context.items() if k != "traits"},
            original_timestamp=original or received_at,
            sent_at=sent_at,
            received_at=received_at,
            timestamp=corrected_timestamp(original, sent_at, received_at),
        )
    except ValidationError as exc:
        raise from_validation_error(exc, SEGMENT_FIELDS) from exc


#: The Segment message key each contract field comes from, so that a rejection names what
#: the client sent (``messageId``, not ``event_id``).
SEGMENT_FIELDS = {
    "event_id": "messageId",
    "name": "event",
    "previous_id": "previousId",
    "group_id": "groupId",
    "original_timestamp": "timestamp",
    "sent_at": "sentAt",
}


def from_validation_error(exc: ValidationError, names: dict[str, str] | None = None) -> Rejected:
    """Turn pydantic's first error into a rejection that names the field as it was sent."""
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    if loc and names:
        loc[0] = names.get(loc[0], loc[0])
    field = ".".join(loc)
    return invalid(field, f"{field}: {first['msg']}")
