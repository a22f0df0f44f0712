"""Import a file export (ERP/CRM/POS) through the ingest intake: streamed, idempotent, resumable.

Every row becomes a Segment message (the mapping's ``rows`` say which columns are its ids,
name and time) and takes the path of an HTTP message: validation, limits, the source's
mapping, sealing, dead letters, and publishing acknowledged by Kafka. A row's message id is
derived from the source and the row, so an event imported twice is the same event (identity
and the profile count it once). Progress is kept in Redis per (source, file digest) after
each acknowledged chunk: an import stopped anywhere resumes after the last acknowledged
row, and a file imported to its end is recognised and not sent again.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis

from contracts.deadletter import DeadLetterReason
from ingest import intake as take
from ingest.exceptions import Rejected
from ingest.mapping import Mapping, RowRules
from ingest.rowfile import RowFile, Undecodable, fingerprint
from ingest.sources import Source

#: Rows per chunk (one intake and one acknowledged publish each).
CHUNK_ROWS = 1_000
#: Chunks published and not yet acknowledged at once: the reading of the next chunks
#: overlaps Kafka's acknowledgement of the previous ones; memory stays chunk x window rows.
WINDOW = 4
#: Rejected rows quoted in the report (all of them are in the dead letters).
SAMPLES = 20


class Publishing(Protocol):
    """What the import needs of ingest (``ingest.api.IngestEndpoints``)."""

    def stamp(self, source: Source, received_at: datetime) -> take.Stamp: ...

    async def publish_intake(
        self, result: take.Intake, source: Source, endpoint: str, request_id: str
    ) -> None: ...


def _invalid(field: str, message: str) -> Rejected:
    return Rejected(400, DeadLetterReason.INVALID_EVENT, message, field)


def row_id(source: str, values: Any) -> str:
    """A row's message id: the same row of the same source is always the same event."""
    digest = hashlib.sha256(orjson.dumps([source, values], option=orjson.OPT_SORT_KEYS))
    return "imp-" + digest.hexdigest()[:32]


def row_messages(source: str, rules: RowRules | None) -> Callable[[Any], dict[str, Any]]:
    """Compile how one row becomes a Segment message. Without ``rules`` each row must be a
    message already (JSON lines of Segment calls); it gets a derived id if it has none."""
    if rules is None:
        return lambda row: _as_message(source, row)
    special = {rules.event_column, rules.user_id, rules.anonymous_id, rules.timestamp} - {None}
    drop, traits, ids = set(rules.drop), set(rules.traits), list(rules.message_id)

    def convert(row: Any) -> dict[str, Any]:
        row = _object(row)
        values = {k: v for k, v in row.items() if v is not None and v != "" and k not in drop}
        message: dict[str, Any] = {
            "type": rules.type,
            "messageId": row_id(source, [row.get(c) for c in ids] if ids else row),
        }
        for column, key in (
            (rules.user_id, "userId"),
            (rules.anonymous_id, "anonymousId"),
            (rules.timestamp, "timestamp"),
        ):
            if column is not None and column in values:
                message[key] = values[column]
        rest = {k: v for k, v in values.items() if k not in special}
        if rules.type == "identify":
            message["traits"] = rest
            return message
        message["event"] = rules.event or values.get(rules.event_column or "")
        message["properties"] = {k: v for k, v in rest.items() if k not in traits}
        message["traits"] = {k: v for k, v in rest.items() if k in traits}
        return message

    return convert


def column_names(rules: RowRules | None) -> dict[str, str]:
    """The column each Segment key of a row's message came from, so that a rejection names
    what the file holds (``row[3].huiyuanhao``, not ``row[3].userId``)."""
    if rules is None:
        return {}
    named = {
        "userId": rules.user_id,
        "anonymousId": rules.anonymous_id,
        "timestamp": rules.timestamp,
        "event": rules.event_column,
    }
    return {key: column for key, column in named.items() if column}


def _object(row: Any) -> dict[str, Any]:
    if isinstance(row, Undecodable):
        raise _invalid("", f"line is not JSON: {row[:200]!r}")
    if not isinstance(row, dict):
        raise _invalid("", "each row must be a JSON object")
    return row


def _as_message(source: str, row: Any) -> dict[str, Any]:
    row = _object(row)
    return row if row.get("messageId") else {**row, "messageId": row_id(source, row)}


@dataclass
class Report:
    """What an import did, reconciled: ``rows_read = accepted + rejected``."""

    import_id: str
    source: str
    file: str
    format: str
    sha256: str
    rows_read: int = 0
    accepted: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    #: Events published (a mapping may split a row into several).
    events: int = 0
    #: The row this run started at (0: from the start; more after a crash).
    resumed_at_row: int = 0
    #: The file was imported to its end before: nothing was sent this time.
    already_imported: bool = False
    complete: bool = False
    seconds: float = 0.0
    #: A few rejected rows (row number, field, message); every one is a dead letter.
    samples: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return asdict(self)


