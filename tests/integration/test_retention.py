"""Retention on the real services: topics keep records as long as the settings say, and the
history's events expire by ClickHouse TTL on the embedded engine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kafka.admin import ConfigResource, ConfigResourceType

from contracts.events import Channel, Event, EventType, Identifier, ResolvedEvent
from contracts.profiles import ProfileChange
from contracts.topics import REGISTRY
from deploy import topics
from deploy.settings import KafkaSettings, Settings
from deploy.worker import history_writer
from sinks import retention
from sinks.clickhouse import connect
from sinks.history import HistoryWriter, change_batch, event_batches, tag_batch

DAY_MS = 86_400_000


def topic_configs(kafka: KafkaSettings, *keys: str) -> dict[str, dict[str, str]]:
    """registry name -> the broker's values of ``keys`` for that topic (defaults included)."""
    client = topics.admin(kafka)
    try:
        described = client.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, kafka.topic(name), dict.fromkeys(keys))
                for name in REGISTRY
            ],
            config_filter="all",
        )["topic"]
    finally:
        client.close()
    return {name: {k: described[kafka.topic(name)][k]["value"] for k in keys} for name in REGISTRY}


def settled(
    read: Callable[[], dict[str, dict[str, str]]],
    done: Callable[[dict[str, dict[str, str]]], bool],
    timeout_s: float = 30.0,
) -> dict[str, dict[str, str]]:
    """``read()`` again until ``done`` holds of it or ``timeout_s`` passed; its last value.

    An altered topic config is committed by the controller before the call returns; the
    broker answering a describe serves it once it has applied that metadata.
    """
    deadline = time.monotonic() + timeout_s
    found = read()
    while not done(found) and time.monotonic() < deadline:
        time.sleep(0.1)
        found = read()
    return found


def with_retention(settings: Settings, days: dict[str, float]) -> KafkaSettings:
    return settings.kafka.model_copy(update={"retention_days": days})


def test_topics_are_created_with_the_retention_of_the_settings(
    settings: Settings, prefix: str
) -> None:
    kafka = with_retention(settings, {"cdp.events.raw": 14, "cdp.events.deadletter": 0})
    kafka = kafka.model_copy(update={"topic_prefix": prefix + "fresh."})
    created = topics.create_all(kafka)
    assert set(created.values()) == {"created"}
    found = topic_configs(kafka, "retention.ms")
    assert {name: c["retention.ms"] for name, c in found.items()} == {
        "cdp.events.raw": str(14 * DAY_MS),
        "cdp.events.deadletter": "-1",
        "cdp.events.resolved": str(7 * DAY_MS),
        "cdp.identity.merges": str(7 * DAY_MS),
        "cdp.profiles.changes": str(7 * DAY_MS),
        "cdp.profiles.snapshots": str(7 * DAY_MS),
        "cdp.segments.membership": str(7 * DAY_MS),
        "cdp.segments.definitions": "-1",
        "cdp.keys": "-1",
        "cdp.privacy.erasures": "-1",
        "cdp.audit": "-1",
        "cdp.care.tasks": "-1",
    }


def test_existing_topics_get_the_retention_the_settings_now_say(settings: Settings) -> None:
    # The `settings` fixture created the topics with the registry's retention.
    assert topic_configs(settings.kafka, "retention.ms")["cdp.events.raw"] == {
        "retention.ms": str(30 * DAY_MS)
    }
    kafka = with_retention(settings, {"cdp.events.raw": 2, "cdp.profiles.changes": 0})
    changed = topics.create_all(kafka)
    assert {name: outcome for name, outcome in changed.items() if outcome != "exists"} == {
        kafka.topic("cdp.events.raw"): "retention 30 days -> 2 days",
        kafka.topic("cdp.profiles.changes"): "retention 7 days -> forever",
    }
    # The controller has the change; a broker serves it once it applied the metadata.
    found = settled(
        lambda: topic_configs(kafka, "retention.ms", "min.insync.replicas", "cleanup.policy"),
        lambda f: f["cdp.events.raw"]["retention.ms"] == str(2 * DAY_MS),
    )
    assert found["cdp.events.raw"] == {
        "retention.ms": str(2 * DAY_MS),
        "min.insync.replicas": "1",  # the topic's other configs are kept
        "cleanup.policy": "delete",
    }
    assert found["cdp.profiles.changes"]["retention.ms"] == "-1"
    assert found["cdp.keys"] == {
        "retention.ms": "-1",
        "min.insync.replicas": "1",
        "cleanup.policy": "compact",
    }
    # Applied once: nothing left to change.
    assert set(topics.create_all(kafka).values()) == {"exists"}
    # Back to the registry's defaults when the settings no longer say otherwise.
    topics.create_all(settings.kafka)
    found = settled(
        lambda: topic_configs(settings.kafka, "retention.ms"),
        lambda f: f["cdp.events.raw"]["retention.ms"] == str(30 * DAY_MS),
    )
    assert found["cdp.events.raw"]["retention.ms"] == str(30 * DAY_MS)
    assert found["cdp.profiles.changes"]["retention.ms"] == str(7 * DAY_MS)


