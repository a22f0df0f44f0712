"""Publish to Kafka with acks=all and an idempotent producer; report failure, never hide it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ingest.exceptions import KafkaUnavailable

log = structlog.get_logger()


@dataclass(frozen=True)
class Record:
    """One message to publish."""

    topic: str
    key: bytes
    #: None is a tombstone (a compacted topic forgets the key).
    value: bytes | None


class Publisher:
    """An aiokafka producer that (re)connects lazily and waits for every acknowledgement."""

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
        self._request_timeout_ms = request_timeout_ms
        self._linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> bool:
        """Try to connect; return whether it worked (the API may start before Kafka)."""
        try:
            await self._ensure()
        except KafkaUnavailable:
            return False
        return True

    async def _ensure(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._bootstrap,
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=self._linger_ms,
                    max_batch_size=512 * 1024,
                    request_timeout_ms=self._request_timeout_ms,
                )
                try:
                    await asyncio.wait_for(producer.start(), self._publish_timeout)
                except (KafkaError, OSError, TimeoutError) as exc:
                    await producer.stop()
                    log.warning("kafka.connect_failed", bootstrap=self._bootstrap, error=str(exc))
                    raise KafkaUnavailable(f"cannot reach Kafka at {self._bootstrap}") from exc
                self._producer = producer
        assert self._producer is not None
        return self._producer

    async def publish(self, records: list[Record]) -> None:
        """Send every record and return only when Kafka acknowledged all of them."""
        if not records:
            return
        producer = await self._ensure()
        try:
            await asyncio.wait_for(self._send_all(producer, records), self._publish_timeout)
        except (KafkaError, TimeoutError) as exc:
            log.warning("kafka.publish_failed", records=len(records), error=repr(exc))
            raise KafkaUnavailable("Kafka did not acknowledge the events in time") from exc

    @staticmethod
    async def _send_all(producer: AIOKafkaProducer, records: list[Record]) -> None:
        pending = [await producer.send(r.topic, r.value, key=r.key) for r in records]
        await asyncio.gather(*pending)

    async def ping(self, timeout_s: float = 3.0) -> None:
        """Fetch cluster metadata; raise ``KafkaUnavailable`` when the broker does not answer."""
        producer = await self._ensure()
        try:
            ok = await asyncio.wait_for(producer.client.fetch_all_metadata(), timeout_s)
        except (KafkaError, TimeoutError, OSError) as exc:
            raise KafkaUnavailable(f"Kafka at {self._bootstrap} did not answer") from exc
        if ok is None or not ok.brokers():
            raise KafkaUnavailable(f"Kafka at {self._bootstrap} reports no brokers")

    async def stop(self) -> None:
        """Flush and close the producer."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
