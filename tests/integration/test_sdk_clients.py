"""The unchanged Segment and RudderStack Python SDKs deliver events that land in Kafka."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient

from deploy.settings import Settings
from tests.support.kafka import read_topic
from tests.support.keys import key_of


@pytest.fixture
def api(api_processes: str) -> str:
    """Ingest is tested against several API processes sharing the port."""
    return api_processes


SDKS = {"segment": SegmentClient, "rudder": RudderClient}


def _drive(client: Any, run: str) -> dict[str, str]:
    """Send one of each call; return call -> message id."""
    stamp = datetime.now(UTC) - timedelta(minutes=3)
    ids: dict[str, str] = {}

    def mid(call: str) -> str:
        ids[call] = f"{run}-{call}"
        return ids[call]

    client.identify(
        "M-77",
        {"email": "Zhang.San@Example.COM", "phone": "+86 139-0000-1111", "age": 41},
        timestamp=stamp,
        message_id=mid("identify"),
    )
    client.track(
        "M-77",
        "Order Completed",
        {"order_id": "O-1", "total": 199.0},
        timestamp=stamp,
        message_id=mid("track"),
    )
    client.page(
        "M-77", "shop", "Checkout", {"url": "https://shop/checkout"}, message_id=mid("page")
    )
    client.group("M-77", "ACME-CO", {"industry": "retail"}, message_id=mid("group"))
    client.alias("anon-abc", "M-77", message_id=mid("alias"))
    client.flush()
    return ids


@pytest.mark.parametrize("gzip", [True, False], ids=["gzip", "plain"])
@pytest.mark.parametrize("sdk", sorted(SDKS))
def test_sdk_events_land_in_kafka(sdk: str, gzip: bool, settings: Settings, api: str) -> None:
    errors: list[Any] = []
    client = SDKS[sdk](
        key_of("test-pos"),
        host=api,
        gzip=gzip,
        max_retries=0,
        on_error=lambda e, batch: errors.append(e),
    )
    run = uuid.uuid4().hex[:8]
    ids = _drive(client, run)
    client.shutdown() if hasattr(client, "shutdown") else client.join()
    assert errors == []

    topic = settings.kafka.topic("cdp.events.raw")
    got = read_topic(
        settings.kafka.bootstrap_servers, topic, 5, where=lambda v: v["event_id"].startswith(run)
    )
    by_id = {value["event_id"]: (key, value) for key, value in got}
    assert len(got) == 5 and set(by_id) == set(ids.values())

    key, identify = by_id[ids["identify"]]
    assert key == "member_id:M-77"
    assert identify["type"] == "identify" and identify["channel"] == "pos"
    assert identify["source"] == "test-pos"
    assert identify["traits"]["age"] == 41  # rudder sent these under context.traits
    assert {(i["type"], i["value"]) for i in identify["identifiers"]} == {
        ("member_id", "M-77"),
        ("email", "zhang.san@example.com"),
        ("phone", "+8613900001111"),
    }
    sent_event_time = datetime.fromisoformat(identify["timestamp"])
    assert abs(sent_event_time - (datetime.now(UTC) - timedelta(minutes=3))) < timedelta(minutes=1)

    _, track = by_id[ids["track"]]
    assert (track["type"], track["name"]) == ("order_completed", "Order Completed")
    assert track["properties"] == {"order_id": "O-1", "total": 199.0}
    _, page = by_id[ids["page"]]
    assert (page["type"], page["name"]) == ("page", "Checkout")
    _, group = by_id[ids["group"]]
    assert (group["type"], group["group_id"], group["traits"]) == (
        "group",
        "ACME-CO",
        {"industry": "retail"},
    )
    _, alias = by_id[ids["alias"]]
    assert (alias["type"], alias["previous_id"]) == ("alias", "anon-abc")
