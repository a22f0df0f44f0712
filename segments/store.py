"""Saved segments in Redis: the latest definition per id and every version before it."""

from __future__ import annotations

from datetime import UTC, datetime

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from contracts.segments import SavedSegment, SegmentDefinition, is_live


class SegmentConflict(Exception):
    """A create of an existing id, or an update from a version that is not the latest."""


class SegmentNotFound(KeyError):
    """No saved segment with that id."""


class SegmentStore:
    """``seg:defs`` (id -> latest, JSON) and ``seg:versions:<id>`` (every version, oldest first)."""

    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self._redis = client
        self._defs = f"{namespace}:seg:defs"
        self._ns = namespace

    def _versions(self, segment_id: str) -> str:
        return f"{self._ns}:seg:versions:{segment_id}"

    async def list(self) -> list[SavedSegment]:
        """Every saved segment (latest versions), by id."""
        raw = await self._redis.hgetall(self._defs)
        found = [SavedSegment.model_validate_json(v) for v in raw.values()]
        return sorted(found, key=lambda s: s.id)

    async def get(self, segment_id: str, version: int | None = None) -> SavedSegment:
        """The latest version, or ``version``; SegmentNotFound when missing."""
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
        """
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
                    return saved
                except WatchError:
                    continue

    async def delete(self, segment_id: str) -> None:
        """Forget a segment, its versions and its refresh state; SegmentNotFound if missing."""
        removed = await self._redis.hdel(self._defs, segment_id)
        if not removed:
            raise SegmentNotFound(segment_id)
        await self._redis.delete(
            self._versions(segment_id),
            f"{self._ns}:seg:members:{segment_id}",
            f"{self._ns}:seg:refresh:{segment_id}",
        )
