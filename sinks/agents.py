"""The history processor: resolved events, the merge ledger and profile changes -> ClickHouse."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import orjson
import structlog
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError

from contracts.events import ResolvedEvent
from contracts.identity import LedgerEntry
from contracts.privacy import AuditRecord
from contracts.profiles import ProfileChange
from contracts.topics import (
    AUDIT,
    EVENTS_DEADLETTER,
    EVENTS_RESOLVED,
    IDENTITY_MERGES,
    PROFILES_CHANGES,
    PROFILES_SNAPSHOTS,
)
from profiles.store import clock_time
from runtime import metrics
from runtime.agents import batch_loop, fatal
from runtime.retry import until_done
from runtime.undecodable import dead_letters, split
from sinks.history import (
    SNAPSHOT_COLUMNS,
    Batch,
    Change,
    HistoryWriter,
    audit_batch,
    change_batch,
    event_row,
    ledger_batch,
    read_change,
    resolved_row,
    row_batches,
    snapshot_rows,
    tag_batch,
)

log = structlog.get_logger()
T = TypeVar("T")


def _token(topic: str, events: list[Any]) -> str:
    offs = [(e.message.partition, e.message.offset) for e in events]
    return f"{topic}:{min(offs)}-{max(offs)}:{len(offs)}"


def _decode(model: type[BaseModel], events: list[Any]) -> list[Any]:
    # Undecodable messages are dead-lettered by the processor that owns the topic's contract.
    return split(model, events)[0]


class History:
    """Serialises ClickHouse writes on one thread (chDB is one session per process)."""

    def __init__(self, writer: HistoryWriter) -> None:
        self.writer = writer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._high_water: dict[int, int] | None = None

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking ClickHouse call off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def write(self, batches: list[Batch]) -> None:
        """Insert batches in order."""
        for batch in batches:
            began = time.perf_counter()
            try:
                await self.call(self.writer.write, batch)
            except Exception:
                metrics.CLICKHOUSE_ERRORS.labels("insert").inc()
                raise
            metrics.CLICKHOUSE_SECONDS.observe(time.perf_counter() - began)

    async def fresh(self, items: list[tuple[Any, int, int]]) -> list[Any]:
        """Drop items (anything, partition, offset) already stored (after a crash the last
        batch is read again)."""
        if self._high_water is None:
            self._high_water = await self.call(self.writer.high_water)
        hw = self._high_water
        return [i for i in items if i[2] > hw.get(i[1], -1)]


class Erased:
    """Drops what names an erased profile (the ``erased`` set, privacy/erasure.py).

    An event resolved just before its person was erased can reach the history after the
    erasure deleted the person's rows: it must not bring them back. The set is held in
    memory and re-read when its version (``erased:version``, bumped by every erasure)
    changed, at most every ``REFRESH_S``: no Redis call per batch, and a Redis outage does
    not stall the history (it keeps the last set it read).
    """

    REFRESH_S = 1.0

    def __init__(self, redis: Any, namespace: str) -> None:
        self._redis = redis
        self._key = f"{namespace}:erased"
        self._version_key = f"{namespace}:erased:version"
        self._known: set[str] = set()
        self._version: bytes | None = None
        self._checked = -float("inf")
        self._lock = asyncio.Lock()

    def add(self, pids: list[str]) -> None:
        """Profiles this process erased itself: dropped from now on."""
        self._known.update(pids)

    async def _refresh(self) -> None:
        # One refresh at a time: the sinks call this concurrently, and one that found a
        # refresh under way must wait for its answer, not go on with the set before it (at
        # start, an empty set: a replay of old events would bring the erased back).
        async with self._lock:
            now = time.monotonic()
            if now - self._checked < self.REFRESH_S:
                return
            try:
                version = await self._redis.get(self._version_key)
                if version != self._version:
                    members = await self._redis.smembers(self._key)
                    self._known |= {m.decode() if isinstance(m, bytes) else m for m in members}
                    self._version = version
            except RedisError as exc:
                log.warning("history.erased_not_refreshed", error=str(exc))
            self._checked = time.monotonic()

    async def kept(self, items: list[T], *pids_of: Callable[[T], str | None]) -> list[T]:
        """The items none of whose profile ids (by ``pids_of``) was erased."""
        await self._refresh()
        gone = self._known
        if not gone:
            return items
        return [i for i in items if not any(f(i) in gone for f in pids_of)]


def event_rows(events: list[Any], now: datetime) -> list[tuple[list[Any], int, int]]:
    """``events`` rows of resolved-event records, with the partition and offset of each.

    Read as JSON (``resolved_row``); a record that reading cannot vouch for is validated
    against the contract, and one that fails it is left out (the processor that owns the
    topic's contract dead-letters it).
    """
    items = []
    for ev in events:
        msg = ev.message
        try:
            row = resolved_row(msg.value, msg.partition, msg.offset, now)
        except (ValueError, KeyError, TypeError, AttributeError):
            try:
                r = ResolvedEvent.model_validate_json(msg.value)
            except ValidationError:
                continue
            row = event_row(r, msg.partition, msg.offset, now)
        items.append((row, msg.partition, msg.offset))
    return items


def change_items(events: list[Any]) -> list[Change]:
    """The changes of ``cdp.profiles.changes`` records, read as JSON (``read_change``); a
    record that reading cannot vouch for is validated against the contract, and one that
    fails it is left out (the processor that owns the topic's contract dead-letters it)."""
    items = []
    for ev in events:
        try:
            items.append(read_change(ev.message.value))
        except (ValueError, KeyError, TypeError, AttributeError):
            try:
                c = ProfileChange.model_validate_json(ev.message.value)
            except ValidationError:
                continue
            items.append(
                Change(
                    c.profile_id,
                    c.event_id,
                    c.changed,
                    c.merged,
                    c.tags_added,
                    c.tags_removed,
                    c.at,
                )
            )
    return items


def published_snapshots(events: list[Any]) -> tuple[list[list[Any]], list[Any]]:
    """``profile_snapshots`` rows of ``cdp.profiles.snapshots`` records, the newest of each
    profile, and the records that did not decode. Parsed with orjson, not validated: the
    stream processor built each from a validated profile, whose JSON is stored as it came."""
    newest: dict[str, list[Any]] = {}
    bad = []
    for event in events:
        try:
            found = []
            for shot in orjson.loads(event.message.value)["snapshots"]:
                pid, version, profile = shot["profile_id"], int(shot["version"]), shot["profile"]
                if not isinstance(pid, str) or not isinstance(profile, dict):
                    raise TypeError(pid)
                found.append((pid, version, profile))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            bad.append(event)
            continue
        for pid, version, profile in found:
            held = newest.get(pid)
            if held is None or version > held[2]:
                at = clock_time(version)
                newest[pid] = [pid, orjson.dumps(profile).decode(), version, at]
    return list(newest.values()), bad


def register(app: Any, deps: Any) -> None:
    """Add the history agents to ``app``."""
    history = History(deps.history)
    deps.clickhouse = history
    conf = deps.settings.worker
    resolved_name = deps.topic(EVENTS_RESOLVED.name)
    dead_topic = deps.topic(EVENTS_DEADLETTER.name)
    erased = deps.erased = Erased(deps.redis, conf.namespace)

    def sink(name: str, agent: str, within: float | None = None) -> Callable[..., Any]:
        """Register the decorated body as loop ``agent`` over the history's batches of
        registry topic ``name`` (of at most ``within`` seconds, the insert window)."""

        def register_body(body: Callable[[list[Any]], Any]) -> Callable[..., Any]:
            batch_loop(
                app,
                deps.topic(name),
                agent,
                conf.sink_batch_size,
                conf.sink_within_s if within is None else within,
                body,
            )
            return body

        return register_body

    @sink(EVENTS_RESOLVED.name, "history-events")
    async def events_sink(events: list[Any]) -> None:
        with fatal("history-events"), metrics.batch("history-events", len(events)):
            items = event_rows(events, datetime.now(UTC))
            fresh = await erased.kept(await history.fresh(items), lambda i: i[0][1])
            await until_done(
                "history.events", partial(history.write, row_batches(resolved_name, fresh))
            )
            metrics.observe_freshness_ms("history", [i[0][8] for i in fresh])

    @sink(IDENTITY_MERGES.name, "history-ledger")
    async def ledger_sink(events: list[Any]) -> None:
        with fatal("history-ledger"):
            entries = await erased.kept(
                [e for e, _ in _decode(LedgerEntry, events)],
                lambda e: e.profile_id,
                lambda e: e.other_profile_id,
            )
            token = _token(IDENTITY_MERGES.name, events)
        with fatal("history-ledger"), metrics.batch("history-ledger", len(events)):
            await until_done("history.ledger", partial(history.write, ledger_batch(entries, token)))

    @sink(PROFILES_CHANGES.name, "history-changes")
    async def changes_sink(events: list[Any]) -> None:
        with fatal("history-changes"):
            changes = await erased.kept(change_items(events), lambda c: c.profile_id)
            token = _token(PROFILES_CHANGES.name, events)
            batches = [change_batch(changes, token), tag_batch(changes, token)]
        with fatal("history-changes"), metrics.batch("history-changes", len(events)):
            await until_done("history.changes", partial(history.write, batches))

    # Batches as long as the snapshot interval, stored with the profiles changed outside the
    # stream in one insert: each insert also deletes the older snapshots of its profiles (a
    # mutation of the table), so one per interval, not two.
    @sink(PROFILES_SNAPSHOTS.name, "history-snapshots", conf.snapshot_interval_s)
    async def snapshots_sink(events: list[Any]) -> None:
        with fatal("history-snapshots"):
            found, bad = published_snapshots(events)
            rows = await erased.kept(found, lambda r: r[0])
            token = _token(PROFILES_SNAPSHOTS.name, events)
        with fatal("history-snapshots"), metrics.batch("history-snapshots", len(events)):
            if bad:
                dead = dead_letters(bad, "history-snapshots", dead_topic)
                await until_done("history.dead_letters", partial(deps.publisher.publish, dead))
            await until_done("history.snapshots", partial(snapshot, rows, token))

    snapshot_lock = asyncio.Lock()
    last_snapshot_at = [-float("inf")]

    async def snapshot(published: list[list[Any]] | None = None, token: str = "") -> None:
        """Store the profiles changed since the last snapshot that the stream did not
        publish (see ``ProfileStore.settle``), with the ``published`` snapshot rows if any,
        in one insert.

        Coalesced: a profile that changed ten times in the interval is read and stored once.
        Versioned by the Redis clock after the changed set was taken and before the read:
        a snapshot the stream published of the same profile orders by the same clock.
        """
        async with snapshot_lock:
            rows = list(published or [])
            pids = await deps.profiles.take_changed(age=published is not None)
            if pids:
                version = await deps.profiles.clock_ns()
                found = await erased.kept(
                    [s for s in await deps.profiles.read(pids) if s is not None],
                    lambda s: s.profile_id,
                )
                at = clock_time(version)
                rows += snapshot_rows(found, version, at)
                token = f"{token}+snapshots:{version}" if token else f"snapshots:{version}"
            if rows:
                await history.write([Batch("profile_snapshots", SNAPSHOT_COLUMNS, rows, token)])
            await deps.profiles.done_changed()
            last_snapshot_at[0] = time.monotonic()

    @app.timer(conf.snapshot_interval_s)
    async def snapshots() -> None:
        # The published snapshots' agent stores the changed profiles with its batches; this
        # stores them when it has none (the stream publishes none, or is idle). Half the
        # interval: a timer firing a moment early must not skip a turn.
        if time.monotonic() - last_snapshot_at[0] >= conf.snapshot_interval_s / 2:
            await until_done("history.snapshots", snapshot)

    async def last_snapshot() -> None:
        # One attempt, no retries: a stopping worker must not hang on an unreachable Redis
        # or ClickHouse, and what it could not store stays marked for the next start.
        try:
            await snapshot()
        except Exception:
            log.warning("history.snapshots.deferred", exc_info=True)

    deps.on_stop.append(last_snapshot)

    @sink(AUDIT.name, "history-audit")
    async def audit_sink(events: list[Any]) -> None:
        with fatal("history-audit"):
            records = [r for r, _ in _decode(AuditRecord, events)]
            token = _token(AUDIT.name, events)
            await until_done("history.audit", partial(history.write, [audit_batch(records, token)]))
