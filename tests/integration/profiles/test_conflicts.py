"""Trait conflicts in real Redis: each policy, the competing values kept, the quality tally."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from contracts.events import Event
from contracts.profiles import Profile
from identity.rules import IdentityRules
from identity.store import IdentityStore, Located
from profiles.fold import FoldRules
from profiles.quality import conflict_report
from profiles.store import ProfileStore
from tests.support.events import ev
from tests.support.services import Services

T0 = datetime(2026, 10, 1, tzinfo=UTC)
MEMBER, EMAIL = ("member_id", "M1"), ("email", "li@x.com")


def age_history() -> list[Event]:
    """One customer whose age differs by 18 years between the POS and the web shop: the POS
    says 34 first and again later, the web shop says 52 three times, last."""
    at = [T0 + timedelta(minutes=m) for m in (0, 10, 20, 30, 25)]
    return [
        ev(1, "identify", "pos", [MEMBER], at[0], traits={"age": 34}),
        ev(2, "identify", "web", [MEMBER, EMAIL], at[1], traits={"age": 52}),
        ev(3, "identify", "web", [EMAIL], at[2], traits={"age": 52}),
        ev(4, "identify", "web", [EMAIL], at[3], traits={"age": 52}),
        ev(5, "identify", "pos", [MEMBER], at[4], traits={"age": 34}),
    ]


class Pipeline:
    """Identity then profiles on a fresh namespace, with the given fold rules."""

    def __init__(self, url: str, rules: FoldRules) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = aioredis.from_url(url)
        self.ns = f"t{uuid.uuid4().hex[:8]}"
        self.identity = IdentityStore(self.client, IdentityRules(), namespace=self.ns)
        self.profiles = ProfileStore(self.client, rules, namespace=self.ns)
        self.offset = 0

    def run(self, events: list[Event]) -> str:
        """Resolve and fold ``events`` as the next records of one raw partition."""
        items = [Located(e, 0, self.offset + n) for n, e in enumerate(events)]
        self.offset += len(events)
        resolved = [
            o.resolved for o in self.loop.run_until_complete(self.identity.resolve(items, T0))
        ]
        self.loop.run_until_complete(self.profiles.apply(resolved, T0))
        return resolved[-1].profile_id

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

    def new(rules: FoldRules) -> Pipeline:
        made.append(Pipeline(services.redis_url, rules))
        return made[-1]

    yield new
    for p in made:
        p.close()


@pytest.mark.parametrize(
    ("policy", "age"),
    [
        ("source_priority", 34),  # pos (70) outranks web (50)
        ("most_recent", 52),  # web reported last
        ("first_seen", 34),  # pos reported first
        ("most_frequent", 52),  # web three times, pos twice
    ],
)
def test_two_channels_disagreeing_on_age_resolve_by_the_traits_policy(
    make: Any, policy: str, age: int
) -> None:
    rules = FoldRules(trait_policies={"age": policy})  # type: ignore[dict-item]
    in_order = make(rules)
    prof = in_order.profile(in_order.run(age_history()))
    assert prof.traits["age"] == age
    assert [(v.value, v.source, v.count) for v in prof.conflicts["age"]] == [
        (52, "web", 3),
        (34, "pos", 2),
    ]
    assert prof.conflicts["age"][0].last_seen == T0 + timedelta(minutes=30)
    # Any order gives the same profile, one event per batch so merges happen in between.
    shuffled = make(rules)
    events = age_history()
    random.Random(policy).shuffle(events)
    pid = ""
    for e in events:
        pid = shuffled.run([e])
    again = shuffled.profile(pid)
    assert again.traits["age"] == age
    assert again.conflicts == prof.conflicts


def test_an_agreeing_trait_shows_no_conflict_and_untracked_traits_keep_nothing(
    make: Any,
) -> None:
    pipe = make(FoldRules())
    pid = pipe.run(
        [
            ev(1, "identify", "pos", [MEMBER], T0, traits={"age": 34, "nickname": "a"}),
            ev(2, "identify", "web", [MEMBER], T0, traits={"age": 34, "nickname": "b"}),
        ]
    )
    prof = pipe.profile(pid)
    assert prof.conflicts == {}
    fields = pipe.loop.run_until_complete(pipe.client.hkeys(f"{pipe.ns}:pf:{prof.profile_id}"))
    assert b"c:age" in fields and b"c:nickname" not in fields


def test_the_quality_report_lists_the_traits_and_source_pairs_that_disagree_most(
    make: Any,
) -> None:
    pipe = make(FoldRules())
    for n in range(3):
        member = ("member_id", f"M{n}")
        pipe.run(
            [
                ev(10 * n + 1, "identify", "pos", [member], T0, traits={"age": 30 + n}),
                ev(10 * n + 2, "identify", "web", [member], T0, traits={"age": 48 + n}),
                ev(10 * n + 3, "identify", "crm", [member], T0, traits={"city": f"C{n}"}),
                ev(10 * n + 4, "identify", "pos", [member], T0, traits={"city": f"C{n}"}),
            ]
        )
    pipe.run([ev(99, "identify", "crm", [("member_id", "M0")], T0, traits={"city": "X"})])
    report = pipe.loop.run_until_complete(conflict_report(pipe.client, pipe.ns, 10))
    assert report == [
        {"trait": "age", "sources": ["pos", "web"], "disagreements": 3},
        {"trait": "city", "sources": ["crm", "pos"], "disagreements": 1},
    ]
