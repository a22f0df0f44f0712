"""Split a profile: undo a wrong merge, or detach identifiers into a person of their own.

A split rebuilds the people concerned from their event history, as if the merge had never
happened: the events of the profile and of every profile merged into it are read from
history (after waiting until history holds every event the profile folded), and replayed
in the recorded order of resolution into a scratch namespace with the same scripts as the
stream (deploy/rebuild.py). What keeps the two apart is a mark, a unique value of the split's
own in each side's identity graph ("!split/<id>" = a or b): two profiles with different
marks never merge (rule ``split``), in the replay and in every event after it.

The result replaces the group in the live namespace in one script (identity/swap.lua), unless
the group folded another event meanwhile, in which case the split is computed again. Then the
tags of the new profiles are evaluated; the profile changes (tags gained and lost, live
segment enters and exits) and a ``split`` ledger record are published, and history follows:
events are attributed to the profile they now belong to, aliases and tombstones of the group
are replaced by the split's, and snapshots are taken again.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from contracts.identity import Decision, LedgerEntry, Rule
from contracts.profiles import ProfileChange
from contracts.topics import IDENTITY_MERGES, PROFILES_CHANGES
from deploy.rebuild import COLUMNS as EVENT_READ
from deploy.rebuild import NAMES, _text, interleave, to_event
from identity.normalize import BadIdentifier
from identity.rules import IdentityRules
from identity.scripts import GRAPH, load
from identity.store import IdentityStore, Located
from profiles.fold import FoldRules
from profiles.store import WATERMARK, ProfileStore
from runtime.auth import Token
from runtime.publisher import Record
from sinks.history import EVENT_COLUMNS, TOMBSTONE_VERSION
from tagging.changes import change_records
from tagging.store import TagChange, TagStore

_BITS = Path(__file__).parent.parent / "tagging" / "bits.lua"
_SWAP = Path(__file__).parent.parent / "identity" / "swap.lua"
#: Fault hook for tests: before it deletes the group's tombstones, the split waits until
#: history has stored the new profiles' snapshots (the interleaving in which a tombstone,
#: the newest version, superseded a split profile's snapshot and left it without any).
SNAPSHOT_FIRST_ENV = "CDP_FAULT_SPLIT_SNAPSHOT_FIRST"


class SplitError(Exception):
    """A split that cannot be done as asked; ``field`` names what was wrong."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


@dataclass
class SplitResult:
    """What a split did."""

    id: str
    profile_id: str
    #: The profiles the group is now, each with its identifiers and event count.
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: int = 0
    #: Events of history now attributed to another profile than before.
    moved: int = 0
    attempts: int = 0
    seconds: float = 0.0


Query = Callable[[str, dict[str, Any]], Awaitable[list[Any]]]
Command = Callable[[str], Awaitable[Any]]
Insert = Callable[[str, list[list[Any]], list[str], str], Awaitable[Any]]


def clickhouse_io(client: Any, db: str) -> tuple[Query, Command, Insert]:
    """A ClickHouse client's read, command and insert, off the event loop (chDB has no async
    client), for a ``Splitter``."""

    async def query(sql: str, params: dict[str, Any]) -> list[Any]:
        found = await asyncio.to_thread(client.query, sql, parameters=params)
        return list(found.result_rows)

    async def command(sql: str) -> Any:
        return await asyncio.to_thread(client.command, sql)

    async def insert(table: str, rows: list[list[Any]], columns: list[str], token: str) -> Any:
        return await asyncio.to_thread(
            client.insert,
            f"{db}.{table}",
            rows,
            column_names=columns,
            settings={"insert_deduplication_token": token},
        )

    return query, command, insert


