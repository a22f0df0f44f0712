"""The bulk histogram observation equals one observe() per value; call names map to services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Histogram

from runtime.metrics import FRESHNESS_BUCKETS, observe_freshness, observe_many, service_of


def _samples(h: Histogram) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in h.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def test_observe_many_fills_the_same_buckets_and_sum_as_observe() -> None:
    values = [0.0, 0.05, 0.051, 0.3, 1.0, 7.5, 29.9, 1800.0, 5000.0, 0.05]
    one = Histogram("a_seconds", "", buckets=FRESHNESS_BUCKETS, registry=CollectorRegistry())
    bulk = Histogram("a_seconds", "", buckets=FRESHNESS_BUCKETS, registry=CollectorRegistry())
    for v in values:
        one.observe(v)
    observe_many(bulk, values)
    assert _samples(bulk) == _samples(one)
    assert _samples(bulk)[("a_seconds_count", "")] == len(values)
    assert _samples(bulk)[("a_seconds_bucket", "0.05")] == 3  # bounds are inclusive


def test_observe_many_of_nothing_changes_nothing() -> None:
    h = Histogram("b_seconds", "", buckets=(1, 2), registry=CollectorRegistry())
    observe_many(h, [])
    assert _samples(h)[("b_seconds_count", "")] == 0


def test_freshness_is_the_age_at_the_given_instant() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    received = [now - timedelta(seconds=s) for s in (0.2, 3, 90)]
    from runtime.metrics import FRESHNESS

    child = FRESHNESS.labels("unit-test")
    before = _samples(child)  # type: ignore[arg-type]
    observe_freshness("unit-test", received, now.timestamp())
    after = _samples(child)  # type: ignore[arg-type]
    assert (
        after[("cdp_freshness_seconds_count", "")] - before[("cdp_freshness_seconds_count", "")]
        == 3
    )
    assert (
        after[("cdp_freshness_seconds_bucket", "0.25")]
        - before[("cdp_freshness_seconds_bucket", "0.25")]
        == 1
    )
    assert (
        after[("cdp_freshness_seconds_bucket", "60.0")]
        - before[("cdp_freshness_seconds_bucket", "60.0")]
        == 2
    )
    assert (
        round(
            after[("cdp_freshness_seconds_sum", "")] - before[("cdp_freshness_seconds_sum", "")], 6
        )
        == 93.2
    )


def test_calls_are_attributed_to_the_service_they_talk_to() -> None:
    assert service_of("identity.resolve") == "redis"
    assert service_of("tags.evaluate") == "redis"
    assert service_of("stream.publish") == "kafka"
    assert service_of("history.events") == "clickhouse"
    assert service_of("something.else") == "other"
