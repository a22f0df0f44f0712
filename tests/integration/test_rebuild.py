"""``cdp rebuild`` on real Kafka, Redis and embedded ClickHouse.

A demo feed across every channel (merges, refusals, tags) goes through the API and a worker.
With the worker stopped, history is replayed into a second namespace, which must equal the
live one profile by profile; then the live namespace is lost entirely, rebuilt in place, and
must equal it again. The worker then continues where it stopped: a client retry of an old
event changes nothing, new events land once, and every profile's event count reconciles
with history.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis

from deploy import topics
from deploy.demo import demo_key, demo_sources
from deploy.demo_run import push
from deploy.generator import generate
from deploy.rebuild import DIE_ENV, HOLD_ENV
from deploy.settings import Settings
from tests.conftest import make_settings
from tests.integration.privacy.test_end_to_end import ROLES, TOPICS
from tests.support.server import running_api
from tests.support.services import Services
from tests.support.worker import WorkerProcess


def _settings(services: Services) -> Settings:
    built = make_settings(services, f"t{uuid.uuid4().hex[:10]}.")
    return built.model_copy(
        update={
            "ingest": built.ingest.model_copy(
                update={"sources": [*built.ingest.sources, *demo_sources()]}
            )
        }
    )


def _wipe(settings: Settings, namespace: str) -> int:
    client = redis.Redis.from_url(settings.redis.url.get_secret_value())
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        return len(keys)
    finally:
        client.close()


def _events_in_profiles(settings: Settings) -> int:
    """The sum of every live profile's event count (each merged person counted once)."""
    client = redis.Redis.from_url(settings.redis.url.get_secret_value())
    ns = settings.worker.namespace
    try:
        total = 0
        for key in client.scan_iter(match=f"{ns}:pf:*", count=1000):
            total += int(client.hget(key, "n:events") or 0)  # type: ignore[arg-type]
        return total
    finally:
        client.close()


def _replayed(client: redis.Redis, namespace: str) -> int:
    """The events an unfinished rebuild of ``namespace`` recorded as replayed."""
    return int(client.hget(f"{namespace}:rebuild", "events") or 0)  # type: ignore[arg-type]


def _compare(worker: WorkerProcess, other: str) -> dict[str, Any]:
    done = worker.run_cli("rebuild", "compare", "--with", other, "--json")
    found: dict[str, Any] = json.loads(done.stdout)
    assert done.returncode == (0 if found["same"] else 1), done.stderr
    return found


def test_rebuild_from_history_equals_the_live_state_and_the_stream_continues(
    services: Services, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    settings = _settings(services)
    topics.create_all(settings.kafka)
    ns = settings.worker.namespace
    fed = generate(seed=41, customers=60, all_channels=True)
    worker = WorkerProcess(settings, tmp_path, ROLES).start()
    workers.append(worker)
    with running_api(settings) as base:
        push(base, fed, concurrency=2)
    worker.wait_caught_up(TOPICS, timeout_s=300)
    live_events = _events_in_profiles(settings)
    assert live_events > 300
    assert worker.stop() == 0  # the embedded ClickHouse is free for the rebuild

    # 1. Into a second namespace, compared with the live one.
    report = json.loads(worker.cli("rebuild", "--into", f"{ns}-rebuilt", "--json"))
    assert report["events"] >= live_events
    assert report["profiles"] > 40 and report["merged"] > 0, report
    assert report["fingerprints"] == report["events"]
    diff = _compare(worker, f"{ns}-rebuilt")
    assert diff["same"], {k: v for k, v in diff.items() if v}
    assert diff["equal"] == diff["profiles"] == report["profiles"]

    # 1b. Killed -9 in the middle, started again: it continues, and the result is the same.
    held = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deploy",
            "rebuild",
            "--into",
            f"{ns}-resumed",
            "--step-rows",
            "100",
        ],
        env={**worker.env, HOLD_ENV: "2"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = redis.Redis.from_url(settings.redis.url.get_secret_value())
    try:
        deadline = time.monotonic() + 120
        while _replayed(state, f"{ns}-resumed") == 0:
            assert held.poll() is None, f"the rebuild exited with {held.returncode}"
            assert time.monotonic() < deadline, "the rebuild recorded no step in 120 s"
            time.sleep(0.05)
    finally:
        held.kill()
        held.wait()
        state.close()
    resumed = json.loads(worker.cli("rebuild", "--into", f"{ns}-resumed", "--json"))
    assert resumed["resumed"] and resumed["profiles"] == report["profiles"], resumed
    diff = _compare(worker, f"{ns}-resumed")
    assert diff["same"], {k: v for k, v in diff.items() if v}

    # 1c. Killed between a step's resolution and its fold: the step's merges are folded
    # when it is replayed (identity answers the outcomes it held, merges included).
    died = worker.run_cli(
        "rebuild", "--into", f"{ns}-died", "--step-rows", "100", env={DIE_ENV: "3"}
    )
    assert died.returncode == 137, died.stderr
    resumed = json.loads(worker.cli("rebuild", "--into", f"{ns}-died", "--json"))
    assert resumed["resumed"] and resumed["profiles"] == report["profiles"], resumed
    diff = _compare(worker, f"{ns}-died")
    assert diff["same"], {k: v for k, v in diff.items() if v}

    # 2. The live namespace lost entirely; rebuilt in place; a second run refuses to replay
    # into it again without --force.
    assert _wipe(settings, ns) > 100
    again = json.loads(worker.cli("rebuild", "--json"))
    assert again["profiles"] == report["profiles"]
    assert _compare(worker, f"{ns}-rebuilt")["same"]
    refused = worker.run_cli("rebuild")
    assert refused.returncode == 2 and "already holds profiles" in refused.stderr

    # 3. The stream continues: a client's retry of an old event is recognised, new events
    # land once, and profiles reconcile with history.
    worker = WorkerProcess(settings, tmp_path, ROLES).start()
    workers.append(worker)
    more = generate(seed=42, customers=10, all_channels=True, first=60)
    source, path, body = fed.calls[0]
    with running_api(settings) as base:
        retry = httpx.post(base + path, json=body, auth=(demo_key(source), ""), timeout=30)
        assert retry.status_code == 200, retry.text
        push(base, more, concurrency=2)
    worker.wait_caught_up(TOPICS, timeout_s=300)
    assert worker.stop() == 0
    db = settings.clickhouse.database
    rows = worker.cli(
        "history", "sql", f"SELECT count() AS n FROM {db}.events FINAL WHERE profile_id != ''"
    )
    history = int(json.loads(rows)["n"])
    assert _events_in_profiles(settings) == history > live_events
