"""Erasure of a person: every store, resumable, idempotent, with a receipt (docs/privacy.md).

An erasure is asked for (``Erasures.request``: the API or ``cdp privacy erase``), published
on ``cdp.privacy.erasures``, and carried out by the history worker, the one process that may
write ClickHouse (``Erasures.execute``). Its progress is kept in the Redis hash
``erasure:<id>``, one field per finished step, each step's counts written *before* the step
changes anything: a worker killed mid-way runs the unfinished step again on restart (every
step is idempotent) and still reports what the first attempt found, so the receipt is the
same as if nothing had happened. Steps:

1. ``plan``      the survivors of the asked profiles, every profile merged into them (their
                 explain logs), their identifiers; identifiers also held by someone else
                 (a family phone) are *shared* and stay that person's;
2. ``suppress``  the person's identifiers go on the suppression list (SHA-1 of the stored
                 ``type:value``, a blind index with field encryption) and their profile ids on
                 the erased set, in one transaction: from then on identity links none of them
                 and the fold changes none of those profiles;
3. ``redis``     profiles, graphs, logs, aliases, tag bits, indexes, segment members
                 (``privacy/erase.lua``);
4. ``keys``      the data keys of the identifiers (field encryption): every sealed copy in
                 Kafka's retained logs and in backups becomes unreadable;
5. ``clickhouse`` every table's rows of the profiles or carrying the identifiers (one
                 synchronous mutation per table: the rows are rewritten away, not hidden);
6. ``sweep``     Redis again, for what a batch in flight during the steps wrote;
7. ``receipt``   published on the topic (the record with state ``completed``), then audited.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog

from contracts.privacy import Erasure, ErasureState, Receipt, TopicFate
from contracts.topics import Topic
from identity.aliases import survivor
from identity.store import IdentityStore
from privacy.audit import Audit
from privacy.crypto import is_blind, kid_of
from privacy.keystore import KeyStore
from profiles.store import WATERMARK
from runtime.publisher import Publisher, Record
from sinks.clickhouse import mutate

log = structlog.get_logger()

STEPS = ("plan", "suppress", "count", "redis", "keys", "clickhouse", "sweep", "receipt")
#: Set to a step's name, the executor stops after finishing it and waits to be killed: how
#: the tests interrupt an erasure at each point (a fault injection, never set in production).
HOLD_ENV = "CDP_FAULT_ERASURE_HOLD_AFTER"

ClickHouseCall = Callable[[Callable[..., Any]], Awaitable[Any]]


def suppression_field(identifier: str) -> str:
    """The suppression list's field for a stored ``type:value`` (what resolve.lua computes)."""
    return hashlib.sha1(identifier.encode()).hexdigest()  # noqa: S324 - a lookup key, not a MAC


#: Per table: the rows of the erased profiles (``{p}``) or carrying their identifiers (``{h}``:
#: the hex SHA-1 of ``type:value``, as on the suppression list). The mutations ClickHouse keeps
#: in its metadata name hashes and profile ids, never a value.
TABLE_WHERE = {
    "events": "profile_id IN {p:Array(String)} OR "
    "arrayExists(x -> lower(hex(SHA1(x))) IN {h:Array(String)}, identifiers)",
    "profile_aliases": "profile_id IN {p:Array(String)} OR survivor IN {p:Array(String)}",
    "identity_ledger": "profile_id IN {p:Array(String)} OR other_profile_id IN {p:Array(String)} "
    "OR lower(hex(SHA1(identifier))) IN {h:Array(String)}",
    "profile_changes": "profile_id IN {p:Array(String)} OR hasAny(merged, {p:Array(String)})",
    "tag_changes": "profile_id IN {p:Array(String)}",
    "profile_snapshots": "profile_id IN {p:Array(String)}",
}


