"""A rebalance during processing: a worker joins, another is killed -9 mid-stream; the one
left takes every partition over and each event's effect still happens once."""

from __future__ import annotations

import signal
from pathlib import Path

from deploy.settings import Settings
from tests.support.faults import Feed, events_in_redis, reconcile, scaled
from tests.support.server import running_api
from tests.support.worker import WorkerProcess

STREAM = ["identity", "profiles"]


def test_a_worker_joins_and_another_is_killed_mid_stream(
    settings: Settings, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    with running_api(settings) as api:
        feed = Feed(api, customers=300)
        feed.send(scaled(6000))
    for home in ("a", "b", "h"):
        (tmp_path / home).mkdir()
    first = WorkerProcess(settings, tmp_path / "a", STREAM).start()
    workers.append(first)
    first.wait_for(
        lambda: events_in_redis(settings) >= scaled(1000), "1000 events folded (times the scale)"
    )
    second = WorkerProcess(settings, tmp_path / "b", STREAM).start()  # joins: a rebalance
    workers.append(second)
    second.wait_for(
        lambda: events_in_redis(settings) >= scaled(2500), "2500 events folded (times the scale)"
    )
    first.check()  # it lived through the rebalance the second's join caused
    first.stop(signal.SIGKILL)  # dies mid-batch: its partitions go to the second
    assert events_in_redis(settings) < scaled(6000), "too late: nothing left to take over"
    history = WorkerProcess(settings, tmp_path / "h", ["history"]).start()
    workers.append(history)
    second.wait_caught_up({"cdp.events.raw"}, timeout_s=240)
    history.wait_caught_up(
        {"cdp.events.resolved", "cdp.profiles.changes", "cdp.profiles.snapshots"}, timeout_s=240
    )
    assert second.stop() == 0 and history.stop() == 0
    counts = reconcile(settings, history, feed)
    assert counts["sent"] == scaled(6000)
