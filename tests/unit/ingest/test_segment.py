from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts.deadletter import DeadLetterReason
from contracts.events import EventType
from ingest.exceptions import Rejected
from ingest.segment import domain_type, from_segment
from ingest.sources import Source, hash_key

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
POS = Source(name="pos-sh", channel="pos", user_id_type="member_id", key_sha256=hash_key("k"))


def take(msg: Any, **kw: Any) -> Any:
    return from_segment(msg, source=POS, received_at=NOW, **kw)


def rejected(msg: Any, **kw: Any) -> Rejected:
    with pytest.raises(Rejected) as info:
        take(msg, **kw)
    return info.value


def test_identify_maps_user_id_by_source_and_trait_identifiers() -> None:
    event = take(
        {
            "type": "identify",
            "messageId": "m1",
            "userId": "M-1",
            "anonymousId": "anon-1",
            "traits": {"email": " Li@Example.com", "phone": "138 0013 8000", "age": 34},
        }
    )
    assert event.event_id == "m1"
    assert event.type == EventType.IDENTIFY
    assert [(i.type, i.value) for i in event.identifiers] == [
        ("member_id", "M-1"),
        ("anonymous_id", "anon-1"),
        ("email", "li@example.com"),
        ("phone", "+8613800138000"),
    ]
    assert event.traits["age"] == 34
    assert (event.channel, event.source) == ("pos", "pos-sh")


def test_rudderstack_identify_traits_under_context_are_read() -> None:
    event = take(
        {
            "type": "identify",
            "userId": "M-1",
            "context": {"traits": {"email": "a@b.com", "name": "A"}, "library": {"name": "r"}},
        }
    )
    assert event.traits == {"email": "a@b.com", "name": "A"}
    assert "traits" not in event.context
    assert ("email", "a@b.com") in [(i.type, i.value) for i in event.identifiers]


def test_top_level_traits_win_over_context_traits() -> None:
    event = take(
        {
            "type": "identify",
            "userId": "M-1",
            "traits": {"name": "top"},
            "context": {"traits": {"name": "ctx", "city": "SH"}},
        }
    )
    assert event.traits == {"name": "top", "city": "SH"}


def test_track_with_a_domain_event_name_is_typed_and_keeps_its_name() -> None:
    event = take(
        {
            "type": "track",
            "userId": "M-1",
            "event": "Order Completed",
            "properties": {"total": 10.5},
        }
    )
    assert (event.type, event.name) == (EventType.ORDER_COMPLETED, "Order Completed")


def test_track_with_another_name_stays_track() -> None:
    assert take({"type": "track", "userId": "M-1", "event": "Banner Clicked"}).type == "track"


def test_domain_type_normalises_names() -> None:
    assert domain_type("ticket-opened ") == EventType.TICKET_OPENED
    assert domain_type("Identify") is None  # call types are not domain events


def test_group_and_alias_fields() -> None:
    group = take({"type": "group", "userId": "M-1", "groupId": "ACME", "traits": {"industry": "x"}})
    assert group.group_id == "ACME"
    assert all(i.type != "company_id" for i in group.identifiers)  # no merging by employer
    alias = take({"type": "alias", "userId": "M-1", "previousId": "anon-9"})
    assert alias.previous_id == "anon-9"


def test_numeric_user_ids_become_strings() -> None:
    assert take({"type": "track", "userId": 42, "event": "x"}).identifiers[0].value == "42"


def test_skew_uses_the_batch_sent_at() -> None:
    event = take(
        {"type": "track", "userId": "M-1", "event": "x", "timestamp": "2026-11-23T13:00:00Z"},
        batch_sent_at=datetime(2026, 11, 23, 13, 0, 5, tzinfo=UTC),
    )
    assert event.timestamp == NOW - timedelta(seconds=5)


def test_context_external_ids_and_device_become_identifiers() -> None:
    event = take(
        {
            "type": "track",
            "anonymousId": "a",
            "event": "x",
            "context": {
                "device": {"id": "dev-1"},
                "externalIds": [{"id": "o-123", "type": "wechat_openid"}],
            },
        }
    )
    assert ("device_id", "dev-1") in [(i.type, i.value) for i in event.identifiers]
    assert ("wechat_openid", "o-123") in [(i.type, i.value) for i in event.identifiers]


def test_consent_category_preferences_are_read() -> None:
    event = take(
        {
            "type": "track",
            "userId": "M-1",
            "event": "x",
            "context": {"consent": {"categoryPreferences": {"marketing_sms": False, "odd": "yes"}}},
        }
    )
    assert event.consent == {"marketing_sms": False}


