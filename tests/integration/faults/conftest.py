"""Fault-suite fixtures: services of a test's own, so stopping or filling them harms no other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy import topics
from deploy.local.kafka import KafkaBroker, free_port
from deploy.local.redis import RedisServer
from deploy.settings import RedisSettings, Settings
from tests.conftest import make_settings
from tests.support.services import Services


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own (AOF everysec, as the local stack runs it)."""
    server = RedisServer(tmp_path / "redis", free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A Kafka broker of this test's own."""
    broker = KafkaBroker(tmp_path / "kafka", free_port(), free_port(), heap="256m")
    broker.start()
    yield broker
    broker.stop()


def on_services(
    services: Services, prefix: str, redis: RedisServer | None = None, kafka: str | None = None
) -> Settings:
    """Settings on the session's services, or on the test's own Redis / broker; topics made."""
    settings = make_settings(services, prefix, publish_timeout_s=3.0, request_timeout_ms=2000)
    update: dict[str, object] = {}
    if redis is not None:
        update["redis"] = RedisSettings(url=redis.url)  # type: ignore[arg-type]
    if kafka is not None:
        update["kafka"] = settings.kafka.model_copy(update={"bootstrap_servers": kafka})
    settings = settings.model_copy(update=update)
    topics.create_all(settings.kafka)
    return settings
