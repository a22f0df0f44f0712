"""Re-drive dead letters through ingest once their cause is fixed.

A letter's input goes back through the same intake as a request (the source's mapping,
validation, clock-skew correction at its original receipt, sealing, a publish Kafka
acknowledged), so an event accepted now is the event the request would have given. Its
effect happens once whatever is repeated:

- each re-driven message gets a deterministic id when it had none (``messageId`` /
  ``event_id``): a UUID derived from the request and the message's place in it, so the
  stream's deduplication by event id (identity's retry window) drops a second copy;
- a letter re-driven is written down (a Redis hash) only after Kafka acknowledged what its
  re-drive published; a re-drive asks for it again only with ``force``;
- an input that fails again is dead-lettered again, its ``redrive_of`` naming the letter
  first re-driven.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog

from contracts.deadletter import DeadLetter
from contracts.events import SEGMENT_CALL_TYPES, Event, EventType
from ingest import intake as take
from ingest.api import IngestConfig, records
from ingest.body import parse_json
from ingest.deadletters import DeadLetters, Filter, SealedLetter, Stored
from ingest.exceptions import Rejected
from ingest.sources import Source

log = structlog.get_logger()

#: The namespace of re-driven messages' ids (``uuid5(REDRIVE_IDS, "<request id>/<index>")``).
REDRIVE_IDS = uuid.UUID("9c5b3f8e-5d0b-4c1e-9f5e-6a2f1d3c7b10")

#: Why a letter cannot be re-driven (a count per reason in the report).
SUMMARY = "summary"  # a summary letter stands for refusals it did not keep
NO_INPUT = "no_input"  # a 429's letter keeps no body (its client sends it again)
TRUNCATED = "truncated"  # only the first bytes of the body were kept
PROCESSOR = "processor"  # a processor's undecodable message, not an ingest request
KEY_UNKNOWN = "key_unknown"  # no source holds the letter's write key (yet)
ERASED = "erased"  # sealed under a day key that was shredded


def _endpoints() -> dict[str, tuple[str, EventType | None]]:
    routes: dict[str, tuple[str, EventType | None]] = {
        "/v1/batch": ("batch", None),
        "/v1/b": ("batch", None),
        "/v1/events": ("native", None),
    }
    for call in SEGMENT_CALL_TYPES:
        routes[f"/v1/{call.value}"] = routes[f"/v1/{call.value[0]}"] = ("single", call)
    return routes


#: Ingest route -> (kind of intake, call type of a single-call route).
ENDPOINTS = _endpoints()


def message_id(request_id: str, index: int) -> str:
    """The id a re-driven message without one gets: the same on every re-drive."""
    return str(uuid.uuid5(REDRIVE_IDS, f"{request_id}/{index}"))


def unredrivable(letter: DeadLetter) -> str | None:
    """Why ``letter`` cannot be re-driven, or None when it can (sealed letters: once opened)."""
    if letter.count > 1:
        return SUMMARY
    if letter.endpoint not in ENDPOINTS:
        return PROCESSOR
    if letter.raw_truncated:
        return TRUNCATED
    if letter.payload is None and letter.raw is None and letter.sealed is None:
        return NO_INPUT
    return None


def _with_id(msg: Any, id_field: str, request_id: str, index: int) -> Any:
    if isinstance(msg, dict) and not msg.get(id_field):
        return {**msg, id_field: message_id(request_id, index)}
    return msg


def _with_ids(kind: str, body: Any, request_id: str, first: int) -> Any:
    """``body`` with a deterministic id on each message that has none."""
    if kind == "batch":
        if isinstance(body, dict) and isinstance(body.get("batch"), list):
            batch = [
                _with_id(m, "messageId", request_id, first + i) for i, m in enumerate(body["batch"])
            ]
            return {**body, "batch": batch}
        return body
    if kind == "single":
        return _with_id(body, "messageId", request_id, first)
    if isinstance(body, dict) and isinstance(body.get("events"), list):
        events = [
            _with_id(m, "event_id", request_id, first + i) for i, m in enumerate(body["events"])
        ]
        return {**body, "events": events}
    if isinstance(body, list):
        return [_with_id(m, "event_id", request_id, first + i) for i, m in enumerate(body)]
    return _with_id(body, "event_id", request_id, first)


def request_body(letter: DeadLetter, kind: str) -> Any:
    """The input of an opened letter as a request body of its route (``Rejected`` if the
    kept raw text does not parse). An event's letter becomes a request of that one event."""
    if letter.payload is None and letter.raw is not None:
        return parse_json(letter.raw.encode())
    if letter.index is None:
        return letter.payload
    if kind == "batch":
        return {"batch": [letter.payload]}
    if kind == "native":
        return [letter.payload]
    return letter.payload


