"""Batched script calls in real Redis: a few calls per round trip, each exactly once."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from identity.scripts import WINDOW, BatchScript
from tests.support.services import Services

#: Counts each item it is called with and answers the counts: a call run twice shows.
COUNTING = """
local out = {}
for n = 2, #ARGV do
  table.insert(out, redis.call('HINCRBY', ARGV[1], ARGV[n], 1))
end
return cjson.encode(out)
"""


async def _counted(
    url: str, tmp_path: Path, calls: int, flush_after: int | None, loaded: bool = True
) -> list[Any]:
    client = aioredis.from_url(url)
    path = tmp_path / "counting.lua"
    path.write_text(COUNTING)
    script = BatchScript(client, path)
    if loaded:
        await client.script_load(script._text)
    else:
        await client.script_flush()
    key = f"t{uuid.uuid4().hex[:8]}:counts"
    sent: list[int] = []
    run = script._run

    async def watched(window: list[list[Any]]) -> list[Any]:
        sent.append(len(window))
        answers = await run(window)
        if len(sent) == flush_after:  # Redis loses its scripts between two round trips
            await client.script_flush()
        return answers

    script._run = watched  # type: ignore[method-assign]
    items = [[key, *(f"i{c}-{n}" for n in range(3))] for c in range(calls)]
    try:
        answers = await script.run(items)
        counts = await client.hgetall(key)
    finally:
        await client.delete(key)
        await client.aclose()
    assert len(counts) == calls * 3
    return [answers, sorted(set(counts.values())), sent]


def test_each_call_runs_once_in_order_a_few_per_round_trip(
    services: Services, tmp_path: Path
) -> None:
    answers, counts, sent = asyncio.run(_counted(services.redis_url, tmp_path, 5, None))
    assert answers == [1] * 15  # every item counted once, answered in order
    assert counts == [b"1"]
    assert sent == [WINDOW] * (5 // WINDOW) + ([5 % WINDOW] if 5 % WINDOW else [])


def test_a_round_trip_refused_for_a_lost_script_is_sent_again_alone(
    services: Services, tmp_path: Path
) -> None:
    answers, counts, sent = asyncio.run(_counted(services.redis_url, tmp_path, 5, 1))
    assert answers == [1] * 15  # the calls before the loss are not run again
    assert counts == [b"1"]
    full = [WINDOW] * (5 // WINDOW) + ([5 % WINDOW] if 5 % WINDOW else [])
    assert sent == full[:2] + full[1:]  # the second round trip, refused, then sent again


def test_a_script_cache_lost_before_the_first_call_is_loaded_again(
    services: Services, tmp_path: Path
) -> None:
    run = _counted(services.redis_url, tmp_path, WINDOW + 1, None, loaded=False)
    answers, counts, sent = asyncio.run(run)
    assert answers == [1] * (3 * (WINDOW + 1))
    assert counts == [b"1"]
    assert sent == [WINDOW, WINDOW, 1]