@pytest.mark.parametrize(
    ("msg", "field", "reason"),
    [
        ({"type": "track", "event": "x"}, "userId", DeadLetterReason.MISSING_IDENTIFIER),
        (
            {"type": "track", "userId": "  ", "event": "x"},
            "userId",
            DeadLetterReason.MISSING_IDENTIFIER,
        ),
        ({"type": "track", "userId": "M"}, "event", DeadLetterReason.INVALID_EVENT),
        (
            {"type": "track", "userId": "M", "event": "x", "properties": [1]},
            "properties",
            DeadLetterReason.INVALID_EVENT,
        ),
        (
            {"type": "identify", "userId": "M", "traits": "x"},
            "traits",
            DeadLetterReason.INVALID_EVENT,
        ),
        ({"type": "identify", "userId": {"a": 1}}, "userId", DeadLetterReason.INVALID_EVENT),
        (
            {"type": "track", "userId": "M", "event": "x", "timestamp": "yesterday"},
            "timestamp",
            DeadLetterReason.INVALID_EVENT,
        ),
        ({"type": "explode", "userId": "M"}, "type", DeadLetterReason.INVALID_EVENT),
        ({"userId": "M"}, "type", DeadLetterReason.INVALID_EVENT),
        ({"type": "group", "userId": "M"}, "groupId", DeadLetterReason.INVALID_EVENT),
        ({"type": "alias", "userId": "M"}, "previousId", DeadLetterReason.INVALID_EVENT),
        (
            {"type": "track", "userId": "M" * 300, "event": "x"},
            "userId",
            DeadLetterReason.INVALID_EVENT,
        ),
        (
            {
                "type": "track",
                "userId": "M",
                "event": "x",
                "context": {"externalIds": [{"id": "1", "type": "Bad Type"}]},
            },
            "context.externalIds[0].type",
            DeadLetterReason.INVALID_EVENT,
        ),
        ("not an object", "", DeadLetterReason.INVALID_EVENT),
    ],
)
def test_bad_messages_name_their_field(msg: Any, field: str, reason: DeadLetterReason) -> None:
    error = rejected(msg)
    assert (error.status, error.field, error.reason) == (400, field, reason)


def test_endpoint_type_is_enforced() -> None:
    assert take({"userId": "M", "event": "x"}, endpoint_type=EventType.TRACK).type == "track"
    error = rejected({"type": "identify", "userId": "M"}, endpoint_type=EventType.TRACK)
    assert error.field == "type"


def test_times_without_an_offset_are_read_in_the_source_zone() -> None:
    # A POS that writes Shanghai wall-clock time: 10:00 there is 02:00 UTC.
    local_pos = POS.model_copy(update={"timezone": "Asia/Shanghai"})
    msg = {"type": "track", "userId": "M-1", "event": "Store Visited"}
    naive = from_segment(
        msg | {"timestamp": "2026-11-23T10:00:00"}, source=local_pos, received_at=NOW
    )
    assert naive.timestamp == datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
    assert naive.original_timestamp == naive.timestamp
    given = from_segment(
        msg | {"timestamp": "2026-11-23T10:00:00+00:00"}, source=local_pos, received_at=NOW
    )
    assert given.timestamp == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # an offset wins
    # Without a zone the same naive time is UTC, two hours ahead of receipt: a clock error,
    # so the event is placed at its receipt time and the claim is kept.
    utc = take(msg | {"timestamp": "2026-11-23T14:00:00"})
    assert utc.timestamp == NOW
    assert utc.original_timestamp == datetime(2026, 11, 23, 14, 0, tzinfo=UTC)
    # sentAt in the same local clock: the skew correction is unchanged.
    skewed = from_segment(
        msg | {"timestamp": "2026-11-23T19:59:50", "sentAt": "2026-11-23T20:00:00"},
        source=local_pos,
        received_at=NOW,
    )
    assert skewed.timestamp == NOW - timedelta(seconds=10)


def test_a_source_zone_must_be_a_real_zone() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        Source(name="x", channel="pos", key_sha256=hash_key("k"), timezone="Asia/Atlantis")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timestamp", 12345),  # seconds where milliseconds were meant: 1970-01-01T03:25:45
        ("timestamp", "0001-01-01T00:00:00Z"),  # a default date
        ("timestamp", "1999-12-31T23:59:59Z"),
        ("sentAt", "1970-01-01T00:00:00Z"),
    ],
)
def test_times_before_2000_are_no_event_times(field: str, value: Any) -> None:
    msg = {"type": "track", "userId": "M-1", "event": "Store Visited", field: value}
    assert rejected(msg).field == field


def test_the_first_day_of_2000_is_an_event_time() -> None:
    msg = {"type": "track", "userId": "M-1", "event": "Store Visited"}
    event = take(msg | {"timestamp": "2000-01-01T00:00:00Z"})
    assert event.timestamp == datetime(2000, 1, 1, tzinfo=UTC)


def test_a_rejection_names_the_key_the_client_sent() -> None:
    msg = {"type": "track", "userId": "M-1", "event": "Store Visited", "messageId": "m" * 200}
    assert rejected(msg).field == "messageId"  # not the contract's event_id
