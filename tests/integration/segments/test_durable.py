"""Saved segments survive losing Redis: every version is acknowledged by Kafka first.

Real Kafka and Redis. "Kafka down" is a publisher pointed at a port nothing listens on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from contracts.segments import SegmentDefinition
from contracts.topics import SEGMENTS_DEFINITIONS
from deploy.local.kafka import free_port
from deploy.settings import Settings
from runtime.exceptions import KafkaUnavailable
from runtime.publisher import Publisher
from runtime.readback import read_records
from segments.store import SegmentStore
from tests.support.server import running_api

WRITER = {"Authorization": "Bearer tk_segments_rw"}
VIP = {"id": "vips", "definition": {"tag": "tier_vip"}}


def lose_segments(settings: Settings) -> int:
    """What a Redis that lost its data looks like to saved segments: none of their keys."""
    client = redis.Redis.from_url(settings.redis.url.get_secret_value())
    keys = list(client.scan_iter(f"{settings.worker.namespace}:seg:*"))
    if keys:
        client.delete(*keys)
    client.close()
    return len(keys)


@pytest.fixture
def api_url(settings: Settings) -> Iterator[str]:
    with running_api(settings) as url:
        yield url


def call(method: str, url: str, body: dict[str, Any] | None = None, **kw: Any) -> httpx.Response:
    headers = {**WRITER, **kw.pop("headers", {})}
    return httpx.request(method, url, json=body, headers=headers, timeout=30, **kw)


def test_saved_segments_come_back_after_redis_loses_them(settings: Settings, api_url: str) -> None:
    base = api_url + "/v1/segments"
    assert call("POST", base, VIP).status_code == 201
    stricter = {"definition": {"all": [{"tag": "tier_vip"}, {"tag": "repeat_buyer"}]}}
    r = call("PUT", base + "/vips", stricter)
    assert r.status_code == 200 and r.json()["version"] == 2
    assert call("POST", base, {"id": "gone", "definition": {"tag": "tier_vip"}}).status_code == 201
    assert call("DELETE", base + "/gone").status_code == 204

    assert lose_segments(settings) >= 3  # defs, versions, the sync marker
    listed = call("GET", base).json()
    assert [(s["id"], s["version"]) for s in listed["segments"]] == [("vips", 2)]
    first = call("GET", base + "/vips", params={"version": 1}).json()
    assert first["definition"] == {"tag": "tier_vip"}
    assert call("GET", base + "/vips").json()["definition"] == stricter["definition"]
    assert call("GET", base + "/gone").status_code == 404  # deleted stays deleted
    # Restored, it carries on from its version: the next update is 3.
    r = call("PUT", base + "/vips", VIP, headers={"If-Match": "2"})
    assert r.status_code == 200 and r.json()["version"] == 3


class Stores:
    """Segment stores on real Redis, each with its own publisher, closed together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.client = aioredis.from_url(settings.redis.url.get_secret_value())
        self.publishers: list[Publisher] = []

    def durable(self, bootstrap: str) -> SegmentStore:
        kafka = self.settings.kafka.model_copy(update={"bootstrap_servers": bootstrap})
        publisher = Publisher(bootstrap, publish_timeout_s=2, request_timeout_ms=1500)
        self.publishers.append(publisher)
        return SegmentStore.durable(self.client, self.settings.worker.namespace, publisher, kafka)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        for publisher in self.publishers:
            self.run(publisher.stop())
        self.run(self.client.aclose())
        self.loop.close()


@pytest.fixture
def stores(settings: Settings) -> Iterator[Stores]:
    made = Stores(settings)
    yield made
    made.close()


def test_without_kafka_nothing_is_saved_or_deleted(stores: Stores, settings: Settings) -> None:
    up = stores.durable(settings.kafka.bootstrap_servers)
    down = stores.durable(f"127.0.0.1:{free_port()}")
    vip = SegmentDefinition.model_validate(VIP)
    other = SegmentDefinition.model_validate({"definition": {"tag": "repeat_buyer"}})
    stores.run(up.put(vip, "vips", create=True))
    with pytest.raises(KafkaUnavailable):
        stores.run(down.put(other, "new", create=True))
    with pytest.raises(KafkaUnavailable):
        stores.run(down.put(other, "vips", create=False))
    with pytest.raises(KafkaUnavailable):
        stores.run(down.delete("vips"))
    saved = stores.run(up.list())
    assert [(s.id, s.version, s.definition) for s in saved] == [("vips", 1, vip.definition)]
    with pytest.raises(KeyError):
        stores.run(up.get("vips", 2))


def test_segments_saved_before_the_topic_existed_are_written_to_it(
    stores: Stores, settings: Settings
) -> None:
    older = SegmentStore(stores.client, settings.worker.namespace)  # no topic: older release
    vip = SegmentDefinition.model_validate(VIP)
    stores.run(older.put(vip, "vips", create=True))
    stores.run(older.put(vip, "vips", create=False))
    store = stores.durable(settings.kafka.bootstrap_servers)
    assert [s.version for s in stores.run(store.list())] == [2]
    topic = settings.kafka.topic(SEGMENTS_DEFINITIONS.name)
    records = read_records(settings.kafka.bootstrap_servers, topic)
    assert sorted(k.decode() for k, _ in records if k) == ["vips/1", "vips/2"]
