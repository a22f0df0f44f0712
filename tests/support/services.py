"""Find real services: env addresses, else a Docker engine, else the local stack we start."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from deploy.local.kafka import KafkaBroker, free_port
from deploy.local.redis import RedisServer


@dataclass(frozen=True)
class Services:
    """Addresses of the real services a test session uses, and where they came from."""

    kafka_bootstrap: str
    redis_url: str
    chdb_path: Path
    origin: dict[str, str]


def docker_engine_answers() -> bool:
    """Ping the Docker daemon; a `docker` CLI on PATH proves nothing."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means "no engine here"
        return False


@contextmanager
def _kafka(stack: ExitStack, home: Path, docker: bool) -> Iterator[tuple[str, str]]:
    given = os.environ.get("CDP_TEST_KAFKA_BOOTSTRAP")
    if given:
        yield given, "env"
    elif docker:
        from testcontainers.kafka import KafkaContainer

        container = stack.enter_context(KafkaContainer("apache/kafka:4.1.1").with_kraft())
        yield container.get_bootstrap_server(), "testcontainers"
    else:
        broker = KafkaBroker(home / "kafka", free_port(), free_port(), heap="384m")
        broker.start()
        try:
            yield broker.bootstrap, "local"
        finally:
            broker.stop()


@contextmanager
def _redis(stack: ExitStack, home: Path, docker: bool) -> Iterator[tuple[str, str]]:
    given = os.environ.get("CDP_TEST_REDIS_URL")
    if given:
        yield given, "env"
    elif docker:
        from testcontainers.redis import RedisContainer

        container = stack.enter_context(RedisContainer("redis:7"))
        host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
        yield f"redis://{host}:{port}/0", "testcontainers"
    else:
        server = RedisServer(home / "redis", free_port())
        server.start()
        try:
            yield server.url, "local"
        finally:
            server.stop()


@contextmanager
def real_services(home: Path) -> Iterator[Services]:
    """Yield running services; anything that cannot start raises (the suite fails loudly)."""
    need_docker = not (
        os.environ.get("CDP_TEST_KAFKA_BOOTSTRAP") and os.environ.get("CDP_TEST_REDIS_URL")
    )
    docker = need_docker and docker_engine_answers()
    with ExitStack() as stack:
        kafka, kafka_origin = stack.enter_context(_kafka(stack, home, docker))
        redis_url, redis_origin = stack.enter_context(_redis(stack, home, docker))
        yield Services(
            kafka_bootstrap=kafka,
            redis_url=redis_url,
            chdb_path=home / "chdb",
            origin={"kafka": kafka_origin, "redis": redis_origin, "clickhouse": "chdb"},
        )
