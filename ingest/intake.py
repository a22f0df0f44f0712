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


@dataclass
class Intake:
    """What one request brought: accepted events and rejected inputs with their payloads."""

    received: int
    events: list[Event] = field(default_factory=list)
    rejections: list[tuple[Rejected, Any]] = field(default_factory=list)

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


def _collect(messages: list[Any], prefix: str | None, mapper: Mapper, limits: Limits) -> Intake:
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
            intake.events.append(mapper(msg))
        except Rejected as rejected:
            placed = rejected.at(index, prefix) if prefix else rejected
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
        return _collect(body["batch"], "batch", mapper, stamp.limits)
    messages = [_apply_batch(msg, shared, given) for msg in body["batch"]]
    return _collect(messages, "batch", mapper, stamp.limits)


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

    return _collect([body], None, mapper, stamp.limits)


def native(body: Any, stamp: Stamp) -> Intake:
    """Take ``POST /v1/events``: one event, a JSON array, or ``{"events": [...]}``."""
    limits = stamp.limits

    def mapper(msg: Any) -> Event:
        return from_native(
            msg, source=stamp.source, received_at=stamp.received_at, default_region=stamp.region
        )

    if isinstance(body, dict) and "events" in body:
        if not isinstance(body["events"], list):
            raise Rejected(400, DeadLetterReason.INVALID_EVENT, "events must be an array", "events")
        return _collect(body["events"], "events", mapper, limits)
    if isinstance(body, list):
        return _collect(body, "events", mapper, limits)
    return _collect([body], None, mapper, limits)
