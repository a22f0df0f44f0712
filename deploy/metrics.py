"""Expose the metrics (runtime/metrics.py): ``/metrics`` on the API, a port per worker.

The processes of one command (``cdp run``'s API and stream children, ``cdp api --workers N``)
count into one directory (prometheus_client's multiprocess mode, set up by ``deploy/__main__``)
so one scrape of any of them sees the whole command. A worker's port also serves what is read
at scrape time rather than counted: consumer lag per group and partition, profiles created,
profiles per tag, and whether Kafka and Redis answered.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import redis
import structlog
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from deploy.lag import PartitionLag, consumer_lag
from deploy.settings import Settings
from identity.store import profiles_created
from tagging.store import tag_counts

log = structlog.get_logger()

#: prometheus_client's own variable: the directory the processes of one command share.
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


def own_groups(settings: Settings) -> str:
    """The prefix of this deployment's consumer groups (a broker may hold others')."""
    return f"{settings.kafka.topic_prefix}{settings.worker.app_id}-"


class _ThisProcess(Collector):
    """The metrics counted in this process (no directory shared with others)."""

    def collect(self) -> Iterable[Any]:
        return REGISTRY.collect()


def command_registry() -> CollectorRegistry:
    """A registry of the metrics counted by every process of this command."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(MULTIPROC_DIR):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ThisProcess())
    return registry


def exposition() -> bytes:
    """The text a scrape of ``/metrics`` gets."""
    return generate_latest(command_registry())


class State(Collector):
    """Read at scrape time, at most every ``interval_s`` (Kafka's admin calls take a while)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.interval_s = settings.metrics.state_interval_s
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._families: list[GaugeMetricFamily] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if time.monotonic() - self._read_at >= self.interval_s:
                self._families = self._read()
                self._read_at = time.monotonic()
            yield from self._families

    def _read(self) -> list[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "cdp_dependency_up",
            "Whether a service answered the last state read.",
            labels=["service"],
        )
        families = [up]
        try:
            families.append(self._lag(self._groups()))
            up.add_metric(["kafka"], 1)
        except Exception as exc:  # noqa: BLE001 - a scrape reports an outage, it does not fail
            log.warning("metrics.lag_unread", error=f"{type(exc).__name__}: {exc}")
            up.add_metric(["kafka"], 0)
        try:
            families += self._counts()
            up.add_metric(["redis"], 1)
        except redis.RedisError as exc:
            log.warning("metrics.counts_unread", error=f"{type(exc).__name__}: {exc}")
            up.add_metric(["redis"], 0)
        return families

    def _groups(self) -> list[PartitionLag]:
        return consumer_lag(self.settings.kafka, prefix=own_groups(self.settings))

    @staticmethod
    def _lag(rows: list[PartitionLag]) -> GaugeMetricFamily:
        lag = GaugeMetricFamily(
            "cdp_consumer_lag_messages",
            "Messages written to a partition and not yet committed by a consumer group.",
            labels=["group", "topic", "partition"],
        )
        for r in rows:
            lag.add_metric([r.group, r.topic, str(r.partition)], r.lag)
        return lag

    def _counts(self) -> list[GaugeMetricFamily]:
        ns = self.settings.worker.namespace
        client = redis.Redis.from_url(
            self.settings.redis.url.get_secret_value(), socket_timeout=3, socket_connect_timeout=3
        )
        try:
            created = profiles_created(client, ns)
            tags = tag_counts(client, ns)
        finally:
            client.close()
        profiles = GaugeMetricFamily(
            "cdp_profiles_created", "Profile ids ever created (merged-away ones included)."
        )
        profiles.add_metric([], created)
        per_tag = GaugeMetricFamily(
            "cdp_tag_profiles", "Profiles holding a tag now, by tag id.", labels=["tag"]
        )
        for tag, n in sorted(tags.items()):
            per_tag.add_metric([tag], n)
        return [profiles, per_tag]


def serve_worker_metrics(settings: Settings) -> int | None:
    """Serve the command's metrics and the state on the worker's metrics port, in a thread.

    Returns the port, or None when it is off (port 0) or taken: the worker processes events
    without it, and Prometheus reports the target down.
    """
    conf = settings.metrics
    if not conf.port:
        return None
    registry = command_registry()
    registry.register(State(settings))
    try:
        start_http_server(conf.port, conf.host, registry)
    except OSError as exc:
        log.error("metrics.port_unavailable", host=conf.host, port=conf.port, error=str(exc))
        return None
    return conf.port
