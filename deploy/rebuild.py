"""Rebuild the Redis state (identity graph, profiles, tags) from the history in ClickHouse.

Kafka is the source of truth and history keeps every accepted event with the raw partition
and offset it was read from, so everything the stream keeps in Redis can be derived again:
``cdp rebuild`` replays history through the same Lua scripts as the stream (identity
resolution in its replay mode, then the fold), evaluates every tag of every rebuilt profile
once at the end, and refills the retry window's fingerprints, so client retries of events
already accepted are still recognised.

Order. Within a raw partition events are replayed in offset order, as the stream read them
(the fold's per-partition watermark depends on it); partitions are interleaved by receive
time, the order the stream saw them in on the whole. A rebuilt profile keeps the id history
gives its events (resolve.lua takes it when free), so history rows, aliases and rebuilt
profiles agree, and ``compare`` can match the rebuilt namespace with a live one id by id.

Resumable. Each step reads the next offsets of every partition, and its end is recorded in
``<ns>:rebuild`` before the next one starts; a rebuild started again continues from there
(an event replayed twice changes nothing: identity links are idempotent and the fold
applies a raw offset once per profile).
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis.asyncio as aioredis

from contracts.events import Channel, Event, EventType, Identifier, ResolvedEvent
from identity.store import IdentityStore, Located
from profiles.store import ProfileStore, Stored
from tagging.store import TagStore

#: The columns a replay reads, in this order.
COLUMNS = (
    "event_id, profile_id, type, name, channel, source, identifiers, timestamp, received_at,"
    " traits, properties, consent, group_id, invalid_ids, sealed_ids, src_partition, src_offset,"
    " resolution"
)
NAMES = [c.strip() for c in COLUMNS.split(",")]


#: Fault injection for the tests: hold (for a kill -9) once this many steps are recorded.
HOLD_ENV = "CDP_FAULT_REBUILD_HOLD_AFTER_STEPS"
#: Fault hook for tests: the step in which the process dies (exit 137, as by kill -9) once
#: identity resolved its rows and before they are folded.
DIE_ENV = "CDP_FAULT_REBUILD_DIE_BEFORE_FOLD"


class RebuildError(Exception):
    """A rebuild that cannot start (the target holds state, history is unreadable)."""


@dataclass
class Report:
    """What a rebuild read and made."""

    namespace: str
    events: int = 0
    profiles: int = 0
    merged: int = 0
    tagged: int = 0
    fingerprints: int = 0
    seconds: float = 0.0
    resumed: bool = False
    steps: int = 0

    def rate(self) -> float:
        """Events replayed per second."""
        return self.events / self.seconds if self.seconds else 0.0


def to_event(row: dict[str, Any]) -> Event:
    """An ``events`` row as the event the stream resolved (constructed: history holds only
    events that passed validation)."""
    invalid = set(row["invalid_ids"] or ())
    sealed = row["sealed_ids"] or {}
    identifiers = []
    for key in row["identifiers"]:
        kind, _, value = key.partition(":")
        identifiers.append(
            Identifier.model_construct(
                type=kind, value=value, normalized=key not in invalid, sealed=sealed.get(key)
            )
        )
    at = _utc(row["timestamp"])
    return Event.model_construct(
        schema_version=1,
        event_id=row["event_id"],
        type=EventType(row["type"]),
        name=row["name"] or None,
        channel=Channel(row["channel"]),
        source=row["source"],
        identifiers=identifiers,
        previous_id=None,
        group_id=row["group_id"] or None,
        traits=orjson.loads(row["traits"] or "{}"),
        properties=orjson.loads(row["properties"] or "{}"),
        consent=orjson.loads(row["consent"] or "{}"),
        context={},
        original_timestamp=at,
        sent_at=None,
        received_at=_utc(row["received_at"]),
        timestamp=at,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def interleave(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in offset order within each partition, partitions merged by receive time."""
    queues: dict[int, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: (r["src_partition"], r["src_offset"])):
        queues.setdefault(row["src_partition"], []).append(row)
    heads = [(q[0]["received_at"], part, 0) for part, q in queues.items()]
    heapq.heapify(heads)
    out = []
    while heads:
        _, part, n = heapq.heappop(heads)
        queue = queues[part]
        out.append(queue[n])
        if n + 1 < len(queue):
            heapq.heappush(heads, (queue[n + 1]["received_at"], part, n + 1))
    return out