class HistoryEraser:
    """The ClickHouse side: count, then delete, a person's rows in every history table."""

    def __init__(self, client: Any, db: str) -> None:
        self._client = client
        self._db = db

    @staticmethod
    def _params(pids: list[str], hashes: list[str]) -> dict[str, Any]:
        return {"p": pids, "h": hashes}

    def count(self, pids: list[str], hashes: list[str]) -> dict[str, int]:
        """Rows per table that the erasure deletes."""
        params = self._params(pids, hashes)
        return {
            table: int(
                self._client.command(
                    f"SELECT count() FROM {self._db}.{table} WHERE {where}",  # noqa: S608 - fixed SQL
                    parameters=params,
                )
            )
            for table, where in TABLE_WHERE.items()
        }

    def delete(self, pids: list[str], hashes: list[str], tables: Sequence[str]) -> None:
        """Delete the rows in ``tables``, each applied before the next (``mutate``: on a disk
        short of room, ``StoreUnavailable`` after a bounded wait, and the erasure retries)."""
        params = self._params(pids, hashes)
        for table in tables:
            mutate(
                self._client,
                self._db,
                table,
                f"ALTER TABLE {self._db}.{table} DELETE WHERE {TABLE_WHERE[table]}",
                params,
            )


@dataclass(frozen=True)
class Plan:
    """Who is erased: profile ids, their own identifiers, identifiers shared with others."""

    pids: list[str]
    ids: list[str]
    shared: list[str]
    segments: list[str]

    def hashes(self) -> list[str]:
        """The person's own identifiers as hashes (rows carrying a shared one stay)."""
        return [suppression_field(i) for i in self.ids]


class FindError(LookupError):
    """The person could not be named unambiguously."""


