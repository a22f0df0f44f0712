"""The history reads resolved events as JSON: the same rows as from the validated contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from contracts.events import Event, Identifier, ResolvedEvent
from sinks.agents import event_rows
from sinks.history import event_row, resolved_row

NOW = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)
SHANGHAI = timezone(timedelta(hours=8))


def _resolved(**over: Any) -> ResolvedEvent:
    event: dict[str, Any] = {
        "event_id": "e-1",
        "type": "order_completed",
        "name": "Order Completed",
        "channel": "pos",
        "source": "pos-shanghai",
        "identifiers": [Identifier(type="member_id", value="M-1")],
        "original_timestamp": datetime(2025, 3, 1, 12, 30, tzinfo=SHANGHAI),
        "received_at": NOW,
        "timestamp": datetime(2025, 3, 1, 4, 30, 0, 500, tzinfo=UTC),
    }
    event.update(over.pop("event", {}))
    fields: dict[str, Any] = {"profile_id": "42", "raw_partition": 3, "raw_offset": 9}
    return ResolvedEvent(event=Event(**event), **(fields | over))


CASES = {
    "plain order": _resolved(),
    "every field": _resolved(
        event={
            "type": "identify",
            "name": None,
            "channel": "mini_program",
            "identifiers": [
                Identifier(type="phone", value="~abcdefghijklmnopqrstuv", sealed="v1.k.x"),
                Identifier(type="email", value="not an email", normalized=False),
                Identifier(type="loyalty_card", value="L-9"),
            ],
            "group_id": "acme",
            "traits": {"name": "王小明", "age": 31, "vip": True, "nested": {"a": [1, 2.5]}},
            "properties": {"order_id": 12345, "total": 99.9, "items": [{"sku": "A"}]},
            "consent": {"marketing_sms": False, "email": True},
            "context": {"ip": "10.0.0.1"},
            "sent_at": datetime(2025, 3, 1, 12, 31, tzinfo=SHANGHAI),
        },
        merged=["7", "8"],
        resolution=1234,
    ),
    "amount as revenue, a bool total ignored": _resolved(
        event={"properties": {"total": True, "revenue": 10}}
    ),
    "naive times read as UTC": _resolved(
        event={"timestamp": datetime(2025, 1, 1), "received_at": datetime(2025, 1, 2, 3)}
    ),
    "no profile (junk identifiers only)": _resolved(profile_id=""),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_json_row_is_the_row_of_the_validated_record(case: ResolvedEvent) -> None:
    value = case.model_dump_json().encode()
    assert resolved_row(value, 3, 9, NOW) == event_row(case, 3, 9, NOW)


def _message(value: bytes, offset: int) -> Any:
    return SimpleNamespace(message=SimpleNamespace(value=value, partition=0, offset=offset))


def test_a_record_the_json_reading_cannot_vouch_for_goes_through_the_contract() -> None:
    good = _resolved()
    newer = good.model_dump(mode="json") | {"schema_version": 2}  # the contract decides
    unknown = good.model_dump(mode="json")
    unknown["event"]["type"] = "teleported"  # the contract refuses it
    events = [
        _message(good.model_dump_json().encode(), 0),
        _message(b"{not json", 1),
        _message(orjson.dumps(newer), 2),
        _message(orjson.dumps(unknown), 3),
    ]
    rows = event_rows(events, NOW)
    assert [(part, off) for _, part, off in rows] == [(0, 0), (0, 2)]
    assert rows[1][0] == event_row(ResolvedEvent.model_validate(newer), 0, 2, NOW)
