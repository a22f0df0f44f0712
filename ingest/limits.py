"""Request limits (the same as Segment's tracking API), rate limits and refusal letters."""

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


class RateLimits(BaseModel):
    """Token buckets per client address and per write key, for the whole deployment.

    Each API process enforces its share (the rate and burst divided by the number of API
    processes serving the port). 0 turns a limit off.
    """

    model_config = ConfigDict(frozen=True)

    #: Requests per second from one client address (an IPv6 client: its /64), whatever they
    #: carry and whether or not their write key is known.
    address_requests_per_s: float = Field(default=1_000.0, ge=0)
    address_burst: int = Field(default=2_000, ge=1)
    #: Events per second under one write key: the messages a request carries, counted before
    #: they are validated. A request is let through while its bucket holds at least one and
    #: takes all its events from it, so a batch larger than the burst still passes.
    key_events_per_s: float = Field(default=10_000.0, ge=0)
    key_burst: int = Field(default=20_000, ge=1)


class RefusalLetters(BaseModel):
    """How refused requests (401 unknown write key, 429 over a rate limit) are dead-lettered.

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
    #: How much of an unauthenticated body a letter keeps (a 429's letter keeps none: its
    #: client sends it again).
    raw_bytes: int = Field(default=1024, ge=0)
