"""The platform's Prometheus metrics: one definition each, recorded per request or batch.

Every stage records here (never per event inside a loop: a batch's counts are added once),
and the composition root exposes them (``deploy/metrics.py``: ``/metrics`` on the API, a port
per worker). Names carry their unit; labels take only bounded values (stage, route, source
name, reason, rule, topic), never an identifier or a value of a person.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from prometheus_client import Counter, Histogram

#: Seconds buckets for calls to Kafka, Redis and ClickHouse and for batches.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: Seconds from ingest to an effect: a healthy pipeline is well under a second; a lagging
#: one minutes.
FRESHNESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)
BATCH_BUCKETS = (1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000)

INGEST_REQUESTS = Counter(
    "cdp_ingest_requests",
    "Ingest HTTP requests answered, by route, status and source (write key's name).",
    ["route", "status", "source"],
)
INGEST_SECONDS = Histogram(
    "cdp_ingest_request_duration_seconds",
    "Time to answer an ingest request (including Kafka's acknowledgement), by route.",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
EVENTS_ACCEPTED = Counter(
    "cdp_ingest_events_accepted", "Events acknowledged by Kafka into cdp.events.raw.", ["source"]
)
EVENTS_REJECTED = Counter(
    "cdp_ingest_events_rejected",
    "Events and requests rejected at ingest, by reason (each has a dead letter or a summary).",
    ["reason"],
)
PUBLISH_SECONDS = Histogram(
    "cdp_kafka_publish_duration_seconds",
    "Time from producing a publish's records to Kafka acknowledging all of them (acks=all).",
    buckets=LATENCY_BUCKETS,
)
PUBLISH_FAILURES = Counter(
    "cdp_kafka_publish_failures", "Publishes Kafka did not acknowledge (timeout or error)."
)
RECORDS_PUBLISHED = Counter(
    "cdp_kafka_records_published", "Records acknowledged by Kafka, by topic.", ["topic"]
)
STAGE_EVENTS = Counter(
    "cdp_stage_events", "Messages a processor stage read and processed, by stage.", ["stage"]
)
STAGE_BATCH = Histogram(
    "cdp_stage_batch_size", "Messages per micro-batch, by stage.", ["stage"], buckets=BATCH_BUCKETS
)
STAGE_SECONDS = Histogram(
    "cdp_stage_batch_duration_seconds",
    "Time to process one micro-batch (effects stored, outputs acknowledged), by stage.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
FRESHNESS = Histogram(
    "cdp_freshness_seconds",
    "Seconds from an event's receipt at ingest to its effect: the profile updated "
    "(stage=profile) or its history row written (stage=history).",
    ["stage"],
    buckets=FRESHNESS_BUCKETS,
)
CALL_SECONDS = Histogram(
    "cdp_call_duration_seconds",
    "Time of a processor's call to a service (Redis, Kafka or ClickHouse), by call.",
    ["call", "service"],
    buckets=LATENCY_BUCKETS,
)
CALL_ERRORS = Counter(
    "cdp_call_errors",
    "Failed calls of a processor to a service (each retried), by call and error class.",
    ["call", "service", "error"],
)
DEAD_LETTERS = Counter(
    "cdp_dead_letters",
    "Records written to cdp.events.deadletter, by the stage that wrote them and reason.",
    ["stage", "reason"],
)
IDENTITY_DECISIONS = Counter(
    "cdp_identity_decisions",
    "Merge ledger entries: profiles merged and merges refused, by decision and rule.",
    ["decision", "rule"],
)
SEGMENT_SECONDS = Histogram(
    "cdp_segment_query_duration_seconds",
    "Time of a segment query, by operation and source (tags: Redis index; history: ClickHouse).",
    ["operation", "source"],
    buckets=LATENCY_BUCKETS,
)
CLICKHOUSE_SECONDS = Histogram(
    "cdp_clickhouse_insert_duration_seconds",
    "Time of one batch insert into the ClickHouse history.",
    buckets=LATENCY_BUCKETS,
)
CLICKHOUSE_ERRORS = Counter(
    "cdp_clickhouse_errors", "ClickHouse calls that failed, by operation.", ["operation"]
)

#: The service behind a processor's call, by the call's name or its room prefix.
SERVICES = {
    "stream.publish": "kafka",
    "identity.publish": "kafka",
    "profiles.publish": "kafka",
    "history": "clickhouse",
    "identity": "redis",
    "profiles": "redis",
    "tags": "redis",
    "segments": "redis",
}


def service_of(call: str) -> str:
    """The service a named call talks to (``other`` for one not in ``SERVICES``)."""
    return SERVICES.get(call) or SERVICES.get(call.split(".", 1)[0], "other")


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """Observe ``values`` with one increment per bucket, not one ``observe`` per value.

    Equivalent to ``observe`` on each (the same bucket and sum), at a fraction of the cost
    for a batch of thousands: prometheus_client keeps per-bucket counts and adds them up
    when collected.
    """
    bounds = histogram._upper_bounds
    if not values:
        return
    counts = Tally(bisect_left(bounds, v) for v in values)
    histogram._sum.inc(math.fsum(values))
    for index, n in counts.items():
        histogram._buckets[index].inc(n)


def observe_freshness(stage: str, received: Iterable[datetime], now: float | None = None) -> None:
    """Record the age of each event received at ``received`` as of ``now`` (epoch seconds)."""
    at = time.time() if now is None else now
    observe_many(FRESHNESS.labels(stage), [at - r.timestamp() for r in received])


def observe_freshness_ms(stage: str, received_ms: Iterable[int]) -> None:
    """``observe_freshness`` of events received at ``received_ms`` (epoch ms)."""
    at = time.time()
    observe_many(FRESHNESS.labels(stage), [at - r / 1000 for r in received_ms])


@contextmanager
def batch(stage: str, size: int) -> Iterator[None]:
    """Count one micro-batch of ``size`` messages of ``stage`` and time its processing."""
    began = time.perf_counter()
    yield
    STAGE_SECONDS.labels(stage).observe(time.perf_counter() - began)
    STAGE_BATCH.labels(stage).observe(size)
    STAGE_EVENTS.labels(stage).inc(size)


def count_ledger(pairs: Iterable[tuple[str, str]]) -> None:
    """Count merge-ledger entries by (decision, rule)."""
    for (decision, rule), n in Tally(pairs).items():
        IDENTITY_DECISIONS.labels(decision, rule).inc(n)


def count_dead_letters(stage: str, reasons: Iterable[str]) -> None:
    """Count dead letters written by ``stage``, by reason."""
    for reason, n in Tally(reasons).items():
        DEAD_LETTERS.labels(stage, reason).inc(n)
