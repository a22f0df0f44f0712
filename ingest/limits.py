"""Request limits, the same as Segment's tracking API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Limits(BaseModel):
    """Size limits for one request and one event."""

    model_config = ConfigDict(frozen=True)

    max_event_bytes: int = 32 * 1024
    max_batch_bytes: int = 500 * 1024
    max_batch_events: int = 2_500
    #: How much of a rejected raw body the dead letter keeps.
    deadletter_raw_bytes: int = 64 * 1024
