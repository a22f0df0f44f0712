"""Segment definitions: validation paths, live detection, and SQL that binds every value."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from contracts.segments import SegmentDefinition, error_path, is_live
from segments.sql import Compiler, SegmentError
from segments.yamlio import load_yaml

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
COMPILER = Compiler("cdp", tags=["tier_vip", "repeat_buyer"], purposes=["sms", "email"])


def path_of(definition: Any) -> str:
    with pytest.raises(ValidationError) as caught:
        SegmentDefinition.model_validate({"definition": definition})
    return error_path(caught.value.errors()[0]["loc"])


@pytest.mark.parametrize(
    "definition, path",
    [
        (
            {
                "all": [
                    {"tag": "a"},
                    {"event": "x", "op": "gte", "value": 1, "within": {"last": "9 days"}},
                ]
            },
            "definition.all.1.event.within.last",
        ),
        (
            {"any": [{"not": {"trait": "age", "op": "between", "value": [1]}}]},
            "definition.any.0.not.trait",
        ),
        ({"all": [{"tag": "a", "trait": "b"}]}, "definition.all.0"),
        ({"all": []}, "definition.all"),
        ({"event": "x", "measure": "sum", "op": "gte", "value": 1}, "definition.event"),
        ({"event": "x", "op": "gte", "value": "three"}, "definition.event"),
        (
            {"event": "x", "op": "gte", "value": 1, "where": [{"op": "eq", "value": 1}]},
            "definition.event.where.0",
        ),
        (
            {"event": "x", "op": "gte", "value": 1, "within": {"last": "1d", "to": "2026-01-01"}},
            "definition.event.within",
        ),
        ({"attribute": "order_count", "op": "exists", "value": 3}, "definition.attribute"),
        ({"attribute": "order_count", "op": "in", "value": []}, "definition.attribute"),
        ({"nothing": 1}, "definition"),
    ],
)
def test_validation_errors_name_the_node(definition: Any, path: str) -> None:
    assert path_of(definition) == path


@pytest.mark.parametrize(
    "definition, path",
    [
        ({"tag": "nope"}, "definition.tag"),
        ({"all": [{"tag": "tier_vip"}, {"consent": "fax"}]}, "definition.all.1.consent"),
        ({"attribute": "password", "op": "eq", "value": "x"}, "definition.attribute"),
        ({"attribute": "order_count", "op": "eq", "value": "many"}, "definition"),
        ({"attribute": "channels", "op": "eq", "value": "pos"}, "definition"),
        ({"trait": "city", "op": "contains", "value": "x"}, "definition"),
        ({"trait": "age", "op": "in", "value": [1, "x"]}, "definition.value"),
        ({"attribute": "last_seen", "op": "gte", "value": "yesterday"}, "definition"),
    ],
)
def test_compile_errors_name_the_node(definition: Any, path: str) -> None:
    seg = SegmentDefinition.model_validate({"definition": definition})
    with pytest.raises(SegmentError) as caught:
        COMPILER.count(seg, NOW)
    assert caught.value.path == path


def test_unknown_purpose_is_refused() -> None:
    seg = SegmentDefinition.model_validate({"purpose": "fax", "definition": {"tag": "tier_vip"}})
    with pytest.raises(SegmentError) as caught:
        COMPILER.count(seg, NOW)
    assert caught.value.path == "purpose"


def test_live_means_tags_and_booleans_only() -> None:
    def live(d: Any) -> bool:
        return is_live(SegmentDefinition.model_validate({"definition": d}).definition)

    assert live({"all": [{"tag": "a"}, {"not": {"any": [{"tag": "b"}, {"tag": "c"}]}}]})
    assert not live({"all": [{"tag": "a"}, {"consent": "sms"}]})
    assert not live({"any": [{"tag": "a"}, {"trait": "city", "op": "exists"}]})


HOSTILE = "x'); DROP TABLE cdp.events; --\\ {p0:String} \u4e0a\u6d77"


def test_every_value_is_a_parameter_never_sql_text() -> None:
    seg = SegmentDefinition.model_validate(
        {
            "purpose": "sms",
            "definition": {
                "all": [
                    {"tag": "tier_vip"},
                    {"trait": HOSTILE, "op": "eq", "value": HOSTILE},
                    {"trait": "city", "op": "in", "value": [HOSTILE, "b"]},
                    {"attribute": "nps_class", "op": "ne", "value": HOSTILE},
                    {
                        "event": HOSTILE,
                        "measure": "last",
                        "property": HOSTILE,
                        "op": "eq",
                        "value": HOSTILE,
                        "where": [{"property": HOSTILE, "op": "eq", "value": HOSTILE}],
                        "within": {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"},
                    },
                ]
            },
        }
    )
    q = COMPILER.members(seg, NOW, fields=["profile_id", "traits.city"], limit=5)
    assert "DROP" not in q.sql and "\u4e0a" not in q.sql and "--\\" not in q.sql
    assert HOSTILE in q.params.values()
    # Every placeholder has a value, and every value has a placeholder.
    placeholders = set(re.findall(r"\{(p\d+):", q.sql))
    assert placeholders == set(q.params)


def test_a_hostile_field_name_is_refused() -> None:
    seg = SegmentDefinition.model_validate({"definition": {"tag": "tier_vip"}})
    for bad in ["traits.x` FROM system.tables --", "password", "traits."]:
        with pytest.raises(SegmentError):
            COMPILER.members(seg, NOW, fields=[bad])


def test_a_segment_holds_at_most_200_conditions() -> None:
    order = {"event": "order_completed", "op": "gte", "value": 1}
    fine = {"all": [{"any": [order] * 20}] * 10}  # 200 conditions
    SegmentDefinition.model_validate({"definition": fine})
    too_many = {"all": [{"any": [order] * 30}] * 30}  # within every list limit: 900 in all
    with pytest.raises(ValidationError) as info:
        SegmentDefinition.model_validate({"definition": too_many})
    first = info.value.errors()[0]
    assert error_path(first["loc"]) == "definition"
    assert "at most 200 conditions; this has 900" in first["msg"]


def test_yaml_dates_read_as_their_json_strings() -> None:
    text = """
