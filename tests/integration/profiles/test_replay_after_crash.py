"""A worker that dies between folding a batch and publishing its change records loses none.

The fold's watermark makes the redelivered batch a no-op for the profile, so its change
would be gone: the fold holds it in Redis until the publish is acked (``settle``). Real Redis;
the profile step is the one the processor runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from contracts.events import ResolvedEvent
from contracts.segments import SegmentDefinition
from deploy.settings import Settings
from identity.store import Located
from profiles.agents import ProfileStep
from segments.agents import LiveMembership
from segments.store import SegmentStore
from tests.support.events import ev
from tests.support.steps import StepWorld

NOW = datetime(2026, 3, 2, 4, tzinfo=UTC)
MEMBER = [("member_id", "M-1")]


class World(StepWorld):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        assert self.deps.tags is not None
        store = SegmentStore(self.deps.redis, settings.worker.namespace)
        repeat = SegmentDefinition.model_validate({"definition": {"tag": "repeat_buyer"}})
        self.run(store.put(repeat, "repeat", create=True))
        self.members_topic = settings.kafka.topic("cdp.segments.membership")
        self.deps.membership = LiveMembership(store, self.deps.tags.catalog, self.members_topic, 0)
        self.step = ProfileStep(self.deps)

    def resolve(self) -> list[ResolvedEvent]:
        # Two orders of one member: the second makes a repeat buyer (a tag, a live segment).
        events = [
            ev(1, "order_completed", "pos", MEMBER, NOW, order_id="A", total=30),
            ev(2, "order_completed", "pos", MEMBER, NOW, order_id="B", total=70),
        ]
        return self.resolve_at(events, 0, NOW)

    def told(self, batch: list[ResolvedEvent]) -> tuple[list[dict[str, Any]], list[str]]:
        """What one delivery of ``batch`` would publish: change records, membership changes."""
        out, _ = self.run(self.step.records(batch, [], NOW))
        changes = [json.loads(r.value) for r in out if r.topic == self.step.changes_topic]
        members = [json.loads(r.value)["change"] for r in out if r.topic == self.members_topic]
        return changes, members

    def orders(self, pid: str) -> tuple[int, int]:
        found = self.run(self.deps.profiles.get(pid))
        assert found is not None
        return found.order_count, found.events


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    w = World(settings)
    yield w
    w.close()


def test_a_batch_redelivered_after_a_crash_tells_its_changes_again(world: World) -> None:
    batch = world.resolve()
    first, entered = world.told(batch)  # ... and the worker dies before publishing them
    assert [c["event_id"] for c in first] == ["e1", "e2"]
    assert "repeat_buyer" in first[-1]["tags_added"]
    assert entered == ["enter"]

    again, entered_again = world.told(batch)  # redelivered: the fold is not applied twice
    assert world.orders(batch[0].profile_id) == (2, 2)
    assert [(c["event_id"], c["changed"]) for c in again] == [
        (c["event_id"], c["changed"]) for c in first
    ]
    assert again[-1]["tags_added"] == first[-1]["tags_added"]
    assert entered_again == ["enter"]

    # Published and settled: a later redelivery is a no-op again.
    world.run(world.deps.profiles.settle(batch))
    assert world.told(batch) == ([], [])
    assert world.orders(batch[0].profile_id) == (2, 2)


def test_a_crash_before_tagging_still_tags_and_tells(world: World) -> None:
    batch = world.resolve()
    world.run(world.deps.profiles.apply(batch, NOW))  # folded; died before tags and publish
    again, entered = world.told(batch)
    assert [c["event_id"] for c in again] == ["e1", "e2"]
    assert "repeat_buyer" in again[-1]["tags_added"]
    assert entered == ["enter"]
    assert world.orders(batch[0].profile_id) == (2, 2)


def test_a_fold_told_again_names_the_profile_it_changed_even_if_merged_since(
    world: World,
) -> None:
    phone = [("phone", "+8613800138000")]
    events = [
        ev(1, "order_completed", "pos", MEMBER, NOW, order_id="A", total=30),
        ev(2, "order_completed", "web", phone, NOW, order_id="B", total=70),
        ev(3, "identify", "web", [*MEMBER, *phone], NOW),
    ]
    located = [Located(e, 0, n) for n, e in enumerate(events)]

    def resolve(part: list[Located]) -> list[ResolvedEvent]:
        return [o.resolved for o in world.run(world.deps.identity.resolve(part, NOW))]

    batch = resolve(located[:2])
    first, _ = world.told(batch)  # folded and published: two profiles ...
    told = [(c["event_id"], c["profile_id"]) for c in first]
    assert len({pid for _, pid in told}) == 2
    later = resolve(located[2:])
    assert later[0].merged  # ... which the next event merges
    # ... the merge is folded, and the worker dies before settling the first batch.
    world.told(later)
    again, _ = world.told(batch)
    # The same records as first told (history keys them by profile and event).
    assert [(c["event_id"], c["profile_id"]) for c in again] == told
    fields = [[f for f in c["changed"] if f != "tags"] for c in first]
    assert [[f for f in c["changed"] if f != "tags"] for c in again] == fields
    # The merged-away profile's tags left with the merge: none told for it again.
    assert again[1]["tags_added"] == again[1]["tags_removed"] == []