class Splitter:
    """Splits in the live namespace ``ns``; history through ``query``/``command``/``insert``
    (the process that may write ClickHouse); records through ``publish``."""

    def __init__(
        self,
        redis: aioredis.Redis,
        ns: str,
        identity_rules: IdentityRules,
        fold_rules: FoldRules,
        tags: TagStore | None,
        db: str,
        query: Query,
        command: Command,
        insert: Insert,
        publish: Callable[[list[Record]], Awaitable[Any]],
        topic: Callable[[str], str],
        membership: Callable[[list[TagChange], datetime], Awaitable[list[Record]]] | None = None,
        history_wait_s: float = 30.0,
    ) -> None:
        self._redis = redis
        self._ns = ns
        self._identity_rules = identity_rules
        self._fold_rules = fold_rules
        self._identity = IdentityStore(redis, identity_rules, ns)
        self._profiles = ProfileStore(redis, fold_rules, ns)
        self._tags = tags
        self._db = db
        self._query = query
        self._command = command
        self._insert = insert
        self._publish = publish
        self._topic = topic
        self._membership = membership
        self._wait_s = history_wait_s
        self._swap = redis.register_script(load(_SWAP, [GRAPH, _BITS, WATERMARK]))

    async def split(
        self, profile_id: str, merged: str | None = None, detach: list[str] | None = None
    ) -> SplitResult:
        """Undo the merge of ``merged`` into ``profile_id``'s person, or detach ``detach``
        (stored identifiers, ``type:value``) from it."""
        if bool(merged) == bool(detach):
            raise SplitError(422, "merged", "give either a merged profile id or identifiers")
        started = time.perf_counter()
        split_id = uuid.uuid4().hex[:12]
        survivor = await self._identity.survivor(profile_id)
        if not await self._redis.exists(f"{self._ns}:pf:{survivor}"):
            raise SplitError(404, "profile_id", f"no profile {profile_id}")
        result = SplitResult(split_id, survivor)
        for attempt in range(1, 6):
            result.attempts = attempt
            # Read again on every attempt: another profile may have merged in meanwhile.
            group = [survivor, *await self._identity.merged(survivor)]
            marks = await self._marks(split_id, survivor, group, merged, detach or [])
            wm = await self._wait_for_history(group)
            rows = await self._history(group)
            scratch = f"{self._ns}:split:{split_id}"
            try:
                outcome = await self._replay(scratch, rows, marks)
                before = await self._tags_of(group)
                version = await self._version(group)
                held = [
                    _text(k) async for k in self._redis.scan_iter(match=f"{self._ns}:ev:held:*")
                ]
                plan = {
                    "old": group,
                    "new": outcome["survivors"],
                    "gone": outcome["aliases"] or {},
                    "wm": wm,
                    "version": version,
                    "held": held,
                }
                answer = _text(
                    await self._swap(args=[self._ns, scratch, orjson.dumps(plan).decode()])
                )
            finally:
                await _drop(self._redis, scratch)
            if answer == "ok":
                break
            await asyncio.sleep(0.1 * attempt)
        else:
            raise SplitError(409, "profile_id", "the profile kept changing; try again")
        now = datetime.now(UTC)
        new = outcome["survivors"]
        await self._explain(split_id, new, marks, now)
        records = await self._records(split_id, survivor, new, before, outcome, now)
        if os.environ.get(SNAPSHOT_FIRST_ENV):
            await self._until_snapshotted(new)
        result.moved = await self._rewrite_history(group, rows, outcome, split_id)
        # Snapshot the new profiles again, now that no tombstone hides them: the swap marked
        # them changed, but a snapshot stored before the tombstones' deletion was superseded
        # by the tombstone (the newest version) and deleted, leaving the profile unsnapshotted.
        await self._redis.sadd(f"{self._ns}:dirty", *new)
        await self._publish(records)
        result.events = len(rows)
        for pid in new:
            stored = (await self._profiles.read([pid]))[0]
            if stored is not None:
                result.profiles[pid] = {
                    "identifiers": stored.profile.identifiers,
                    "events": stored.profile.events,
                }
        result.seconds = time.perf_counter() - started
        return result

    async def _until_snapshotted(self, pids: list[str], timeout_s: float = 60.0) -> None:
        """Wait until no change mark of ``pids`` is left (history stored their snapshots)."""
        deadline = time.monotonic() + timeout_s
        sets = [f"{self._ns}:{name}" for name in ("dirty", "dirty:aging", "dirty:taking")]
        while time.monotonic() < deadline:
            marked = [await self._redis.smismember(key, pids) for key in sets]
            if not any(any(m) for m in marked):
                return
            await asyncio.sleep(0.05)

    async def _marks(
        self,
        split_id: str,
        survivor: str,
        group: list[str],
        merged: str | None,
        detach: list[str],
    ) -> dict[str, str]:
        mark = f"split/{split_id}"
        if merged:
            if merged not in group or merged == survivor:
                raise SplitError(422, "merged", f"profile {merged} was not merged into {survivor}")
            into = await self._redis.hget(f"{self._ns}:alias", merged)
            keep = _text(into) if into else survivor
            return {f"p:{keep}": f"{mark}=a", f"p:{merged}": f"{mark}=b"}
        held = set(await self._identity.identifiers(survivor))
        missing = [i for i in detach if i not in held]
        if missing:
            raise SplitError(
                422, "identifiers", f"the profile does not hold {len(missing)} of them"
            )
        if held <= set(detach):
            raise SplitError(422, "identifiers", "that is every identifier of the profile")
        out = {f"p:{pid}": f"{mark}=a" for pid in group}
        out.update({f"i:{i}": f"{mark}=b" for i in detach})
        return out

    async def _wait_for_history(self, group: list[str]) -> dict[str, dict[str, int]]:
        """The group's fold watermarks, once history holds the event at each of them."""
        deadline = time.monotonic() + self._wait_s
        while True:
            wm: dict[str, dict[str, int]] = {}
            pairs = []
            for pid in group:
                marks = await self._profiles.watermarks(pid)
                if marks:
                    wm[pid] = marks
                    pairs += [f"({int(p)},{o})" for p, o in marks.items()]
            if not pairs:
                return wm
            sql = (
                f"SELECT count() FROM (SELECT DISTINCT src_partition, src_offset "  # noqa: S608
                f"FROM {self._db}.events WHERE (src_partition, src_offset) IN "
                f"({','.join(pairs)}))"
            )
            found = int((await self._query(sql, {}))[0][0])
            if found >= len(set(pairs)):
                return wm
            if time.monotonic() > deadline:
                raise SplitError(
                    503, "profile_id", "history is behind the profile: try again shortly"
                )
            await asyncio.sleep(0.2)

    async def _history(self, group: list[str]) -> list[dict[str, Any]]:
        rows = await self._query(
            f"SELECT {EVENT_READ} FROM {self._db}.events "  # noqa: S608
            "WHERE profile_id IN %(group)s",
            {"group": tuple(group)},
        )
        found = [dict(zip(NAMES, row, strict=True)) for row in rows]
        unique = {(r["src_partition"], r["src_offset"]): r for r in found}
        legacy = [r for r in unique.values() if not r["resolution"]]
        ordered = sorted((r for r in unique.values() if r["resolution"]), key=_resolution)
        return interleave(legacy) + ordered

    async def _replay(
        self, scratch: str, rows: list[dict[str, Any]], marks: dict[str, str]
    ) -> dict[str, Any]:
        await _drop(self._redis, scratch)
        await self._redis.set(f"{scratch}:graph:v2", "1")
        await self._redis.hset(f"{scratch}:apart", mapping=marks)  # type: ignore[arg-type]
        identity = IdentityStore(self._redis, self._identity_rules, scratch)
        profiles = ProfileStore(self._redis, self._fold_rules, scratch)
        now = datetime.now(UTC)
        located = [Located(to_event(r), r["src_partition"], r["src_offset"]) for r in rows]
        hints = [str(r["profile_id"]) for r in rows]
        outcomes = await identity.replay(located, hints, now, ids_from=self._ns)
        resolved = [o.resolved for o in outcomes if o.kept and o.resolved.profile_id]
        await profiles.apply(resolved, now)
        await profiles.settle(resolved)
        aliases = {
            _text(k): _text(v) for k, v in (await self._redis.hgetall(f"{scratch}:alias")).items()
        }
        owner = {}
        for r, o in zip(rows, outcomes, strict=True):
            pid = o.resolved.profile_id
            if pid:
                owner[(r["src_partition"], r["src_offset"])] = await identity.survivor(pid)
        survivors = sorted({p for p in owner.values()}, key=int)
        return {"survivors": survivors, "aliases": aliases, "owner": owner}

    async def _tags_of(self, group: list[str]) -> dict[str, str]:
        out = {}
        for pid in group:
            tags = await self._redis.hget(f"{self._ns}:pf:{pid}", "_tg")
            if tags:
                out[pid] = _text(tags)
        return out

    async def _version(self, group: list[str]) -> int:
        top = 0
        for pid in group:
            v = await self._redis.hget(f"{self._ns}:pf:{pid}", "_v")
            top = max(top, int(v or 0))
        return top + 1

    async def _explain(
        self, split_id: str, new: list[str], marks: dict[str, str], now: datetime
    ) -> None:
        """Each new profile's explain log tells the split and whom it keeps it apart from."""
        pipe = self._redis.pipeline(transaction=False)
        for pid in new:
            others = [p for p in new if p != pid]
            entry = {
                "decision": "split",
                "rule": "split",
                "other": others[0] if len(others) == 1 else others,
                "id": f"split/{split_id}",
                "event": f"split:{split_id}",
                "at": now.isoformat(),
            }
            pipe.rpush(f"{self._ns}:p:{pid}:log", orjson.dumps(entry))
        await pipe.execute()

    async def _records(
        self,
        split_id: str,
        survivor: str,
        new: list[str],
        before: dict[str, str],
        outcome: dict[str, Any],
        now: datetime,
    ) -> list[Record]:
        tagged: list[TagChange] = []
        if self._tags is not None:
            await self._tags.after_fold(dict.fromkeys(new), now)
            tagged = await self._tags.since({pid: before.get(pid, "") for pid in new})
            gone = [(pid, tags) for pid, tags in before.items() if pid not in new]
            tagged += self._tags.departed(gone)
        by_pid = {t.profile_id: t for t in tagged}
        changes = [
            ProfileChange(
                profile_id=pid,
                event_id=f"split:{split_id}",
                changed=["split"],
                tags_added=by_pid[pid].added if pid in by_pid else [],
                tags_removed=by_pid[pid].removed if pid in by_pid else [],
                at=now,
            )
            for pid in new
        ]
        ledger = [
            LedgerEntry(
                decision=Decision.SPLIT,
                rule=Rule.SPLIT,
                profile_id=survivor,
                other_profile_id=pid,
                identifier=f"split/{split_id}",
                event_id=f"split:{split_id}",
                at=now,
            )
            for pid in new
            if pid != survivor
        ]
        ledger += [
            LedgerEntry(
                decision=Decision.MERGED,
                rule=Rule.SHARED_IDENTIFIER,
                profile_id=into,
                other_profile_id=gone,
                identifier=f"split/{split_id}",
                event_id=f"split:{split_id}",
                at=now,
            )
            for gone, into in (outcome["aliases"] or {}).items()
        ]
        merges = self._topic(IDENTITY_MERGES.name)
        out = [Record(merges, e.profile_id.encode(), e.model_dump_json().encode()) for e in ledger]
        out += change_records(self._topic(PROFILES_CHANGES.name), changes)
        if self._membership is not None and tagged:
            out += await self._membership(tagged, now)
        return out

    async def _rewrite_history(
        self, group: list[str], rows: list[dict[str, Any]], outcome: dict[str, Any], split_id: str
    ) -> int:
        """Attribute the group's events to their new profiles; replace its aliases and
        tombstones (the split's merges are published as ledger records, which history
        stores as aliases and tombstones)."""
        owner = outcome["owner"]
        moved = [
            r
            for r in rows
            if owner.get((r["src_partition"], r["src_offset"]), r["profile_id"]) != r["profile_id"]
        ]
        ids = ",".join(f"'{g}'" for g in group if g.isdigit())
        db = self._db
        sync = "SETTINGS mutations_sync = 2"
        await self._command(
            f"ALTER TABLE {db}.profile_aliases DELETE WHERE profile_id IN ({ids}) {sync}"
        )
        await self._command(
            f"ALTER TABLE {db}.profile_snapshots DELETE WHERE profile_id IN ({ids}) "
            f"AND version = {TOMBSTONE_VERSION} {sync}"
        )
        if not moved:
            return 0
        keys = ",".join(f"({r['src_partition']},{r['src_offset']})" for r in moved)
        full = await self._query(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM {db}.events "  # noqa: S608
            f"WHERE profile_id IN ({ids}) AND (src_partition, src_offset) IN ({keys})",
            {},
        )
        await self._command(
            f"ALTER TABLE {db}.events DELETE WHERE profile_id IN ({ids}) "
            f"AND (src_partition, src_offset) IN ({keys}) {sync}"
        )
        at_pid = EVENT_COLUMNS.index("profile_id")
        at_part, at_off = EVENT_COLUMNS.index("src_partition"), EVENT_COLUMNS.index("src_offset")
        fresh = []
        for row in full:
            values = list(row)
            values[at_pid] = owner[(values[at_part], values[at_off])]
            fresh.append(values)
        await self._insert("events", fresh, list(EVENT_COLUMNS), f"split:{split_id}")
        return len({(r["src_partition"], r["src_offset"]) for r in moved})


