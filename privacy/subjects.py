"""Access requests: everything held about one person, streamed; and their consent ledger.

The export reads the profile, identity graph and explain log and saved-segment memberships
from Redis, and the consent history and every event from ClickHouse (the event history is
the source of truth of what the person sent), in pages, so a person with years of history is
streamed, never held in memory. Lines are JSON objects with a ``kind``: ``profile``,
``identity``, ``segments``, ``consent`` (one per purpose change, oldest first) and ``event``
(oldest first).
"""

from __future__ import annotations

import asyncio
import io
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import orjson
import redis.asyncio as aioredis

from identity.store import IdentityStore
from profiles.store import ProfileStore

#: Events per ClickHouse page of an export.
PAGE = 2_000

Reveal = Callable[[Any, dict[str, str] | None], Awaitable[Any]]

EVENT_COLUMNS = (
    "event_id, profile_id, type, name, channel, source, identifiers, timestamp, received_at, "
    "traits, properties, consent"
)


def consent_changes(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """The consent ledger from events carrying consent (oldest first): one entry per
    purpose granted or withdrawn, with its evidence (the event that said it)."""
    out = []
    for event_id, type_, channel, source, at, received_at, consent in rows:
        for purpose, granted in sorted(orjson.loads(consent).items()):
            out.append(
                {
                    "purpose": purpose,
                    "granted": bool(granted),
                    "at": _iso(at),
                    "source": source,
                    "channel": channel,
                    "evidence": {
                        "event_id": event_id,
                        "type": type_,
                        "received_at": _iso(received_at),
                    },
                }
            )
    return out


def current_consent(changes: list[dict[str, Any]]) -> dict[str, bool]:
    """The state the ledger ends in: the latest change per purpose (by event time)."""
    state: dict[str, tuple[str, bool]] = {}
    for c in changes:
        if c["purpose"] not in state or c["at"] >= state[c["purpose"]][0]:
            state[c["purpose"]] = (c["at"], c["granted"])
    return {p: granted for p, (_, granted) in sorted(state.items())}


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _event(row: tuple[Any, ...]) -> dict[str, Any]:
    """A history row of ``EVENT_COLUMNS`` as a JSON-ready event."""
    event = dict(zip([c.strip() for c in EVENT_COLUMNS.split(",")], row, strict=True))
    for field in ("traits", "properties", "consent"):
        event[field] = orjson.loads(event[field])
    return {k: _iso(v) for k, v in event.items()}


class Subjects:
    """Read everything held about a person."""

    def __init__(
        self,
        redis: aioredis.Redis,
        namespace: str,
        profiles: ProfileStore,
        identity: IdentityStore,
        clickhouse: Callable[[], Any],
        database: str,
    ) -> None:
        self._redis = redis
        self._ns = namespace
        self._profiles = profiles
        self._identity = identity
        self._clickhouse = clickhouse
        self._db = database

    async def _query(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        client = await asyncio.to_thread(self._clickhouse)
        result = await asyncio.to_thread(client.query, sql, parameters=params)
        return list(result.result_rows)

    async def profile_ids(self, pid: str) -> list[str]:
        """The person's profile id and every id merged into it (history rows keep the id
        their event was resolved to)."""
        return sorted({pid, *await self._identity.merged(pid)}, key=int)

    async def consents(self, pid: str) -> list[dict[str, Any]]:
        """The person's consent ledger, oldest first."""
        rows = await self._query(
            f"SELECT event_id, type, channel, source, timestamp, received_at, consent "  # noqa: S608
            f"FROM {self._db}.events FINAL WHERE profile_id IN {{p:Array(String)}} "
            "AND consent != '{}' ORDER BY timestamp, event_id",
            {"p": await self.profile_ids(pid)},
        )
        return consent_changes(rows)

    async def timeline(
        self, pid: str, types: list[str], channels: list[str], limit: int
    ) -> list[dict[str, Any]]:
        """The person's latest ``limit`` events, newest first, of ``types`` and ``channels``
        (all when empty); values as stored (sealed ones still sealed)."""
        where = "profile_id IN {p:Array(String)}"
        params: dict[str, Any] = {"p": await self.profile_ids(pid), "n": limit}
        if types:
            where += " AND type IN {t:Array(String)}"
            params["t"] = types
        if channels:
            where += " AND channel IN {c:Array(String)}"
            params["c"] = channels
        rows = await self._query(
            f"SELECT {EVENT_COLUMNS} FROM {self._db}.events FINAL WHERE {where} "  # noqa: S608
            "ORDER BY timestamp DESC, event_id DESC LIMIT {n:UInt32}",
            params,
        )
        return [_event(row) for row in rows]

    async def lines(self, pid: str, reveal: Reveal) -> AsyncIterator[dict[str, Any]]:
        """Every record held about the person, as export lines (values opened by ``reveal``)."""
        ids = await self._identity.sealed(pid)
        found = await self._profiles.get(pid)
        profile = found.model_dump(mode="json") if found else {"profile_id": pid}
        yield {"kind": "profile", **await reveal(profile, ids)}
        identity = {
            "identifiers": await self._identity.identifiers(pid),
            "merged_profiles": await self._identity.merged(pid),
            "history": await self._identity.history(pid),
        }
        yield {"kind": "identity", **await reveal(identity, ids)}
        segments = []
        async for key in self._redis.scan_iter(match=f"{self._ns}:seg:members:*"):
            name = key.decode() if isinstance(key, bytes) else key
            if not name.endswith(":next") and await self._redis.sismember(name, pid):
                segments.append(name.rsplit(":", 1)[1])
        yield {"kind": "segments", "saved": sorted(segments)}
        for change in await self.consents(pid):
            yield {"kind": "consent", **change}
        pids = await self.profile_ids(pid)
        after: tuple[Any, str] | None = None
        while True:
            where = "profile_id IN {p:Array(String)}"
            params: dict[str, Any] = {"p": pids, "n": PAGE}
            if after is not None:
                where += " AND (timestamp, event_id) > ({t:DateTime64(3, 'UTC')}, {e:String})"
                params |= {"t": after[0], "e": after[1]}
            rows = await self._query(
                f"SELECT {EVENT_COLUMNS} FROM {self._db}.events FINAL WHERE {where} "  # noqa: S608
                "ORDER BY timestamp, event_id LIMIT {n:UInt32}",
                params,
            )
            for row in rows:
                yield {"kind": "event", **await reveal(_event(row), ids)}
            if len(rows) < PAGE:
                break
            after = (rows[-1][7], rows[-1][0])


def jsonl(lines: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Export lines as JSON lines."""

    async def out() -> AsyncIterator[bytes]:
        async for line in lines:
            yield orjson.dumps(line) + b"\n"

    return out()


class _Sink(io.RawIOBase):
    """An unseekable stream a ZIP is written to, emptied after each entry is written."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out, self.chunks = b"".join(self.chunks), []
        return out


def zipped(lines: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Export lines as a ZIP: one JSON-lines file per kind (``events.jsonl``...), streamed."""

    async def out() -> AsyncIterator[bytes]:
        sink = _Sink()
        archive = zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED)
        current: str | None = None
        entry: Any = None
        async for line in lines:
            kind = str(line["kind"])
            if kind != current:
                if entry is not None:
                    entry.close()
                current = kind
                entry = archive.open(f"{kind}.jsonl", "w")
            entry.write(orjson.dumps(line) + b"\n")
            chunk = sink.take()
            if chunk:
                yield chunk
        if entry is not None:
            entry.close()
        archive.close()
        yield sink.take()

    return out()