class Rebuild:
    """Replay history into the Redis namespace of ``identity``/``profiles``/``tags``.

    ``query(sql, params)`` runs a read on the history database ``db`` and returns its rows
    as tuples (off the event loop: chDB has no async client).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        namespace: str,
        identity: IdentityStore,
        profiles: ProfileStore,
        tags: TagStore | None,
        query: Callable[[str, dict[str, Any]], Awaitable[list[Any]]],
        db: str,
        step_rows: int = 20_000,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self._redis = redis
        self._ns = namespace
        self._identity = identity
        self._profiles = profiles
        self._tags = tags
        self._query = query
        self._db = db
        self._step_rows = step_rows
        self._progress = progress or (lambda done, total: None)
        self._state = f"{namespace}:rebuild"

    async def _rows(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        return list(await self._query(sql, params or {}))

    async def run(self, force: bool = False) -> Report:
        """Rebuild; resume an interrupted rebuild of this namespace."""
        started = time.perf_counter()
        state = {_text(k): _text(v) for k, v in (await self._redis.hgetall(self._state)).items()}
        report = Report(self._ns, resumed=bool(state))
        if not state and await self._redis.exists(f"{self._ns}:seq") and not force:
            raise RebuildError(
                f"namespace {self._ns!r} already holds profiles: rebuild into another "
                "namespace (--into) and compare, or empty it first (--force replays into it)"
            )
        db = self._db
        # Rows stored before the order of resolution was recorded: partitions in offset
        # order, interleaved by receive time. Then every other row, in the recorded order.
        parts = await self._rows(
            f"SELECT src_partition, min(src_offset), max(src_offset) FROM {db}.events "  # noqa: S608
            "WHERE resolution = 0 GROUP BY src_partition ORDER BY src_partition"
        )
        top, total = (
            int(x)
            for x in (
                await self._rows(f"SELECT max(resolution), count() FROM {db}.events")  # noqa: S608
            )[0]
        )
        ends = {int(p): int(hi) for p, _, hi in parts}
        cursor = {int(p): int(lo) - 1 for p, lo, _ in parts}
        for key, value in state.items():
            if key.startswith("p:"):
                cursor[int(key[2:])] = int(value)
        order = int(state.get("order", 0))
        done = int(state.get("events", 0))
        self._progress(done, total)
        touched: set[str] = set()
        per = max(self._step_rows // max(len(ends), 1), 100)
        # A step's fold runs while the next step is read and resolved: Python prepares one
        # while Redis runs the other's scripts. Identity resolves steps in order; folds
        # commute. A step is recorded done once folded, and a step replayed after a crash
        # gets the outcomes identity held for it.
        folding: asyncio.Task[set[str]] | None = None
        recorded: dict[str, int] = {}
        folded: list[Located] = []

        async def record() -> None:
            # The step is recorded done and identity's outcomes for it forgotten in one
            # transaction: a step replayed after a crash always finds them held.
            nonlocal folding, done
            if folding is None:
                return
            touched.update(await folding)
            folding = None
            done += recorded.pop("rows")
            report.steps += 1
            step_state: dict[str, int] = {**recorded, "events": done}
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._state, mapping=step_state)  # type: ignore[arg-type]
                self._identity.forget_held(pipe, folded)
                await pipe.execute()
            gc.collect()
            self._progress(done, total)
            if os.environ.get(HOLD_ENV) == str(report.steps):
                await asyncio.Event().wait()

        # A replay makes millions of short-lived objects and almost no cycles: the cyclic
        # collector runs once per step instead of whenever allocations pass its thresholds
        # (it took ~30% of the replay's time).
        collecting = gc.isenabled()
        gc.disable()
        try:
            while any(cursor[p] < ends[p] for p in ends) or order < top:
                mapping: dict[str, int] = {}
                if any(cursor[p] < ends[p] for p in ends):
                    window = {p: (cursor[p], min(cursor[p] + per, ends[p])) for p in ends}
                    rows = await self._unordered(window)
                    cursor = {p: hi for p, (_, hi) in window.items()}
                    mapping = {f"p:{p}": c for p, c in cursor.items()}
                else:
                    rows = await self._ordered(order, min(order + self._step_rows, top))
                    order = min(order + self._step_rows, top)
                    mapping["order"] = order
                located, resolved = await self._resolve(
                    rows, report.steps + 1 + (folding is not None)
                )
                await record()
                recorded, folded = {**mapping, "rows": len(rows)}, located
                folding = asyncio.create_task(self._fold(resolved))
            await record()
        finally:
            if folding is not None:
                folding.cancel()
            if collecting:
                gc.enable()
        await self._redis.set(f"{self._ns}:order", top)
        report.events = done
        survivors = await self._survivors(touched) if not report.resumed else await self._all()
        report.profiles = len(survivors)
        report.merged = int(await self._redis.hlen(f"{self._ns}:alias"))
        if self._tags is not None:
            now = datetime.now(UTC)
            for start in range(0, len(survivors), 1_000):
                chunk = survivors[start : start + 1_000]
                await self._tags.after_fold(dict.fromkeys(chunk), now)
            report.tagged = len(survivors)
        report.fingerprints = await self._fingerprints()
        await self._raise_seq()
        await self._redis.delete(self._state)
        report.seconds = time.perf_counter() - started
        return report

    async def _unordered(self, window: dict[int, tuple[int, int]]) -> list[dict[str, Any]]:
        """Rows without a recorded order in the offset ``window`` of each partition."""
        where = " OR ".join(
            f"(src_partition = {p} AND src_offset > {lo} AND src_offset <= {hi})"
            for p, (lo, hi) in window.items()
            if hi > lo
        )
        return interleave(await self._select(f"resolution = 0 AND ({where})"))

    async def _ordered(self, after: int, upto: int) -> list[dict[str, Any]]:
        """Rows whose place in the order of resolution is in (after, upto], in that order."""
        rows = await self._select(f"resolution > {after} AND resolution <= {upto}")
        return sorted(rows, key=lambda r: r["resolution"])

    async def _select(self, where: str) -> list[dict[str, Any]]:
        found = await self._rows(
            f"SELECT {COLUMNS} FROM {self._db}.events WHERE {where}"  # noqa: S608 - ints only
        )
        return [dict(zip(NAMES, row, strict=True)) for row in found]

    async def _resolve(
        self, rows: list[dict[str, Any]], step: int
    ) -> tuple[list[Located], list[ResolvedEvent]]:
        """Resolve one step's rows in order; return them and the events to fold."""
        now = datetime.now(UTC)
        located, hints, seen = [], [], set()
        for row in rows:
            key = (row["src_partition"], row["src_offset"])
            if key in seen:  # the same offset stored twice (a redelivered batch)
                continue
            seen.add(key)
            located.append(Located(to_event(row), row["src_partition"], row["src_offset"]))
            hints.append(str(row["profile_id"]))
        outcomes = await self._identity.replay(located, hints, now) if located else []
        if os.environ.get(DIE_ENV) == str(step):
            os._exit(137)
        return located, [o.resolved for o in outcomes if o.kept and o.resolved.profile_id]

    async def _fold(self, resolved: list[ResolvedEvent]) -> set[str]:
        """Fold one step's resolved events; return the profiles they touched."""
        now = datetime.now(UTC)
        touched: set[str] = set()
        for start in range(0, len(resolved), 1_000):
            chunk = resolved[start : start + 1_000]
            applied = await self._profiles.apply(chunk, now)
            await self._profiles.settle(chunk)
            touched |= {a.profile_id for a in applied}
        return touched

    async def _survivors(self, touched: Iterable[str]) -> list[str]:
        alias = f"{self._ns}:alias"
        gone = {_text(m) for m in await self._redis.hkeys(alias)}  # merged-away ids
        return sorted((p for p in touched if p not in gone), key=int)

    async def _all(self) -> list[str]:
        return await profile_ids(self._redis, self._ns)

    async def _fingerprints(self) -> int:
        """The retry window's fingerprints of the events history received in it."""
        since = datetime.now(UTC) - timedelta(days=self._identity.window_days)
        rows = await self._rows(
            f"SELECT source, event_id, toUInt32(toRelativeDayNum(received_at)) "  # noqa: S608
            f"FROM {self._db}.events WHERE received_at >= %(since)s",
            {"since": since},
        )
        seen = [(str(s), str(e), int(d)) for s, e, d in rows]
        await self._identity.remember(seen, datetime.now(UTC))
        return len(rows)

    async def _raise_seq(self) -> None:
        """Profile ids issued later must not reuse one history knows."""
        rows = await self._rows(
            f"SELECT max(toUInt64OrZero(profile_id)) FROM {self._db}.events"  # noqa: S608
        )
        top = int(rows[0][0]) if rows else 0
        seq = f"{self._ns}:seq"
        current = int(await self._redis.get(seq) or 0)
        if top > current:
            await self._redis.set(seq, top)


