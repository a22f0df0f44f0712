"""The one error policy of the processors: retry transient failures, never skip silently."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runtime.exceptions import KafkaUnavailable

log = structlog.get_logger()
T = TypeVar("T")

#: Failures of a service that will come back: wait and retry the same batch (its offsets are
#: not committed, so a crash meanwhile replays it). Anything else is a bug and crashes the
#: worker loudly; decoding errors are dead-lettered where they are read.
TRANSIENT: tuple[type[BaseException], ...] = (
    KafkaUnavailable,
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
)


async def until_done(what: str, step: Callable[[], Awaitable[T]], max_wait_s: float = 30) -> T:
    """Run ``step`` until it succeeds, backing off on transient failures."""
    delay = 0.2
    while True:
        try:
            return await step()
        except TRANSIENT as exc:
            log.warning("processor.retry", step=what, error=repr(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_wait_s)