def _resolution(row: dict[str, Any]) -> int:
    return int(row["resolution"])


async def _drop(redis: aioredis.Redis, namespace: str) -> None:
    keys = [k async for k in redis.scan_iter(match=f"{namespace}:*", count=1_000)]
    for start in range(0, len(keys), 500):
        await redis.delete(*keys[start : start + 500])


class SplitRequest(BaseModel):
    """``POST /v1/identity/splits``: undo a merge, or detach identifiers."""

    model_config = ConfigDict(extra="forbid")

    profile_id: str = Field(min_length=1, max_length=32)
    #: A profile id merged into ``profile_id``'s person: undo that merge.
    merged: str | None = Field(default=None, min_length=1, max_length=32)
    #: Identifiers to detach into a person of their own (as sent: normalised here).
    identifiers: list[dict[str, str]] = Field(default_factory=list, max_length=64)
    #: Why (a ticket number); audited, never personal data.
    reason: str | None = Field(default=None, max_length=200)


def router(
    splitter: Callable[[], Splitter],
    writer: Any,
    audited: Any,
    stored: Callable[[str, str], str],
) -> APIRouter:
    """The split route. ``stored(type, value)`` gives an identifier as the graph stores it
    (raises ``BadIdentifier``)."""
    api = APIRouter()
    allowed = Depends(writer)

    @api.post(
        "/v1/identity/splits",
        summary="Split a profile: undo a merge, or detach identifiers into a new person",
    )
    async def split(body: SplitRequest, request: Request, token: Token = allowed) -> Any:
        detach = []
        for n, ident in enumerate(body.identifiers):
            try:
                detach.append(stored(ident.get("type", ""), ident.get("value", "")))
            except BadIdentifier as exc:
                raise HTTPException(
                    422,
                    {"code": "invalid", "message": str(exc), "field": f"identifiers.{n}"},
                ) from exc
        try:
            done = await splitter().split(body.profile_id, body.merged, detach)
        except SplitError as exc:
            raise HTTPException(
                exc.status, {"code": "split_refused", "message": exc.message, "field": exc.field}
            ) from exc
        await audited.now(
            token,
            request,
            "identity.split",
            done.profile_id,
            len(done.profiles),
            split=done.id,
            moved=done.moved,
            reason=body.reason or "",
        )
        return asdict(done)

    return api
