"""Unified profiles in real Redis: folding, conflicts, merges, order and replay independence."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from contracts.events import Event, ResolvedEvent
from contracts.profiles import Profile
from identity.rules import IdentityRules
from identity.store import IdentityStore, Located
from profiles.fold import FoldRules
from profiles.store import ProfileStore
from tests.support.events import ev as build_event
from tests.support.services import Services

T0 = datetime(2026, 10, 1, tzinfo=UTC)


def ev(
    n: int,
    kind: str,
    channel: str,
    ids: list[tuple[str, str]],
    minutes: int,
    traits: dict[str, Any] | None = None,
    **props: Any,
) -> Event:
    return build_event(
        n, kind, channel, ids, T0 + timedelta(minutes=minutes), traits=traits or {}, **props
    )


def history() -> list[Event]:
    """One customer across POS, app, web and service desk, with conflicting ages."""
    m, e, p = ("member_id", "M1"), ("email", "li@x.com"), ("phone", "+8613800138000")
    return [
        ev(1, "identify", "pos", [m, p], 0, {"age": 34, "name": "Li Wei"}),
        ev(2, "order_completed", "pos", [m], 5, order_id="O1", total=268.5, category="Shoes"),
        ev(3, "identify", "web", [e], 10, {"age": 52, "city": "Shanghai"}),
        ev(
            4,
            "order_completed",
            "web",
            [e],
            20,
            order_id="O2",
            total=99.5,
            products=[{"category": "bags"}],
        ),
        ev(5, "identify", "member_app", [m, e], 30, {"age": 35}),
        ev(6, "order_completed", "member_app", [m], 40, order_id="O1", total=268.5),  # dup order
        ev(7, "ticket_opened", "service_desk", [p], 50, ticket_id="T1", category="complaint"),
        ev(8, "survey_answered", "survey", [p], 60, survey_type="csat", score=4),
        ev(9, "survey_answered", "survey", [e], 70, survey_type="nps", score=6),
        ev(10, "ticket_resolved", "service_desk", [p], 80, ticket_id="T1"),
        ev(11, "points_earned", "member_app", [m], 90, points=268),
        ev(12, "points_redeemed", "pos", [m], 95, points=100),
        ev(13, "survey_answered", "survey", [p], 100, survey_type="csat", score=5),
    ]


class Pipeline:
    """Identity then profiles, as the processors chain them, on a fresh namespace."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = aioredis.from_url(url)
        ns = f"t{uuid.uuid4().hex[:8]}"
        self.identity = IdentityStore(self.client, IdentityRules(), namespace=ns)
        self.profiles = ProfileStore(self.client, FoldRules(), namespace=ns)

    def resolve(self, events: list[Event], offsets: list[int] | None = None) -> list[ResolvedEvent]:
        offsets = offsets or [int(e.event_id[1:]) for e in events]
        items = [Located(e, 0, o) for e, o in zip(events, offsets, strict=True)]
        outcomes = self.loop.run_until_complete(self.identity.resolve(items, T0))
        return [o.resolved for o in outcomes]

    def apply(self, resolved: list[ResolvedEvent]) -> None:
        self.loop.run_until_complete(self.profiles.apply(resolved, T0))

    def run(self, events: list[Event]) -> list[ResolvedEvent]:
        resolved = self.resolve(events)
        self.apply(resolved)
        return resolved

    def profile(self, pid: str) -> Profile:
        found = self.loop.run_until_complete(self.profiles.get(pid))
        assert found is not None
        return found

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


@pytest.fixture
def make(services: Services) -> Iterator[Any]:
    made: list[Pipeline] = []

    def new() -> Pipeline:
        made.append(Pipeline(services.redis_url))
        return made[-1]

    yield new
    for p in made:
        p.close()


