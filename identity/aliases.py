"""Merged profile ids redirect to their survivor (the ``alias`` hash written by resolve.lua)."""

from __future__ import annotations

import redis.asyncio as aioredis

#: Chains are short (each merge points at a survivor); the bound only guards against cycles.
MAX_HOPS = 64


async def survivor(client: aioredis.Redis, namespace: str, profile_id: str) -> str:
    """Follow aliases from a (possibly merged) profile id to its survivor."""
    current = profile_id
    for _ in range(MAX_HOPS):
        nxt = await client.hget(f"{namespace}:alias", current)
        if nxt is None:
            return current
        current = nxt.decode() if isinstance(nxt, bytes) else str(nxt)
    return current
