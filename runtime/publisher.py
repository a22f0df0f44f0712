"""Publish to Kafka with acks=all and an idempotent producer; report failure, never hide it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from runtime.exceptions import KafkaUnavailable
from runtime.metrics import PUBLISH_FAILURES, PUBLISH_SECONDS, RECORDS_PUBLISHED

log = structlog.get_logger()

#: librdkafka's own log lines go to this stdlib logger (held at WARNING by the entry point).
RDKAFKA_LOGGER = "rdkafka"


@dataclass(frozen=True)
class Record:
    """One message to publish."""

    topic: str
    key: bytes
    #: None is a tombstone (a compacted topic forgets the key).
    value: bytes | None


class _Delivery:
    """Count the acknowledgements of one publish; resolve its future when all arrived."""

    __slots__ = ("error", "future", "loop", "remaining")

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int) -> None:
        self.loop, self.remaining = loop, count
        self.error: KafkaError | None = None
        self.future: asyncio.Future[KafkaError | None] = loop.create_future()

    def __call__(self, error: KafkaError | None, _: Message) -> None:
        # Called on the poll thread, one call per record, in order.
        if error is not None and self.error is None:
            self.error = error
        self.remaining -= 1
        if self.remaining == 0:
            # A publish that timed out may be acknowledged after its event loop closed.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(self.error)


class Publisher:
    """A librdkafka producer (confluent-kafka) that waits for every acknowledgement.

    ``produce`` only queues a record in librdkafka (C, no I/O); a thread serves delivery
    reports and resolves each publish's future on the event loop once Kafka acknowledged
    all of its records. librdkafka reconnects by itself; a record Kafka did not acknowledge
    within ``publish_timeout_s`` fails the publish (``KafkaUnavailable``).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        publish_timeout_s: float = 10.0,
        request_timeout_ms: int = 8_000,
        linger_ms: int = 5,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._publish_timeout = publish_timeout_s
        self._config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": linger_ms,
            "request.timeout.ms": request_timeout_ms,
            # librdkafka gives up on a record after this; the caller has answered 503 by then.
            "message.timeout.ms": max(int(publish_timeout_s * 1000), linger_ms + 1),
            # The Java client's partitioner (and aiokafka's): a key lands where every other
            # producer of these topics puts it (librdkafka's default is CRC32).
            "partitioner": "murmur2_random",
            "logger": logging.getLogger(RDKAFKA_LOGGER),
        }
        self._producer: Producer | None = None
        self._polling: threading.Thread | None = None
        self._stopped = threading.Event()

    def _ensure(self) -> Producer:
        if self._producer is None:
            self._stopped.clear()
            self._producer = Producer(self._config)
            self._polling = threading.Thread(
                target=self._poll, args=(self._producer,), name="kafka-deliveries", daemon=True
            )
            self._polling.start()
        return self._producer

    def _poll(self, producer: Producer) -> None:
        while not self._stopped.is_set():
            producer.poll(0.1)

    async def start(self) -> bool:
        """Connect; return whether Kafka answered (the API may start before Kafka)."""
        try:
            await self.ping(self._publish_timeout)
        except KafkaUnavailable:
            log.warning("kafka.connect_failed", bootstrap=self._bootstrap)
            return False
        return True

    async def publish(self, records: list[Record]) -> None:
        """Send every record and return only when Kafka acknowledged all of them."""
        if not records:
            return
        producer = self._ensure()
        began = time.perf_counter()
        delivery = _Delivery(asyncio.get_running_loop(), len(records))
        for r in records:
            await self._produce(producer, r, delivery)
        try:
            error = await asyncio.wait_for(asyncio.shield(delivery.future), self._publish_timeout)
        except TimeoutError as exc:
            PUBLISH_FAILURES.inc()
            log.warning("kafka.publish_failed", records=len(records), error="timeout")
            raise KafkaUnavailable("Kafka did not acknowledge the events in time") from exc
        if error is not None:
            PUBLISH_FAILURES.inc()
            log.warning("kafka.publish_failed", records=len(records), error=str(error))
            raise KafkaUnavailable(f"Kafka did not acknowledge the events: {error.str()}")
        PUBLISH_SECONDS.observe(time.perf_counter() - began)
        for topic, n in Counter(r.topic for r in records).items():
            RECORDS_PUBLISHED.labels(topic).inc(n)

    @staticmethod
    async def _produce(producer: Producer, record: Record, delivery: _Delivery) -> None:
        while True:
            try:
                producer.produce(record.topic, record.value, record.key, on_delivery=delivery)
                return
            except BufferError:  # librdkafka's queue is full: let deliveries drain it
                await asyncio.sleep(0.005)
            except KafkaException as exc:
                raise KafkaUnavailable(f"Kafka refused the record: {exc}") from exc

    async def ping(self, timeout_s: float = 3.0) -> None:
        """Fetch cluster metadata; raise ``KafkaUnavailable`` when the broker does not answer."""
        producer = self._ensure()
        try:
            metadata = await asyncio.to_thread(producer.list_topics, None, timeout_s)
        except KafkaException as exc:
            raise KafkaUnavailable(f"Kafka at {self._bootstrap} did not answer") from exc
        if not metadata.brokers:
            raise KafkaUnavailable(f"Kafka at {self._bootstrap} reports no brokers")

    async def stop(self) -> None:
        """Deliver what is queued (within the publish timeout), then close the producer."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        await asyncio.to_thread(producer.flush, self._publish_timeout)
        self._stopped.set()
        if self._polling is not None:
            await asyncio.to_thread(self._polling.join)
