"""Split a parsed request body into accepted events and per-event rejections."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from contracts.deadletter import DeadLetterReason
from contracts.events import Event, EventType
from ingest.exceptions import Rejected
from ingest.limits import Limits
from ingest.mapping import Mapping
from ingest.native import from_native
from ingest.segment import from_segment, parse_timestamp
from ingest.sources import Source

Mapper = Callable[[Any], Event]


@dataclass(frozen=True)
class Stamp:
    """What ingest knows about a request besides its body."""

    source: Source
    received_at: datetime
    limits: Limits
    region: str
    #: The source's mapping into the platform's vocabulary (None: taken as sent).
    mapping: Mapping | None = None


@dataclass
class Intake:
    """What one request brought: accepted events and rejected inputs with their payloads."""

    received: int
    events: list[Event] = field(default_factory=list)
    rejections: list[tuple[Rejected, Any]] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        """Messages accepted (a mapping may have split one into several events)."""
        return self.received - len(self.rejections)

    @property
    def status(self) -> int:
        """HTTP status: 200 if anything was accepted (or nothing sent), else the first error's."""
        if self.events or not self.rejections:
            return 200
        return self.rejections[0][0].status


def _event_size_ok(msg: Any, limits: Limits) -> None:
    if len(orjson.dumps(msg)) > limits.max_event_bytes:
        raise Rejected(
            413,
            DeadLetterReason.EVENT_TOO_LARGE,
            f"event exceeds {limits.max_event_bytes} bytes",
            None,
        )


def _mapped(mapper: Mapper, stamp: Stamp) -> Callable[[Any], Event | list[Event]]:
    """``mapper`` followed by the source's mapping, if it has one (else ``mapper`` itself)."""
    mapping = stamp.mapping
    if mapping is None:
        return mapper
    region = stamp.region
    return lambda msg: mapping.apply(mapper(msg), region)


def _collect(
    messages: list[Any], prefix: str | None, mapper: Mapper, stamp: Stamp, first: int = 0
) -> Intake:
    limits = stamp.limits
    take = _mapped(mapper, stamp)
    if len(messages) > limits.max_batch_events:
        raise Rejected(
            413,
            DeadLetterReason.TOO_MANY_EVENTS,
            f"batch holds {len(messages)} events; the limit is {limits.max_batch_events}",
            prefix or "batch",
        )
    intake = Intake(received=len(messages))
    for index, msg in enumerate(messages):
        try:
            _event_size_ok(msg, limits)
            taken = take(msg)
            if isinstance(taken, list):
                intake.events.extend(taken)
            else:
                intake.events.append(taken)
        except Rejected as rejected:
            placed = rejected.at(first + index, prefix) if prefix else rejected
            intake.rejections.append((placed, msg))
    return intake


def _apply_batch(msg: Any, shared: Any, sent_at: Any) -> Any:
    """Apply a batch's top-level context under each message's own (the message wins), and
    its ``sentAt`` to a message without one: each message then stands on its own, as its
    dead letter keeps it (and a re-drive sends it again)."""
    if not isinstance(msg, dict):
        return msg
    if isinstance(shared, dict):
        own = msg.get("context")
        msg = {**msg, "context": {**shared, **(own if isinstance(own, dict) else {})}}
    if sent_at is not None and msg.get("sentAt") is None:
        msg = {**msg, "sentAt": sent_at}
    return msg


def message_count(kind: str, body: Any) -> int:
    """How many messages a request body carries (what the write key's rate limit counts),
    without looking at them; a body of the wrong shape counts one."""
    if kind == "batch":
        messages = body.get("batch") if isinstance(body, dict) else None
    elif kind == "native":
        messages = body.get("events") if isinstance(body, dict) else body
    else:
        return 1
    return max(len(messages), 1) if isinstance(messages, list) else 1


def segment_batch(body: Any, stamp: Stamp) -> Intake:
    """Take ``POST /v1/batch``: ``{"batch": [...], "sentAt": ..., "context": {...}}``."""
    if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
        raise Rejected(400, DeadLetterReason.INVALID_EVENT, "body needs a batch array", "batch")
    sent_at = parse_timestamp(body.get("sentAt"), "sentAt")
    shared = body.get("context")

    def mapper(msg: Any) -> Event:
        return from_segment(
            msg,
            source=stamp.source,
            received_at=stamp.received_at,
            batch_sent_at=sent_at,
            default_region=stamp.region,
        )

    given = body.get("sentAt") if sent_at is not None else None
    if not isinstance(shared, dict) and given is None:
        return _collect(body["batch"], "batch", mapper, stamp)
    messages = [_apply_batch(msg, shared, given) for msg in body["batch"]]
    return _collect(messages, "batch", mapper, stamp)


def segment_single(body: Any, stamp: Stamp, call: EventType) -> Intake:
    """Take ``POST /v1/{identify,track,page,screen,group,alias}``: one message."""

    def mapper(msg: Any) -> Event:
        return from_segment(
            msg,
            source=stamp.source,
            received_at=stamp.received_at,
            endpoint_type=call,
            default_region=stamp.region,
        )

    return _collect([body], None, mapper, stamp)


def native(body: Any, stamp: Stamp) -> Intake:
    """Take ``POST /v1/events``: one event, a JSON array, or ``{"events": [...]}``."""

    def mapper(msg: Any) -> Event:
        return from_native(
            msg, source=stamp.source, received_at=stamp.received_at, default_region=stamp.region
        )

    if isinstance(body, dict) and "events" in body:
        if not isinstance(body["events"], list):
            raise Rejected(400, DeadLetterReason.INVALID_EVENT, "events must be an array", "events")
        return _collect(body["events"], "events", mapper, stamp)
    if isinstance(body, list):
        return _collect(body, "events", mapper, stamp)
    return _collect([body], None, mapper, stamp)


def rows(chunk: list[Any], stamp: Stamp, to_message: Callable[[Any], Any], first: int) -> Intake:
    """Take rows of a file export (``row[first]`` onwards): each becomes a Segment message
    (``to_message``) and is validated, mapped and limited as a batch's message is; a
    rejection names the row and keeps the row as it was read."""

    def mapper(row: Any) -> Event:
        return from_segment(
            to_message(row),
            source=stamp.source,
            received_at=stamp.received_at,
            default_region=stamp.region,
        )

    return _collect(chunk, "row", mapper, stamp, first)
