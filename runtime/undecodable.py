"""Dead letters for messages a processor cannot decode: kept, never skipped silently."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from contracts.deadletter import DeadLetter, DeadLetterReason
from runtime.metrics import count_dead_letters
from runtime.publisher import Record

M = TypeVar("M", bound=BaseModel)


def split(model: type[M], events: list[Any]) -> tuple[list[tuple[M, Any]], list[Any]]:
    """Decode faust events against a topic's contract: (value, event) pairs and the rest."""
    good, bad = [], []
    for ev in events:
        try:
            good.append((model.model_validate_json(ev.message.value), ev))
        except ValidationError:
            bad.append(ev)
    return good, bad


def dead_letters(events: list[Any], processor: str, topic: str) -> list[Record]:
    """Return dead-letter records for faust events whose value did not decode."""
    records = []
    count_dead_letters(processor, [DeadLetterReason.UNDECODABLE.value] * len(events))
    for ev in events:
        msg = ev.message
        raw = msg.value if isinstance(msg.value, bytes) else bytes(str(msg.value), "utf-8")
        where = f"{msg.topic}[{msg.partition}]@{msg.offset}"
        letter = DeadLetter(
            reason=DeadLetterReason.UNDECODABLE,
            field=None,
            index=None,
            status=0,
            source=None,
            message=f"{processor} could not decode {where}",
            endpoint=f"processor:{processor}",
            received_at=datetime.now(UTC),
            request_id=where,
            payload=None,
            raw=raw[:65536].decode("utf-8", "replace"),
            raw_truncated=len(raw) > 65536,
            raw_sha256=hashlib.sha256(raw).hexdigest(),
        )
        records.append(Record(topic, processor.encode(), letter.model_dump_json().encode()))
    return records
