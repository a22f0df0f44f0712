"""The stream publishes the snapshot of each profile it tagged; the history stores it as is.

Real Redis (the fold, the tag store and its clock), real embedded ClickHouse for the history's
table. What is checked: the published record is the profile exactly as stored, with its tags
and a version from the Redis clock; a profile settled after its snapshot was published is no
longer read back by the history, unless it changed in between; and snapshots of one profile
from the stream and from the history's own reads order by that clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from contracts.events import ResolvedEvent
from contracts.profiles import ProfileSnapshot, ProfileSnapshots
from deploy.settings import Settings
from profiles import agents
from profiles.agents import ProfileStep
from sinks.agents import published_snapshots
from sinks.clickhouse import connect
from sinks.history import SNAPSHOT_COLUMNS, Batch, HistoryWriter, migrate, snapshot_rows
from tests.support.events import ev
from tests.support.services import Services
from tests.support.steps import StepWorld

NOW = datetime(2026, 3, 2, 4, tzinfo=UTC)
MEMBER = [("member_id", "M-1")]


class World(StepWorld):
    def __init__(self, settings: Settings) -> None:
        worker = settings.worker.model_copy(update={"publish_snapshots": True})
        super().__init__(settings.model_copy(update={"worker": worker}))
        self.step = ProfileStep(self.deps)
        self.offset = 0

    def resolve(self, *events: Any) -> list[ResolvedEvent]:
        batch = self.resolve_at(list(events), self.offset, NOW)
        self.offset += len(events)
        return batch

    def dirty(self) -> set[str]:
        members = self.run(self.deps.redis.smembers(f"{self.settings.worker.namespace}:dirty"))
        return {m.decode() for m in members}


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    w = World(settings)
    yield w
    w.close()


def _snapshots(world: World, out: list[Any]) -> list[ProfileSnapshot]:
    topic = world.step.snapshots_topic
    assert topic.endswith("cdp.profiles.snapshots")
    records = [ProfileSnapshots.model_validate_json(r.value) for r in out if r.topic == topic]
    return [s for r in records for s in r.snapshots]


def test_a_tagged_profile_is_published_as_stored_and_not_read_back(world: World) -> None:
    batch = world.resolve(
        ev(1, "order_completed", "pos", MEMBER, NOW, order_id="A", total=30),
        ev(2, "order_completed", "pos", MEMBER, NOW, order_id="B", total=70),
    )
    before = world.run(world.deps.profiles.clock_ns())
    out, shots = world.run(world.step.records(batch, [], NOW))
    published = _snapshots(world, out)
    pid = batch[0].profile_id
    assert [s.profile_id for s in published] == [pid]
    stored = world.run(world.deps.profiles.get(pid))
    assert stored is not None
    # Exactly the profile a reader gets now, tags included.
    assert published[0].profile == stored
    assert "repeat_buyer" in published[0].profile.tags
    assert published[0].profile.order_count == 2
    after = world.run(world.deps.profiles.clock_ns())
    assert before <= published[0].version <= after
    assert pid in world.dirty()  # not published yet: still the history's to read

    world.run(world.deps.profiles.settle(batch, shots))
    assert pid not in world.dirty()  # published and still its state: nothing to read back


def test_a_profile_changed_after_its_snapshot_keeps_its_mark(world: World) -> None:
    batch = world.resolve(ev(1, "order_completed", "pos", MEMBER, NOW, order_id="A", total=30))
    out, shots = world.run(world.step.records(batch, [], NOW))
    assert len(_snapshots(world, out)) == 1
    # Another worker folds the next event of the profile before this one settles.
    later = world.resolve(ev(2, "order_completed", "web", MEMBER, NOW, order_id="B", total=70))
    world.run(world.deps.profiles.apply(later, NOW))
    world.run(world.deps.profiles.settle(batch, shots))
    assert batch[0].profile_id in world.dirty()  # the published state is not the latest


def test_snapshots_of_both_paths_keep_the_newest_state(world: World, services: Services) -> None:
    db = f"snap{uuid.uuid4().hex[:8]}"
    client = connect(None, services.chdb_path)
    migrate(client, db)
    writer = HistoryWriter(client, db)
    batch = world.resolve(ev(1, "order_completed", "pos", MEMBER, NOW, order_id="A", total=30))
    pid = batch[0].profile_id
    out, _ = world.run(world.step.records(batch, [], NOW))
    first = [r for r in out if r.topic == world.step.snapshots_topic]
    # The history read the profile back after a later change (a fold outside this batch).
    later = world.resolve(ev(2, "order_completed", "web", MEMBER, NOW, order_id="B", total=70))
    world.run(world.deps.profiles.apply(later, NOW))
    version = world.run(world.deps.profiles.clock_ns())
    (newest,) = world.run(world.deps.profiles.read([pid]))
    assert newest is not None and newest.profile.order_count == 2
    writer.write(
        Batch("profile_snapshots", SNAPSHOT_COLUMNS, snapshot_rows([newest], version, NOW), "read")
    )
    # The stream's older snapshot arrives after it (a lagging history consumer).
    events = [SimpleNamespace(message=SimpleNamespace(value=r.value)) for r in first]
    rows, bad = published_snapshots(events)
    assert bad == [] and len(rows) == 1
    writer.write(Batch("profile_snapshots", SNAPSHOT_COLUMNS, rows, "published"))
    found = client.query(
        "SELECT JSONExtractInt(snapshot, 'order_count'), count() OVER () "
        f"FROM {db}.profile_snapshots WHERE profile_id = {{p:String}}",
        parameters={"p": pid},
    ).result_rows
    assert found == [(2, 1)]  # the newer state, one row


def test_records_hold_as_many_snapshots_as_fit_and_a_profile_too_big_stays_marked(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = [("member_id", "M-2")]
    batch = world.resolve(
        ev(1, "order_completed", "pos", MEMBER, NOW, order_id="A", total=30),
        ev(2, "order_completed", "pos", other, NOW, order_id="B", total=70),
    )
    out, shots = world.run(world.step.records(batch, [], NOW))
    one = [r for r in out if r.topic == world.step.snapshots_topic]
    assert len(one) == 1 and len(shots) == 2  # both profiles in one record
    size = max(len(s.model_dump_json()) for s in _snapshots(world, out))

    # Room for one snapshot per record: two records, each keyed by its profile.
    monkeypatch.setattr(agents, "SNAPSHOTS_RECORD_BYTES", size + 50)
    out, shots = world.run(world.step.records(batch, [], NOW))
    two = [r for r in out if r.topic == world.step.snapshots_topic]
    assert sorted(r.key.decode() for r in two) == sorted({r.profile_id for r in batch})

    # A profile bigger than a record: not published, so the history reads it back.
    monkeypatch.setattr(agents, "SNAPSHOTS_RECORD_BYTES", 100)
    out, shots = world.run(world.step.records(batch, [], NOW))
    assert _snapshots(world, out) == [] and shots == []
    world.run(world.deps.profiles.settle(batch, shots))
    assert {r.profile_id for r in batch} <= world.dirty()


def test_marks_wait_one_interval_so_published_profiles_are_not_read_back(world: World) -> None:
    profiles = world.deps.profiles

    def take(age: bool) -> list[str]:
        taken: list[str] = world.run(profiles.take_changed(age=age))
        world.run(profiles.done_changed())
        return taken

    batch = world.resolve(ev(1, "order_completed", "pos", MEMBER, NOW, order_id="A", total=30))
    published = batch[0].profile_id
    _, shots = world.run(world.step.records(batch, [], NOW))  # folded, tagged: marked
    assert take(age=True) == []  # the marks wait an interval first
    other = world.resolve(ev(2, "identify", "pos", [("member_id", "M-2")], NOW))
    world.run(profiles.apply(other, NOW))  # changed, and no snapshot published for it
    world.run(profiles.settle(batch, shots))  # published meanwhile: unmarked
    assert take(age=True) == []
    assert take(age=True) == [other[0].profile_id]  # read back an interval later
    assert take(age=True) == []

    # Without aging (the stop, publishing off) every mark is taken at once.
    world.run(profiles.apply(world.resolve(ev(3, "identify", "pos", MEMBER, NOW)), NOW))
    assert take(age=True) == []
    world.run(
        profiles.apply(world.resolve(ev(4, "identify", "web", [("member_id", "M-2")], NOW)), NOW)
    )
    assert take(age=False) == sorted([published, other[0].profile_id])
