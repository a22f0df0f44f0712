"""Redis restarted with its AOF mid-stream, and Redis's disk full: nothing lost or doubled."""

from __future__ import annotations

from pathlib import Path

import redis

from deploy.local.kafka import free_port
from deploy.local.redis import RedisServer
from tests.integration.faults.conftest import on_services
from tests.support.faults import SCALE, Feed, events_in_redis, reconcile, scaled, small_disk
from tests.support.server import running_api
from tests.support.services import Services
from tests.support.worker import PIPELINE_TOPICS as TOPICS
from tests.support.worker import WorkerProcess

ALL = ["history", "identity", "profiles"]


def test_redis_restarted_with_its_aof_mid_stream(
    services: Services,
    prefix: str,
    tmp_path: Path,
    own_redis: RedisServer,
    workers: list[WorkerProcess],
) -> None:
    settings = on_services(services, prefix, redis=own_redis)
    with running_api(settings) as api:
        feed = Feed(api, customers=200)
        feed.send(scaled(3000))
        worker = WorkerProcess(settings, tmp_path, ALL).start()
        workers.append(worker)
        worker.wait_for(
            lambda: events_in_redis(settings) >= scaled(500), "500 events folded (times the scale)"
        )
        own_redis.stop()  # SIGTERM: Redis writes its AOF to disk and exits
        with feed.in_background(scaled(2000)):  # ingest does not need Redis (no field encryption)
            worker.wait_for(lambda: "processor.retry" in worker.tail(20_000), "a retry logged")
            own_redis.start()  # the same directory: the AOF is loaded
        worker.wait_caught_up(TOPICS)
        assert worker.stop() == 0
        counts = reconcile(settings, worker, feed)
    assert counts["sent"] == scaled(5000)


def test_redis_disk_full_is_waited_out_without_corruption(
    services: Services, prefix: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    with small_disk(tmp_path / "redis-disk", 48 * SCALE) as disk:
        server = RedisServer(disk.path / "redis", free_port())
        server.start()
        try:
            settings = on_services(services, prefix, redis=server)
            with running_api(settings) as api:
                feed = Feed(api, customers=100)
                feed.send(scaled(500))
                worker = WorkerProcess(settings, tmp_path, ALL).start()
                workers.append(worker)
                worker.wait_caught_up(TOPICS)
                disk.fill()
                feed.send(scaled(1500))
                # A clear error: Redis refuses writes, the worker says why and waits.
                worker.wait_for(
                    lambda: "MISCONF" in worker.tail(20_000), "the refusal named in the log"
                )
                assert events_in_redis(settings) < scaled(2000)
                disk.free()
                worker.wait_caught_up(TOPICS)
                assert worker.stop() == 0
                assert events_in_redis(settings) == scaled(2000)
                # No corruption: Redis restarts from its AOF with every effect in it.
                server.stop()
                server.start()
                assert redis.Redis.from_url(server.url).ping()
                counts = reconcile(settings, worker, feed)
            assert counts["sent"] == scaled(2000)
        finally:
            server.stop()
