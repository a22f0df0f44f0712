"""The Kafka broker restarted mid-stream: the API answers 503 while it is down, the
processors and the API recover by themselves, and nothing acknowledged is lost or doubled."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from deploy.local.kafka import KafkaBroker
from tests.integration.faults.conftest import on_services
from tests.support.faults import Feed, events_in_redis, reconcile, scaled
from tests.support.server import running_api
from tests.support.services import Services
from tests.support.worker import PIPELINE_TOPICS as TOPICS
from tests.support.worker import WorkerProcess

ALL = ["history", "identity", "profiles"]


def test_broker_restarted_mid_stream(
    services: Services,
    prefix: str,
    tmp_path: Path,
    own_broker: KafkaBroker,
    workers: list[WorkerProcess],
) -> None:
    settings = on_services(services, prefix, kafka=own_broker.bootstrap)
    with running_api(settings) as api:
        feed = Feed(api, customers=200)
        feed.send(scaled(2000))
        worker = WorkerProcess(settings, tmp_path, ALL).start()
        workers.append(worker)
        worker.wait_for(
            lambda: events_in_redis(settings) >= scaled(300), "300 events folded (times the scale)"
        )
        with feed.in_background(scaled(2000)):
            own_broker.stop()
            deadline = time.monotonic() + 60
            while feed.refused == 0:  # the client is told 503 (and retries) while it is down
                assert time.monotonic() < deadline, "no 503 while Kafka was down"
                time.sleep(0.1)
            health = httpx.get(api + "/healthz", timeout=10)
            assert health.status_code == 503 and health.json()["checks"]["kafka"]["ok"] is False
            own_broker.start()
        worker.wait_caught_up(TOPICS, timeout_s=240)
        assert worker.stop() == 0
        counts = reconcile(settings, worker, feed)
    assert counts["sent"] == scaled(4000) and counts["refused"] > 0