async def profile_ids(redis: aioredis.Redis, namespace: str) -> list[str]:
    """Every stored profile id of a namespace (its ``pf:`` hashes)."""
    prefix = f"{namespace}:pf:"
    found = []
    async for key in redis.scan_iter(match=prefix + "*", count=1_000):
        found.append(_text(key)[len(prefix) :])
    return sorted(found, key=lambda p: int(p) if p.isdigit() else 0)


@dataclass
class Difference:
    """How two namespaces' states differ."""

    profiles: int = 0
    equal: int = 0
    only_left: list[str] = field(default_factory=list)
    only_right: list[str] = field(default_factory=list)
    different: dict[str, list[str]] = field(default_factory=dict)
    #: Merged-away ids whose survivor differs (or that only one side has merged): id ->
    #: [its survivor on the left, on the right] ("" where it is not merged).
    aliases: dict[str, list[str]] = field(default_factory=dict)

    @property
    def same(self) -> bool:
        """True when nothing differs."""
        return not (self.only_left or self.only_right or self.different or self.aliases)


def _comparable(stored: Stored) -> dict[str, Any]:
    doc = stored.profile.model_dump(mode="json")
    doc["tags"] = sorted(doc.get("tags") or ())
    doc["sealed"] = stored.sealed
    return doc


