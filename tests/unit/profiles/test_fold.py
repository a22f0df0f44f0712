import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from contracts.events import Channel, Event, EventType, Identifier, ResolvedEvent
from profiles.fold import EPOCH_END, FoldRules, Op, fold, rank

T = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
MS = int(T.timestamp()) * 1000
RULES = FoldRules()


def event(
    type: EventType | str = EventType.TRACK,
    *,
    event_id: str = "e1",
    channel: str = "pos",
    source: str = "pos-sh",
    at: datetime = T,
    **kw: Any,
) -> Event:
    return Event(
        event_id=event_id,
        type=EventType(type),
        name=kw.pop("name", None),
        channel=Channel(channel),
        source=source,
        identifiers=[Identifier(type="email", value="a@b.com")],
        original_timestamp=at,
        received_at=at,
        timestamp=at,
        **kw,
    )


def ops(
    type: EventType | str = EventType.TRACK, rules: FoldRules | None = None, **kw: Any
) -> list[Op]:
    resolved = ResolvedEvent(event=event(type, **kw), profile_id="1", raw_partition=0, raw_offset=0)
    return fold(resolved, rules or RULES).ops


def domain(
    type: EventType | str = EventType.TRACK, rules: FoldRules | None = None, **kw: Any
) -> list[Op]:
    """The ops beyond the presence ops every event gets."""
    return ops(type, rules, **kw)[7:]


def presence(ch: str, ms: int = MS) -> list[Op]:
    return [
        ["min", "lo:first_seen", ms],
        ["max", "hi:last_seen", ms],
        ["min", f"lo:first_seen:{ch}", ms],
        ["max", f"hi:last_seen:{ch}", ms],
        ["sadd", "channels", ch],
        ["incr", "n:events", 1],
        ["incr", f"n:events:{ch}", 1],
    ]


def traits(found: list[Op]) -> dict[str, tuple[Any, int]]:
    return {op[1]: (json.loads(op[2]), op[3]) for op in found if op[0] == "trait"}


# Presence


@pytest.mark.parametrize("type", list(EventType))
def test_every_event_gets_presence_ops_first(type: EventType) -> None:
    assert ops(type, channel="web", source="site")[:7] == presence("web")


def test_a_plain_track_gets_only_presence_ops() -> None:
    assert ops(EventType.TRACK, name="Banner Clicked") == presence("pos")


def test_presence_times_are_epoch_ms_of_the_corrected_timestamp() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    e = event().model_copy(
        update={"timestamp": at, "original_timestamp": T, "received_at": T + timedelta(hours=1)}
    )
    resolved = ResolvedEvent(event=e, profile_id="1", raw_partition=0, raw_offset=0)
    assert fold(resolved, RULES).ops[:7] == presence("pos", 1767323045678)


# Orders


def test_order_completed_records_entry_purchase_times_and_categories() -> None:
    found = domain(
        EventType.ORDER_COMPLETED,
        properties={
            "order_id": "O-1",
            "total": 268.5,
            "category": " Coffee ",
            "products": [
                {"sku": "a", "category": "BAKERY"},
                {"sku": "b"},
                {"sku": "c", "category": "  "},
                {"sku": "d", "category": 7},
                "not a product",
            ],
        },
    )
    # 12:00 UTC on a Monday is 20:00 in Shanghai (the default calendar zone): evening, weekday.
    assert found == [
        ["entry", "orders", "O-1", 26850],
        ["entry", "orders_evening", "O-1", 1],
        ["sadd", "purchase_months", "2026-11"],
        ["max", "hi:last_purchase_at", MS],
        ["min", "lo:first_purchase_at", MS],
        ["sadd", "categories", "coffee"],
        ["sadd", "categories", "bakery"],
    ]


