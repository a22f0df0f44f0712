"""`cdp run` as its own process (API, processors, history) fed a generated demo feed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from deploy.demo import demo_sources
from deploy.demo_run import push
from deploy.generator import Feed, generate
from deploy.lag import total_lag
from deploy.local.kafka import free_port
from deploy.settings import Settings
from deploy.worker import STREAM_ROLES, group_id
from privacy.crypto import MasterKeys
from tests.support.keys import known_tokens
from tests.support.spawned import Spawned


@dataclass
class Stack:
    """A running `cdp run` and the feed it was sent."""

    base: str
    settings: Settings
    feed: Feed
    process: Spawned


def run_env(settings: Settings, home: Path, port: int) -> dict[str, str]:
    """The settings of a `cdp run` on ``settings``' services, with the test tokens and field
    encryption on."""
    s = settings
    return {
        "CDP_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
        "CDP_KAFKA__TOPIC_PREFIX": s.kafka.topic_prefix,
        "CDP_KAFKA__PARTITIONS": str(s.kafka.partitions),
        "CDP_REDIS__URL": s.redis.url.get_secret_value(),
        "CDP_WORKER__NAMESPACE": s.worker.namespace,
        "CDP_CLICKHOUSE__PATH": str(home / "chdb"),
        "CDP_API__PORT": str(port),
        "CDP_INGEST__SOURCES": json.dumps([x.model_dump(mode="json") for x in demo_sources()]),
        "CDP_API__TOKENS": json.dumps([t.model_dump(mode="json") for t in known_tokens()]),
        "CDP_SEGMENTS__REFRESH_INTERVAL_S": "2",
        "XDG_STATE_HOME": str(home / "state"),
        # Field encryption on, as `scripts/run.sh` runs it, with master keys of its own.
        "CDP_PRIVACY__ENABLED": "true",
        "CDP_PRIVACY__MASTER_KEYS": MasterKeys.generate().dumps(),
    }


def _settled(stack_settings: Settings) -> bool:
    """Every processor group read everything on its topics (events, then history)."""
    k = stack_settings.kafka
    stream = group_id(stack_settings, STREAM_ROLES)
    history = group_id(stack_settings, ["history"])
    raw = [k.topic("cdp.events.raw")]
    rest = [
        k.topic(t)
        for t in ("cdp.events.resolved", "cdp.profiles.changes", "cdp.profiles.snapshots")
    ]
    try:
        return total_lag(k, stream, raw) == 0 and total_lag(k, history, rest) == 0
    except Exception:  # noqa: BLE001 - groups being elected: not settled yet
        return False


@contextmanager
def running_stack(settings: Settings, home: Path, customers: int = 60) -> Iterator[Stack]:
    """Start `cdp run`, push ``customers`` generated customers, wait until all is processed."""
    port = free_port()
    # Two API processes, as `cdp run` on two cores: history reads are forwarded to the owner.
    args = ["run", "--api-workers", "2", "--stream-workers", "1"]
    process = Spawned(args, run_env(settings, home, port), home).start()
    base = f"http://127.0.0.1:{port}"
    try:
        process.wait_for("the API", lambda: httpx.get(base + "/healthz", timeout=5).is_success)
        feed = generate(seed=11, customers=customers, all_channels=True)
        push(base, feed)
        process.wait_for("the feed processed and in the history", lambda: _settled(settings))
        yield Stack(base, settings, feed, process)
    finally:
        process.kill()