async def compare(
    redis: aioredis.Redis, left: tuple[str, ProfileStore], right: tuple[str, ProfileStore]
) -> Difference:
    """Compare two namespaces profile by profile (identifiers, traits, figures, tags) and
    their aliases."""
    (lns, lstore), (rns, rstore) = left, right
    lids, rids = await profile_ids(redis, lns), await profile_ids(redis, rns)
    out = Difference(profiles=len(lids))
    out.only_left = sorted(set(lids) - set(rids), key=int)
    out.only_right = sorted(set(rids) - set(lids), key=int)
    both = sorted(set(lids) & set(rids), key=int)
    for start in range(0, len(both), 500):
        chunk = both[start : start + 500]
        for pid, a, b in zip(
            chunk, await lstore.read(chunk), await rstore.read(chunk), strict=True
        ):
            if a is None or b is None:
                continue
            da, db = _comparable(a), _comparable(b)
            fields = sorted(k for k in da.keys() | db.keys() if da.get(k) != db.get(k))
            if fields:
                out.different[pid] = fields
            else:
                out.equal += 1
    la, ra = await _survivors_of(redis, lns), await _survivors_of(redis, rns)
    out.aliases = {
        _text(g): [_text(la.get(g, b"")), _text(ra.get(g, b""))]
        for g in sorted(la.keys() | ra.keys())
        if la.get(g) != ra.get(g)
    }
    return out


async def _survivors_of(redis: aioredis.Redis, namespace: str) -> dict[Any, Any]:
    """Every merged-away id -> its survivor (chains of aliases followed)."""
    alias = await redis.hgetall(f"{namespace}:alias")
    out = {}
    for gone in alias:
        into = alias[gone]
        for _ in range(64):
            if into not in alias:
                break
            into = alias[into]
        out[gone] = into
    return out
