"""The history's filter of erased profiles (sinks/agents.Erased), against a slow Redis stub."""

from __future__ import annotations

import asyncio

from sinks.agents import Erased


class SlowRedis:
    """Answers like Redis, after a pause: a refresh is still under way when others ask."""

    def __init__(self) -> None:
        self.calls = 0

    async def get(self, key: str) -> bytes:
        self.calls += 1
        await asyncio.sleep(0.05)
        return b"1"

    async def smembers(self, key: str) -> set[bytes]:
        await asyncio.sleep(0.05)
        return {b"7"}


def test_concurrent_sinks_wait_for_the_first_refresh() -> None:
    redis = SlowRedis()
    erased = Erased(redis, "ns")

    async def both() -> list[list[str]]:
        return list(await asyncio.gather(*(erased.kept(["7", "8"], str) for _ in range(3))))

    assert asyncio.run(both()) == [["8"], ["8"], ["8"]]
    assert redis.calls == 1  # one refresh for the three, not one each
