"""The records the hot path constructs without validation are whole, and built without
pydantic calling a default factory (which inspects its signature on every call: ~100 us)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic.fields import FieldInfo

from contracts.events import Channel, Event, EventType, Identifier, ResolvedEvent
from contracts.profiles import ProfileChange
from identity.store import Located, to_outcome
from profiles.store import ProfileStore

AT = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
def no_default_factories(monkeypatch: pytest.MonkeyPatch) -> None:
    original = FieldInfo.get_default

    def get_default(self: FieldInfo, *args: Any, **kwargs: Any) -> Any:
        assert self.default_factory is None, "a field with a default factory was left out"
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FieldInfo, "get_default", get_default)


def _event() -> Event:
    return Event(
        event_id="e1",
        type=EventType.TRACK,
        name="Order Completed",
        channel=Channel.POS,
        source="pos",
        identifiers=[Identifier(type="member_id", value="M1")],
        original_timestamp=AT,
        received_at=AT,
        timestamp=AT,
    )


def test_an_outcome_is_a_whole_resolved_event(no_default_factories: None) -> None:
    answer = {"pid": "7", "merges": [], "refusals": [], "dup": 0, "created": 1, "seq": 3}
    outcome = to_outcome(Located(_event(), 2, 40), answer, AT)
    again = ResolvedEvent.model_validate(outcome.resolved.model_dump())
    assert again == outcome.resolved
    assert (again.profile_id, again.raw_partition, again.raw_offset) == ("7", 2, 40)
    assert again.resolution == 3


def test_a_fold_answer_is_a_whole_profile_change(no_default_factories: None) -> None:
    resolved = ResolvedEvent(
        event=_event(), profile_id="7", raw_partition=2, raw_offset=40, merged=["9"]
    )
    applied = ProfileStore._applied(resolved, {"pid": "7", "applied": 1, "changed": ["n:o"]}, AT)
    assert applied.change is not None
    again = ProfileChange.model_validate(applied.change.model_dump())
    assert again == applied.change
    assert (again.changed, again.merged, again.tags_added) == (["n:o"], ["9"], [])
