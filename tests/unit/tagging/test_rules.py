"""The rule language: what it accepts, what it means, and how it reports mistakes."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from tagging.catalog import CatalogError, build
from tagging.rules import Clock, Kind, RuleError, compile_node, parse

FIELDS = {
    "age": Kind.NUMBER,
    "city": Kind.STRING,
    "vip": Kind.BOOL,
    "seen": Kind.TIME,
    "born": Kind.DATE,
    "cats": Kind.SET,
}


def _ms(*day: int) -> int:
    return int(datetime(*day, tzinfo=UTC).timestamp() * 1000)


CLOCK = Clock.at(datetime(2026, 6, 15, 4, tzinfo=UTC), ZoneInfo("UTC"))
DAY = 86_400_000


def holds(rule: str, facts: dict) -> bool:
    parsed = parse("t", rule, FIELDS)
    return compile_node(parsed.tree, lambda ref: pytest.fail("no refs"))(facts, CLOCK)


@pytest.mark.parametrize(
    ("rule", "facts", "expected"),
    [
        ("age between 18 and 24", {"age": 18}, True),
        ("age between 18 and 24", {"age": 24}, True),
        ("age between 18 and 24", {"age": 24.5}, False),
        ("age >= 18 and not age > 30", {"age": 30}, True),
        ("age < 18 or age > 60", {"age": 61}, True),
        ('city == "Shanghai"', {"city": "shanghai"}, True),
        ('city != "shanghai"', {}, False),  # unknown is not "different"
        ('not city == "shanghai"', {}, True),
        ('city not in ["a", "b"]', {"city": "c"}, True),
        ('city not in ["a", "b"]', {}, False),
        ('city in ["a", "b"]', {"city": "b"}, True),
        ("vip == true", {"vip": True}, True),
        ("vip == true", {"vip": False}, False),
        ('cats contains "Shoes"', {"cats": frozenset({"shoes"})}, True),
        ('cats contains any ["x", "shoes"]', {"cats": frozenset({"shoes"})}, True),
        ('cats contains all ["x", "shoes"]', {"cats": frozenset({"shoes"})}, False),
        ('cats contains "shoes"', {}, False),
        ("seen within 7d", {"seen": CLOCK.now_ms - 7 * DAY}, True),
        ("seen within 7d", {"seen": CLOCK.now_ms - 7 * DAY - 1}, False),
        ("seen before 7d", {"seen": CLOCK.now_ms - 7 * DAY - 1}, True),
        ("seen before 7d", {"seen": CLOCK.now_ms - 7 * DAY}, False),
        ("seen before 7d", {}, False),
        ("seen within 12h", {"seen": CLOCK.now_ms - 11 * 3_600_000}, True),
        ("seen within 2w", {"seen": CLOCK.now_ms - 15 * DAY}, False),
        ("born in this month", {"born": _ms(1990, 6, 1)}, True),
        ("born in this month", {"born": _ms(1990, 7, 1)}, False),
        ("age is set", {"age": 0}, True),
        ("age is not set", {"age": 0}, False),
        ("(age > 1 or age < -1) and (city is set)", {"age": -2, "city": "x"}, True),
        ('CITY == "x" AND age > 1', {"age": 2, "city": "x"}, None),  # case-sensitive fields
    ],
)
def test_rule_semantics(rule: str, facts: dict, expected: bool | None) -> None:
    if expected is None:
        with pytest.raises(RuleError, match="unknown field 'CITY'"):
            holds(rule, facts)
    else:
        assert holds(rule, facts) is expected


@pytest.mark.parametrize(
    ("rule", "position", "message"),
    [
        ("agee > 3", 0, "unknown field 'agee'"),
        ('age > "3"', 6, "type mismatch: number field compared with string"),
        ("city > 3", 5, "needs a number field"),
        ("age >", 5, "expected a literal, found 'end'"),
        ("age > 3 and", 11, "expected a field"),
        ("(age > 3", 8, "expected ')'"),
        ("age > 3 city", 8, "unexpected 'city' after a complete rule"),
        ("seen within 7", 12, "expected a duration"),
        ("age within 7d", 4, "needs a time or date field"),
        ("age between 9 and 3", 4, "empty range"),
        ("age > 3 & 4", 8, "unexpected character '&'"),
        ('city == "x" or', 14, "expected a field"),
        ("", 0, "empty rule"),
        ("seen in this month", 5, "needs a date field"),
        ("cats contains 3", 14, "type mismatch"),
        ("__import__('os')", 11, "unexpected character"),
    ],
)
def test_errors_name_the_tag_and_position(rule: str, position: int, message: str) -> None:
    with pytest.raises(RuleError) as err:
        parse("my_tag", rule, FIELDS)
    assert err.value.tag == "my_tag"
    assert err.value.position == position, str(err.value)
    assert message in err.value.message


def _doc(*tags: dict, fields: dict | None = None) -> list:
    base = {"name_en": "x", "name_zh": "x", "category": "value", "description": "x"}
    return [("t.yaml", {"fields": fields or {}, "tags": [{**base, **t} for t in tags]})]


def test_catalog_load_reports_every_problem_with_the_tag_id() -> None:
    with pytest.raises(CatalogError) as err:
        build(
            _doc(
                {"id": "a", "rule": "order_count >= 1"},
                {"id": "b", "rule": "trait.shoe_size > 40"},
                {"id": "c", "rule": "tag missing"},
                {"id": "d", "rule": "tag e"},
                {"id": "e", "rule": "tag d"},
                {"id": "a", "rule": "events > 1"},
                {"id": "f", "rule": "events > 1", "category": "astrology"},
            )
        )
    text = str(err.value)
    assert "tag 'b', rule position 0: unknown field 'trait.shoe_size'" in text
    assert "tag 'c': references tag 'missing', which does not exist" in text
    assert "tag 'd': rule references itself via d -> e -> d" in text
    assert "tag 'a' (t.yaml): duplicate id" in text
    assert "tag 'f' (t.yaml): unknown category 'astrology'" in text
    assert len(err.value.problems) == 5


def test_declared_traits_become_fields_and_tag_references_compose() -> None:
    catalog = build(
        _doc(
            {"id": "big", "rule": "trait.shoe_size >= 44"},
            {"id": "big_buyer", "rule": "tag big and order_count >= 1"},
            fields={"trait.shoe_size": "number"},
        )
    )
    buyer = catalog.by_id["big_buyer"]
    assert buyer.reads == {"trait.shoe_size", "order_count"}
    assert catalog.affected({"trait.shoe_size"}) == [catalog.by_id["big"], buyer]
    now = catalog.clock(datetime(2026, 1, 1, tzinfo=UTC))
    assert catalog.ids(catalog.evaluate({"trait.shoe_size": 45, "order_count": 1}, now)) == [
        "big",
        "big_buyer",
    ]
    assert catalog.ids(catalog.evaluate({"trait.shoe_size": 43, "order_count": 1}, now)) == []
