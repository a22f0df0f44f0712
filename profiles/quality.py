"""Data quality: which traits and source pairs disagree most, from the fold's running tally."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def conflict_report(client: aioredis.Redis, namespace: str, top: int = 20) -> list[Any]:
    """The ``top`` (trait, source pair) disagreements, most first.

    Counted by the profile fold (``<ns>:quality:conflicts``) each time a profile's trait got a
    value different from one a source reported before: a count of profiles (one per pair of
    values), kept as a running tally (an erased or rebuilt profile is not taken back out).
    """
    raw = await client.hgetall(f"{namespace}:quality:conflicts")
    rows: list[dict[str, Any]] = []
    for field, count in raw.items():
        trait, first, second = _text(field).rsplit("|", 2)
        rows.append({"trait": trait, "sources": [first, second], "disagreements": int(count)})
    rows.sort(key=lambda r: (-r["disagreements"], r["trait"], r["sources"]))
    return rows[:top]
