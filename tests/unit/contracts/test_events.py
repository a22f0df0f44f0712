from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from contracts.events import Event, Identifier, corrected_timestamp, identifier_rank
from contracts.schema import drifted

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def test_clock_skew_is_corrected_like_segment() -> None:
    # The client's clock runs 1 hour fast; the event happened 10 s before it was sent.
    original = T0 + timedelta(hours=1) - timedelta(seconds=10)
    sent_at = T0 + timedelta(hours=1)
    received_at = T0 + timedelta(seconds=2)
    assert corrected_timestamp(original, sent_at, received_at) == T0 - timedelta(seconds=8)


def test_without_sent_at_the_original_timestamp_is_trusted() -> None:
    assert corrected_timestamp(T0, None, T0 + timedelta(days=1)) == T0


def test_without_any_client_time_receipt_time_is_used() -> None:
    assert corrected_timestamp(None, None, T0) == T0


def test_naive_times_are_read_as_utc() -> None:
    naive = datetime(2026, 11, 1, 12, 0)
    assert corrected_timestamp(naive, naive, naive) == T0


def test_a_time_far_ahead_of_receipt_is_taken_as_a_clock_error() -> None:
    received = T0
    assert corrected_timestamp(datetime(2099, 1, 1, tzinfo=UTC), None, received) == received
    # A few minutes ahead is ordinary drift of a device clock: kept.
    ahead = received + timedelta(minutes=9)
    assert corrected_timestamp(ahead, None, received) == ahead
    assert corrected_timestamp(received + timedelta(minutes=11), None, received) == received
    # An event time after its own send time (a client bug) cannot be corrected either.
    later = corrected_timestamp(T0 + timedelta(hours=2), T0, received)
    assert later == received


def _event(*identifiers: Identifier) -> Event:
    return Event(
        event_id="e1",
        type="track",
        name="x",
        channel="pos",
        source="s",
        identifiers=list(identifiers),
        original_timestamp=T0,
        received_at=T0,
        timestamp=T0,
    )


def test_partition_key_is_the_strongest_identifier() -> None:
    event = _event(
        Identifier(type="anonymous_id", value="a1"),
        Identifier(type="email", value="x@y.com"),
        Identifier(type="member_id", value="M1"),
    )
    assert event.partition_key() == b"member_id:M1"


def test_custom_identifier_types_rank_between_platform_ids_and_company() -> None:
    assert identifier_rank("platform_user_id") < identifier_rank("loyalty_card")
    assert identifier_rank("loyalty_card") < identifier_rank("company_id")


def test_event_needs_an_identifier() -> None:
    with pytest.raises(ValidationError) as info:
        _event()
    assert info.value.errors()[0]["loc"] == ("identifiers",)


def test_events_are_frozen() -> None:
    event = _event(Identifier(type="email", value="x@y.com"))
    with pytest.raises(ValidationError):
        event.name = "changed"  # type: ignore[misc]


def test_checked_in_json_schemas_match_the_models() -> None:
    assert drifted() == [], "run `cdp contracts export` and commit contracts/schemas"
