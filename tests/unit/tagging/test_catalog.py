"""Every catalog tag against the examples written next to it: true where it says true,
false where it says false, at a fixed clock (2026-06-15 12:00 Shanghai)."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from tagging.catalog import CATEGORIES, Catalog, load
from tagging.facts import coerce
from tagging.rules import Clock, Facts, Kind

CATALOG = load()
NOW = datetime(2026, 6, 15, 4, 0, tzinfo=UTC)
CLOCK = CATALOG.clock(NOW)
DAY_MS = 86_400_000


def example_facts(catalog: Catalog, raw: dict[str, Any], clock: Clock) -> Facts:
    """Turn an example (relative times like "-30d", ISO dates, lists) into typed facts."""
    kinds = {**catalog_fields(catalog)}
    facts: Facts = {}
    for name, value in raw.items():
        kind = kinds[name]
        if kind == Kind.TIME and isinstance(value, str) and value.endswith("d"):
            facts[name] = clock.now_ms + int(value[:-1]) * DAY_MS
        else:
            facts[name] = coerce(kind, value)
        assert facts[name] is not None, f"example value {value!r} is no {kind.value}"
    return facts


def catalog_fields(catalog: Catalog) -> dict[str, Kind]:
    from tagging.facts import BUILTIN

    return {**BUILTIN, **catalog.declared}


CASES = [
    pytest.param(tag.id, truth, n, raw, id=f"{tag.id}-{truth}{n}")
    for tag in CATALOG.tags
    for truth in ("true", "false")
    for n, raw in enumerate(tag.examples.get(truth, []))
]


def test_the_catalog_has_200_tags_in_every_category_each_with_both_kinds_of_example() -> None:
    assert len(CATALOG.tags) >= 200
    assert {t.category for t in CATALOG.tags} == set(CATEGORIES)
    missing = [t.id for t in CATALOG.tags if not (t.examples.get("true") and t.examples["false"])]
    assert missing == []


@pytest.mark.parametrize(("tag_id", "truth", "n", "raw"), CASES)
def test_tag_matches_its_example(tag_id: str, truth: str, n: int, raw: dict[str, Any]) -> None:
    tag = CATALOG.by_id[tag_id]
    facts = example_facts(CATALOG, raw, CLOCK)
    assert tag.test(facts, CLOCK) is (truth == "true"), f"{tag.rule} on {raw}"
    # Full evaluation agrees with the single test.
    assert bool(CATALOG.evaluate(facts, CLOCK) >> tag.bit & 1) is (truth == "true")


def test_every_tag_reads_only_declared_facts_and_incremental_sets_cover_them() -> None:
    known = catalog_fields(CATALOG)
    for tag in CATALOG.tags:
        assert tag.reads <= set(known), tag.id
        for fact in tag.reads:
            assert tag in CATALOG.affected({fact}), (tag.id, fact)


def test_timed_tags_have_a_due_time_when_their_fact_is_set() -> None:
    facts = example_facts(CATALOG, {"last_purchase_at": "-29d"}, CLOCK)
    # lifecycle_new flips 1 day later, rfm_r5 too: the earliest transition is what is due.
    assert CATALOG.due(facts, CLOCK) == facts["last_purchase_at"] + 30 * DAY_MS
    birthday = example_facts(CATALOG, {"trait.birthday": "1990-06-30"}, CLOCK)
    july = datetime(2026, 6, 30, 16, tzinfo=UTC)  # 1 July 00:00 in Shanghai
    assert CATALOG.due(birthday, CLOCK) == int(july.timestamp() * 1000)
    assert CATALOG.due({}, CLOCK) is None


def test_compiled_catalog_agrees_with_the_rule_closures_on_mixed_profiles() -> None:
    """The compiled function (one per selection) against each tag's own closure."""
    pool: dict[str, list[Any]] = {}
    for tag in CATALOG.tags:
        for truth in ("true", "false"):
            for raw in tag.examples.get(truth, []):
                for name, value in example_facts(CATALOG, raw, CLOCK).items():
                    pool.setdefault(name, []).append(value)
    rng = random.Random(5)
    names = sorted(pool)
    everything = CATALOG.select(None)
    timed = CATALOG.timed_selection
    for _ in range(500):
        facts = {n: rng.choice(pool[n]) for n in rng.sample(names, rng.randint(1, len(names)))}
        expected = {t.id for t in CATALOG.tags if t.test(dict(facts), CLOCK)}
        assert set(CATALOG.ids(CATALOG.run(facts, CLOCK, everything))) == expected
        assert set(CATALOG.ids(CATALOG.run(facts, CLOCK, timed))) == {
            t.id for t in CATALOG.timed if t.id in expected
        }


