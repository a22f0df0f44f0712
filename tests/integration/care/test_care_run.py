"""`cdp run` runs the care processor beside the stream: a birthday 7 days ahead, sent over
HTTP, reaches the webhook and the API, and `cdp care tasks` lists it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from deploy.local.kafka import free_port
from deploy.settings import Settings
from tests.integration.care.test_care import (
    CARE,
    SECRET,
    clear_of_midnight,
    send,
    triggers,
)
from tests.support.keys import known_sources, known_tokens
from tests.support.spawned import Spawned
from tests.support.webhook import Receiver


def test_cdp_run_runs_the_care_processor(
    settings: Settings, receiver: Receiver, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "CDP_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "CDP_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "CDP_KAFKA__PARTITIONS": str(settings.kafka.partitions),
        "CDP_REDIS__URL": settings.redis.url.get_secret_value(),
        "CDP_WORKER__NAMESPACE": settings.worker.namespace,
        "CDP_CLICKHOUSE__PATH": str(tmp_path / "chdb"),
        "CDP_API__PORT": str(port),
        "CDP_INGEST__SOURCES": json.dumps([s.model_dump(mode="json") for s in known_sources()]),
        "CDP_API__TOKENS": json.dumps([t.model_dump(mode="json") for t in known_tokens()]),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "CDP_PRIVACY__ENABLED": "false",
        "CDP_METRICS__PORT": "0",
        "CDP_CARE__WEBHOOK_URL": receiver.url,
        "CDP_CARE__WEBHOOK_SECRET": SECRET,
        "CDP_CARE__INTERVAL_S": "0.2",
    }
    base = f"http://127.0.0.1:{port}"
    run = Spawned(["run", "--api-workers", "1", "--stream-workers", "1"], env, tmp_path).start()
    try:
        run.wait_for("the API", lambda: httpx.get(base + "/healthz", timeout=5).is_success)
        send(base, [e for e in triggers(clear_of_midnight()) if e["messageId"] == "b1"])
        run.wait_for("the webhook's delivery", lambda: receiver.requests())
        (_, body), *more = receiver.requests()
        task = json.loads(body)
        assert task["rule"] == "birthday_in_7_days" and not more

        r = httpx.get(f"{base}/v1/care/tasks", params={"state": "open"}, headers=CARE)
        assert [t["task_id"] for t in r.json()["tasks"]] == [task["task_id"]]
        listed = subprocess.run(
            [sys.executable, "-m", "deploy", "care", "tasks", "--json"],
            env={**run.env},
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert [t["task_id"] for t in json.loads(listed.stdout)] == [task["task_id"]]
        code, _ = run.stop(signal.SIGTERM)
        assert code == 0, run.tail()
    finally:
        run.kill()
