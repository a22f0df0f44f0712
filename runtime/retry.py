"""The one error policy of the processors: retry transient failures, never skip silently."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from runtime.exceptions import KafkaUnavailable, StoreUnavailable
from runtime.metrics import CALL_ERRORS, CALL_SECONDS, service_of

log = structlog.get_logger()
T = TypeVar("T")

#: Failures of a service that will come back: wait and retry the same batch (its offsets are
#: not committed, so a crash meanwhile replays it). Anything else is a bug and crashes the
#: worker loudly; decoding errors are dead-lettered where they are read.
TRANSIENT: tuple[type[BaseException], ...] = (
    KafkaUnavailable,
    StoreUnavailable,
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
)


#: What ``until_done`` looks at: the transient failures and Redis's answers.
RETRIED: tuple[type[BaseException], ...] = (*TRANSIENT, ResponseError)

#: Redis answers that it cannot take writes for now: its disk is full or failing (``MISCONF``:
#: the AOF cannot be written), or it is a replica after a failover (``READONLY``). Retried
#: like a lost connection; anything else Redis answers is a bug.
#: The answer opens the error, or follows redis-py's "... of pipeline caused error: " (which
#: quotes it: ``error: ('MISCONF ...',)``).
REDIS_UNAVAILABLE = re.compile(r"(^|error: \(?'?)(MISCONF|READONLY) ")


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure of a service that will come back (retry the batch)."""
    if isinstance(exc, ResponseError):
        return REDIS_UNAVAILABLE.search(str(exc)) is not None
    return isinstance(exc, TRANSIENT)


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
        except RETRIED as exc:
            if not transient(exc):
                raise
            CALL_ERRORS.labels(what, service, type(exc).__name__).inc()
            # The cause in words (a full disk, a refused connection): what an operator acts on.
            cause = f"{type(exc).__name__}: {exc}"
            log.warning("processor.retry", step=what, error=cause, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_wait_s)
        else:
            CALL_SECONDS.labels(what, service).observe(time.perf_counter() - began)
            return result