definition:
  all:
    - {attribute: first_seen, op: gt, value: 2026-06-01}
    - event: order_completed
      op: gte
      value: 1
      within: {from: 2026-01-01T08:00:00Z, to: 2026-02-01}
"""
    data = load_yaml(text)
    first, order = data["definition"]["all"]
    assert first["value"] == "2026-06-01"
    assert order["within"] == {"from": "2026-01-01T08:00:00+00:00", "to": "2026-02-01"}
    SegmentDefinition.model_validate(data)  # valid, as the JSON form is


def test_paths_name_fields_not_pydantic_internals() -> None:
    assert path_of({"tag": 123}) == "definition.tag"
    assert path_of({"attribute": "first_seen", "op": "gt", "value": {"x": 1}}) == (
        "definition.attribute.value"
    )


def test_times_outside_what_the_history_holds_are_refused_with_their_path() -> None:
    order = {"event": "order_completed", "op": "gte", "value": 1}
    early = order | {"within": {"from": "0001-01-01T00:00:00Z", "to": "1901-01-01T00:00:00Z"}}
    assert path_of({"all": [{"tag": "tier_vip"}, early]}) == "definition.all.1.event.within.from"
    seg = SegmentDefinition.model_validate(
        {"definition": {"attribute": "first_seen", "op": "gt", "value": "0001-01-01"}}
    )
    with pytest.raises(SegmentError) as info:
        COMPILER.count(seg, NOW)
    assert info.value.path == "definition" and "outside 1900-2299" in str(info.value)


def test_an_encrypted_trait_can_only_be_tested_for_presence() -> None:
    sealed = Compiler("cdp", sealed={"email"})
    seg = SegmentDefinition.model_validate(
        {"definition": {"all": [{"trait": "email", "op": "eq", "value": "a@b.cn"}]}}
    )
    with pytest.raises(SegmentError) as caught:
        sealed.count(seg, NOW)
    assert caught.value.path == "definition.all.0.op"
    assert "encrypted" in str(caught.value)
    present = SegmentDefinition.model_validate({"definition": {"trait": "email", "op": "exists"}})
    assert "mapContains" in sealed.count(present, NOW).sql
    # Without encryption the same condition compiles.
    assert '"a@b.cn"' in COMPILER.count(seg, NOW).params.values()


def test_an_encrypted_property_can_only_be_tested_for_presence() -> None:
    sealed = Compiler("cdp", sealed_properties={"receiver_phone"})
    where = {"property": "receiver_phone", "op": "eq", "value": "13800138000"}
    seg = SegmentDefinition.model_validate(
        {"definition": {"event": "order_completed", "op": "gte", "value": 1, "where": [where]}}
    )
    with pytest.raises(SegmentError) as caught:
        sealed.count(seg, NOW)
    assert caught.value.path == "definition.where.0.op"
    present = SegmentDefinition.model_validate(
        {
            "definition": {
                "event": "order_completed",
                "op": "gte",
                "value": 1,
                "where": [{"property": "receiver_phone", "op": "exists"}],
            }
        }
    )
    assert "JSONHas" in sealed.count(present, NOW).sql
