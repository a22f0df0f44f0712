"""ClickHouse cannot take writes for a while: the history backs off and catches up, once.

With embedded chDB there is no server to stop: the history's data directory sits on a small
filesystem that is then filled, so every insert fails (NOT_ENOUGH_SPACE) until space comes
back. That is what a full disk or a server refusing inserts looks like to the history stage;
it does not simulate a server that hangs without answering (docs/operations.md).
"""

from __future__ import annotations

from pathlib import Path

from deploy.settings import Settings
from tests.integration.faults.conftest import on_services
from tests.support.faults import SCALE, Feed, events_in_redis, reconcile, scaled, small_disk
from tests.support.server import running_api
from tests.support.services import Services
from tests.support.worker import PIPELINE_TOPICS as TOPICS
from tests.support.worker import WorkerProcess

ALL = ["history", "identity", "profiles"]


def test_history_backs_off_while_clickhouse_refuses_and_catches_up_once(
    services: Services, prefix: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    settings: Settings = on_services(services, prefix)
    with small_disk(tmp_path / "chdb-disk", 64 * SCALE) as disk, running_api(settings) as api:
        worker = WorkerProcess(settings, tmp_path, ALL)
        worker.env["CDP_CLICKHOUSE__PATH"] = str(disk.path / "chdb")
        workers.append(worker.start())
        feed = Feed(api, customers=50)
        feed.send(scaled(500))
        worker.wait_caught_up(TOPICS)

        disk.fill()
        feed.send(scaled(2000))
        # The rest keeps working: every event is resolved and folded into its profile...
        worker.wait_for(
            lambda: events_in_redis(settings) == scaled(2500),
            "2500 events folded (times the scale)",
        )
        # ...while the history waits, retrying, with the disk named in its log.
        worker.wait_for(
            lambda: "NOT_ENOUGH_SPACE" in worker.log.read_text(errors="replace"),
            "the history's retry logged",
        )
        assert "processor.retry" in worker.tail(20_000)

        disk.free()
        worker.wait_caught_up(TOPICS)
        assert worker.stop() == 0
        counts = reconcile(settings, worker, feed)
    assert counts["history"] == scaled(2500)
