"""Map native events (``POST /v1/events``) to contract events."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from contracts.events import Event, EventIn, Identifier, corrected_timestamp
from identity.normalize import DEFAULT_REGION, normalize
from ingest.segment import client_time, from_validation_error, invalid
from ingest.sources import Source


def from_native(
    msg: Any, *, source: Source, received_at: datetime, default_region: str = DEFAULT_REGION
) -> Event:
    """Validate a native event against the contract and stamp what ingest owns."""
    if not isinstance(msg, dict):
        raise invalid("", "each event must be a JSON object")
    try:
        given = EventIn.model_validate(msg)
        identifiers: dict[str, Identifier] = {}
        for ident in given.identifiers:
            normalised = normalize(ident.type, ident.value, default_region)
            identifiers.setdefault(normalised.key(), normalised)
        original = client_time(source, given.original_timestamp, "original_timestamp")
        sent_at = client_time(source, given.sent_at, "sent_at")
        return Event(
            event_id=given.event_id or str(uuid.uuid4()),
            type=given.type,
            name=given.name,
            channel=source.channel,
            source=source.name,
            identifiers=list(identifiers.values()),
            previous_id=given.previous_id,
            group_id=given.group_id,
            traits=given.traits,
            properties=given.properties,
            consent=given.consent,
            context=given.context,
            original_timestamp=original or received_at,
            sent_at=sent_at,
            received_at=received_at,
            timestamp=corrected_timestamp(original, sent_at, received_at),
        )
    except ValidationError as exc:
        raise from_validation_error(exc) from exc