@pytest.mark.parametrize(
    ("props", "cents"),
    [
        ({"total": 268.5}, 26850),
        ({"total": "12.30"}, 1230),
        ({"total": 19.99}, 1999),
        ({"total": 7}, 700),
        ({"revenue": 3.2}, 320),
        ({"value": "0.5"}, 50),
        ({"amount": 1}, 100),
        ({"total": 1, "revenue": 2, "value": 3, "amount": 4}, 100),
        ({"total": "n/a", "revenue": 2}, 200),
        ({"total": True, "amount": 4}, 400),
        ({"total": None, "value": 3}, 300),
        ({"total": 0, "revenue": 2}, 0),
        ({"total": -500}, 0),
        ({}, 0),
    ],
)
def test_order_amount_is_integer_cents_from_the_first_numeric_field(
    props: dict[str, Any], cents: int
) -> None:
    entry = domain(EventType.ORDER_COMPLETED, properties={"order_id": "O-1", **props})[0]
    assert entry == ["entry", "orders", "O-1", cents]
    assert isinstance(entry[3], int)


@pytest.mark.parametrize("props", [{}, {"order_id": ""}, {"order_id": None}])
def test_order_without_an_order_id_is_keyed_by_event_id(props: dict[str, Any]) -> None:
    found = domain(EventType.ORDER_COMPLETED, event_id="evt-9", properties=props)
    assert found[0] == ["entry", "orders", "evt-9", 0]


def test_numeric_order_id_becomes_a_string() -> None:
    found = domain(EventType.ORDER_COMPLETED, properties={"order_id": 42, "total": 1})
    assert found[0] == ["entry", "orders", "42", 100]


def test_order_without_categories_adds_no_category_ops() -> None:
    found = domain(EventType.ORDER_COMPLETED, properties={"order_id": "O-1", "products": "x"})
    assert [op for op in found if op[1] == "categories"] == []


def test_each_refund_is_an_entry_in_cents_even_of_one_order() -> None:
    # Two partial refunds of order O-1 are two entries; a refund id, when given, is the key.
    found = domain(EventType.ORDER_REFUNDED, properties={"order_id": "O-1", "total": "9.90"})
    assert found == [["entry", "refunds", "e1", 990]]
    given = {"order_id": "O-1", "refund_id": "R-2", "total": 5}
    assert domain(EventType.ORDER_REFUNDED, properties=given) == [["entry", "refunds", "R-2", 500]]


@pytest.mark.parametrize("total", ["NaN", "Infinity", "-inf"])
def test_non_finite_order_amount_does_not_crash_fold(total: str) -> None:
    found = domain(EventType.ORDER_COMPLETED, properties={"order_id": "O-1", "total": total})
    assert found[0] == ["entry", "orders", "O-1", 0]


# Traits and source priority


def test_identify_traits_become_trait_ops_ranked_by_priority_and_time() -> None:
    found = domain(
        EventType.IDENTIFY,
        channel="crm",
        source="crm-main",
        traits={"name": "Li Wei", "age": 34, "tags": {"b": 1, "a": [2]}},
    )
    assert found == [
        ["trait", "name", '"Li Wei"', rank(90, MS)],
        ["cand", "age", "34", "crm-main", MS, 4, 0],  # a tracked trait: its values are kept
        ["trait", "age", "34", rank(90, MS)],
        ["trait", "tags", '{"a": [2], "b": 1}', rank(90, MS)],
    ]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("source_priority", ["trait", "age", "34", rank(90, MS)]),
        ("most_recent", ["trait", "age", "34", MS]),
        ("first_seen", ["trait", "age", "34", EPOCH_END - MS]),
    ],
)
def test_a_trait_ranks_by_its_policy(policy: str, expected: list[object]) -> None:
    rules = FoldRules(trait_policies={"age": policy})  # type: ignore[dict-item]
    found = domain(
        EventType.IDENTIFY, channel="crm", source="crm-main", traits={"age": 34}, rules=rules
    )
    assert found == [["cand", "age", "34", "crm-main", MS, 4, 0], expected]


def test_a_most_frequent_trait_is_resolved_by_its_counts_in_redis() -> None:
    rules = FoldRules(trait_policies={"age": "most_frequent"}, conflict_traits=frozenset())
    found = domain(
        EventType.IDENTIFY, channel="crm", source="crm-main", traits={"age": 34}, rules=rules
    )
    assert found == [["cand", "age", "34", "crm-main", MS, 4, 1]]


@pytest.mark.parametrize(
    ("channel", "source", "priority"),
    [
        ("crm", "crm-main", 90),
        ("pos", "pos-sh", 70),
        ("pos", "erp", 85),  # the source name wins over the channel
        ("survey", "member_app", 80),
        ("exhibition", "expo-2026", 0),
        ("other", "anything", 0),
    ],
)
def test_priority_prefers_the_source_name_over_the_channel(
    channel: str, source: str, priority: int
) -> None:
    assert RULES.priority(event(channel=channel, source=source)) == priority


