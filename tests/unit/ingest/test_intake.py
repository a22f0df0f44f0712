import gzip
import zlib
from datetime import UTC, datetime

import pytest

from contracts.deadletter import DeadLetterReason
from ingest import intake
from ingest.body import decode, parse_json
from ingest.exceptions import Rejected
from ingest.limits import Limits
from ingest.sources import Source, SourceRegistry, hash_key, new_key

NOW = datetime(2026, 11, 23, tzinfo=UTC)
WEB = Source(name="web", channel="web", key_sha256=hash_key("k"))
LIMITS = Limits()
STAMP = intake.Stamp(WEB, NOW, LIMITS, "CN")


def batch(body: object) -> intake.Intake:
    return intake.segment_batch(body, STAMP)


def test_a_batch_accepts_the_valid_and_reports_each_invalid_event() -> None:
    result = batch(
        {
            "batch": [
                {"type": "track", "userId": "u1", "event": "a"},
                {"type": "track", "userId": "u1"},
                {"type": "page", "anonymousId": "x"},
                {"type": "identify"},
            ]
        }
    )
    assert (result.received, len(result.events), len(result.rejections)) == (4, 2, 2)
    assert [r.field for r, _ in result.rejections] == ["batch[1].event", "batch[3].userId"]
    assert [r.index for r, _ in result.rejections] == [1, 3]
    assert result.status == 200


def test_a_batch_with_nothing_valid_is_a_400() -> None:
    result = batch({"batch": [{"type": "track"}]})
    assert result.status == 400


def test_batch_context_applies_under_each_message() -> None:
    result = batch(
        {
            "context": {"library": {"name": "lib"}, "ip": "1.1.1.1"},
            "batch": [{"type": "track", "userId": "u", "event": "a", "context": {"ip": "2.2.2.2"}}],
        }
    )
    assert result.events[0].context == {"library": {"name": "lib"}, "ip": "2.2.2.2"}


def test_an_oversized_event_is_rejected_alone() -> None:
    big = {"type": "track", "userId": "u", "event": "a", "properties": {"x": "y" * 40_000}}
    result = batch({"batch": [big, {"type": "track", "userId": "u", "event": "b"}]})
    assert len(result.events) == 1
    rejection, payload = result.rejections[0]
    assert (rejection.status, rejection.reason, rejection.field) == (
        413,
        DeadLetterReason.EVENT_TOO_LARGE,
        "batch[0]",
    )
    assert payload == big


def test_too_many_events_is_a_413() -> None:
    with pytest.raises(Rejected) as info:
        batch({"batch": [{"type": "page", "anonymousId": "a"}] * 2501})
    assert (info.value.status, info.value.reason) == (413, DeadLetterReason.TOO_MANY_EVENTS)


def test_a_body_without_a_batch_array_is_a_400() -> None:
    with pytest.raises(Rejected) as info:
        batch({"events": []})
    assert info.value.field == "batch"


def test_native_takes_one_event_an_array_or_an_events_object() -> None:
    one = {"type": "ticket_opened", "identifiers": [{"type": "email", "value": "A@B.com"}]}
    for body in (one, [one, one], {"events": [one]}):
        result = intake.native(body, STAMP)
        assert result.events and not result.rejections
        assert result.events[0].identifiers[0].value == "a@b.com"


def test_native_times_without_an_offset_are_read_in_the_source_zone() -> None:
    erp = Source(name="erp", channel="erp", key_sha256=hash_key("e"), timezone="Asia/Shanghai")
    stamp = intake.Stamp(erp, NOW, LIMITS, "CN")
    one = {
        "type": "order_completed",
        "identifiers": [{"type": "customer_id", "value": "C-1"}],
        "original_timestamp": "2026-11-22T20:30:00",
        "sent_at": "2026-11-23T08:00:00",
    }
    [event] = intake.native(one, stamp).events
    assert event.original_timestamp == datetime(2026, 11, 22, 12, 30, tzinfo=UTC)
    assert event.sent_at == datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
    assert event.timestamp == NOW - (event.sent_at - event.original_timestamp)


def test_native_errors_name_the_field_path() -> None:
    body = {"events": [{"type": "ticket_opened", "identifiers": [{"type": "email"}]}]}
    result = intake.native(body, STAMP)
    assert result.rejections[0][0].field == "events[0].identifiers.0.value"


def test_native_rejects_unknown_fields_and_types() -> None:
    body = [
        {"type": "teleported", "identifiers": [{"type": "email", "value": "a@b.com"}]},
        {"type": "track", "identifiers": [{"type": "email", "value": "a@b.com"}], "x": 1},
    ]
    result = intake.native(body, STAMP)
    assert [r.field for r, _ in result.rejections] == ["events[0].type", "events[1].x"]


def test_gzip_and_deflate_bodies_are_inflated() -> None:
    assert decode(gzip.compress(b'{"a":1}'), "gzip", 100) == b'{"a":1}'
    assert decode(zlib.compress(b'{"a":1}'), "deflate", 100) == b'{"a":1}'


def test_inflating_past_the_limit_is_a_413_not_a_memory_blowup() -> None:
    bomb = gzip.compress(b"0" * 10_000_000)
    with pytest.raises(Rejected) as info:
        decode(bomb, "gzip", 500 * 1024)
    assert info.value.status == 413


@pytest.mark.parametrize(
    ("body", "encoding", "status"),
    [
        (b"not gzip", "gzip", 400),
        (gzip.compress(b"{}")[:-8], "gzip", 400),
        (b"{}", "br", 415),
    ],
)
def test_bad_encodings(body: bytes, encoding: str, status: int) -> None:
    with pytest.raises(Rejected) as info:
        decode(body, encoding, 1000)
    assert info.value.status == status
    assert info.value.field == "Content-Encoding"


def test_malformed_json_is_a_400_naming_the_body() -> None:
    with pytest.raises(Rejected) as info:
        parse_json(b'{"batch": [')
    assert (info.value.status, info.value.field) == (400, "body")


def test_registry_finds_sources_by_key_and_never_stores_keys() -> None:
    key = new_key()
    source = Source(name="pos", channel="pos", key_sha256=hash_key(key))
    registry = SourceRegistry([source])
    assert registry.authenticate(key) == source
    assert registry.authenticate("wrong") is None
    assert registry.authenticate(None) is None
    assert key not in source.model_dump_json()
