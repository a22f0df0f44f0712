"""`cdp status`: the services' health, each stage's rate, freshness and consumer lag, one screen.

Health is checked at the configured addresses. Rates and freshness come from two scrapes of
the workers' metrics ports (``CDP_METRICS__PORT``) ``interval_s`` apart; lag from Kafka.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from deploy.lag import consumer_lag
from deploy.lifecycle import StartError, wait_for_kafka, wait_for_redis
from deploy.metrics import own_groups
from deploy.settings import Settings
from sinks.clickhouse import connect as connect_clickhouse

CHECK_S = 3.0

#: (metric name, labels) -> value, summed over every scraped endpoint.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Health:
    """Whether one service answered at its configured address."""

    name: str
    address: str
    ready: bool
    note: str = ""


@dataclass
class Status:
    """Everything `cdp status` shows."""

    services: list[Health]
    sources: list[str]
    interval_s: float
    #: stage -> messages per second over the interval.
    rates: dict[str, float] = field(default_factory=dict)
    #: freshness stage -> {"p50", "p99" (seconds), "events" (in the interval)}.
    freshness: dict[str, dict[str, float | None]] = field(default_factory=dict)
    #: consumer group -> total lag (None: Kafka did not answer).
    lag: dict[str, int] | None = None
    unreachable: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def services(settings: Settings) -> list[Health]:
    """Ping Kafka, Redis and ClickHouse where the settings say they are."""
    found = []
    kafka = settings.kafka.bootstrap_servers
    redis_url = settings.redis.url.get_secret_value()
    checks: list[tuple[str, str, Callable[[], None]]] = [
        ("kafka", kafka, partial(wait_for_kafka, kafka, CHECK_S)),
        ("redis", _redacted(redis_url), partial(wait_for_redis, redis_url, CHECK_S)),
    ]
    for name, address, check in checks:
        try:
            check()
            found.append(Health(name, address, True))
        except StartError as exc:
            found.append(Health(name, address, False, str(exc)))
    found.append(_clickhouse(settings))
    return found


def _clickhouse(settings: Settings) -> Health:
    if settings.clickhouse.url is None:
        # chDB is one process per directory: the process writing it holds it.
        path = settings.chdb_path()
        return Health("clickhouse", f"chdb://{path}", True, "embedded in the cdp process")
    url = settings.clickhouse.url.get_secret_value()
    try:
        client = connect_clickhouse(url, settings.chdb_path())
        try:
            client.command("SELECT 1")
        finally:
            client.close()
    except Exception as exc:  # noqa: BLE001 - a status reports any failure as data
        return Health("clickhouse", _redacted(url), False, f"{type(exc).__name__}: {exc}")
    return Health("clickhouse", _redacted(url), True)


def scrape(urls: list[str]) -> tuple[Samples, list[str]]:
    """Sum the samples of every reachable endpoint; return them and the unreachable ones."""
    samples: Samples = {}
    missing = []
    for url in urls:
        try:
            text = httpx.get(url, timeout=CHECK_S * 3).raise_for_status().text
        except httpx.HTTPError:
            missing.append(url)
            continue
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                key = (s.name, frozenset(s.labels.items()))
                samples[key] = samples.get(key, 0.0) + s.value
    return samples, missing


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """Values of metric ``name`` summed by ``label``."""
    out: dict[str, float] = {}
    for (metric, labels), value in samples.items():
        if metric == name:
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + value
    return out


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of cumulative ``(upper bound, count)`` buckets, interpolated within
    the bucket as Prometheus's ``histogram_quantile`` does; None without observations."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bucket: its bound, as Prometheus
            width = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width)
        lower_bound, lower_count = bound, count
    return buckets[-1][0]


def freshness(before: Samples, after: Samples) -> dict[str, dict[str, float | None]]:
    """p50/p99 of the freshness observed between two scrapes, per freshness stage."""
    per_stage: dict[str, dict[float, float]] = {}
    for (metric, labels), value in after.items():
        if metric != "cdp_freshness_seconds_bucket":
            continue
        lab = dict(labels)
        delta = value - before.get((metric, labels), 0.0)
        counts = per_stage.setdefault(lab["stage"], {})
        le = float(lab["le"])
        counts[le] = counts.get(le, 0.0) + delta
    out = {}
    for stage, counts in sorted(per_stage.items()):
        buckets = list(counts.items())
        out[stage] = {
            "p50": quantile(0.5, buckets),
            "p99": quantile(0.99, buckets),
            "events": max(counts.values(), default=0.0),
        }
    return out


def collect(settings: Settings, urls: list[str], interval_s: float) -> Status:
    """Check the services, scrape ``urls`` twice ``interval_s`` apart, read the lag."""
    status = Status(services(settings), urls, interval_s)
    first, _ = scrape(urls)
    began = time.monotonic()
    time.sleep(interval_s)
    second, status.unreachable = scrape(urls)
    elapsed = time.monotonic() - began
    events = by_label(second, "cdp_stage_events_total", "stage")
    earlier = by_label(first, "cdp_stage_events_total", "stage")
    status.rates = {s: (n - earlier.get(s, 0.0)) / elapsed for s, n in sorted(events.items())}
    status.freshness = freshness(first, second)
    if status.services[0].ready:
        totals: dict[str, int] = {}
        for row in consumer_lag(settings.kafka, prefix=own_groups(settings)):
            totals[row.group] = totals.get(row.group, 0) + row.lag
        status.lag = totals
    return status


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def render(status: Status) -> str:
    """The one screen."""
    lines = ["services"]
    for h in status.services:
        state = "ready" if h.ready else "down"
        note = f"  ({h.note})" if h.note else ""
        lines.append(f"  {h.name:12} {state:6} {h.address}{note}")
    lines.append(
        f"stages (events/s over {status.interval_s:g} s, from {', '.join(status.sources)})"
    )
    for url in status.unreachable:
        lines.append(f"  no answer from {url} (is a worker running? CDP_METRICS__PORT)")
    if not status.rates and not status.unreachable:
        lines.append("  no stage has processed anything yet")
    for stage, rate in status.rates.items():
        lines.append(f"  {stage:20} {rate:10.1f}")
    lines.append("freshness (received at ingest -> effect, over the interval)")
    lines.append(f"  {'':20} {'p50':>10} {'p99':>10} {'events':>8}")
    for stage, f in status.freshness.items():
        n = f["events"] or 0
        lines.append(f"  {stage:20} {_seconds(f['p50']):>10} {_seconds(f['p99']):>10} {n:8.0f}")
    lines.append("consumer lag (messages not yet committed)")
    if status.lag is None:
        lines.append("  unknown: Kafka did not answer")
    for group, lag in sorted((status.lag or {}).items()):
        lines.append(f"  {group:40} {lag:10d}")
    return "\n".join(lines)
