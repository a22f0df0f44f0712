"""Retention on the real services: topics keep records as long as the settings say, and the
history's events expire by ClickHouse TTL on the embedded engine."""

from __future__ import annotations

import os
import subprocess
import sys

from kafka.admin import ConfigResource, ConfigResourceType

from contracts.topics import REGISTRY
from deploy import topics
from deploy.settings import KafkaSettings, Settings

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
        "cdp.segments.membership": str(7 * DAY_MS),
        "cdp.segments.definitions": "-1",
        "cdp.keys": "-1",
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
    found = topic_configs(kafka, "retention.ms", "min.insync.replicas", "cleanup.policy")
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
    found = topic_configs(settings.kafka, "retention.ms")
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
    found = topic_configs(settings.kafka, "retention.ms")
    assert found["cdp.events.deadletter"]["retention.ms"] == str(30 * DAY_MS)