def test_custom_source_priorities_replace_the_defaults() -> None:
    rules = FoldRules(source_priority={"pos": 10, "pos-vip": 99})
    assert rules.priority(event(channel="pos", source="pos-vip")) == 99
    assert rules.priority(event(channel="pos", source="pos-sh")) == 10
    assert rules.priority(event(channel="crm", source="crm-main")) == 0


def test_fold_rules_reject_unknown_settings() -> None:
    with pytest.raises(ValueError, match="extra"):
        FoldRules.model_validate({"priority": {}})


def test_rank_orders_by_priority_then_time() -> None:
    assert rank(0, MS) == MS
    assert rank(1, 0) > rank(0, MS)
    assert rank(50, MS + 1) > rank(50, MS)


def test_higher_priority_source_outranks_a_newer_lower_priority_one() -> None:
    old_crm = traits(
        ops(EventType.IDENTIFY, channel="crm", source="crm", at=T, traits={"city": "SH"})
    )
    new_web = traits(
        ops(
            EventType.IDENTIFY,
            channel="web",
            source="site",
            at=T + timedelta(days=3650),
            traits={"city": "BJ"},
        )
    )
    assert old_crm["city"][1] > new_web["city"][1]


def test_same_priority_later_event_outranks_earlier() -> None:
    early = traits(ops(EventType.IDENTIFY, at=T, traits={"city": "SH"}))
    late = traits(ops(EventType.IDENTIFY, at=T + timedelta(milliseconds=1), traits={"city": "BJ"}))
    assert late["city"][1] == early["city"][1] + 1


def test_traits_on_a_track_are_folded_too() -> None:
    assert traits(ops(EventType.TRACK, traits={"vip": True})) == {"vip": (True, rank(70, MS))}


def test_group_traits_are_account_prefixed_and_group_id_is_account_id() -> None:
    found = domain(
        EventType.GROUP,
        channel="crm",
        source="crm",
        group_id="ACME",
        traits={"industry": "retail", "employees": 120},
    )
    assert found == [
        ["trait", "account.industry", '"retail"', rank(90, MS)],
        ["trait", "account.employees", "120", rank(90, MS)],
        ["trait", "account.id", '"ACME"', rank(90, MS)],
    ]


def test_group_id_outside_a_group_event_is_ignored() -> None:
    assert domain(EventType.IDENTIFY, group_id="ACME", traits={"industry": "x"}) == [
        ["trait", "industry", '"x"', rank(70, MS)]
    ]


def test_consent_becomes_consent_traits_ranked_by_time_only() -> None:
    found = domain(
        EventType.CONSENT_UPDATED,
        channel="crm",
        source="crm",
        consent={"marketing_sms": False, "analytics": True},
    )
    assert found == [
        ["trait", "consent.marketing_sms", "false", rank(0, MS)],
        ["trait", "consent.analytics", "true", rank(0, MS)],
    ]


# Tickets


@pytest.mark.parametrize(
    ("type", "props", "expected"),
    [
        (EventType.TICKET_OPENED, {"ticket_id": "T-1"}, [["sadd", "tickets_opened", "T-1"]]),
        (
            EventType.TICKET_OPENED,
            {"ticket_id": "T-1", "category": "Complaint"},
            [["sadd", "tickets_opened", "T-1"], ["sadd", "complaints", "T-1"]],
        ),
        (
            EventType.TICKET_OPENED,
            {"ticket_id": "T-1", "category": "question"},
            [["sadd", "tickets_opened", "T-1"]],
        ),
        (EventType.TICKET_OPENED, {}, [["sadd", "tickets_opened", "e1"]]),
        (EventType.TICKET_RESOLVED, {"ticket_id": "T-1"}, [["sadd", "tickets_resolved", "T-1"]]),
        (
            EventType.TICKET_RESOLVED,
            {"ticket_id": "T-1", "category": "complaint"},
            [["sadd", "tickets_resolved", "T-1"]],
        ),
        (EventType.FOLLOW_UP_COMPLETED, {"ticket_id": 5}, [["sadd", "follow_ups", "5"]]),
    ],
)
def test_ticket_events_add_ticket_ids_to_sets(
    type: EventType, props: dict[str, Any], expected: list[Op]
) -> None:
    assert domain(type, properties=props) == expected