def test_one_customer_across_channels_is_one_profile(make: Any) -> None:
    pipe = make()
    resolved = pipe.run(history())
    assert {r.profile_id for r in resolved} == {"1", "2"}  # web was its own until event 5
    assert resolved[4].merged == ["2"]
    prof = pipe.profile("2")
    assert prof.profile_id == "1"
    assert prof.identifiers == ["email:li@x.com", "member_id:M1", "phone:+8613800138000"]
    assert prof.traits["age"] == 35  # member_app (80) beats web (50) and pos (70)
    assert prof.traits["city"] == "Shanghai" and prof.traits["name"] == "Li Wei"
    assert (prof.order_count, prof.total_spend, prof.average_spend) == (2, 368.0, 184.0)
    assert prof.categories == ["bags", "shoes"]
    assert set(prof.channels) == {"pos", "web", "member_app", "service_desk", "survey"}
    assert prof.channels["pos"].events == 3 and prof.events == 13
    assert prof.first_seen == T0 and prof.last_seen == T0 + timedelta(minutes=100)
    assert (prof.csat_last, prof.csat_average, prof.csat_count) == (5, 4.5, 2)
    assert (prof.nps_last, prof.nps_class) == (6, "detractor")
    assert (prof.complaints, prof.open_tickets) == (1, 0)
    assert (prof.points_earned, prof.points_redeemed, prof.points_balance) == (268, 100, 168)
    assert prof.last_purchase_at == T0 + timedelta(minutes=40)


def test_absurd_numbers_are_ignored_not_a_poison_event(make: Any) -> None:
    # Valid JSON that ingest accepts: the fold must take it without raising (a raise would
    # stop the profiles processor on the same event after every restart).
    pipe = make()
    m = [("member_id", "M9")]
    resolved = pipe.run(
        [
            ev(1, "order_completed", "pos", m, 0, order_id="O1", total=1e308),
            ev(2, "order_completed", "pos", m, 1, order_id="O2", total=-1e308),
            ev(3, "order_completed", "pos", m, 2, order_id="O3", revenue=9.3e16),
            ev(4, "order_completed", "pos", m, 3, order_id="O4", total="1e400"),
            ev(5, "points_earned", "member_app", m, 4, points=1e300),
            ev(6, "survey_answered", "survey", m, 5, survey_type="csat", score=1e300),
            ev(7, "order_completed", "pos", m, 6, order_id="O5", total=120.5),
            ev(8, "points_earned", "member_app", m, 7, points=30),
        ]
    )
    prof = pipe.profile(resolved[0].profile_id)
    assert prof.events == 8 and prof.order_count == 5  # the orders happened; amounts absurd
    assert prof.total_spend == 120.5
    assert (prof.points_earned, prof.points_balance) == (30, 30)
    assert prof.csat_last is None


def test_an_order_reported_twice_with_two_amounts_gives_one_answer(make: Any) -> None:
    # A POS says 100, the app says 120 for the same order: whichever arrives first, and
    # whether or not the two reports sat on two profiles that merge later, it counts once
    # at the larger amount. Two partial refunds of one order both count.
    m, e = ("member_id", "M7"), ("email", "m7@x.com")
    pos = ev(1, "order_completed", "pos", [m], 0, order_id="O7", total=100)
    app = ev(2, "order_completed", "member_app", [e], 1, order_id="O7", total=120)
    link = ev(3, "identify", "member_app", [m, e], 2)
    refunds = [
        ev(4, "order_refunded", "pos", [m], 3, order_id="O7", total=30),
        ev(5, "order_refunded", "pos", [m], 4, order_id="O7", total=20),
    ]
    answers = []
    for events in ([pos, app, link, *refunds], [app, pos, *refunds, link], [link, app, pos]):
        pipe = make()
        resolved = pipe.resolve(events, offsets=list(range(len(events))))  # arrival order
        pipe.apply(resolved)
        prof = pipe.profile(resolved[-1].profile_id)
        answers.append((prof.order_count, prof.total_spend, prof.refund_total))
    assert answers == [(1, 120.0, 50.0), (1, 120.0, 50.0), (1, 120.0, 0.0)]