@dataclass
class Outcome:
    """What re-driving one letter gave: events accepted, letters written again."""

    events: list[Event] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    source: str | None = None


@dataclass
class Report:
    """A re-drive's counts. They reconcile: ``selected`` = ``redriven`` +
    ``already_redriven`` + the sum of ``not_redrivable``; each re-driven letter's messages
    were either ``accepted`` or dead-lettered again (``rejected_again``, by reason)."""

    selected: int = 0
    redriven: int = 0
    already_redriven: int = 0
    not_redrivable: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    rejected_again: Counter[str] = field(default_factory=Counter)
    dry_run: bool = False
    #: The ids of the letters re-driven now.
    ids: list[str] = field(default_factory=list)

    def audit_detail(self) -> dict[str, int]:
        """The counts the audit log keeps of a re-drive."""
        return {
            "redriven": self.redriven,
            "accepted": self.accepted,
            "rejected_again": sum(self.rejected_again.values()),
            "already_redriven": self.already_redriven,
            "not_redrivable": sum(self.not_redrivable.values()),
        }

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "selected": self.selected,
            "redriven": self.redriven,
            "already_redriven": self.already_redriven,
            "not_redrivable": dict(self.not_redrivable),
            "accepted": self.accepted,
            "rejected_again": dict(self.rejected_again),
            "dry_run": self.dry_run,
            "ids": self.ids,
        }