@pytest.mark.parametrize(
    "absurd", [1e308, -1e308, 2**70, float("nan"), "NaN", "1e400", "-inf", "99999-99-99", ""]
)
def test_absurd_values_are_no_facts_and_never_raise(absurd: Any) -> None:
    # A trait sent as 1e308 reached the calendar rules as a time no datetime can hold, and
    # the evaluation raised: the profiles processor would stop on that event every restart.
    facts: Facts = {name: coerce(kind, absurd) for name, kind in CATALOG.declared.items()}
    times = [n for n, kind in CATALOG.declared.items() if kind in (Kind.DATE, Kind.TIME)]
    assert times and [facts[n] for n in times] == [None] * len(times)
    numbers = [facts[n] for n, kind in CATALOG.declared.items() if kind == Kind.NUMBER]
    assert all(v is None or abs(v) < float("inf") for v in numbers)  # never NaN or infinite
    CATALOG.evaluate(facts, CLOCK)  # every tag, no exception
    assert coerce(Kind.NUMBER, "1e3") == 1000.0 and coerce(Kind.DATE, 86_400_000) == 86_400_000


def test_no_shape_of_change_compiles_a_function_of_its_own() -> None:
    # Every set of channels, event types and trait names a profile's batch brings is a shape
    # of change of its own; compiling one function per shape cost 12-15% of the processor.
    shapes = [{"trait.city", "orders.count", f"trait.unread_{n}"} for n in range(20)]
    shapes += [{"orders.count"}, {"trait.city"}]
    selections = [CATALOG.select(shape) for shape in shapes]
    assert {id(s.fn) for s in selections} == {id(CATALOG.select(None).fn)}
    # Each still changes only the bits of the tags its facts can affect.
    assert selections[0].mask == CATALOG.mask(CATALOG.affected(shapes[0]))
    assert selections[-1].mask != selections[-2].mask


def test_a_selection_of_the_catalogs_own_tags_compiles_nothing() -> None:
    # A backfill asks for a selection each step; compiling one took ~45% of a stream
    # process's CPU while a backfill ran.
    some = [t for n, t in enumerate(CATALOG.tags) if n % 7 == 0]
    chosen = CATALOG.selection(some)
    assert chosen.fn is CATALOG.select(None).fn
    assert chosen.mask == CATALOG.mask(some)
    # A rule that is not the catalog's own (a copy being tried) is compiled for itself.
    trial = dataclasses.replace(some[0])
    assert CATALOG.selection([trial]).fn is not CATALOG.select(None).fn


def test_ids_names_the_set_bits_in_catalog_order_whatever_the_bits() -> None:
    catalog = load()
    tags = catalog.tags
    # Stored ordinals need not follow the catalog's order (tags added later get new bits).
    shuffled = list(range(len(tags)))
    random.Random(7).shuffle(shuffled)
    catalog.bind({t.id: shuffled[n] for n, t in enumerate(tags)})
    for seed in range(50):
        chosen = random.Random(seed).sample(tags, 30)
        retired = 1 << (len(tags) + 5)  # a bit no tag of the catalog holds
        assert catalog.ids(catalog.mask(chosen) | retired) == [t.id for t in tags if t in chosen]
    assert catalog.ids(0) == []