def _snapshot(prof: Profile) -> dict[str, Any]:
    return prof.model_dump(exclude={"profile_id"})


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_out_of_order_and_late_events_give_the_same_profile(make: Any, seed: int) -> None:
    ordered = make()
    expected = _snapshot(ordered.profile(ordered.run(history())[0].profile_id))
    shuffled_events = history()
    random.Random(seed).shuffle(shuffled_events)
    shuffled = make()
    # Events arrive out of event-time order (raw offsets follow arrival); folds then run per
    # profile key in Kafka order but interleaved at random across keys (merge timing varies).
    resolved = shuffled.resolve(shuffled_events, list(range(len(shuffled_events))))
    streams: dict[str, list[ResolvedEvent]] = {}
    for r in resolved:
        streams.setdefault(r.profile_id, []).append(r)
    rng = random.Random(seed + 100)
    while streams:
        key = rng.choice(sorted(streams))
        shuffled.apply([streams[key].pop(0)])
        if not streams[key]:
            del streams[key]
    pids = {
        shuffled.loop.run_until_complete(shuffled.profiles.survivor(r.profile_id)) for r in resolved
    }
    assert len(pids) == 1
    assert _snapshot(shuffled.profile(pids.pop())) == expected


def test_redelivered_offsets_do_not_double_count(make: Any) -> None:
    pipe = make()
    resolved = pipe.run(history())
    before = _snapshot(pipe.profile(resolved[0].profile_id))
    # Replay the whole partition from an earlier offset, identity included.
    again = pipe.resolve(history()[3:])
    pipe.apply(again)
    pipe.apply(resolved[5:])
    assert _snapshot(pipe.profile(resolved[0].profile_id)) == before


def test_a_merged_id_reads_as_its_survivor(make: Any) -> None:
    pipe = make()
    first = pipe.run(history()[:2])[0].profile_id
    web = pipe.run(history()[2:4])[0].profile_id
    pipe.run(history()[4:5])
    assert pipe.profile(web).profile_id == first
    assert pipe.profile(web).order_count == 2


def test_changed_profiles_are_handed_out_until_their_snapshot_is_done(make: Any) -> None:
    pipe = make()
    take = pipe.profiles.take_changed
    assert pipe.loop.run_until_complete(take()) == []
    first = pipe.run(history()[:2])[0].profile_id
    web = pipe.run(history()[2:4])[0].profile_id
    assert pipe.loop.run_until_complete(take()) == sorted([first, web])
    # Not done (a crash before the snapshot was stored): the same set again, even with
    # new changes meanwhile, which wait for the next round.
    pipe.run(history()[4:5])  # merges web into first
    assert pipe.loop.run_until_complete(take()) == sorted([first, web])
    pipe.loop.run_until_complete(pipe.profiles.done_changed())
    assert pipe.loop.run_until_complete(take()) == [first]
    pipe.loop.run_until_complete(pipe.profiles.done_changed())
    # A replayed event changes nothing, so it marks nothing.
    pipe.apply(pipe.resolve(history()[:2]))
    assert pipe.loop.run_until_complete(take()) == []


def test_fold_watermarks_of_the_older_layout_are_honoured_then_moved(make: Any) -> None:
    pipe = make()
    redis, ns = pipe.client, pipe.profiles._ns
    run = pipe.loop.run_until_complete
    # A namespace written by an older version: one hash per profile id, partition -> offset.
    run(redis.hset(f"{ns}:wm:7", mapping={"0": 10, "2": 4}))

    def fold(offset: int) -> bool:
        e = ev(offset, "order_completed", "pos", [("member_id", "M7")], offset, total=10)
        r = ResolvedEvent(event=e, profile_id="7", raw_partition=0, raw_offset=offset)
        return run(pipe.profiles.apply([r], T0))[0].applied

    assert fold(10) is False  # folded before, by the older layout's mark
    assert fold(11) is True
    assert run(pipe.profiles.watermarks("7")) == {"0": 11, "2": 4}

    assert run(pipe.profiles.upgrade_watermarks()) == 1
    assert run(redis.exists(f"{ns}:wm:7")) == 0
    assert run(pipe.profiles.watermarks("7")) == {"0": 11, "2": 4}
    assert fold(11) is False and fold(12) is True
    assert pipe.profile("7").order_count == 2
    assert run(pipe.profiles.upgrade_watermarks()) == 0  # once per namespace
