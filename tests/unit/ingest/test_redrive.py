"""The pure parts of a re-drive: which letters can go again, their bodies, their ids."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from contracts.deadletter import DeadLetter, DeadLetterReason
from ingest import intake as take
from ingest.deadletters import Filter, Stored
from ingest.exceptions import Rejected
from ingest.limits import Limits
from ingest.redrive import (
    NO_INPUT,
    PROCESSOR,
    SUMMARY,
    TRUNCATED,
    message_id,
    request_body,
    unredrivable,
)
from ingest.redrive import _placed as placed
from ingest.redrive import _with_ids as with_ids
from tests.support.keys import known_sources

AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def letter(**update: Any) -> DeadLetter:
    base: dict[str, Any] = {
        "reason": DeadLetterReason.INVALID_EVENT,
        "field": "batch[2].event",
        "message": "track calls need a non-empty event name",
        "index": 2,
        "status": 200,
        "source": "test-pos",
        "endpoint": "/v1/batch",
        "received_at": AT,
        "request_id": "r1",
        "payload": {"type": "track", "userId": "M-1"},
    }
    return DeadLetter(**(base | update))


def test_what_cannot_be_redriven_says_why() -> None:
    assert unredrivable(letter()) is None
    assert unredrivable(letter(count=7)) == SUMMARY
    assert unredrivable(letter(endpoint="processor:identity")) == PROCESSOR
    assert unredrivable(letter(payload=None, raw="{", raw_truncated=True)) == TRUNCATED
    assert unredrivable(letter(payload=None)) == NO_INPUT
    assert unredrivable(letter(payload=None, sealed="v1:abc")) is None  # opened later


def test_an_events_letter_becomes_a_request_of_that_one_event() -> None:
    one = letter()
    assert request_body(one, "batch") == {"batch": [one.payload]}
    assert request_body(one, "native") == [one.payload]
    assert request_body(letter(index=None, endpoint="/v1/track"), "single") == one.payload
    whole = letter(index=None, payload=None, raw='{"batch": []}')
    assert request_body(whole, "batch") == {"batch": []}
    with pytest.raises(Rejected) as bad:
        request_body(letter(index=None, payload=None, raw="{nope"), "batch")
    assert bad.value.reason == DeadLetterReason.MALFORMED_JSON


def test_ids_are_derived_only_where_missing_and_the_same_every_time() -> None:
    body = {"batch": [{"messageId": "given"}, {"type": "track"}, {"messageId": ""}]}
    first = with_ids("batch", body, "r1", 0)
    assert [m["messageId"] for m in first["batch"]] == [
        "given",
        message_id("r1", 1),
        message_id("r1", 2),
    ]
    assert with_ids("batch", body, "r1", 0) == first
    assert message_id("r1", 1) != message_id("r2", 1) != message_id("r1", 2)
    # An event's letter keeps its index in the original batch.
    assert with_ids("native", [{"type": "track"}], "r1", 5)[0]["event_id"] == message_id("r1", 5)
    assert with_ids("single", {"type": "page"}, "r9", 0)["messageId"] == message_id("r9", 0)
    assert with_ids("native", {"events": [{}]}, "r1", 0) == {
        "events": [{"event_id": message_id("r1", 0)}]
    }


def test_a_one_event_rejection_is_placed_back_at_its_index() -> None:
    again = Rejected(400, DeadLetterReason.INVALID_EVENT, "m", "batch[0].event", 0)
    moved = placed(again, 7)
    assert (moved.field, moved.index) == ("batch[7].event", 7)
    assert placed(again, None) is again


def test_a_batch_letter_keeps_the_batch_context_and_sent_at() -> None:
    stamp = take.Stamp(known_sources()[0], AT, Limits(), "CN")
    body = {
        "batch": [{"type": "track", "userId": "M-1"}, {"type": "track", "userId": "M-1"}],
        "context": {"ip": "10.0.0.1"},
        "sentAt": "2026-11-30T11:59:00Z",
    }
    body["batch"][0]["event"] = "Tick"
    result = take.segment_batch(body, stamp)
    assert len(result.events) == 1
    (rejected, payload), *_ = result.rejections
    assert rejected.field == "batch[1].event"
    assert payload["context"] == {"ip": "10.0.0.1"}
    assert payload["sentAt"] == "2026-11-30T11:59:00Z"
    assert result.events[0].context == {"ip": "10.0.0.1"}


def test_filters_take_reason_source_field_and_time() -> None:
    stored = Stored("0-4", letter(), "test-pos")
    assert Filter().admits(stored)
    assert Filter(reasons=frozenset({"invalid_event"}), source="test-pos").admits(stored)
    assert not Filter(reasons=frozenset({"unauthorized"})).admits(stored)
    assert Filter(field="event").admits(stored)
    assert not Filter(field="userId").admits(stored)
    assert Filter(since=AT, until=datetime(2026, 12, 1, tzinfo=UTC)).admits(stored)
    assert not Filter(until=AT).admits(stored)
    assert Filter(since=datetime(2026, 11, 30, 11, 0)).admits(stored)  # no offset: UTC
    assert not Filter(since=datetime(2026, 11, 30, 13, 0)).admits(stored)
    assert not Filter(source="unknown").admits(stored)
    assert Filter(source="unknown").admits(Stored("1-1", letter(source=None), None))
    assert Filter(ids=frozenset({"0-4"})).admits(stored)
