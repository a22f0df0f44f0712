"""The care processor at a fixed clock, on real Redis with profiles folded as the stream folds
them (no Kafka: its records are collected). The clock is injected here only."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from care.processor import Care
from care.rules import CareRule, for_catalog
from care.store import CareStore
from contracts.events import ResolvedEvent
from identity.store import Located
from runtime.publisher import Record
from tests.integration.tagging.test_tags import Tagged
from tests.support.events import ev
from tests.support.services import Services

ZONE = ZoneInfo("Asia/Shanghai")


class Harness:
    """Care over a Tagged namespace; published task records are kept in ``out``."""

    def __init__(self, t: Tagged, rules: list[CareRule] | None = None) -> None:
        self.t = t
        self.out: list[Record] = []

        async def publish(records: list[Record]) -> None:
            self.out += records

        self.care = Care(
            rules if rules is not None else for_catalog(None, t.tags.catalog),
            CareStore(t.client, t.ns),
            t.profiles,
            ZONE,
            publish,
            "cdp.care.tasks",
            deliver=True,
        )
        self.n = 0

    def fold(self, kind: str, member: str, at: datetime, **kw: Any) -> list[ResolvedEvent]:
        """One event resolved and folded as the stream does; its resolved form."""
        self.n += 1
        event = ev(self.n, kind, "pos", [("member_id", member)], at, **kw)
        located = [Located(event, 0, self.t.offset)]
        self.t.offset += 1
        run = self.t.loop.run_until_complete
        resolved = [o.resolved for o in run(self.t.identity.resolve(located, at))]
        run(self.t.profiles.apply(resolved, at))
        return resolved

    def run(self, coro: Any) -> Any:
        return self.t.loop.run_until_complete(coro)

    def tasks(self) -> list[tuple[str, str, str]]:
        import json

        return [
            (v["rule"], v["occasion"], v["state"])
            for v in (json.loads(r.value) for r in self.out if r.value is not None)
        ]


@pytest.fixture
def h(services: Services) -> Iterator[Harness]:
    t = Tagged(services.redis_url)
    try:
        yield Harness(t)
    finally:
        t.close()


def rule(h: Harness, rule_id: str) -> CareRule:
    return h.care.rules[rule_id]


def test_a_birthday_across_the_year_end_fires_once_then_next_year(h: Harness) -> None:
    now = datetime(2026, 12, 30, 10, tzinfo=ZONE)
    (r,) = h.fold("identify", "M-1", now, traits={"birthday": "1990-01-03"})
    birthday = rule(h, "birthday_in_7_days")
    h.run(h.care.schedule_date(birthday, r.profile_id, now))
    assert h.run(h.care.fire_due(now)) == 1
    assert h.tasks() == [("birthday_in_7_days", "2027-01-03", "open")]
    # Again, and scheduled again (the trait re-sent): the same occasion makes nothing.
    h.run(h.care.schedule_date(birthday, r.profile_id, now))
    assert h.run(h.care.fire_due(now)) == 0
    # A year later, 7 days before: the next birthday.
    later = datetime(2027, 12, 27, 0, 1, tzinfo=ZONE)
    assert h.run(h.care.fire_due(datetime(2027, 12, 26, 23, 59, tzinfo=ZONE))) == 0
    assert h.run(h.care.fire_due(later)) == 1
    assert h.tasks()[-1] == ("birthday_in_7_days", "2028-01-03", "open")


def test_a_february_29_birthday_is_the_28th_in_a_common_year(h: Harness) -> None:
    now = datetime(2027, 2, 21, 9, tzinfo=ZONE)
    (r,) = h.fold("identify", "M-2", now, traits={"birthday": "2000-02-29"})
    h.run(h.care.schedule_date(rule(h, "birthday_in_7_days"), r.profile_id, now))
    assert h.run(h.care.fire_due(now)) == 1
    assert h.tasks() == [("birthday_in_7_days", "2027-02-28", "open")]


def test_an_anniversary_waits_for_the_first_year(h: Harness) -> None:
    now = datetime(2026, 12, 1, 9, tzinfo=ZONE)
    (r,) = h.fold("group", "M-3", now, traits={"since": "2026-12-01"})
    h.run(h.care.schedule_date(rule(h, "cooperation_anniversary"), r.profile_id, now))
    assert h.run(h.care.fire_due(now)) == 0
    assert h.run(h.care.fire_due(datetime(2027, 12, 1, 0, 0, tzinfo=ZONE))) == 1
    assert h.tasks() == [("cooperation_anniversary", "2027-12-01", "open")]


def test_a_complaint_fires_after_3_days_unless_followed_up_first(h: Harness) -> None:
    t0 = datetime(2026, 6, 1, 10, tzinfo=ZONE)
    for member in ("M-4", "M-5"):
        h.fold("ticket_opened", member, t0, ticket_id=f"T-{member}", category="complaint")
    done = h.fold("ticket_resolved", "M-4", t0, ticket_id="T-M-4")
    done += h.fold("ticket_resolved", "M-5", t0, ticket_id="T-M-5")
    h.run(h.care.on_events(done, t0))
    follow = h.fold("follow_up_completed", "M-5", datetime(2026, 6, 2, tzinfo=ZONE),
                    ticket_id="T-M-5")  # fmt: skip
    h.run(h.care.on_events(follow, t0))
    assert h.run(h.care.fire_due(datetime(2026, 6, 4, 9, 59, tzinfo=ZONE))) == 0
    assert h.run(h.care.fire_due(datetime(2026, 6, 4, 10, 0, tzinfo=ZONE))) == 1
    assert h.tasks() == [("complaint_follow_up", "2026-06-01", "open")]
    # Its follow-up closes it; another follow-up changes nothing.
    late = h.fold("follow_up_completed", "M-4", datetime(2026, 6, 5, tzinfo=ZONE),
                  ticket_id="T-M-4")  # fmt: skip
    h.run(h.care.on_events(late, t0))
    h.run(h.care.on_events(late, t0))
    assert h.tasks()[1:] == [("complaint_follow_up", "2026-06-01", "closed")]


def test_a_rule_that_changed_kind_drops_its_pending_occasions(h: Harness) -> None:
    now = datetime(2026, 12, 1, 9, tzinfo=ZONE)
    (r,) = h.fold("identify", "M-6", now, traits={"birthday": "1990-12-08"})
    h.run(h.care.schedule_date(rule(h, "birthday_in_7_days"), r.profile_id, now))
    changed = CareRule.model_validate(
        {"id": "birthday_in_7_days", "title": "B", "trigger": {"tag_entered": "tier_vip"}}
    )
    other = Harness(h.t, [changed])
    assert other.run(other.care.fire_due(now)) == 0
    left = other.run(h.t.client.zrange(f"{h.t.ns}:care:due", 0, -1))
    assert left == []
