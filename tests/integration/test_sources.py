"""Channels in their own vocabulary, through the real Segment SDK, into the unified profile."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from segment.analytics.client import Client as SegmentClient

from deploy.settings import Settings
from ingest.sources import Source, hash_key
from tests.support.kafka import read_topic
from tests.support.keys import key_of
from tests.support.server import running_api
from tests.support.worker import WorkerProcess

EXAMPLES = Path(__file__).resolve().parents[2] / "ingest" / "mapping_examples"
READER = {"Authorization": "Bearer tk_reader"}
ALL = ["history", "identity", "profiles"]
#: Test sources: name -> (channel, user id type, anonymous id type).
CHANNELS = {
    "t-survey": ("survey", "customer_id", "anonymous_id"),
    "t-desk": ("service_desk", "customer_id", "anonymous_id"),
    "t-mini": ("mini_program", "customer_id", "anonymous_id"),
    "t-delivery": ("delivery", "customer_id", "anonymous_id"),
}


def _mapping(example: str, source: str, into: Path) -> Path:
    """The shipped example mapping, applied to a test source."""
    spec = yaml.safe_load((EXAMPLES / example).read_text())
    spec["sources"] = [source]
    path = into / example
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    return path


@pytest.fixture
def mapped(settings: Settings, tmp_path: Path) -> Settings:
    """Settings with the survey, service-desk and delivery examples on test sources."""
    folder = tmp_path / "mappings"
    folder.mkdir()
    _mapping("survey-tool.yaml", "t-survey", folder)
    _mapping("service-desk.yaml", "t-desk", folder)
    _mapping("delivery-platform.yaml", "t-delivery", folder)
    extra = [
        Source(
            name=name,
            channel=channel,
            user_id_type=uid,
            anonymous_id_type=aid,
            key_sha256=hash_key(key_of(name)),
        )
        for name, (channel, uid, aid) in CHANNELS.items()
    ]
    ingest = settings.ingest.model_copy(
        update={"sources": [*settings.ingest.sources, *extra], "mappings": folder}
    )
    return settings.model_copy(update={"ingest": ingest})


def _sdk(source: str, api: str, errors: list[Any]) -> SegmentClient:
    return SegmentClient(
        key_of(source), host=api, max_retries=0, on_error=lambda e, batch: errors.append(e)
    )


def test_survey_and_complaint_in_their_own_words_set_satisfaction_and_service_tags(
    mapped: Settings, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    run = uuid.uuid4().hex[:8]
    customer, openid = f"C-{run}", f"oMini{run}"
    errors: list[Any] = []
    with running_api(mapped) as api:
        survey = _sdk("t-survey", api, errors)
        survey.track(customer, "Survey Submitted", {"nps": 3, "csat": 2, "response_id": run})
        survey.flush()
        desk = _sdk("t-desk", api, errors)
        desk.track(customer, "Complaint Filed", {"ticket_id": f"T-{run}"})
        desk.flush()
        # A mini-program: the openid as anonymousId and again as a trait, as WeChat SDKs do.
        mini = _sdk("t-mini", api, errors)
        mini.identify(
            anonymous_id=openid, traits={"wechat_openid": openid, "customer_id": customer}
        )
        mini.flush()
        delivery = _sdk("t-delivery", api, errors)
        delivery.track(
            anonymous_id=f"dev-{run}",
            event="Order Pushed",
            properties={"order_sn": f"E-{run}", "total_fen": 5680, "user_id": f"U-{run}"},
        )
        delivery.flush()
        assert errors == []

        workers.append(WorkerProcess(mapped, tmp_path, ALL).start())
        workers[0].wait_caught_up({"cdp.events.raw", "cdp.events.resolved"})

        found = httpx.get(
            api + "/v1/profiles/lookup",
            params={"type": "customer_id", "value": customer},
            headers=READER,
        )
        assert found.status_code == 200, found.text
        profile = found.json()
        assert (profile["csat_last"], profile["nps_last"], profile["nps_class"]) == (
            2,
            3,
            "detractor",
        )
        assert (profile["complaints"], profile["open_complaints"]) == (1, 1)
        assert {
            "csat_last_dissatisfied",
            "nps_detractor",
            "service_complained",
            "service_open_complaint",
        } <= set(profile["tags"])

        # The mini-program's person is found by the openid, as the type it is.
        by_openid = httpx.get(
            api + "/v1/profiles/lookup",
            params={"type": "wechat_openid", "value": openid},
            headers=READER,
        )
        assert by_openid.status_code == 200, by_openid.text
        assert by_openid.json()["profile_id"] == profile["profile_id"]

        # The delivery platform's user id is an identifier; its amount in fen is yuan.
        by_platform = httpx.get(
            api + "/v1/profiles/lookup",
            params={"type": "platform_user_id", "value": f"U-{run}"},
            headers=READER,
        )
        assert by_platform.status_code == 200, by_platform.text
        assert by_platform.json()["total_spend"] == 56.8

    raw = read_topic(
        mapped.kafka.bootstrap_servers,
        mapped.kafka.topic("cdp.events.raw"),
        2,
        where=lambda v: v["name"] == "Survey Submitted",
    )
    kept = {v["properties"]["survey_type"]: v["context"]["mapped_from"] for _, v in raw}
    assert kept["nps"]["properties"] == {"nps": 3, "csat": 2, "response_id": run}
    assert kept["nps"]["mapping"] == "survey-tool"


def test_a_changed_mapping_applies_without_a_restart(mapped: Settings) -> None:
    folder = mapped.ingest.mappings
    assert folder is not None
    auth = (key_of("t-desk"), "")
    message = {"type": "track", "userId": "C-1", "event": "Praise Given", "properties": {}}

    def posted_type(name: str) -> str:
        message["messageId"] = name
        response = httpx.post(api + "/v1/track", json=message, auth=auth, timeout=30)
        assert response.status_code == 200, response.text
        (_, value), *_ = read_topic(
            mapped.kafka.bootstrap_servers,
            mapped.kafka.topic("cdp.events.raw"),
            1,
            where=lambda v: v["event_id"] == name,
            settle_s=0.3,
        )
        return str(value["type"])

    with running_api(mapped) as api:
        assert posted_type("before") == "track"
        spec = yaml.safe_load((folder / "service-desk.yaml").read_text())
        spec["events"].append({"match": "Praise Given", "type": "survey_answered"})
        (folder / "service-desk.yaml").write_text(yaml.safe_dump(spec))
        # Each API process re-reads its mappings within seconds: post until one applies it.
        deadline, n = time.monotonic() + 30, 0
        while posted_type(f"after-{n}") != "survey_answered":
            assert time.monotonic() < deadline, "the changed mapping was never applied"
            n += 1


def test_cdp_sources_refuses_a_bad_mapping_with_the_path_of_the_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nevents:\n  - match: Paid\n    type: order_completed\n"
        "    convert: {total: {scale: ten}}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "deploy", "sources", "check", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert f"{bad}: events[0].convert.total.scale: Input should be a valid number" in out.stderr


def test_channels_disagreeing_on_age_show_as_conflicts_over_http_and_the_cli(
    settings: Settings, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    run = uuid.uuid4().hex[:8]
    email = f"li.{run}@example.com"
    errors: list[Any] = []
    with running_api(settings) as api:
        pos = _sdk("test-pos", api, errors)
        pos.identify(f"M-{run}", {"email": email, "age": 34}, timestamp=datetime(2026, 5, 1))
        pos.flush()
        web = _sdk("test-web", api, errors)
        web.identify(f"C-{run}", {"email": email, "age": 52}, timestamp=datetime(2026, 6, 1))
        web.flush()
        assert errors == []
        worker = WorkerProcess(settings, tmp_path, ALL)
        # The age goes by the most recent report here, not by source priority (pos > web).
        worker.env["CDP_PROFILES__TRAIT_POLICIES"] = '{"age": "most_recent"}'
        workers.append(worker.start())
        worker.wait_caught_up({"cdp.events.raw", "cdp.events.resolved"})

        found = httpx.get(
            api + "/v1/profiles/lookup",
            params={"type": "email", "value": email},
            headers=READER,
        ).json()
        assert found["traits"]["age"] == 52
        assert [(c["value"], c["source"], c["count"]) for c in found["conflicts"]["age"]] == [
            (52, "test-web", 1),
            (34, "test-pos", 1),
        ]
        report = httpx.get(api + "/v1/quality/conflicts", headers=READER).json()
        assert report["conflicts"] == [
            {"trait": "age", "sources": ["test-pos", "test-web"], "disagreements": 1}
        ]
        assert httpx.get(api + "/v1/quality/conflicts").status_code == 401
    printed = json.loads(worker.cli("quality", "--json"))
    assert printed == report["conflicts"]


def test_cdp_sources_test_prints_what_a_mapping_makes_of_a_sample(tmp_path: Path) -> None:
    def sources_test(properties: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        sample = tmp_path / "sample.json"
        message = {"type": "track", "userId": "R-1", "event": "Survey Submitted"}
        sample.write_text(json.dumps({**message, "messageId": "m1", "properties": properties}))
        mapping = str(EXAMPLES / "survey-tool.yaml")
        args = ["sources", "test", mapping, str(sample), "--channel", "survey"]
        return subprocess.run(
            [sys.executable, "-m", "deploy", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    good = sources_test({"nps": 9, "csat": "4"})
    assert good.returncode == 0, good.stderr
    events = [json.loads(line) for line in good.stdout.splitlines()]
    assert [(e["event_id"], e["type"], e["properties"]) for e in events] == [
        ("m1", "survey_answered", {"score": 9, "survey_type": "nps"}),
        ("m1#2", "survey_answered", {"score": 4, "survey_type": "csat"}),
    ]
    # A score that is no number refuses the message, naming the field as it was sent.
    bad = sources_test({"nps": 9, "csat": "x"})
    assert bad.returncode == 1 and bad.stdout == ""
    assert "rejected batch[0].properties.csat: properties.csat: 'x' is not a number" in bad.stderr
