"""Delivery of care tasks to a webhook: signed, retried with backoff, dead-lettered.

Deliveries run from the care worker's outbox in Redis (care/store.py), never in the stream:
a slow or failing receiver delays only its own tasks. An open task is sent once; when a task
the receiver was sent is closed, its closed record is sent too (a task closed before it was
sent is never sent). At least once: a receiver dedupes on the ``Idempotency-Key`` header
(the task id for the open task, ``<task id>:closed`` for its close), the same on every
attempt.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import httpx
import structlog

from care.signature import headers
from care.store import CareStore
from contracts.care import CareState, CareTask
from contracts.deadletter import DeadLetter, DeadLetterReason
from runtime.metrics import count_dead_letters
from runtime.publisher import Record

log = structlog.get_logger()

#: The dead letters' endpoint and key: a care delivery, not an ingest request (so a re-drive
#: of the dead letters leaves it alone; docs/care.md says how to deliver it again).
ENDPOINT = "processor:care-webhook"


def backoff(attempts: int, base_s: float, max_s: float) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: doubling, capped."""
    return float(min(base_s * 2 ** (attempts - 1), max_s))


def retryable(status: int) -> bool:
    """Whether a receiver's answer may change on a retry (5xx, 408, 429); other 4xx will not."""
    return status >= 500 or status in (408, 429)


def dead_letter(task: CareTask, attempts: int, status: int, why: str, topic: str) -> Record:
    """The dead letter of a task whose delivery failed for good."""
    body = task.model_dump_json().encode()
    letter = DeadLetter(
        reason=DeadLetterReason.DELIVERY_FAILED,
        field=None,
        index=None,
        status=status,
        source=None,
        message=f"care webhook: {attempts} attempt(s) failed, last: {why}",
        endpoint=ENDPOINT,
        received_at=datetime.now(UTC),
        request_id=task.task_id,
        payload=task.model_dump(mode="json"),
        raw_sha256=hashlib.sha256(body).hexdigest(),
    )
    return Record(topic, b"care", letter.model_dump_json().encode())


class Webhook:
    """Sends due deliveries of the outbox to one URL."""

    def __init__(
        self,
        url: str,
        secret: bytes,
        store: CareStore,
        client: httpx.AsyncClient,
        publish: Callable[[list[Record]], Awaitable[None]],
        deadletter_topic: str,
        max_attempts: int,
        backoff_s: float,
        backoff_max_s: float,
        timeout_s: float,
        concurrency: int = 8,
    ) -> None:
        self.url = url
        self._secret = secret
        self._store = store
        self._client = client
        self._publish = publish
        self._topic = deadletter_topic
        self._max = max_attempts
        self._backoff = (backoff_s, backoff_max_s)
        self._timeout = timeout_s
        self._concurrency = concurrency

    async def run_once(self, now: datetime) -> int:
        """Attempt every delivery that is due; the number attempted."""
        lease = self._timeout * 2 + 30
        ids = await self._store.claim_deliveries(now, lease, self._concurrency * 4)
        if not ids:
            return 0
        tasks = {t.task_id: t for t in await self._store.get_many(ids)}
        gate = asyncio.Semaphore(self._concurrency)

        async def one(tid: str) -> None:
            async with gate:
                await self.deliver(tid, tasks.get(tid))

        await asyncio.gather(*(one(t) for t in ids))
        return len(ids)

    async def deliver(self, tid: str, task: CareTask | None) -> None:
        """One attempt: accepted, retried later, or dead-lettered."""
        closing = task is not None and task.state == CareState.CLOSED
        if task is None or (closing and await self._store.delivered_at(tid) is None):
            await self._store.give_up(tid)  # gone, or closed before it was delivered
            return
        body = task.model_dump_json().encode()
        key = closing_key(tid) if closing else tid
        sent = headers(self._secret, int(time.time()), body, key)
        status, why = 0, ""
        try:
            answer = await self._client.post(
                self.url, content=body, headers=sent, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            why = f"{type(exc).__name__}: {exc}"
        else:
            status, why = answer.status_code, f"HTTP {answer.status_code}"
            if 200 <= status < 300:
                await self._accepted(tid, closing)
                log.info("care.delivered", task_id=tid, status=status, state=task.state.value)
                return
        attempts = await self._store.failed(tid)
        if (status and not retryable(status)) or attempts >= self._max:
            await self._publish([dead_letter(task, attempts, status, why, self._topic)])
            count_dead_letters("care", [DeadLetterReason.DELIVERY_FAILED.value])
            await self._store.give_up(tid)
            log.warning("care.dead_lettered", task_id=tid, attempts=attempts, error=why)
            return
        wait = backoff(attempts, *self._backoff)
        await self._store.retry_at(tid, datetime.now(UTC) + timedelta(seconds=wait))
        log.info("care.retry", task_id=tid, attempts=attempts, error=why, retry_in_s=wait)

    async def _accepted(self, tid: str, closing: bool) -> None:
        """Record an accepted delivery; an open task closed while it was being sent is
        queued again, so the receiver hears of the close too."""
        now = datetime.now(UTC)
        if closing:
            await self._store.close_delivered(tid, now)
            return
        await self._store.delivered(tid, now)
        current = await self._store.get(tid)
        if current is not None and current.state == CareState.CLOSED:
            await self._store.requeue(tid, now)


def closing_key(task_id: str) -> str:
    """The ``Idempotency-Key`` of the delivery of a task's close."""
    return f"{task_id}:closed"
