"""The Lua scripts: shared helpers prepended (EVALSHA scripts cannot import), batched calls."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

_PRELUDE = (Path(__file__).parent / "survivor.lua").read_text()
#: Helpers of the scripts that read or write a profile's identity graph.
GRAPH = Path(__file__).parent / "graph.lua"
#: Items per script call: big enough to amortise the call, small enough not to stall Redis
#: (other clients, such as profile reads from the API, run between two calls).
CHUNK = 100
#: Script calls per round trip. Redis runs the calls of one round trip back to back (their
#: arguments arrive in one read), so a batch's calls go a few at a time: a history snapshot
#: of thousands of profiles (~8 ms of Redis per call) would otherwise hold every other
#: client, the stream's next fold and the API's reads, for a quarter of a second.
WINDOW = 2


def load(path: Path, helpers: Sequence[Path] = ()) -> str:
    """Return the script at ``path`` with the shared helpers (and ``helpers``) in front."""
    return _PRELUDE + "".join(h.read_text() for h in helpers) + path.read_text()


def chunks(items: Sequence[Any], size: int = CHUNK) -> list[Sequence[Any]]:
    """Split ``items`` into consecutive chunks of at most ``size``."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def grouped_chunks(
    items: Sequence[Any], key: Callable[[Any], Hashable], size: int = CHUNK
) -> tuple[list[list[Any]], list[int]]:
    """Split ``items`` into chunks of about ``size`` that never part two items of one ``key``.

    A pipeline of script calls is not all-or-nothing: an error Redis answers per command
    (``MISCONF`` while its disk is full, ``OOM``) can refuse one call and take the next, when
    the condition clears between them. A script that applies each key's items in order and
    skips what it has passed (the fold's watermark per profile and partition) would then skip
    an earlier item that the next attempt brings again. With each key's items in one call,
    a call either applies all of them or none.

    Returns the chunks (keys in order of first appearance, each key's items in their order;
    a key with more than ``size`` items gets a chunk of its own) and, for each chunk item in
    chunk order, its index in ``items``.
    """
    groups: dict[Hashable, list[int]] = {}
    for n, item in enumerate(items):
        groups.setdefault(key(item), []).append(n)
    out: list[list[Any]] = []
    order: list[int] = []
    current: list[Any] = []
    for members in groups.values():
        if current and len(current) + len(members) > size:
            out.append(current)
            current = []
        current.extend(items[n] for n in members)
        order.extend(members)
    if current:
        out.append(current)
    return out, order


class BatchScript:
    """A script that answers a JSON array, one item per input, called once per chunk.

    The calls of a batch go ``WINDOW`` to a pipelined round trip; their answers come back
    flattened, in input order. A Redis that lost its script cache (restart, flush) gets it
    loaded again, and the round trip it refused is sent again.
    """

    def __init__(self, client: aioredis.Redis, path: Path, helpers: Sequence[Path] = ()) -> None:
        self._redis = client
        self._text = load(path, helpers)
        self._sha = client.register_script(self._text).sha

    async def run(self, calls: list[list[Any]]) -> list[Any]:
        """Run one script call per argument list; return the answers' items in order."""
        out: list[Any] = []
        for start in range(0, len(calls), WINDOW):
            window = calls[start : start + WINDOW]
            try:
                out += await self._run(window)
            except NoScriptError:
                await self._redis.script_load(self._text)
                out += await self._run(window)
        return out

    async def _run(self, calls: list[list[Any]]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for args in calls:
            pipe.evalsha(self._sha, 0, *args)
        return [item for answer in await pipe.execute() for item in orjson.loads(answer)]