class Redriver:
    """Send chosen dead letters back through ingest; remember which were re-driven."""

    #: Letters whose records are published together (then written down as re-driven).
    CHUNK = 200

    def __init__(
        self, config: IngestConfig, letters: DeadLetters, redis: aioredis.Redis, namespace: str
    ) -> None:
        self.config = config
        self.letters = letters
        self._redis = redis
        self._ledger = f"{namespace}:deadletters:redriven"

    async def redriven(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The ledger's entries of these letters (those re-driven before)."""
        if not ids:
            return {}
        values = await self._redis.hmget(self._ledger, ids)
        return {i: orjson.loads(v) for i, v in zip(ids, values, strict=True) if v is not None}

    async def listing(self, chosen: Filter, limit: int) -> dict[str, Any]:
        """The letters ``chosen`` admits: how many, the rejections they stand for, and the
        last ``limit`` of them (without payloads) with their re-drive if they had one."""
        found = await self.letters.read(chosen)
        shown = found[-limit:]
        done = await self.redriven([s.id for s in shown])
        return {
            "count": len(found),
            "rejections": sum(s.letter.count for s in found),
            "letters": [{**s.summary(), "redriven": done.get(s.id)} for s in shown],
        }

    async def redrive(
        self, chosen: list[Stored], *, force: bool = False, dry_run: bool = False
    ) -> Report:
        """Re-drive ``chosen``: publish what each gives (acknowledged), then write it down."""
        report = Report(selected=len(chosen), dry_run=dry_run)
        before = {} if force else await self.redriven([s.id for s in chosen])
        pending: list[tuple[Stored, Outcome]] = []
        for stored in chosen:
            if stored.id in before:
                report.already_redriven += 1
                continue
            outcome = await self._outcome(stored, report)
            if outcome is None:
                continue
            pending.append((stored, outcome))
            if len(pending) >= self.CHUNK:
                await self._commit(pending, report)
                pending = []
        await self._commit(pending, report)
        log.info(
            "deadletters.redriven", **{k: v for k, v in report.as_dict().items() if k != "ids"}
        )
        return report

    async def _outcome(self, stored: Stored, report: Report) -> Outcome | None:
        why = unredrivable(stored.letter)
        if why is not None:
            report.not_redrivable[why] += 1
            return None
        try:
            letter = await self.letters.opened(stored.letter)
        except SealedLetter:
            report.not_redrivable[ERASED] += 1
            return None
        source = self._source(letter)
        if source is None:
            report.not_redrivable[KEY_UNKNOWN] += 1
            return None
        return self.run(stored, letter, source)

    def _source(self, letter: DeadLetter) -> Source | None:
        registry = self.config.registry
        if letter.source is not None:
            return registry.named(letter.source)
        if letter.key_sha256 is not None:
            return registry.by_hash(letter.key_sha256)
        body = letter.payload
        if body is None and letter.raw is not None:
            try:
                body = orjson.loads(letter.raw)
            except orjson.JSONDecodeError:
                return None
        key = body.get("writeKey") if isinstance(body, dict) else None
        return registry.authenticate(key if isinstance(key, str) else None)

    def run(self, stored: Stored, letter: DeadLetter, source: Source) -> Outcome:
        """Take an opened letter's input through the intake of its route, as ``source``."""
        kind, call = ENDPOINTS[letter.endpoint]
        first = letter.index or 0
        stamp = take.Stamp(
            source, letter.received_at, self.config.limits, self.config.default_region
        )
        outcome = Outcome(source=source.name)
        try:
            body = _with_ids(kind, request_body(letter, kind), letter.request_id, first)
            if kind == "batch":
                result = take.segment_batch(body, stamp)
            elif kind == "native":
                result = take.native(body, stamp)
            else:
                assert call is not None
                result = take.segment_single(body, stamp, call)
        except Rejected as rejected:
            outcome.letters.append(self._again(stored, letter, rejected, letter.payload, source))
            return outcome
        outcome.events = result.events
        for again, payload in result.rejections:
            placed = _placed(again, letter.index)
            outcome.letters.append(self._again(stored, letter, placed, payload, source))
        return outcome

    @staticmethod
    def _again(
        stored: Stored, letter: DeadLetter, rejected: Rejected, payload: Any, source: Source
    ) -> DeadLetter:
        """The letter of an input that failed again, linked to the letter first re-driven."""
        return DeadLetter(
            reason=rejected.reason,
            field=rejected.field,
            message=rejected.message,
            index=rejected.index,
            status=rejected.status,
            source=source.name,
            endpoint=letter.endpoint,
            received_at=letter.received_at,
            request_id=letter.request_id,
            payload=payload,
            raw=letter.raw if payload is None else None,
            raw_sha256=letter.raw_sha256 if payload is None else None,
            key_sha256=letter.key_sha256,
            redrive_of=letter.redrive_of or stored.id,
        )

    async def _commit(self, pending: list[tuple[Stored, Outcome]], report: Report) -> None:
        """Publish the outcomes (Kafka acknowledged), then write their letters down."""
        if not pending:
            return
        if not report.dry_run:
            published = []
            for _, outcome in pending:
                published += await records(
                    self.config, outcome.source, outcome.events, outcome.letters
                )
            await self.config.publisher.publish(published)
            now = datetime.now(UTC).isoformat()
            entries = {
                stored.id: json.dumps(
                    {
                        "at": now,
                        "accepted": len(outcome.events),
                        "rejected": len(outcome.letters),
                    }
                )
                for stored, outcome in pending
            }
            await self._redis.hset(self._ledger, mapping=entries)  # type: ignore[arg-type]  # a dict of str is a Mapping it takes
        for stored, outcome in pending:
            report.redriven += 1
            report.ids.append(stored.id)
            report.accepted += len(outcome.events)
            report.rejected_again.update(letter.reason.value for letter in outcome.letters)


def _placed(rejected: Rejected, index: int | None) -> Rejected:
    """A rejection of a one-event re-drive placed back at the event's index in its batch."""
    if index is None or rejected.index is None:
        return rejected
    field = rejected.field
    if field is not None and "[0]" in field:
        field = field.replace("[0]", f"[{index}]", 1)
    return Rejected(rejected.status, rejected.reason, rejected.message, field, index)
