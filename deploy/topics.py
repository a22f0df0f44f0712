"""Topic admin: create every registry topic, idempotently, with kafka-python's admin client;
keep the retention of existing ones as the settings say."""

from __future__ import annotations

from kafka.admin import (
    AlterConfigOp,
    ConfigResource,
    ConfigResourceType,
    KafkaAdminClient,
)
from kafka.errors import TopicAlreadyExistsError

from contracts.errors import CDPError
from contracts.topics import REGISTRY
from deploy.settings import KafkaSettings

DAY_MS = 24 * 3600 * 1000


class TopicConfigRefused(CDPError):
    """The broker refused to change a topic's configs."""


def admin(kafka: KafkaSettings) -> KafkaAdminClient:
    """Return an admin client for the configured cluster."""
    return KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, client_id="cdp-admin")


def create_all(kafka: KafkaSettings) -> dict[str, str]:
    """Create missing topics and set the retention of existing ones where it differs from the
    settings; return name -> 'created', 'exists' or 'retention <was> -> <now>'."""
    client = admin(kafka)
    try:
        existing = set(client.list_topics())
        outcome = {}
        wanted = {}
        for topic in REGISTRY.values():
            name = topic.qualified(kafka.topic_prefix)
            if name in existing:
                outcome[name] = "exists"
                continue
            wanted[name] = {
                "num_partitions": kafka.partitions,
                "replication_factor": kafka.replication_factor,
                "configs": kafka.topic_configs(topic.name),
            }
        if wanted:
            try:
                client.create_topics(wanted, wait_for_metadata=True)
            except TopicAlreadyExistsError:
                pass  # created concurrently by another `cdp topics create`: the goal holds
            outcome.update(dict.fromkeys(wanted, "created"))
        outcome.update(align_retention(client, kafka, existing))
        return outcome
    finally:
        client.close()


def align_retention(
    client: KafkaAdminClient, kafka: KafkaSettings, existing: set[str]
) -> dict[str, str]:
    """Set ``retention.ms`` of the existing registry topics whose value (their own, or the
    broker's default) is not the settings'; return name -> what changed."""
    desired = {
        topic.qualified(kafka.topic_prefix): kafka.retention_ms(topic.name)
        for topic in REGISTRY.values()
    }
    settable = {name: ms for name, ms in desired.items() if ms is not None and name in existing}
    if not settable:
        return {}
    described = client.describe_configs(
        [
            ConfigResource(ConfigResourceType.TOPIC, name, {"retention.ms": None})
            for name in sorted(settable)
        ],
        config_filter="all",
    )["topic"]
    current = {
        name: configs.get("retention.ms", {}).get("value") for name, configs in described.items()
    }
    stale = {name: ms for name, ms in settable.items() if current.get(name) != ms}
    if not stale:
        return {}
    # Incremental: the topic's other configs stay as they are.
    answers = client.alter_configs(
        [
            ConfigResource(
                ConfigResourceType.TOPIC, name, {"retention.ms": (AlterConfigOp.SET, ms)}
            )
            for name, ms in sorted(stale.items())
        ]
    )["topic"]
    refused = {name: answer for name, answer in answers.items() if answer != "OK"}
    if refused:
        raise TopicConfigRefused(f"retention not set: {refused}")
    return {
        name: f"retention {_days(current.get(name))} -> {_days(ms)}" for name, ms in stale.items()
    }


def _days(retention_ms: str | None) -> str:
    if retention_ms is None:
        return "unknown"
    if int(retention_ms) < 0:
        return "forever"
    return f"{int(retention_ms) / DAY_MS:g} days"
