"""Saved segments: served from Redis, made durable by a compacted Kafka topic.

Unlike profiles and tags, saved segments are not derived from events, so replaying the
event topics cannot bring them back. Every version is also written, acknowledged, to
``cdp.segments.definitions`` (key ``<id>/<version>``; a delete writes tombstones), and a
Redis that lost them (no ``seg:synced`` marker) is restored from that topic on first use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

import redis.asyncio as aioredis
import structlog
from redis.exceptions import WatchError

from contracts.segments import SavedSegment, SegmentDefinition, is_live
from contracts.topics import SEGMENTS_DEFINITIONS
from runtime.exceptions import KafkaUnavailable
from runtime.publisher import Publisher, Record
from runtime.readback import read_records

log = structlog.get_logger()


class KafkaTopics(Protocol):
    """Where the topics are (the composition root's Kafka settings are one)."""

    @property
    def bootstrap_servers(self) -> str:
        """The brokers to read from."""

    def topic(self, name: str) -> str:
        """A registry topic's full name (with the deployment's prefix)."""


class SegmentConflict(Exception):
    """A create of an existing id, or an update from a version that is not the latest."""


class SegmentNotFound(KeyError):
    """No saved segment with that id."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class SegmentLog:
    """The compacted topic every saved version is written to (acks=all) before it counts."""

    def __init__(
        self,
        publisher: Publisher,
        topic: str,
        read: Callable[[str], list[tuple[bytes | None, bytes | None]]],
    ) -> None:
        self._publisher = publisher
        self._topic = topic
        #: Reads a topic to its end offsets, (key, value) per message (blocking).
        self._read = read

    async def record(self, saved: SavedSegment) -> None:
        """Write one version; KafkaUnavailable when Kafka does not acknowledge it."""
        key = f"{saved.id}/{saved.version}".encode()
        body = saved.model_dump_json(by_alias=True).encode()
        await self._publisher.publish([Record(self._topic, key, body)])

    async def forget(self, segment_id: str, versions: int) -> None:
        """Tombstone every version of a segment."""
        keys = [f"{segment_id}/{v}".encode() for v in range(1, versions + 1)]
        await self._publisher.publish([Record(self._topic, k, None) for k in keys])

    async def saved(self) -> dict[str, list[SavedSegment]]:
        """Every segment's versions as the topic has them, oldest first."""
        latest: dict[str, bytes | None] = {}
        for key, value in await asyncio.to_thread(self._read, self._topic):
            if key is not None:
                latest[key.decode()] = value
        found: dict[str, list[SavedSegment]] = {}
        for value in latest.values():
            if value is not None:
                seg = SavedSegment.model_validate_json(value)
                found.setdefault(seg.id, []).append(seg)
        return {i: sorted(v, key=lambda s: s.version) for i, v in found.items()}


class SegmentStore:
    """``seg:defs`` (id -> latest, JSON) and ``seg:versions:<id>`` (every version, oldest first).

    With a ``SegmentLog``, writes are durable in Kafka before they are answered, and an empty
    Redis is restored from it.
    """

    def __init__(
        self, client: aioredis.Redis, namespace: str, durable: SegmentLog | None = None
    ) -> None:
        self._redis = client
        self._defs = f"{namespace}:seg:defs"
        self._ns = namespace
        self._log = durable
        self._synced = f"{namespace}:seg:synced"
        self._retry_at = 0.0

    @classmethod
    def durable(
        cls, client: aioredis.Redis, namespace: str, publisher: Publisher, kafka: KafkaTopics
    ) -> SegmentStore:
        """The store every process uses: its writes and restores go through the topic."""

        def read(topic: str) -> list[tuple[bytes | None, bytes | None]]:
            return read_records(kafka.bootstrap_servers, topic, timeout_s=10.0)

        topic = kafka.topic(SEGMENTS_DEFINITIONS.name)
        return cls(client, namespace, SegmentLog(publisher, topic, read))

    def _versions(self, segment_id: str) -> str:
        return f"{self._ns}:seg:versions:{segment_id}"

    async def _ensure_restored(self) -> None:
        """Sync Redis with the topic once (there is no marker yet, or Redis lost it).

        Segments the topic has and Redis lacks are restored; versions Redis has and the topic
        lacks (saved before the topic existed) are written to it. If Kafka cannot be read,
        Redis serves as it is and the sync is tried again 30 s later.
        """
        if self._log is None or time.monotonic() < self._retry_at:
            return
        if await self._redis.exists(self._synced):
            return
        try:
            restored, logged = await self._sync(self._log)
        except Exception as exc:  # noqa: BLE001 - any Kafka failure: serve Redis, retry later
            self._retry_at = time.monotonic() + 30
            log.warning("segments.sync_failed", error=f"{type(exc).__name__}: {exc}")
            return
        await self._redis.set(self._synced, datetime.now(UTC).isoformat())
        log.info("segments.synced", restored=restored, logged=logged)

    async def _sync(self, durable: SegmentLog) -> tuple[int, int]:
        found = await durable.saved()
        restored = 0
        for segment_id, versions in found.items():
            if await self._redis.hexists(self._defs, segment_id):
                continue
            bodies = [v.model_dump_json(by_alias=True) for v in versions]
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._defs, segment_id, bodies[-1])
                pipe.delete(self._versions(segment_id))
                pipe.rpush(self._versions(segment_id), *bodies)
                await pipe.execute()
            restored += 1
        known = {(i, v.version) for i, vs in found.items() for v in vs}
        logged = 0
        for key in await self._redis.hkeys(self._defs):
            for body in await self._redis.lrange(self._versions(_text(key)), 0, -1):
                seg = SavedSegment.model_validate_json(body)
                if (seg.id, seg.version) not in known:
                    await durable.record(seg)
                    logged += 1
        return restored, logged

    async def list(self) -> list[SavedSegment]:
        """Every saved segment (latest versions), by id."""
        await self._ensure_restored()
        raw = await self._redis.hgetall(self._defs)
        found = [SavedSegment.model_validate_json(v) for v in raw.values()]
        return sorted(found, key=lambda s: s.id)

    async def get(self, segment_id: str, version: int | None = None) -> SavedSegment:
        """The latest version, or ``version``; SegmentNotFound when missing."""
        await self._ensure_restored()
        if version is None:
            raw = await self._redis.hget(self._defs, segment_id)
        else:
            raw = await self._redis.lindex(self._versions(segment_id), version - 1)
        if raw is None:
            raise SegmentNotFound(segment_id)
        return SavedSegment.model_validate_json(raw)

    async def put(
        self,
        segment: SegmentDefinition,
        segment_id: str,
        create: bool,
        expected_version: int | None = None,
    ) -> SavedSegment:
        """Create (version 1) or update (latest + 1), atomically with respect to other writers.

        ``create`` refuses an existing id; an update refuses a missing id and, given
        ``expected_version``, any other latest version (SegmentConflict: re-read and retry).
        Durable in Kafka before it returns; KafkaUnavailable (and nothing saved) otherwise.
        """
        await self._ensure_restored()
        saved, previous = await self._put_redis(segment, segment_id, create, expected_version)
        if self._log is not None:
            try:
                await self._log.record(saved)
            except KafkaUnavailable:
                await self._undo(saved, previous)
                raise
        return saved

    async def _undo(self, saved: SavedSegment, previous: str | None) -> None:
        """Take back a version Kafka did not acknowledge, unless a newer one followed it."""
        body = saved.model_dump_json(by_alias=True)
        async with self._redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(self._defs)
                if await pipe.hget(self._defs, saved.id) not in (body, body.encode()):
                    return
                pipe.multi()  # type: ignore[no-untyped-call]
                if previous is None:
                    pipe.hdel(self._defs, saved.id)
                    pipe.delete(self._versions(saved.id))
                else:
                    pipe.hset(self._defs, saved.id, previous)
                    pipe.rpop(self._versions(saved.id))
                await pipe.execute()
            except WatchError:
                log.warning("segments.undo_raced", segment=saved.id, version=saved.version)

    async def _put_redis(
        self,
        segment: SegmentDefinition,
        segment_id: str,
        create: bool,
        expected_version: int | None,
    ) -> tuple[SavedSegment, str | None]:
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(self._defs)
                    raw = await pipe.hget(self._defs, segment_id)
                    current = SavedSegment.model_validate_json(raw) if raw else None
                    if create and current is not None:
                        raise SegmentConflict(
                            f"segment {segment_id} exists (version {current.version})"
                        )
                    if not create and current is None:
                        raise SegmentNotFound(segment_id)
                    if (
                        current
                        and expected_version is not None
                        and current.version != expected_version
                    ):
                        raise SegmentConflict(
                            f"segment {segment_id} is at version {current.version}, "
                            f"not {expected_version}"
                        )
                    now = datetime.now(UTC)
                    saved = SavedSegment(
                        **segment.model_dump(exclude={"id"}, by_alias=True),
                        id=segment_id,
                        version=current.version + 1 if current else 1,
                        created_at=current.created_at if current else now,
                        updated_at=now,
                        live=is_live(segment.definition),
                    )
                    body = saved.model_dump_json(by_alias=True)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(self._defs, segment_id, body)
                    pipe.rpush(self._versions(segment_id), body)
                    await pipe.execute()
                    return saved, (raw.decode() if isinstance(raw, bytes) else raw)
                except WatchError:
                    continue

    async def delete(self, segment_id: str) -> None:
        """Forget a segment, its versions and its refresh state; SegmentNotFound if missing.

        The tombstones are acknowledged by Kafka first: if it is down, nothing is deleted.
        """
        current = await self.get(segment_id)
        if self._log is not None:
            await self._log.forget(segment_id, current.version)
        removed = await self._redis.hdel(self._defs, segment_id)
        if not removed:
            raise SegmentNotFound(segment_id)
        await self._redis.delete(
            self._versions(segment_id),
            f"{self._ns}:seg:members:{segment_id}",
            f"{self._ns}:seg:refresh:{segment_id}",
        )
