"""`cdp status`'s arithmetic: quantiles of scraped buckets, rates and freshness between scrapes."""

from __future__ import annotations

import math

import pytest

from deploy.status import Samples, by_label, freshness, quantile


def test_quantile_interpolates_within_the_bucket_like_prometheus() -> None:
    buckets = [(0.1, 10.0), (1.0, 90.0), (10.0, 100.0), (math.inf, 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.1 + 0.9 * (50 - 10) / 80)
    assert quantile(0.99, buckets) == pytest.approx(1.0 + 9.0 * (99 - 90) / 10)
    assert quantile(0.05, buckets) == pytest.approx(0.05)


def test_quantile_beyond_the_last_finite_bucket_is_that_bound() -> None:
    assert quantile(0.99, [(1.0, 1.0), (math.inf, 100.0)]) == 1.0


def test_quantile_of_nothing_is_none() -> None:
    assert quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]) is None
    assert quantile(0.5, []) is None


def _bucket(stage: str, le: str, value: float) -> Samples:
    labels = frozenset({("stage", stage), ("le", le)})
    return {("cdp_freshness_seconds_bucket", labels): value}


def test_freshness_is_computed_from_what_was_observed_between_the_scrapes() -> None:
    before = {
        **_bucket("profile", "1.0", 100),
        **_bucket("profile", "10.0", 100),
        **_bucket("profile", "+Inf", 100),
    }
    after = {**_bucket("profile", "1.0", 100), **_bucket("profile", "+Inf", 110)}
    after.update(_bucket("profile", "10.0", 110))
    found = freshness(before, after)["profile"]
    assert found["events"] == 10
    assert found["p50"] == pytest.approx(1.0 + 9.0 * 0.5)


def test_values_are_summed_by_label_over_endpoints_and_other_labels() -> None:
    samples: Samples = {
        ("cdp_stage_events_total", frozenset({("stage", "stream"), ("x", "1")})): 5.0,
        ("cdp_stage_events_total", frozenset({("stage", "stream"), ("x", "2")})): 7.0,
        ("cdp_stage_events_total", frozenset({("stage", "history-events")})): 3.0,
        ("other", frozenset({("stage", "stream")})): 100.0,
    }
    assert by_label(samples, "cdp_stage_events_total", "stage") == {
        "stream": 12.0,
        "history-events": 3.0,
    }