class Erasures:
    """Ask for, carry out and report erasures."""

    def __init__(
        self,
        redis: aioredis.Redis,
        publisher: Publisher,
        topic: str,
        namespace: str,
        audit: Audit,
        identity: IdentityStore,
        keys: KeyStore | None = None,
        topics: Sequence[tuple[str, Topic]] = (),
    ) -> None:
        self._redis = redis
        self._publisher = publisher
        self._topic = topic
        self._ns = namespace
        self._audit = audit
        self._identity = identity
        self._keys = keys
        #: Deployed name and registry entry of every topic that holds people's records.
        self._topics = list(topics)
        self._script = redis.register_script(
            WATERMARK.read_text() + (Path(__file__).parent / "erase.lua").read_text()
        )

    def _key(self, erasure_id: str) -> str:
        return f"{self._ns}:erasure:{erasure_id}"

    # -- asking -----------------------------------------------------------------------------

    async def exists(self, profile_id: str) -> str | None:
        """The survivor of a profile id if the profile is known, else None."""
        pid = await survivor(self._redis, self._ns, profile_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(f"{self._ns}:p:{pid}:g", f"{self._ns}:pf:{pid}")
            (count,) = await pipe.execute()
        return pid if count else None

    async def request(
        self,
        found_by: str,
        pids: list[str],
        actor: str,
        origin: str,
        reference: str | None = None,
        approved_by: str | None = None,
    ) -> Erasure:
        """Record and publish an erasure of the profiles ``pids`` (the executor carries it out)."""
        erasure = Erasure(
            id=uuid.uuid4().hex,
            state=ErasureState.REQUESTED,
            requested_by=actor,
            approved_by=approved_by,
            requested_at=datetime.now(UTC),
            found_by=found_by,
            profile_ids=sorted(set(pids), key=int),
            reference=reference,
        )
        body = erasure.model_dump_json()
        await self._redis.hset(self._key(erasure.id), "record", body)
        await self._audit.record(
            actor,
            "erasure.requested",
            erasure.id,
            subjects=1,
            origin=origin,
            found_by=found_by,
            approved_by=approved_by or "",
        )
        await self._publisher.publish([Record(self._topic, erasure.id.encode(), body.encode())])
        return erasure

    async def get(self, erasure_id: str) -> Erasure | None:
        """The erasure's latest record (its receipt once completed)."""
        raw = await self._redis.hget(self._key(erasure_id), "record")
        return Erasure.model_validate_json(raw) if raw else None

    async def wait(self, erasure_id: str, timeout_s: float) -> Erasure | None:
        """Wait up to ``timeout_s`` for the erasure to complete; return its latest record."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            erasure = await self.get(erasure_id)
            if erasure is None or erasure.state is ErasureState.COMPLETED:
                return erasure
            if loop.time() >= deadline:
                return erasure
            await asyncio.sleep(0.1)

    # -- carrying out -----------------------------------------------------------------------

    async def execute(
        self,
        erasure: Erasure,
        clickhouse: ClickHouseCall | None,
        erased: Callable[[list[str]], Any] | None = None,
        settle_s: float = 0.0,
    ) -> Erasure:
        """Carry out an erasure, resuming after the last finished step; return the receipt.

        ``clickhouse`` runs a function with the history tables' ``HistoryEraser`` (on the
        thread that owns ClickHouse); None where there is no ClickHouse (tables then stay).
        ``erased`` tells this process's history sinks the erased profile ids at once;
        ``settle_s`` is how long to wait after the suppression before deleting rows, so that
        history writers in other processes have re-read the erased set (they do every
        second) and their batches in flight are stored before the rows are deleted.
        """
        key = self._key(erasure.id)
        done = {_text(k): v for k, v in (await self._redis.hgetall(key)).items()}
        if "receipt" in done:
            await self._redis.hdel(key, "plan")
            return Erasure.model_validate_json(done["record"])
        if "record" not in done:  # Redis lost it, or it was asked elsewhere: the topic says
            await self._redis.hset(key, "record", erasure.model_dump_json())

        async def step(name: str, work: Callable[[], Awaitable[Any]]) -> Any:
            if name in done:
                return orjson.loads(done[name])
            value = await work()
            encoded = orjson.dumps(value)
            await self._redis.hset(key, name, encoded)
            done[name] = encoded
            log.info("erasure.step", erasure=erasure.id, step=name)
            await _hold_after(name)
            return value

        plan = Plan(**await step("plan", lambda: self._plan(erasure)))
        suppressed_at = await step("suppress", lambda: self._suppress(plan))
        if erased is not None:
            erased(plan.pids)
        if "clickhouse" not in done and settle_s > 0:
            await asyncio.sleep(settle_s)
        # Everything is counted before anything is deleted: a rerun reports the same.
        counts = await step("count", lambda: self._count(plan, clickhouse))
        removed, shredded, rows = counts["redis"], counts["keys"], counts["clickhouse"]
        await step("redis", lambda: self._lua(plan, "delete"))
        await step("keys", lambda: self._shred(plan))
        await step("clickhouse", lambda: self._erase_history(plan, rows, clickhouse))
        finished = await step("sweep", lambda: self._sweep(plan))
        receipt = Receipt(
            completed_at=datetime.fromtimestamp(finished / 1000, UTC),
            profiles=plan.pids,
            identifiers=len(plan.ids),
            shared_identifiers_kept=len(plan.shared),
            redis=removed,
            clickhouse=rows,
            keys_shredded=shredded,
            kafka=self._fates(suppressed_at, shredded > 0),
        )
        completed = erasure.model_copy(update={"state": ErasureState.COMPLETED, "receipt": receipt})
        body = completed.model_dump_json()

        async def publish() -> int:
            await self._redis.hset(key, "record", body)
            await self._publisher.publish([Record(self._topic, erasure.id.encode(), body.encode())])
            await self._audit.record(
                "system",
                "erasure.completed",
                erasure.id,
                subjects=1,
                profiles=len(plan.pids),
                identifiers=len(plan.ids),
                rows=sum(rows.values()),
                keys_shredded=shredded,
            )
            return 1

        await step("receipt", publish)
        # The plan names the person's identifiers: it goes once the receipt is out.
        await self._redis.hdel(key, "plan")
        return completed

    async def _plan(self, erasure: Erasure) -> dict[str, Any]:
        ns = self._ns
        survivors = sorted(
            {await survivor(self._redis, ns, p) for p in erasure.profile_ids}, key=int
        )
        pids: set[str] = set(survivors)
        ids: set[str] = set()
        for pid in survivors:
            pids.update(await self._identity.merged(pid))
            fields = await self._redis.hkeys(f"{ns}:p:{pid}:g")
            ids.update(_text(f)[1:] for f in fields if _text(f).startswith("="))
            ids.update(_text(m) for m in await self._redis.smembers(f"{ns}:p:{pid}:ids"))
        shared = set()
        for ident in ids:
            holders = {_text(m) for m in await self._redis.smembers(f"{ns}:i:{ident}")}
            others = {await survivor(self._redis, ns, h) for h in holders - pids} - pids
            if others:
                shared.add(ident)
        segments = sorted(
            [_text(k) async for k in self._redis.scan_iter(match=f"{ns}:seg:members:*")]
        )
        segments = [s for s in segments if not s.endswith(":next")]
        return {
            "pids": sorted(pids, key=int),
            "ids": sorted(ids - shared),
            "shared": sorted(shared),
            "segments": segments,
        }

    async def _suppress(self, plan: Plan) -> int:
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        async with self._redis.pipeline(transaction=True) as pipe:
            if plan.ids:
                pipe.hset(
                    f"{self._ns}:suppressed",
                    mapping={suppression_field(i): now_ms for i in plan.ids},
                )
            pipe.sadd(f"{self._ns}:erased", *plan.pids)
            pipe.incr(f"{self._ns}:erased:version")
            await pipe.execute()
        return now_ms

    async def _lua(self, plan: Plan, mode: str) -> dict[str, int]:
        body = {"pids": plan.pids, "ids": [*plan.ids, *plan.shared], "segments": plan.segments}
        raw = await self._script(args=[self._ns, json.dumps(body), mode])
        return {k: int(v) for k, v in json.loads(raw).items()}

    async def _count(self, plan: Plan, clickhouse: ClickHouseCall | None) -> dict[str, Any]:
        kids = self._kids(plan)
        existing = await self._keys.held(kids) if self._keys is not None else set()
        rows: dict[str, int] = {}
        if clickhouse is not None:
            hashes = plan.hashes()
            rows = await clickhouse(lambda h: h.count(plan.pids, hashes))
        return {
            "redis": await self._lua(plan, "count"),
            "keys": len(existing),
            "clickhouse": rows,
        }

    @staticmethod
    def _kids(plan: Plan) -> list[str]:
        return sorted({kid_of(_value(i)) for i in plan.ids if is_blind(_value(i))})

    async def _shred(self, plan: Plan) -> int:
        if self._keys is None:
            return 0
        return await self._keys.shred(self._kids(plan))

    @staticmethod
    async def _erase_history(
        plan: Plan, rows: dict[str, int], clickhouse: ClickHouseCall | None
    ) -> int:
        touched = [t for t, n in rows.items() if n]
        if clickhouse is not None and touched:
            hashes = plan.hashes()
            await clickhouse(lambda h: h.delete(plan.pids, hashes, touched))
        return len(touched)

    async def _sweep(self, plan: Plan) -> int:
        await self._lua(plan, "delete")
        return int(datetime.now(UTC).timestamp() * 1000)

    def _fates(self, suppressed_ms: int, shredded: bool) -> list[TopicFate]:
        at = datetime.fromtimestamp(suppressed_ms / 1000, UTC)
        fates = []
        for name, topic in self._topics:
            if topic.configs.get("cleanup.policy") == "compact":
                fates.append(TopicFate(topic=name, fate="tombstoned"))
                continue
            retention = int(topic.configs.get("retention.ms", str(7 * 24 * 3600 * 1000)))
            gone_by = None if retention < 0 else at + timedelta(milliseconds=retention)
            sealed = shredded and topic.name != "cdp.events.deadletter"
            fates.append(
                TopicFate(
                    topic=name, fate="unreadable" if sealed else "until_retention", gone_by=gone_by
                )
            )
        return fates


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _value(identifier: str) -> str:
    return identifier.partition(":")[2]


async def _hold_after(step: str) -> None:
    if os.environ.get(HOLD_ENV) == step:
        log.warning("erasure.held", after=step)
        await asyncio.Event().wait()
