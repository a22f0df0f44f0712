"""Kafka down -> 503 with Retry-After, never a 200; Kafka back -> accepted again."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy import topics
from deploy.local.kafka import KafkaBroker, free_port
from deploy.settings import Settings
from tests.conftest import make_settings
from tests.integration.test_bad_input import basic
from tests.support.kafka import read_topic
from tests.support.keys import key_of
from tests.support.server import running_api, running_api_processes
from tests.support.services import Services

KEY = key_of("test-pos")


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A broker of this test's own, so stopping it harms no other test."""
    broker = KafkaBroker(tmp_path / "kafka", free_port(), free_port(), heap="256m")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def outage(services: Services, prefix: str, own_broker: KafkaBroker) -> Settings:
    """Settings on the test's own broker, with short publish timeouts, topics created."""
    settings: Settings = make_settings(
        services, prefix, publish_timeout_s=3.0, request_timeout_ms=2000
    )
    settings = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"bootstrap_servers": own_broker.bootstrap})
        }
    )
    topics.create_all(settings.kafka)
    return settings


def _event(i: int) -> dict[str, object]:
    return {"batch": [{"type": "track", "userId": "M-1", "event": "Tick", "messageId": f"e{i}"}]}


def test_outage_gives_503_and_recovery_accepts(outage: Settings, own_broker: KafkaBroker) -> None:
    settings = outage
    with running_api(settings) as api, httpx.Client(base_url=api, timeout=30) as http:
        assert http.post("/v1/batch", json=_event(1), headers=basic(KEY)).status_code == 200
        assert http.get("/healthz").json()["checks"]["kafka"]["ok"] is True

        own_broker.stop()
        down = [http.post("/v1/batch", json=_event(i), headers=basic(KEY)) for i in (2, 3)]
        assert [r.status_code for r in down] == [503, 503]
        assert all(r.headers["Retry-After"] == "5" for r in down)
        assert down[0].json()["code"] == "kafka_unavailable"
        health = http.get("/healthz")
        assert health.status_code == 503 and health.json()["checks"]["kafka"]["ok"] is False
        assert health.json()["checks"]["redis"]["ok"] is True

        own_broker.start()
        deadline, status = time.monotonic() + 60, 0
        while status != 200 and time.monotonic() < deadline:
            status = http.post("/v1/batch", json=_event(4), headers=basic(KEY)).status_code
            assert status in (200, 503)
        assert status == 200

    raw = read_topic(
        own_broker.bootstrap,
        settings.kafka.topic("cdp.events.raw"),
        2,
        where=lambda v: v["event_id"] in ("e1", "e4"),
    )
    assert {v["event_id"] for _, v in raw} == {"e1", "e4"}


def _answers_by_pid(
    api: str, events: Iterator[int], want: int, count: int, timeout_s: float = 90
) -> dict[int, list[tuple[int, str | None, str]]]:
    """POST one event per new connection until every process answered ``want``.

    Returns pid -> [(status, Retry-After, event id)] for every answer, whatever its status.
    """
    answers: dict[int, list[tuple[int, str | None, str]]] = {}
    deadline = time.monotonic() + timeout_s
    while len({p for p, a in answers.items() if any(s == want for s, _, _ in a)}) < count:
        assert time.monotonic() < deadline, f"not every process answered {want}: {answers}"
        with httpx.Client(base_url=api, timeout=30) as http:  # a new connection each time
            pid = http.get("/healthz").json()["pid"]
            i = next(events)
            r = http.post("/v1/batch", json=_event(i), headers=basic(KEY))
            answers.setdefault(pid, []).append(
                (r.status_code, r.headers.get("Retry-After"), f"e{i}")
            )
    return answers


def test_outage_with_several_api_processes(outage: Settings, own_broker: KafkaBroker) -> None:
    settings = outage
    events = itertools.count(100)
    with running_api_processes(settings, 2) as api:
        before = _answers_by_pid(api, events, 200, 2)
        own_broker.stop()
        down = _answers_by_pid(api, events, 503, 2)
        own_broker.start()
        after = _answers_by_pid(api, events, 200, 2)

    # While Kafka was down every process answered 503 with Retry-After, and none a 200.
    assert len(down) == 2
    assert all(s == 503 and retry == "5" for a in down.values() for s, retry, _ in a)
    # Every event answered 200 before and after is in Kafka.
    acked = {e for a in (before, after) for got in a.values() for s, _, e in got if s == 200}
    raw = read_topic(
        own_broker.bootstrap,
        settings.kafka.topic("cdp.events.raw"),
        len(acked),
        where=lambda v: v["event_id"] in acked,
        timeout_s=60,
    )
    assert {v["event_id"] for _, v in raw} == acked