# Surveys


@pytest.mark.parametrize(
    ("props", "kind", "key", "score"),
    [
        ({"survey_type": "csat", "score": 4, "response_id": "R-1"}, "csat", "R-1", 4),
        ({"survey_type": "NPS", "score": "9.4", "response_id": "R-2"}, "nps", "R-2", 9),
        ({"kind": "nps", "score": 8.6}, "nps", "e1", 9),
        ({"score": 5}, "csat", "e1", 5),  # csat by default
        ({"survey_type": "csat", "score": 0}, "csat", "e1", 0),
    ],
)
def test_survey_answer_is_an_entry_and_a_last_trait(
    props: dict[str, Any], kind: str, key: str, score: int
) -> None:
    assert domain(EventType.SURVEY_ANSWERED, properties=props) == [
        ["entry", kind, key, score],
        ["trait", f"{kind}_last", str(score), rank(0, MS)],
    ]


@pytest.mark.parametrize(
    "props",
    [
        {"survey_type": "csat"},
        {"survey_type": "csat", "score": None},
        {"survey_type": "csat", "score": "great"},
        {"survey_type": "csat", "score": True},
        {"survey_type": "csat", "score": [5]},
        {"survey_type": "ces", "score": 3},
        {"kind": "poll", "score": 3},
    ],
)
def test_survey_without_a_valid_score_or_known_kind_adds_nothing(props: dict[str, Any]) -> None:
    assert domain(EventType.SURVEY_ANSWERED, properties=props) == []


@pytest.mark.parametrize("score", ["nan", "inf"])
def test_non_finite_survey_score_adds_nothing(score: str) -> None:
    props = {"survey_type": "nps", "score": score}
    assert domain(EventType.SURVEY_ANSWERED, properties=props) == []


# Loyalty and visits


@pytest.mark.parametrize(
    ("type", "points", "expected"),
    [
        (EventType.POINTS_EARNED, 120, [["entry", "points_earned", "e1", 120]]),
        (EventType.POINTS_EARNED, "50.6", [["entry", "points_earned", "e1", 51]]),
        (EventType.POINTS_REDEEMED, 300, [["entry", "points_redeemed", "e1", 300]]),
        (EventType.POINTS_REDEEMED, None, []),
        (EventType.POINTS_EARNED, "lots", []),
    ],
)
def test_points_are_entries_keyed_by_event_id(
    type: EventType, points: Any, expected: list[Op]
) -> None:
    assert domain(type, properties={"points": points}) == expected


def test_member_level_change_is_a_ranked_trait() -> None:
    found = domain(
        EventType.MEMBER_LEVEL_CHANGED,
        channel="member_app",
        source="app",
        properties={"level": "gold"},
    )
    assert found == [["trait", "member_level", '"gold"', rank(80, MS)]]


def test_member_level_change_without_a_level_adds_nothing() -> None:
    assert domain(EventType.MEMBER_LEVEL_CHANGED, properties={}) == []


def test_opportunity_stage_is_an_account_trait() -> None:
    found = domain(
        EventType.OPPORTUNITY_STAGE_CHANGED,
        channel="crm",
        source="crm",
        properties={"stage": "won"},
    )
    assert found == [["trait", "account.opportunity_stage", '"won"', rank(90, MS)]]


@pytest.mark.parametrize(
    ("type", "counter"),
    [
        (EventType.COUPON_REDEEMED, "n:coupons_redeemed"),
        (EventType.STORE_VISITED, "n:store_visits"),
    ],
)
def test_coupons_and_store_visits_are_counted(type: EventType, counter: str) -> None:
    assert domain(type) == [["incr", counter, 1]]


def test_fold_is_deterministic() -> None:
    kw: dict[str, Any] = {"properties": {"order_id": "O-1", "total": 1.5}, "traits": {"a": 1}}
    assert ops(EventType.ORDER_COMPLETED, **kw) == ops(EventType.ORDER_COMPLETED, **kw)
