"""Segment operations: count, preview, export, explain; live or on the history.

A tag-only definition is *live*: answered from the Redis tag index (segments/live.py). Any
other is compiled to SQL and answered by ClickHouse (segments/sql.py). Consent for the
segment's purpose is enforced in both, unless an admin asks otherwise.
"""

from __future__ import annotations

import asyncio
import csv
import io
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from clickhouse_connect.driver.exceptions import DatabaseError

from contracts.profiles import Profile
from contracts.segments import SegmentDefinition, is_live
from profiles.store import ProfileStore
from runtime.metrics import SEGMENT_SECONDS
from segments.live import LiveIndex, segment_program
from segments.sql import Compiler, Query, check_field
from sinks.history import PROFILE_COLUMNS
from tagging.catalog import Catalog
from tagging.store import TagStore

PAGE = 50_000


class Format(StrEnum):
    """Export formats."""

    CSV = "csv"
    JSONL = "jsonl"
    PARQUET = "parquet"


MEDIA_TYPES = {
    Format.CSV: "text/csv; charset=utf-8",
    Format.JSONL: "application/x-ndjson",
    Format.PARQUET: "application/vnd.apache.parquet",
}


class HistoryUnavailable(RuntimeError):
    """ClickHouse cannot be queried from this process (embedded and owned by another)."""


class QueryTimeout(RuntimeError):
    """A segment query ran past the limit (``segments.query_timeout_s``) and was stopped."""


class HistoryError(RuntimeError):
    """ClickHouse refused or failed a segment query (its message, for the operator)."""


#: A compiled segment can be long (a condition is a CTE); ClickHouse's default 256 KiB
#: parse limit is below what MAX_CONDITIONS conditions can compile to.
_MAX_QUERY_BYTES = 4 << 20


def _failed(exc: DatabaseError) -> RuntimeError:
    if "TIMEOUT_EXCEEDED" in str(exc):
        return QueryTimeout(
            "the segment query ran past its time limit and was stopped; simplify it, or "
            "raise CDP_SEGMENTS__QUERY_TIMEOUT_S"
        )
    return HistoryError(f"the history query failed: {str(exc).splitlines()[0][:500]}")


def purposes(catalog: Catalog) -> list[str]:
    """Consent purposes: the catalog's declared ``consent.<purpose>`` facts."""
    return sorted(f.removeprefix("consent.") for f in catalog.declared if f.startswith("consent."))


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return value


def profile_field(profile: Profile, name: str) -> Any:
    """A preview/export field of a profile read from Redis (live segments)."""
    if name.startswith("traits."):
        return profile.traits.get(name.removeprefix("traits."))
    if name == "channels":
        return sorted(profile.channels)
    if name == "identifier_types":
        return sorted({i.split(":", 1)[0] for i in profile.identifiers})
    return _plain(getattr(profile, name))


#: Opens sealed values in rows: masked, or in clear when the flag says so.
Reveal = Callable[[list[dict[str, Any]], bool], Awaitable[list[dict[str, Any]]]]


@dataclass
class Export:
    """A consistent export: its row count, and its bytes (iterate once)."""

    count: int
    chunks: Iterator[bytes] | AsyncIterator[bytes]


