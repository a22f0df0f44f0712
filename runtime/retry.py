"""The one error policy of the processors: retry transient failures, never skip silently."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runtime.exceptions import KafkaUnavailable
from runtime.metrics import CALL_ERRORS, CALL_SECONDS, service_of

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
    """Run ``step`` until it succeeds, backing off on transient failures.

    Each attempt is timed (``cdp_call_duration_seconds``) and each failure counted
    (``cdp_call_errors_total``) under ``what``, the call's name.
    """
    delay = 0.2
    service = service_of(what)
    while True:
        began = time.perf_counter()
        try:
            result = await step()
        except TRANSIENT as exc:
            CALL_ERRORS.labels(what, service, type(exc).__name__).inc()
            log.warning("processor.retry", step=what, error=repr(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_wait_s)
        else:
            CALL_SECONDS.labels(what, service).observe(time.perf_counter() - began)
            return result