class Ledger:
    """An import's progress in Redis, per (source, file digest): rows acknowledged so far."""

    def __init__(self, client: aioredis.Redis, namespace: str, source: str, sha: str) -> None:
        self.client = client
        self.key = f"{namespace}:import:{source}:{sha}"

    async def load(self) -> dict[str, Any] | None:
        """The report as last saved, or None for a file never imported."""
        raw = await self.client.get(self.key)
        return orjson.loads(raw) if raw else None

    async def save(self, report: Report) -> None:
        """Record the report (after the rows it counts were acknowledged)."""
        await self.client.set(self.key, orjson.dumps(report.as_dict()))


class Importer:
    """Import files of one source through ingest."""

    def __init__(
        self,
        ingest: Publishing,
        client: aioredis.Redis,
        namespace: str,
        source: Source,
        mapping: Mapping | None = None,
        chunk_rows: int = CHUNK_ROWS,
    ) -> None:
        self.ingest, self.client, self.namespace = ingest, client, namespace
        self.source = source
        stamp = ingest.stamp(source, datetime.now(UTC))
        #: An explicit mapping wins over the source's configured one.
        self.mapping = mapping if mapping is not None else stamp.mapping
        self.chunk_rows = min(chunk_rows, stamp.limits.max_batch_events)
        rules = self.mapping.rows if self.mapping else None
        self.to_message = row_messages(source.name, rules)
        self.columns = column_names(rules)

    async def run(
        self,
        path: Path,
        fmt: str,
        progress: Callable[[RowFile], None] = lambda _: None,
        label: str | None = None,
    ) -> Report:
        """Import ``path`` (``label``: its name in the report and dead letters); resume where
        a stopped import of the same file left off."""
        started = time.monotonic()
        sha = await asyncio.to_thread(fingerprint, path)
        ledger = Ledger(self.client, self.namespace, self.source.name, sha)
        saved = await ledger.load()
        if saved is not None and saved.get("complete"):
            return Report(**{**saved, "already_imported": True, "seconds": 0.0})
        report = (
            Report(**saved)
            if saved
            else Report(f"imp-{sha[:16]}", self.source.name, label or path.name, fmt, sha)
        )
        report.resumed_at_row = report.rows_read
        rows = RowFile(path, fmt)
        await self._stream(rows, report, ledger, progress)
        report.complete = True
        report.seconds = round(time.monotonic() - started, 3)
        await ledger.save(report)
        return report

    def _chunks(self, rows: RowFile, skip: int) -> Iterator[tuple[int, list[Any]]]:
        first = 0
        for chunk in rows.chunks(self.chunk_rows):
            if first + len(chunk) > skip:
                cut = max(skip - first, 0)
                yield first + cut, chunk[cut:]
            first += len(chunk)

    async def _stream(
        self, rows: RowFile, report: Report, ledger: Ledger, progress: Callable[[RowFile], None]
    ) -> None:
        inflight: list[tuple[asyncio.Task[None], int, take.Intake]] = []
        try:
            for first, chunk in self._chunks(rows, report.rows_read):
                now = self.ingest.stamp(self.source, datetime.now(UTC))
                stamp = take.Stamp(
                    self.source, now.received_at, now.limits, now.region, self.mapping
                )
                result = take.rows(chunk, stamp, self.to_message, first + 1)
                if self.columns and result.rejections:
                    result.rejections = [(self._named(r), p) for r, p in result.rejections]
                task = asyncio.ensure_future(
                    self.ingest.publish_intake(
                        result, self.source, f"import:{report.file}", report.import_id
                    )
                )
                inflight.append((task, first, result))
                progress(rows)
                if len(inflight) >= WINDOW:
                    await self._settle(inflight.pop(0), report, ledger)
            while inflight:
                await self._settle(inflight.pop(0), report, ledger)
        finally:
            for task, _, _ in inflight:
                task.cancel()

    def _named(self, rejected: Rejected) -> Rejected:
        """``rejected`` naming the column where the message key came from one."""
        head, _, key = (rejected.field or "").partition("].")
        column = self.columns.get(key)
        if column is None:
            return rejected
        field = f"{head}].{column}"
        return Rejected(rejected.status, rejected.reason, rejected.message, field, rejected.index)

    @staticmethod
    async def _settle(
        done: tuple[asyncio.Task[None], int, take.Intake], report: Report, ledger: Ledger
    ) -> None:
        """Wait for one chunk's acknowledgement, then count it and save the progress."""
        task, _, result = done
        await task
        report.rows_read += result.received
        report.accepted += result.accepted
        report.rejected += len(result.rejections)
        report.events += len(result.events)
        reasons = Counter(report.rejected_by_reason)
        reasons.update(r.reason.value for r, _ in result.rejections)
        report.rejected_by_reason = dict(reasons)
        for rejected, _ in result.rejections[: max(SAMPLES - len(report.samples), 0)]:
            report.samples.append(
                {"row": rejected.index, "field": rejected.field, "message": rejected.message}
            )
        await ledger.save(report)
