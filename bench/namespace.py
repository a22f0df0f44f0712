"""Remove a benchmark's Redis namespace and topics: the local services keep data between runs."""

from __future__ import annotations

import redis
from kafka.admin import KafkaAdminClient


def drop(url: str, namespace: str) -> int:
    """Unlink every key under ``namespace:``; return how many."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(f"{namespace}:*", count=5000))
        for start in range(0, len(keys), 5000):
            client.unlink(*keys[start : start + 5000])
        return len(keys)
    finally:
        client.close()


def drop_topics(bootstrap: str, prefix: str) -> int:
    """Delete every topic named ``prefix...`` (a run's own); return how many.

    Left behind, each run's topics (7 x 6 partitions) pile up in the broker and slow it.
    """
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-cleanup")
    try:
        mine = [t for t in admin.list_topics() if t.startswith(prefix)]
        if mine:
            admin.delete_topics(mine)
        return len(mine)
    finally:
        admin.close()
