"""Source mappings: compiled once, applied per event at ingest."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from contracts.deadletter import DeadLetterReason
from ingest import intake
from ingest.limits import Limits
from ingest.mapping import MAPPED_FROM, MappingError, compile_mapping, load_mapping
from ingest.mappings import MappingRegistry, load_all
from ingest.sources import Source, hash_key

NOW = datetime(2026, 11, 23, tzinfo=UTC)
EXAMPLES = Path(__file__).resolve().parents[3] / "ingest" / "mapping_examples"


def source(name: str, channel: str = "other", **extra: Any) -> Source:
    return Source(name=name, channel=channel, key_sha256=hash_key(name), **extra)


def take(mapping_file: str, src: Source, *messages: dict[str, Any]) -> intake.Intake:
    mapping = load_mapping(EXAMPLES / mapping_file)
    stamp = intake.Stamp(src, NOW, Limits(), "CN", mapping)
    return intake.segment_batch({"batch": list(messages)}, stamp)


def test_a_survey_with_both_scores_becomes_one_answer_per_score() -> None:
    result = take(
        "survey-tool.yaml",
        source("survey", "survey"),
        {
            "type": "track",
            "userId": "R-1",
            "event": "Survey Submitted",
            "messageId": "m1",
            "properties": {"nps": 3, "csat": "2", "response_id": "A1"},
        },
    )
    assert (result.received, result.accepted, len(result.events)) == (1, 1, 2)
    nps, csat = result.events
    assert (nps.event_id, csat.event_id) == ("m1", "m1#2")
    assert [e.type.value for e in result.events] == ["survey_answered"] * 2
    assert nps.properties == {"response_id": "A1", "score": 3, "survey_type": "nps"}
    assert csat.properties == {"response_id": "A1", "score": 2, "survey_type": "csat"}
    assert nps.name == "Survey Submitted"  # as sent
    assert nps.context[MAPPED_FROM]["properties"] == {"nps": 3, "csat": "2", "response_id": "A1"}
    assert nps.context[MAPPED_FROM]["mapping"] == "survey-tool"


def test_a_survey_with_one_score_is_one_answer() -> None:
    result = take(
        "survey-tool.yaml",
        source("survey", "survey"),
        {"type": "track", "userId": "R-1", "event": "survey submitted", "properties": {"csat": 5}},
    )
    assert [(e.type.value, e.properties) for e in result.events] == [
        ("survey_answered", {"score": 5, "survey_type": "csat"})
    ]


def test_a_complaint_is_a_ticket_of_the_complaint_category() -> None:
    result = take(
        "service-desk.yaml",
        source("service-desk", "service_desk"),
        {
            "type": "track",
            "userId": "C-1",
            "event": "Complaint Filed",
            "properties": {"ticket_id": "T-9"},
        },
    )
    (event,) = result.events
    assert (event.type.value, event.properties) == (
        "ticket_opened",
        {"ticket_id": "T-9", "category": "complaint"},
    )


def test_an_amount_in_fen_becomes_yuan_and_the_platform_id_an_identifier() -> None:
    result = take(
        "delivery-platform.yaml",
        source("delivery", "delivery"),
        {
            "type": "track",
            "anonymousId": "dev-1",
            "event": "Order Pushed",
            "properties": {"order_sn": "E-1", "total_fen": 5680, "user_id": "U-7"},
        },
    )
    (event,) = result.events
    assert event.type.value == "order_completed"
    assert event.properties == {"order_id": "E-1", "total": 56.8, "user_id": "U-7"}
    assert {i.key() for i in event.identifiers} == {
        "anonymous_id:dev-1",
        "platform_user_id:U-7",
    }


def test_a_value_that_does_not_convert_is_rejected_naming_the_field_as_sent() -> None:
    result = take(
        "delivery-platform.yaml",
        source("delivery", "delivery"),
        {"type": "track", "userId": "U", "event": "Order Pushed", "properties": {"total_fen": "x"}},
        {"type": "track", "userId": "U", "event": "Order Pushed", "properties": {"total_fen": 1}},
    )
    assert (result.accepted, len(result.rejections)) == (1, 1)
    rejected, payload = result.rejections[0]
    assert rejected.field == "batch[0].properties.total_fen"
    assert rejected.reason == DeadLetterReason.INVALID_EVENT and rejected.status == 400
    assert payload["properties"] == {"total_fen": "x"}  # the dead letter keeps what was sent


def test_local_trait_names_become_canonical_traits_and_identifiers() -> None:
    result = take(
        "pos-export.yaml",
        source("pos-local", "pos", user_id_type="member_id"),
        {
            "type": "identify",
            "userId": "M-1",
            "traits": {
                "shouji": "138 0013 8000",
                "nianling": "34",
                "huiyuanka": "CARD-9",
                "caozuoyuan": "cashier-3",
            },
        },
    )
    (event,) = result.events
    assert event.traits == {"phone": "138 0013 8000", "age": 34, "huiyuanka": "CARD-9"}
    assert {i.key() for i in event.identifiers} == {
        "member_id:M-1",
        "phone:+8613800138000",
        "member_id:CARD-9",
    }
    assert event.context[MAPPED_FROM]["traits"]["nianling"] == "34"


def test_an_unmatched_event_of_a_mapped_source_passes_as_sent() -> None:
    message = {"type": "track", "userId": "C-1", "event": "Page Liked", "properties": {"a": 1}}
    result = take("service-desk.yaml", source("service-desk"), message)
    (event,) = result.events
    assert (event.type.value, event.properties, event.context) == ("track", {"a": 1}, {})


def test_a_source_without_a_mapping_takes_the_unmapped_path() -> None:
    def mapper(msg: Any) -> Any:
        return msg

    stamp = intake.Stamp(source("web"), NOW, Limits(), "CN")
    assert intake._mapped(mapper, stamp) is mapper


def test_well_known_trait_names_are_identifiers_without_any_mapping() -> None:
    stamp = intake.Stamp(source("mini", "mini_program"), NOW, Limits(), "CN")
    result = intake.segment_batch(
        {
            "batch": [
                {
                    "type": "identify",
                    "anonymousId": "oX-1",
                    "traits": {"wechat_openid": "oX-1", "platform_user_id": 42, "vip": True},
                }
            ]
        },
        stamp,
    )
    assert {i.key() for i in result.events[0].identifiers} == {
        "anonymous_id:oX-1",
        "wechat_openid:oX-1",
        "platform_user_id:42",
    }


def test_a_source_says_what_its_anonymous_id_is() -> None:
    mini = source("mini", "mini_program", anonymous_id_type="wechat_openid")
    stamp = intake.Stamp(mini, NOW, Limits(), "CN")
    result = intake.segment_batch({"batch": [{"type": "page", "anonymousId": "oX-2"}]}, stamp)
    assert [i.key() for i in result.events[0].identifiers] == ["wechat_openid:oX-2"]


def test_identifiers_come_from_context_paths() -> None:
    mapping = compile_mapping(
        {
            "name": "mp",
            "sources": ["mini"],
            "identifiers": [{"path": "context.app.unionid", "type": "wechat_unionid"}],
        },
        "inline",
    )
    stamp = intake.Stamp(source("mini"), NOW, Limits(), "CN", mapping)
    msg = {"type": "page", "anonymousId": "a", "context": {"app": {"unionid": "U-1"}}}
    result = intake.segment_batch({"batch": [msg]}, stamp)
    assert "wechat_unionid:U-1" in {i.key() for i in result.events[0].identifiers}


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        (
            {
                "name": "x",
                "events": [{"match": "A", "type": "track", "convert": {"t": {"scale": "z"}}}],
            },
            "events[0].convert.t.scale",
        ),
        ({"name": "x", "events": [{"match": "A", "type": "order_done"}]}, "events[0].type"),
        (
            {"name": "x", "identifiers": [{"path": "traitz.a", "type": "email"}]},
            "identifiers[0].path",
        ),
        ({"name": "x", "tratis": {}}, "tratis"),
        ({"name": "x", "events": [{"match": "A"}]}, "events[0]"),
        (
            {
                "name": "x",
                "events": [{"match": "A b", "type": "track"}, {"match": "a-B", "type": "track"}],
            },
            "events[1].match",
        ),
    ],
)
def test_a_bad_mapping_is_refused_with_the_path_of_the_error(
    spec: dict[str, Any], where: str, tmp_path: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(MappingError) as caught:
        load_mapping(path)
    assert str(caught.value).startswith(f"{path}: {where}")


def test_two_mappings_may_not_claim_one_source(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "sources": ["s"]}))
    with pytest.raises(MappingError, match="'s' is mapped by both 'a' and 'b'"):
        load_all(tmp_path)


def test_every_shipped_mapping_loads() -> None:
    assert set(load_all(EXAMPLES)) == {
        "survey",
        "service-desk",
        "delivery",
        "web-shop",
        "pos-local",
    }


def test_the_registry_reloads_a_changed_file_and_keeps_the_last_good_one(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"name": "m", "sources": ["s"]}))
    registry = MappingRegistry(tmp_path, check_s=0)
    first = registry.for_source("s")
    assert first is not None and registry.for_source("t") is None

    path.write_text(yaml.safe_dump({"name": "m", "sources": ["s", "t"]}))
    os.utime(path, ns=(1, 1))  # a new stamp even within the file system's time resolution
    assert registry.for_source("t") is not None

    path.write_text("name: m\nsources: [s]\nevents: [{match: A}]\n")
    os.utime(path, ns=(2, 2))
    assert registry.for_source("t") is not None  # the last good set stays
    assert registry.error is not None and "events[0]" in registry.error


def test_the_mapping_in_the_docs_loads_and_does_what_they_say() -> None:
    doc = (EXAMPLES.parents[1] / "docs" / "sources.md").read_text(encoding="utf-8")
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    mapping = compile_mapping(yaml.safe_load(block), "docs/sources.md")
    stamp = intake.Stamp(source("survey", "survey"), NOW, Limits(), "CN", mapping)
    msg = {
        "type": "track",
        "userId": "u",
        "event": "Order Pushed",
        "properties": {"order_sn": "E-1", "total_fen": "1,299", "mobile": "13800138000"},
    }
    (event,) = intake.segment_batch({"batch": [msg]}, stamp).events
    assert event.properties == {"order_id": "E-1", "total": 12.99, "mobile": "13800138000"}
    assert "phone:+8613800138000" in {i.key() for i in event.identifiers}
