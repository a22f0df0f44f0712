"""Session fixtures: real Kafka, Redis and embedded ClickHouse; fresh topics per test."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from deploy import topics
from deploy.settings import (
    ApiSettings,
    ClickHouseSettings,
    IngestSettings,
    KafkaSettings,
    PrivacySettings,
    RedisSettings,
    Settings,
    WorkerSettings,
)
from tests.support.keys import known_sources, known_tokens
from tests.support.prometheus import PrometheusServer
from tests.support.server import running_api, running_api_processes
from tests.support.services import Services, real_services
from tests.support.worker import WorkerProcess


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark everything under tests/integration as integration."""
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """Real services for the whole session (started here when not given)."""
    with real_services(tmp_path_factory.mktemp("services")) as found:
        yield found


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A real Prometheus for the session, with the shipped alert rules; tests add targets."""
    rules = Path(__file__).parents[1] / "deploy" / "prometheus" / "alerts.yml"
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"), rules).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh topic prefix, so no two tests (or runs) share topics; the topics a test made
    under it are deleted after it, so the session's broker does not keep every test's
    partitions in its heap."""
    name = f"t{uuid.uuid4().hex[:10]}."
    yield name
    if "services" in request.fixturenames:
        found: Services = request.getfixturevalue("services")
        _delete_topics(found.kafka_bootstrap, name)


def _delete_topics(bootstrap: str, prefix: str) -> None:
    try:
        client = KafkaAdminClient(bootstrap_servers=bootstrap)
    except KafkaError:
        return  # the broker is down (a test stopped it): its topics go with the session
    try:
        mine = [t for t in client.list_topics() if t.startswith(prefix)]
        if mine:
            client.delete_topics(mine, timeout_ms=30_000)
    except KafkaError:
        pass  # as above; a cleanup, never the test's verdict
    finally:
        client.close()


def make_settings(services: Services, prefix: str, **kafka: object) -> Settings:
    """Build settings pointing at the session's services under ``prefix``."""
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=services.kafka_bootstrap,
            topic_prefix=prefix,
            partitions=3,
            **kafka,  # type: ignore[arg-type]
        ),
        redis=RedisSettings(url=services.redis_url),  # type: ignore[arg-type]
        clickhouse=ClickHouseSettings(path=services.chdb_path),
        ingest=IngestSettings(sources=known_sources()),
        worker=WorkerSettings(namespace=prefix.rstrip(".")),
        api=ApiSettings(tokens=known_tokens()),
        # In clear unless a test seals (tests/integration/privacy): not whatever master keys
        # this machine's state holds (`cdp up` writes some).
        privacy=PrivacySettings(enabled=False),
    )


@pytest.fixture
def settings(services: Services, prefix: str) -> Settings:
    """Settings for one test, with its topics created."""
    built = make_settings(services, prefix)
    topics.create_all(built.kafka)
    return built


@pytest.fixture
def api(settings: Settings) -> Iterator[str]:
    """The real API, serving in this process, for one test."""
    with running_api(settings) as base_url:
        yield base_url


@pytest.fixture
def api_processes(settings: Settings) -> Iterator[str]:
    """The real API as two processes on one port, as `cdp api` and `cdp run` serve it."""
    with running_api_processes(settings, 2) as base_url:
        yield base_url


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    """`cdp worker` processes a test starts (append them): killed at its end if still up."""
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        if w.proc is not None and w.proc.poll() is None:
            w.stop(signal.SIGKILL)