class Segments:
    """Counts, previews and exports of segment definitions."""

    def __init__(
        self,
        clickhouse: Callable[[], Any],
        database: str,
        tags: TagStore,
        live: LiveIndex,
        profiles: ProfileStore,
        bind: Callable[[], Awaitable[None]],
        query_timeout_s: float = 30.0,
        reveal: Reveal | None = None,
        sealed_traits: Collection[str] = (),
        sealed_properties: Collection[str] = (),
    ) -> None:
        self._clickhouse = clickhouse
        #: With field encryption: opens sealed values in result rows, masked unless ``clear``.
        self._reveal = reveal
        #: Every segment query stops at the time limit: one ClickHouse serves the history
        #: writer and every other query, one query at a time when embedded.
        self._settings = {
            "max_execution_time": max(1, math.ceil(query_timeout_s)),
            "max_query_size": _MAX_QUERY_BYTES,
        }
        self._db = database
        self.catalog = tags.catalog
        self.purposes = purposes(self.catalog)
        self._live = live
        self._profiles = profiles
        #: Binds the catalog to the stored tag ordinals (the index bits) before a live query.
        self._bind = bind
        self.compiler = Compiler(
            database,
            tags=list(self.catalog.by_id),
            purposes=self.purposes,
            sealed=sealed_traits,
            sealed_properties=sealed_properties,
        )

    # -- planning -------------------------------------------------------------------------

    def live_program(self, seg: SegmentDefinition, enforce_consent: bool) -> list[list[Any]]:
        """The tag-index program of a live segment, ANDed with its purpose's consent tag."""
        return segment_program(seg, self.catalog, enforce_consent)

    def explain(self, seg: SegmentDefinition, enforce_consent: bool = True) -> dict[str, Any]:
        """What would run: the live program, or the SQL with its parameters."""
        if is_live(seg.definition):
            return {"source": "tags", "program": self.live_program(seg, enforce_consent)}
        q = self.compiler.count(seg, datetime.now(UTC), enforce_consent)
        return {"source": "history", "sql": q.sql, "params": _params(q)}

    def validate(self, seg: SegmentDefinition) -> None:
        """Compile without running: raises SegmentError with the bad node's path."""
        self.explain(seg)

    # -- operations -----------------------------------------------------------------------

    async def count(self, seg: SegmentDefinition, enforce_consent: bool = True) -> dict[str, Any]:
        """Exact member count and where it came from."""
        if is_live(seg.definition):
            await self._bind()
            with SEGMENT_SECONDS.labels("count", "tags").time():
                n = await self._live.count(self.live_program(seg, enforce_consent))
            return {"count": n, "source": "tags"}
        q = self.compiler.count(seg, datetime.now(UTC), enforce_consent)
        with SEGMENT_SECONDS.labels("count", "history").time():
            rows = await self._query(q)
        return {"count": int(rows[0][0]), "source": "history"}

    async def preview(
        self,
        seg: SegmentDefinition,
        fields: list[str],
        limit: int = 20,
        enforce_consent: bool = True,
        clear: bool = False,
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` members with ``fields`` (sensitive ones masked unless ``clear``)."""
        fields = self._fields(fields)
        if is_live(seg.definition):
            await self._bind()
            prog = self.live_program(seg, enforce_consent)
            with SEGMENT_SECONDS.labels("preview", "tags").time():
                ids = [pid async for chunk in self._live.members(prog, limit) for pid in chunk]
                rows = await self._profile_rows(ids, fields)
        else:
            q = self.compiler.members(seg, datetime.now(UTC), fields, enforce_consent, limit)
            with SEGMENT_SECONDS.labels("preview", "history").time():
                rows = [self._row(fields, r) for r in await self._query(q)]
        return await self._opened(rows, clear)

    async def _opened(self, rows: list[dict[str, Any]], clear: bool) -> list[dict[str, Any]]:
        if self._reveal is None or not rows:
            return rows
        return await self._reveal(rows, clear)

    async def export(
        self,
        seg: SegmentDefinition,
        fields: list[str],
        fmt: Format,
        enforce_consent: bool = True,
        clear: bool = False,
    ) -> Export:
        """All members, consistently: the set is fixed first, so the count is the row count.

        Sensitive values are masked unless ``clear``.
        """
        fields = self._fields(fields)
        if is_live(seg.definition):
            await self._bind()
            prog = self.live_program(seg, enforce_consent)
            ids = [pid async for chunk in self._live.members(prog) for pid in chunk]
            return Export(len(ids), self._live_chunks(ids, fields, fmt, clear))
        q = self.compiler.members(seg, datetime.now(UTC), fields, enforce_consent)
        table = f"{self._db}.export_{uuid.uuid4().hex}"  # hex only: safe as an identifier
        client = await self._client()
        create = f"CREATE TABLE {table} ENGINE = MergeTree ORDER BY profile_id AS {q.sql}"
        try:
            await asyncio.to_thread(
                client.command, create, parameters=q.params, settings=self._settings
            )
        except DatabaseError as exc:
            await asyncio.to_thread(client.command, f"DROP TABLE IF EXISTS {table}")
            raise _failed(exc) from exc
        try:
            n = int(await asyncio.to_thread(client.command, f"SELECT count() FROM {table}"))  # noqa: S608 - generated name
        except BaseException:
            await asyncio.to_thread(client.command, f"DROP TABLE IF EXISTS {table}")
            raise
        loop = asyncio.get_running_loop()
        return Export(n, self._table_chunks(client, table, fields, fmt, clear, loop))

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _fields(fields: list[str]) -> list[str]:
        fields = fields or ["profile_id"]
        if "profile_id" not in fields:
            fields = ["profile_id", *fields]
        for f in fields:
            check_field(f)
        return fields

    async def _client(self) -> Any:
        try:
            return await asyncio.to_thread(self._clickhouse)
        except Exception as exc:
            raise HistoryUnavailable(
                "the history cannot be queried from this process: embedded ClickHouse belongs "
                "to the process that writes it (`cdp run`), or set CDP_CLICKHOUSE__URL "
                f"({type(exc).__name__}: {exc})"
            ) from exc

    async def _query(self, q: Query) -> list[tuple[Any, ...]]:
        client = await self._client()
        try:
            result = await asyncio.to_thread(
                client.query, q.sql, parameters=q.params, settings=self._settings
            )
        except DatabaseError as exc:
            raise _failed(exc) from exc
        return list(result.result_rows)

    @staticmethod
    def _row(fields: list[str], values: tuple[Any, ...]) -> dict[str, Any]:
        out = {}
        for name, value in zip(fields, values, strict=True):
            if name.startswith("traits."):
                value = orjson.loads(value) if value else None
            out[name] = _plain(value)
        return out

    async def _profile_rows(self, ids: list[str], fields: list[str]) -> list[dict[str, Any]]:
        rows = []
        for profile in await self._profiles.get_many(ids):
            if profile is not None:
                rows.append({f: profile_field(profile, f) for f in fields})
        return rows

    async def _live_chunks(
        self, ids: list[str], fields: list[str], fmt: Format, clear: bool
    ) -> AsyncIterator[bytes]:
        writer = _Writer(fields, fmt)
        for start in range(0, len(ids), PAGE):
            part = ids[start : start + PAGE]
            if fields == ["profile_id"]:
                rows = [{"profile_id": pid} for pid in part]
            else:
                rows = await self._opened(await self._profile_rows(part, fields), clear)
            yield writer.rows(rows)
        yield writer.close()

    def _table_chunks(
        self,
        client: Any,
        table: str,
        fields: list[str],
        fmt: Format,
        clear: bool,
        loop: asyncio.AbstractEventLoop,
    ) -> Iterator[bytes]:
        """Keyset pages of the export table (blocking: iterate in a thread; sealed values are
        opened on the event loop ``loop``, where the key store lives)."""
        writer = _Writer(fields, fmt)
        last = ""
        try:
            while True:
                result = client.query(
                    f"SELECT * FROM {table} WHERE profile_id > {{last:String}} "  # noqa: S608 - generated name
                    f"ORDER BY profile_id LIMIT {PAGE}",
                    parameters={"last": last},
                )
                rows = [self._row(fields, r) for r in result.result_rows]
                if not rows:
                    break
                last = rows[-1]["profile_id"]
                if self._reveal is not None:
                    opening = asyncio.run_coroutine_threadsafe(self._opened(rows, clear), loop)
                    rows = opening.result()
                yield writer.rows(rows)
            yield writer.close()
        finally:
            client.command(f"DROP TABLE IF EXISTS {table}")


def _params(q: Query) -> dict[str, Any]:
    return {k: _plain(v) for k, v in q.params.items()}


class _Sink(io.RawIOBase):
    """A write-only stream that hands out what was written so far (Parquet's row groups)
    while keeping the position the writer's footer offsets count on."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


class _Writer:
    """Rows -> bytes of one export format, page by page."""

    def __init__(self, fields: list[str], fmt: Format) -> None:
        self.fields = fields
        self.fmt = fmt
        self._started = False
        self._buffer = _Sink()
        self._parquet: pq.ParquetWriter | None = None
        self._columns = {f: parquet_column(f) for f in fields}

    def rows(self, rows: list[dict[str, Any]]) -> bytes:
        if self.fmt == Format.JSONL:
            return b"".join(orjson.dumps(r) + b"\n" for r in rows)
        if self.fmt == Format.CSV:
            text = io.StringIO()
            out = csv.writer(text, lineterminator="\n")
            if not self._started:
                out.writerow(self.fields)
                self._started = True
            for r in rows:
                out.writerow([_cell(r[f]) for f in self.fields])
            return text.getvalue().encode()
        table = pa.table(
            {
                f: pa.array([convert(r[f]) for r in rows], type=kind)
                for f, (kind, convert) in self._columns.items()
            }
        )
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self._buffer, table.schema)
        self._parquet.write_table(table)
        return self._drain()

    def close(self) -> bytes:
        if self.fmt == Format.CSV and not self._started:
            self._started = True
            return (",".join(self.fields) + "\n").encode()
        if self.fmt != Format.PARQUET:
            return b""
        if self._parquet is None:
            schema = pa.schema([(f, kind) for f, (kind, _) in self._columns.items()])
            self._parquet = pq.ParquetWriter(self._buffer, schema)
        self._parquet.close()
        return self._drain()

    def _drain(self) -> bytes:
        return self._buffer.take()


def parquet_column(name: str) -> tuple[pa.DataType, Callable[[Any], Any]]:
    """A field's Parquet type, and how a row value becomes it.

    Attributes keep their type (integers, doubles, UTC timestamps, lists of strings), so a
    notebook or BI tool reads numbers as numbers; traits have no fixed type across profiles,
    so they are text (JSON for lists and objects), like maps.
    """
    spec = PROFILE_COLUMNS.get(name)
    kind = spec[2] if spec else "string"
    if spec and kind == "number":
        return (pa.float64() if "Float" in spec[0] else pa.int64()), _same
    if kind == "time":
        return pa.timestamp("ms", tz="UTC"), _instant
    if kind == "list":
        return pa.list_(pa.string()), _same
    return pa.string(), _text


def _same(value: Any) -> Any:
    return value


def _instant(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _text(value: Any) -> str | None:
    return None if value is None else str(_cell(value))


def _cell(value: Any) -> Any:
    """A CSV or Parquet cell: text; lists and objects as JSON."""
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
