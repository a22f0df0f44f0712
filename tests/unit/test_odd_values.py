"""Odd but valid JSON values never make the fold or the tag catalog raise.

A raise there stops the profiles processor on the same event after every restart (a poison
event), so both take any JSON a channel may send. Seeded: a failure names a reproducible case.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

from contracts.events import Event, EventType, Identifier, ResolvedEvent
from profiles.fold import FoldRules, fold
from tagging.catalog import load
from tagging.facts import coerce

ODD: list[Any] = [
    None, True, 0, -1, 1e308, -1e308, 1e-320, 2**70, -(2**70), "", " ", "abc", "1e400", "NaN",
    "-0", "99999-99-99", "2026-02-30", "1990-01-01", "1990-01-01T00:00:00Z", [], [1, "a"], {},
    {"a": {"b": 1}}, "上海", "\x00",
]  # fmt: skip
PROPS = ["total", "revenue", "value", "amount", "order_id", "category", "products", "points",
         "score", "survey_type", "kind", "ticket_id", "level", "stage", "status"]  # fmt: skip
NOW = datetime(2026, 11, 30, tzinfo=UTC)


def test_the_fold_takes_any_values() -> None:
    rng = random.Random(20261130)
    kinds = list(EventType)
    for n in range(3000):
        props = {k: rng.choice(ODD) for k in rng.sample(PROPS, rng.randint(0, 6))}
        event = Event(
            event_id=f"e{n}",
            type=rng.choice(kinds),
            name="x",
            channel="pos",
            source="s",
            identifiers=[Identifier(type="member_id", value="M1")],
            traits={"age": rng.choice(ODD), "birthday": rng.choice(ODD)},
            properties=props,
            original_timestamp=NOW,
            received_at=NOW,
            timestamp=NOW,
        )
        fold(ResolvedEvent(event=event, profile_id="1", raw_partition=0, raw_offset=n), FoldRules())


def test_the_catalog_takes_any_facts() -> None:
    catalog = load()
    clock = catalog.clock(NOW)
    rng = random.Random(20261130)
    names = list(catalog.declared)
    for _ in range(3000):
        chosen = rng.sample(names, rng.randint(1, 12))
        facts = {name: coerce(catalog.declared[name], rng.choice(ODD)) for name in chosen}
        catalog.evaluate(facts, clock)
