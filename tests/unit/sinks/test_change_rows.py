"""The history reads profile changes as JSON: what the validated contract would hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from contracts.profiles import ProfileChange
from sinks.agents import change_items
from sinks.history import Change, change_batch, ms, read_change, tag_batch

AT = datetime(2026, 12, 2, 6, 0, 0, 987654, tzinfo=UTC)

CASES = {
    "a fold": ProfileChange(profile_id="42", event_id="e-1", changed=["events", "n:orders"], at=AT),
    "every field": ProfileChange(
        profile_id="42",
        event_id="e-2",
        changed=["merged", "tags"],
        merged=["7", "8"],
        tags_added=["vip", "新客"],
        tags_removed=["lapsed"],
        at=datetime(2026, 12, 2, 14, 0, tzinfo=timezone(timedelta(hours=8))),
    ),
    "naive time read as UTC": ProfileChange(
        profile_id="1", event_id="e-3", changed=[], at=datetime(2025, 1, 1, 3)
    ),
}


def _as_change(c: ProfileChange) -> Change:
    return Change(c.profile_id, c.event_id, c.changed, c.merged, c.tags_added, c.tags_removed, c.at)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_json_reading_stores_the_rows_of_the_validated_record(case: ProfileChange) -> None:
    read = read_change(case.model_dump_json().encode())
    assert change_batch([read], "t").rows == change_batch([case], "t").rows
    assert tag_batch([read], "t").rows == tag_batch([case], "t").rows
    assert read._replace(at=ms(read.at)) == _as_change(case)._replace(at=ms(case.at))


def test_times_are_stored_as_epoch_milliseconds() -> None:
    (row,) = change_batch([CASES["every field"]], "t").rows
    assert row[4] == ms(datetime(2026, 12, 2, 6, 0, tzinfo=UTC)) == 1_796_191_200_000
    assert ms(AT) == 1_796_191_200_987  # truncated to the millisecond, as DateTime64(3) keeps


def _message(value: bytes) -> Any:
    return SimpleNamespace(message=SimpleNamespace(value=value))


def test_a_record_the_json_reading_cannot_vouch_for_goes_through_the_contract() -> None:
    good = CASES["every field"]
    epoch = good.model_dump(mode="json") | {"at": 1_764_655_200}  # pydantic reads a number
    unknown = good.model_dump(mode="json") | {"colour": "red"}  # the contract refuses it
    wrong = good.model_dump(mode="json") | {"changed": "tags"}  # not a list
    newer = good.model_dump(mode="json") | {"schema_version": 2}
    events = [
        _message(good.model_dump_json().encode()),
        _message(b"{not json"),
        _message(orjson.dumps(epoch)),
        _message(orjson.dumps(unknown)),
        _message(orjson.dumps(wrong)),
        _message(orjson.dumps(newer)),
    ]
    items = change_items(events)
    assert items == [
        _as_change(good),
        _as_change(ProfileChange.model_validate(epoch)),
        _as_change(ProfileChange.model_validate(newer)),
    ]
