"""A running pipeline's metrics, scraped by a real Prometheus, reconcile with what was sent.

`cdp run` (API processes, a stream process, the history) is started as an operator starts
it; a feed goes through its API; Prometheus scrapes its worker port and its API's
``/metrics``, and the test reads the series back through Prometheus's HTTP API.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.local.kafka import free_port
from deploy.settings import Settings
from tests.integration.test_bad_input import basic
from tests.support.keys import key_of, known_sources, known_tokens
from tests.support.prometheus import PrometheusServer
from tests.support.spawned import Spawned


def _env(settings: Settings, home: Path, api_port: int, metrics_port: int) -> dict[str, str]:
    s = settings
    return {
        "CDP_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
        "CDP_KAFKA__TOPIC_PREFIX": s.kafka.topic_prefix,
        "CDP_KAFKA__PARTITIONS": str(s.kafka.partitions),
        "CDP_REDIS__URL": s.redis.url.get_secret_value(),
        "CDP_WORKER__NAMESPACE": s.worker.namespace,
        "CDP_CLICKHOUSE__PATH": str(home / "chdb"),
        "CDP_API__PORT": str(api_port),
        "CDP_METRICS__PORT": str(metrics_port),
        "CDP_METRICS__STATE_INTERVAL_S": "1",
        "CDP_INGEST__SOURCES": json.dumps([x.model_dump(mode="json") for x in known_sources()]),
        "CDP_API__TOKENS": json.dumps([t.model_dump(mode="json") for t in known_tokens()]),
        "CDP_PRIVACY__ENABLED": "false",
        "XDG_STATE_HOME": str(home / "state"),
    }


class Run:
    """A spawned `cdp run` and the Prometheus jobs scraping it."""

    def __init__(self, spawned: Spawned, base: str, job: str, prom: PrometheusServer) -> None:
        self.spawned, self.base, self.job, self.prom = spawned, base, job, prom

    def post(self, body: dict[str, Any], key: str = key_of("test-pos")) -> httpx.Response:
        return httpx.post(f"{self.base}/v1/batch", json=body, headers=basic(key), timeout=30)

    def value(self, promql: str) -> float | None:
        return self.prom.value(promql.replace("JOB", f'job="{self.job}"'))

    def until(self, promql: str, expected: float) -> None:
        """Wait for the query to equal ``expected`` (the pipeline and the scrapes catch up)."""
        last: list[float | None] = [None]

        def equal() -> bool:
            last[0] = self.value(promql)
            return last[0] == expected

        try:
            self.spawned.wait_for(promql, equal, timeout_s=120)
        except AssertionError as exc:
            raise AssertionError(f"{promql}: {last[0]}, not {expected}\n{exc}") from None


@pytest.fixture
def run(settings: Settings, prometheus: PrometheusServer, tmp_path: Path) -> Iterator[Run]:
    api_port, metrics_port = free_port(), free_port()
    env = _env(settings, tmp_path, api_port, metrics_port)
    args = ["run", "--api-workers", "2", "--stream-workers", "1"]
    spawned = Spawned(args, env, tmp_path).start()
    job = f"run-{settings.worker.namespace}"
    base = f"http://127.0.0.1:{api_port}"
    try:
        spawned.wait_for("the API", lambda: httpx.get(f"{base}/healthz", timeout=5).is_success)
        prometheus.scrape(job, [f"127.0.0.1:{metrics_port}"])
        prometheus.scrape(f"{job}-api", [f"127.0.0.1:{api_port}"])
        yield Run(spawned, base, job, prometheus)
    finally:
        prometheus.scrape(job, [])
        prometheus.scrape(f"{job}-api", [])
        spawned.kill()


def identify(user: str | None, anonymous: str | None, email: str | None, n: int) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "identify", "messageId": f"id-{n}", "traits": {}}
    if user:
        msg["userId"] = user
    if anonymous:
        msg["anonymousId"] = anonymous
    if email:
        msg["traits"]["email"] = email
    return msg


def order(member: str, n: int) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": member,
        "event": "Order Completed",
        "messageId": f"o-{n}",
        "properties": {"order_id": f"O-{n}", "total": 25.5},
    }


def test_a_feed_is_counted_end_to_end_and_prometheus_scrapes_lag_and_freshness(
    run: Run, prometheus: PrometheusServer
) -> None:
    # Two people as two profiles: a member, and a web visitor who gave an email.
    first = run.post(
        {"batch": [identify("M-1", None, None, 1), identify(None, "a-7", "li@example.com", 2)]}
    )
    assert first.status_code == 200, first.text
    run.until('sum(cdp_freshness_seconds_count{JOB,stage="profile"})', 2)
    # The member gives the same email: one person, one merge.
    orders = [order("M-1", n) for n in range(10)]
    bad = [{"type": "track", "userId": "M-1"}, {"type": "identify"}]  # no event name; no id
    second = run.post({"batch": [identify("M-1", None, "li@example.com", 3), *orders, *bad]})
    assert second.status_code in (200, 400), second.text
    assert second.json()["accepted"] == 11 and second.json()["rejected"] == 2
    refused = run.post({"batch": [order("M-1", 99)]}, key="wk_nobody")
    assert refused.status_code == 401
    accepted, rejected = 2 + 11, 2 + 1

    # Ingest: accepted and rejected events reconcile with the answers.
    run.until("sum(cdp_ingest_events_accepted_total{JOB})", accepted)
    run.until('sum(cdp_ingest_events_accepted_total{JOB,source="test-pos"})', accepted)
    run.until("sum(cdp_ingest_events_rejected_total{JOB})", rejected)
    run.until('sum(cdp_ingest_events_rejected_total{JOB,reason="unauthorized"})', 1)
    run.until('sum(cdp_dead_letters_total{JOB,stage="ingest"})', rejected)
    run.until('sum(cdp_ingest_requests_total{JOB,route="/v1/batch",source="test-pos"})', 2)
    run.until('sum(cdp_ingest_requests_total{JOB,status="401",source="unknown"})', 1)
    raw = f"{run.job.removeprefix('run-')}.cdp.events.raw"
    run.until(f'sum(cdp_kafka_records_published_total{{JOB,topic="{raw}"}})', accepted)
    assert (run.value("sum(cdp_kafka_publish_duration_seconds_count{JOB})") or 0) >= 3

    # Stages: every raw event through the stream processor and into the history.
    run.until('sum(cdp_stage_events_total{JOB,stage="stream"})', accepted)
    run.until('sum(cdp_stage_events_total{JOB,stage="history-events"})', accepted)
    assert (run.value('sum(cdp_stage_batch_size_count{JOB,stage="stream"})') or 0) >= 2
    assert (run.value('sum(cdp_stage_batch_duration_seconds_sum{JOB,stage="stream"})') or 0) > 0

    # Freshness: each event once per effect, every one in a finite bucket.
    for stage in ("profile", "history"):
        run.until(f'sum(cdp_freshness_seconds_count{{JOB,stage="{stage}"}})', accepted)
        within_30s = f'sum(cdp_freshness_seconds_bucket{{JOB,stage="{stage}",le="30.0"}})'
        assert run.value(within_30s) == accepted
        assert (run.value(f'sum(cdp_freshness_seconds_sum{{JOB,stage="{stage}"}})') or 0) > 0

    # Identity: one merge, by the shared identifier; two profile ids were ever made.
    run.until('sum(cdp_identity_decisions_total{JOB,decision="merged"})', 1)
    run.until("cdp_profiles_created{JOB}", 2)
    # Calls to the services, timed by name.
    assert (run.value('sum(cdp_call_duration_seconds_count{JOB,service="redis"})') or 0) > 0
    assert (run.value("sum(cdp_clickhouse_insert_duration_seconds_count{JOB})") or 0) > 0

    # Lag per group and partition, read by the worker at scrape time, drains to zero.
    ns = run.job.removeprefix("run-")
    both = {f"{ns}.cdp-identity_profiles", f"{ns}.cdp-history"}

    def groups() -> set[str]:
        lag = prometheus.query(f'cdp_consumer_lag_messages{{job="{run.job}"}}')
        return {r["metric"]["group"] for r in lag}

    run.spawned.wait_for(f"lag of {both} (have {groups()})", lambda: both <= groups())
    run.until(f'sum(cdp_consumer_lag_messages{{JOB,group="{ns}.cdp-history"}})', 0)
    assert run.value("min(cdp_dependency_up{JOB})") == 1
    # Tags were evaluated: some tag holds for the merged member.
    assert (run.value("max(cdp_tag_profiles{JOB})") or 0) >= 1

    # The API's /metrics shows the same command's counts.
    run.until(f'sum(cdp_ingest_events_accepted_total{{job="{run.job}-api"}})', accepted)
    run.until(f'min(up{{job=~"{run.job}.*"}})', 1)


def test_status_shows_health_rates_freshness_and_lag_of_a_running_pipeline(run: Run) -> None:
    # A warm pipeline: the stream processor has finished a batch before the status looks.
    assert run.post({"batch": [order("M-5", 999)]}).status_code == 200
    run.until('sum(cdp_freshness_seconds_count{JOB,stage="profile"})', 1)
    metrics = run.spawned.env["CDP_METRICS__PORT"]
    env = {**run.spawned.env, "CDP_LOG_LEVEL": "warning"}
    args = [
        "status",
        "--json",
        "--interval",
        "5",
        "--metrics",
        f"http://127.0.0.1:{metrics}/metrics",
    ]
    status = subprocess.Popen(
        [sys.executable, "-m", "deploy", *args], env=env, stdout=subprocess.PIPE, text=True
    )
    n = 0
    while status.poll() is None:  # orders keep flowing through the whole interval
        r = run.post({"batch": [order("M-5", 1000 + n + i) for i in range(20)]})
        assert r.status_code == 200, r.text
        n += 20
    out, _ = status.communicate()
    assert status.returncode == 0, out
    found = json.loads(out)
    assert found["unreachable"] == [], found
    assert [(s["name"], s["ready"]) for s in found["services"]] == [
        ("kafka", True), ("redis", True), ("clickhouse", True),
    ]  # fmt: skip
    assert found["rates"]["stream"] > 0, found
    assert found["freshness"]["profile"]["events"] > 0
    assert found["freshness"]["profile"]["p99"] is not None
    ns = run.job.removeprefix("run-")
    assert {f"{ns}.cdp-identity_profiles", f"{ns}.cdp-history"} <= set(found["lag"])
    assert found["unreachable"] == []


def test_the_shipped_alert_rules_load_and_evaluate_in_prometheus(
    prometheus: PrometheusServer,
) -> None:
    body = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()
    rules = [r for g in body["data"]["groups"] for r in g["rules"]]
    assert {r["name"] for r in rules if r["type"] == "alerting"} == {
        "CdpConsumerLagGrowing",
        "CdpFreshnessP99High",
        "CdpDeadLettersHigh",
        "CdpUndecodableMessages",
        "CdpIngestUnavailable",
        "CdpStageDown",
        "CdpDependencyDown",
    }
    assert all(r["health"] in ("ok", "unknown") for r in rules), rules
