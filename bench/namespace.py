"""Remove a benchmark's Redis namespace: the local Redis keeps its data between sessions."""

from __future__ import annotations

import redis


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
