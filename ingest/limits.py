"""Request limits (the same as Segment's tracking API) and refusal letters."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Limits(BaseModel):
    """Size limits for one request and one event."""

    model_config = ConfigDict(frozen=True)

    max_event_bytes: int = 32 * 1024
    max_batch_bytes: int = 500 * 1024
    max_batch_events: int = 2_500
    #: How much of a rejected raw body the dead letter keeps.
    deadletter_raw_bytes: int = 64 * 1024


class RefusalLetters(BaseModel):
    """How refused requests (401: unknown write key) are dead-lettered.

    Counted always, written one by one only up to these numbers per interval (for the
    deployment; each API process writes its share); the others are counted into one summary
    letter per kind and interval that carries their number, so the letters still add up to
    every refusal.
    """

    model_config = ConfigDict(frozen=True)

    interval_s: float = Field(default=60.0, gt=0)
    #: Letters of their own per client address and interval.
    per_address: int = Field(default=5, ge=1)
    #: Letters of their own per interval, all addresses together.
    per_interval: int = Field(default=100, ge=1)
    #: How much of an unauthenticated body a letter keeps.
    raw_bytes: int = Field(default=1024, ge=0)
