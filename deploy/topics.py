"""Topic admin: create every registry topic, idempotently, with kafka-python's admin client."""

from __future__ import annotations

from kafka.admin import KafkaAdminClient
from kafka.errors import TopicAlreadyExistsError

from contracts.topics import REGISTRY
from deploy.settings import KafkaSettings


def admin(kafka: KafkaSettings) -> KafkaAdminClient:
    """Return an admin client for the configured cluster."""
    return KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, client_id="cdp-admin")


def create_all(kafka: KafkaSettings) -> dict[str, str]:
    """Create missing topics; return name -> 'created' or 'exists'."""
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
                "configs": dict(topic.configs),
            }
        if wanted:
            try:
                client.create_topics(wanted, wait_for_metadata=True)
            except TopicAlreadyExistsError:
                pass  # created concurrently by another `cdp topics create`: the goal holds
            outcome.update(dict.fromkeys(wanted, "created"))
        return outcome
    finally:
        client.close()
