"""Faults a deployment meets, on real services, and the exact reconciliation after them.

Shared by the fault suite (tests/integration/faults) and its longer run (bench/faults.py):
a feed that sends events as a real client does (a 503 is retried with the same ids until
acknowledged), disks that fill up, and a reconciliation that every acknowledged event is in
Kafka, counted once in the profiles and stored once in the history.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from deploy.settings import Settings
from runtime.readback import read_to_end
from tests.support.worker import WorkerProcess

#: How many times the suite's volumes a run sends (``bench/faults.py`` raises it).
SCALE = int(os.environ.get("CDP_FAULTS_SCALE", "1"))
#: A JSON-lines file each reconciliation is appended to (``bench/faults.py`` reads it).
REPORT = os.environ.get("CDP_FAULTS_REPORT")

POS_KEY = "Basic " + base64.b64encode(b"wk_test-pos_secret:").decode()


def scaled(count: int) -> int:
    """``count`` events at this run's scale."""
    return count * SCALE


def events_in_redis(settings: Settings) -> int:
    """The events folded into the profiles of ``settings``' namespace (each counted once)."""
    client = redis.Redis.from_url(settings.redis.url.get_secret_value())
    ns = settings.worker.namespace
    total = 0
    try:
        for key in client.scan_iter(f"{ns}:pf:*", count=1000):
            if key.count(b":") == 2:  # the main hash, not :t / :s: / :h:
                total += int(client.hget(key, "n:events") or 0)
    finally:
        client.close()
    return total


def profiles_in_redis(settings: Settings) -> int:
    """How many profiles were created (identity's counter)."""
    client = redis.Redis.from_url(settings.redis.url.get_secret_value())
    try:
        return int(client.get(f"{settings.worker.namespace}:seq") or 0)
    finally:
        client.close()


@dataclass
class Feed:
    """Send ``track`` events for ``customers`` customers in batches, as a client does:
    a batch answered 503 (or not answered) is sent again, the same ids, until a 200."""

    api: str
    customers: int
    batch: int = 100
    tag: str = "f"
    acked: set[str] = field(default_factory=set)
    refused: int = 0
    _next: int = 0

    def batch_of(self, start: int, count: int) -> dict[str, Any]:
        return {
            "batch": [
                {
                    "type": "track",
                    "userId": f"M-{i % self.customers}",
                    "event": "Store Visited",
                    "messageId": f"{self.tag}-{i}",
                }
                for i in range(start, start + count)
            ]
        }

    def send(self, count: int, deadline_s: float = 120) -> None:
        """Send ``count`` more events; return once each was acknowledged (200)."""
        end = self._next + count
        with httpx.Client(base_url=self.api, timeout=15) as http:
            while self._next < end:
                size = min(self.batch, end - self._next)
                self._deliver(http, self._next, size, time.monotonic() + deadline_s)
                self._next += size

    def _deliver(self, http: httpx.Client, start: int, size: int, deadline: float) -> None:
        body = self.batch_of(start, size)
        while True:
            assert time.monotonic() < deadline, f"events {start}+{size} never acknowledged"
            try:
                answer = http.post("/v1/batch", json=body, headers={"Authorization": POS_KEY})
            except httpx.TransportError:
                answer = None
            if answer is not None and answer.status_code == 200:
                assert answer.json()["accepted"] == size, answer.text
                self.acked.update(m["messageId"] for m in body["batch"])
                return
            assert answer is None or answer.status_code == 503, answer.text
            self.refused += 1
            time.sleep(0.2)

    @contextmanager
    def in_background(self, count: int) -> Iterator[threading.Thread]:
        """Send ``count`` events from a thread while the block runs; join it at the end."""
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.send(count)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
                failure.append(exc)

        thread = threading.Thread(target=run, name="feed", daemon=True)
        thread.start()
        yield thread
        thread.join(timeout=300)
        assert not thread.is_alive(), "the feed did not finish"
        if failure:
            raise failure[0]


def history_counts(worker: WorkerProcess) -> dict[str, int]:
    """Rows of the history's events table (after deduplication) and distinct event ids.

    chDB is one process per data directory: call with the worker stopped.
    """
    out = worker.cli(
        "history",
        "sql",
        "SELECT count() AS rows, uniqExact(event_id) AS ids FROM cdp.events FINAL",
    )
    row = json.loads(out.splitlines()[0])
    return {"rows": int(row["rows"]), "ids": int(row["ids"])}


def reconcile(settings: Settings, worker: WorkerProcess, feed: Feed) -> dict[str, int]:
    """Sent = accepted = in Kafka = counted in the profiles = in the history, exactly.

    The history is read through ``worker``'s ClickHouse directory: call with it stopped.
    """
    sent = len(feed.acked)
    raw = read_to_end(settings.kafka.bootstrap_servers, settings.kafka.topic("cdp.events.raw"))
    in_kafka = {e["event_id"] for e in raw if e["event_id"].startswith(f"{feed.tag}-")}
    assert in_kafka == feed.acked, f"{len(feed.acked - in_kafka)} acknowledged events not in Kafka"
    folded = events_in_redis(settings)
    assert folded == sent, f"profiles count {folded} events, {sent} were acknowledged"
    assert profiles_in_redis(settings) == feed.customers
    stored = history_counts(worker)
    assert stored == {"rows": sent, "ids": sent}, f"history {stored}, {sent} acknowledged"
    counts = {"sent": sent, "folded": folded, "history": stored["rows"], "refused": feed.refused}
    if REPORT:
        case = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
        with open(REPORT, "a", encoding="utf-8") as out:
            out.write(json.dumps({"case": case, **counts}) + "\n")
    return counts


@dataclass
class SmallDisk:
    """A size-limited tmpfs, filled and freed on demand (root only)."""

    path: Path
    size_mb: int

    def mount(self) -> SmallDisk:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m", "tmpfs", str(self.path)],
            check=True,
        )
        return self

    @property
    def ballast(self) -> Path:
        return self.path / "ballast"

    def fill(self) -> None:
        """Take every free byte (writes then fail with ENOSPC)."""
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={self.ballast}", "bs=1M", f"count={self.size_mb * 2}"],
            capture_output=True,
            check=False,  # dd stops with ENOSPC: that is the point
        )
        assert os.statvfs(self.path).f_bavail == 0, "the disk is not full"

    def free(self) -> None:
        """Give the space back."""
        self.ballast.unlink(missing_ok=True)

    def unmount(self) -> None:
        # Lazy: a process killed a moment ago may still hold a file open.
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@contextmanager
def small_disk(path: Path, size_mb: int) -> Iterator[SmallDisk]:
    """A tmpfs of ``size_mb`` at ``path`` for the block."""
    disk = SmallDisk(path, size_mb).mount()
    try:
        yield disk
    finally:
        disk.unmount()
