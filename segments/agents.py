"""Membership of saved segments -> ``cdp.segments.membership`` (key = profile id).

- Live (tag-only) segments: the profiles processor compares each re-tagged profile's
  membership before and after, from its tag bits, and publishes enters and exits with the
  tag change that caused them: no refresh, no query.
- Other segments: the history worker (which owns ClickHouse) recomputes each saved segment
  every ``refresh_interval_s`` and publishes the difference from the last refresh. The new
  membership replaces the old only after the changes were acknowledged by Kafka, so a crash
  repeats a refresh's changes rather than losing them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

import redis.asyncio as aioredis
import structlog

from contracts.segments import MembershipChange, SavedSegment
from contracts.topics import SEGMENTS_MEMBERSHIP
from runtime.publisher import Record
from runtime.retry import until_done
from segments.live import Predicate, segment_predicate
from segments.service import purposes
from segments.sql import Compiler
from segments.store import SegmentStore
from tagging.catalog import Catalog
from tagging.store import TagChange

log = structlog.get_logger()

#: Profile ids added to the scratch set per SADD during a refresh.
_CHUNK = 10_000


def record(
    topic: str,
    seg: SavedSegment,
    profile_id: str,
    change: Literal["enter", "exit"],
    cause: Literal["live", "refresh"],
    at: datetime,
) -> Record:
    """A membership change of ``seg`` as a record (key = profile id)."""
    body = MembershipChange(
        segment_id=seg.id,
        segment_version=seg.version,
        profile_id=profile_id,
        change=change,
        cause=cause,
        at=at,
    )
    return Record(topic, profile_id.encode(), body.model_dump_json().encode())


class LiveMembership:
    """Saved live segments, re-read every ``reload_s``, as predicates over tag bitmaps."""

    def __init__(self, store: SegmentStore, catalog: Catalog, topic: str, reload_s: float) -> None:
        self._store = store
        self._catalog = catalog
        self._topic = topic
        self._reload_s = reload_s
        self._loaded_at = -1e18
        self._segments: list[tuple[SavedSegment, Predicate]] = []

    async def _current(self) -> list[tuple[SavedSegment, Predicate]]:
        if time.monotonic() - self._loaded_at >= self._reload_s:
            found = []
            for seg in await self._store.list():
                if not seg.live:
                    continue
                try:
                    test = segment_predicate(seg, self._catalog)
                except (KeyError, ValueError):
                    log.warning("segments.live.skipped", segment=seg.id, reason="unknown tag")
                    continue
                found.append((seg, test))
            self._segments, self._loaded_at = found, time.monotonic()
        return self._segments

    async def records(self, changes: list[TagChange], at: datetime) -> list[Record]:
        """Enter/exit records for the live segments the tag changes moved profiles across."""
        if not changes:
            return []
        segments = await self._current()
        out = []
        for change in changes:
            for seg, test in segments:
                was, now = test(change.before), test(change.after)
                if was != now:
                    kind: Literal["enter", "exit"] = "enter" if now else "exit"
                    out.append(record(self._topic, seg, change.profile_id, kind, "live", at))
        return out


class Refresher:
    """Recomputes saved non-live segments and publishes who entered and who left."""

    def __init__(
        self,
        client: aioredis.Redis,
        namespace: str,
        store: SegmentStore,
        compiler: Compiler,
        query: Callable[[str, dict[str, Any]], Awaitable[list[tuple[Any, ...]]]],
        publish: Callable[[list[Record]], Awaitable[None]],
        topic: str,
    ) -> None:
        self._redis = client
        self._ns = namespace
        self._store = store
        self._compiler = compiler
        self._query = query
        self._publish = publish
        self._topic = topic

    async def refresh_all(self, now: datetime) -> dict[str, tuple[int, int, int]]:
        """Refresh every saved non-live segment: id -> (members, entered, exited)."""
        done = {}
        for seg in await self._store.list():
            if seg.live:
                continue
            try:
                done[seg.id] = await self.refresh(seg, now)
            except ValueError as exc:  # a definition the current catalog no longer compiles
                log.warning("segments.refresh.skipped", segment=seg.id, error=str(exc))
        return done

    async def refresh(self, seg: SavedSegment, now: datetime) -> tuple[int, int, int]:
        """Recompute one segment; publish the difference; then store the new membership."""
        q = self._compiler.members(seg, now)
        rows = await self._query(q.sql, q.params)
        ids = [r[0] for r in rows]
        members = f"{self._ns}:seg:members:{seg.id}"
        scratch = f"{self._ns}:seg:members:{seg.id}:next"
        await self._redis.delete(scratch)
        for start in range(0, len(ids), _CHUNK):
            await self._redis.sadd(scratch, *ids[start : start + _CHUNK])
        entered = [_text(p) for p in await self._redis.sdiff([scratch, members])]
        exited = [_text(p) for p in await self._redis.sdiff([members, scratch])]

        out = [record(self._topic, seg, p, "enter", "refresh", now) for p in sorted(entered)]
        out += [record(self._topic, seg, p, "exit", "refresh", now) for p in sorted(exited)]
        if out:
            await self._publish(out)
        pipe = self._redis.pipeline(transaction=True)
        if ids:
            pipe.rename(scratch, members)
        else:
            pipe.delete(members, scratch)
        pipe.hset(
            f"{self._ns}:seg:refresh:{seg.id}",
            mapping={
                "at": now.isoformat(),
                "version": seg.version,
                "members": len(ids),
                "entered": len(entered),
                "exited": len(exited),
            },
        )
        await pipe.execute()
        return len(ids), len(entered), len(exited)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def register_refresh(app: Any, deps: Any, catalog: Catalog) -> Refresher | None:
    """Add the scheduled refresh to a worker that owns the history (ClickHouse)."""
    conf = deps.settings.segments
    if conf.refresh_interval_s <= 0 or deps.history is None:
        return None
    ns = deps.settings.worker.namespace
    compiler = Compiler(
        deps.settings.clickhouse.database, tags=list(catalog.by_id), purposes=purposes(catalog)
    )

    async def query(sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return await asyncio.to_thread(deps.history.rows, sql, params)

    async def publish(records: list[Record]) -> None:
        await until_done("segments.publish", partial(deps.publisher.publish, records))

    refresher = Refresher(
        deps.redis,
        ns,
        SegmentStore.durable(deps.redis, ns, deps.publisher, deps.settings.kafka),
        compiler,
        query,
        publish,
        deps.topic(SEGMENTS_MEMBERSHIP.name),
    )

    @app.timer(conf.refresh_interval_s)
    async def segments_refresh() -> None:
        """Recompute saved segments; publish enters and exits."""
        now = datetime.now(UTC)
        done = await until_done("segments.refresh", partial(refresher.refresh_all, now))
        if done:
            log.info("segments.refreshed", segments=len(done))

    return refresher
