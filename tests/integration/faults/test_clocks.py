"""Client clocks that are wrong and events that arrive late, through the whole stream:
history keeps corrected times, the profile's recency follows event time, not arrival."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import redis

from deploy.settings import Settings
from tests.support.faults import POS_KEY, events_in_redis
from tests.support.server import running_api
from tests.support.worker import PIPELINE_TOPICS as TOPICS
from tests.support.worker import WorkerProcess

ALL = ["history", "identity", "profiles"]


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def test_skewed_clocks_and_late_events_end_to_end(
    settings: Settings, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    now = datetime.now(UTC)
    fast = now + timedelta(hours=3)  # a till whose clock runs three hours fast
    year_ago = now - timedelta(days=365)
    track = {"type": "track", "userId": "M-1", "event": "Store Visited"}
    with running_api(settings) as api, httpx.Client(base_url=api, timeout=30) as http:
        answers = [
            # Sent by the fast till: its timestamp and sentAt both three hours ahead.
            {
                "batch": [
                    track | {"messageId": "skew", "timestamp": _iso(fast - timedelta(minutes=5))}
                ],
                "sentAt": _iso(fast),
            },
            # A day in the future without sentAt: a clock error, placed at its receipt.
            {
                "batch": [
                    track | {"messageId": "future", "timestamp": _iso(now + timedelta(days=1))}
                ]
            },
            # A year late, arriving after the others (an offline till syncing its backlog).
            {
                "batch": [track | {"messageId": "late", "timestamp": _iso(year_ago)}],
                "sentAt": _iso(now),
            },
        ]
        for body in answers:
            answer = http.post("/v1/batch", json=body, headers={"Authorization": POS_KEY})
            assert answer.status_code == 200 and answer.json()["accepted"] == 1, answer.text
    worker = WorkerProcess(settings, tmp_path, ALL).start()
    workers.append(worker)
    worker.wait_caught_up(TOPICS)
    assert events_in_redis(settings) == 3
    # Recency follows event time: the late event did not move it back a year, and the
    # future one did not move it a day ahead.
    client = redis.Redis.from_url(settings.redis.url.get_secret_value())
    last_seen = int(client.hget(f"{settings.worker.namespace}:pf:1", "hi:last_seen") or 0)
    client.close()
    assert now.timestamp() * 1000 - 60_000 < last_seen < now.timestamp() * 1000 + 60_000
    assert worker.stop() == 0
    out = worker.cli(
        "history",
        "sql",
        "SELECT event_id, toUnixTimestamp64Milli(timestamp) AS ts, "
        "toUnixTimestamp64Milli(received_at) AS rx FROM cdp.events FINAL ORDER BY event_id",
    )
    rows = {r["event_id"]: (int(r["ts"]), int(r["rx"])) for r in map(json.loads, out.splitlines())}
    assert sorted(rows) == ["future", "late", "skew"]
    ts, rx = rows["skew"]
    assert abs((rx - ts) - 5 * 60_000) < 2_000  # five minutes before its receipt, as sent
    ts, rx = rows["future"]
    assert ts == rx  # placed at its receipt
    ts, _ = rows["late"]
    assert abs(ts - int(year_ago.timestamp() * 1000)) < 2_000  # kept at its own time