def test_cdp_topics_create_applies_the_retention_variable(settings: Settings) -> None:
    env = {
        **os.environ,
        "CDP_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "CDP_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "CDP_KAFKA__RETENTION_DAYS": '{"cdp.events.deadletter": 30}',
        "CDP_LOG_LEVEL": "warning",
    }
    done = subprocess.run(
        [sys.executable, "-m", "deploy", "topics", "create"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    changed = [line.split() for line in done.stdout.splitlines() if "retention" in line]
    assert changed == [
        [
            settings.kafka.topic("cdp.events.deadletter"),
            "retention",
            "90",
            "days",
            "->",
            "30",
            "days",
        ]
    ]
    found = settled(
        lambda: topic_configs(settings.kafka, "retention.ms"),
        lambda f: f["cdp.events.deadletter"]["retention.ms"] == str(30 * DAY_MS),
    )
    assert found["cdp.events.deadletter"]["retention.ms"] == str(30 * DAY_MS)


NOW = datetime.now(UTC)


def event(n: int, at: datetime) -> ResolvedEvent:
    return ResolvedEvent(
        profile_id=str(100 + n),
        event=Event(
            event_id=f"ev-{n}",
            type=EventType.ORDER_COMPLETED,
            channel=Channel.WEB,
            source="shop",
            identifiers=[Identifier(type="email", value=f"u{n}@example.com")],
            properties={"order_id": f"O-{n}", "total": 10},
            original_timestamp=at,
            received_at=at,
            timestamp=at,
        ),
        raw_partition=0,
        raw_offset=n,
    )


def change(n: int, at: datetime) -> ProfileChange:
    return ProfileChange(
        profile_id=str(100 + n),
        event_id=f"ev-{n}",
        changed=["total_spend"],
        tags_added=["new_customer"],
        at=at,
    )


def store(client: Any, db: str, token: str = "first") -> None:
    """An event two days old and one of now, with the changes each made then."""
    history = HistoryWriter(client, db)
    items = [(event(1, NOW - timedelta(days=2)), 0, 1), (event(2, NOW), 0, 2)]
    for batch in event_batches(token, items):
        history.write(batch)
    changes = [change(1, NOW - timedelta(days=2)), change(2, NOW)]
    history.write(change_batch(changes, token))
    history.write(tag_batch(changes, token))


def merged(client: Any, db: str) -> dict[str, list[str]]:
    """Merge every expiring table (TTL is applied at merges), then the event ids each holds."""
    found = {}
    for table in retention.EXPIRING:
        client.command(f"OPTIMIZE TABLE {db}.{table} FINAL")
        rows = client.query(f"SELECT event_id FROM {db}.{table} ORDER BY event_id").result_rows
        found[table] = [r[0] for r in rows]
    return found


def each(value: list[str]) -> dict[str, list[str]]:
    return {table: value for table in retention.EXPIRING}


@pytest.fixture
def history(settings: Settings) -> tuple[Settings, str]:
    """Settings of a history database of this test's own."""
    db = f"ret{uuid.uuid4().hex[:8]}"
    clickhouse = settings.clickhouse.model_copy(update={"database": db})
    return settings.model_copy(update={"clickhouse": clickhouse}), db


def started(settings: Settings, days: int = 0) -> Any:
    """What the history worker does at start (migrate, then the retention of the settings);
    the embedded client it used."""
    clickhouse = settings.clickhouse.model_copy(update={"history_retention_days": days})
    history_writer(settings.model_copy(update={"clickhouse": clickhouse}))
    return connect(None, settings.chdb_path())


def test_history_older_than_its_retention_is_gone_after_a_merge(
    history: tuple[Settings, str],
) -> None:
    settings, db = history
    client = started(settings, days=1)
    assert {t: retention.ttl_of(client, db, t) for t in retention.EXPIRING} == {
        "events": "timestamp + toIntervalDay(1)",
        "profile_changes": "at + toIntervalDay(1)",
        "tag_changes": "at + toIntervalDay(1)",
    }
    store(client, db)
    assert merged(client, db) == each(["ev-2"])
    # The projection segment queries read by type and time holds no expired row either.
    by_type = client.command(
        f"SELECT count() FROM {db}.events WHERE type = 'order_completed' "
        f"AND timestamp > now() - INTERVAL 30 DAY"
    )
    assert int(by_type) == 1


def test_without_retention_the_history_keeps_everything(history: tuple[Settings, str]) -> None:
    settings, db = history
    client = started(settings)  # the default: 0, kept forever
    assert {t: retention.ttl_of(client, db, t) for t in retention.EXPIRING} == dict.fromkeys(
        retention.EXPIRING
    )
    store(client, db)
    assert merged(client, db) == each(["ev-1", "ev-2"])


def test_a_new_retention_applies_to_rows_already_stored_and_0_removes_it(
    history: tuple[Settings, str],
) -> None:
    settings, db = history
    client = started(settings)
    store(client, db)
    assert retention.apply(client, db, 1) == dict.fromkeys(retention.EXPIRING, "set")
    assert retention.apply(client, db, 1) == dict.fromkeys(retention.EXPIRING, "kept")
    assert merged(client, db) == each(["ev-2"])
    assert retention.apply(client, db, 0) == dict.fromkeys(retention.EXPIRING, "removed")
    store(client, db, token="again")  # the old event once more: kept now
    assert merged(client, db) == each(["ev-1", "ev-2"])
