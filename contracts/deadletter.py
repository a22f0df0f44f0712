"""The dead-letter envelope: every rejected input, with why and what it was."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, JsonValue


class DeadLetterReason(StrEnum):
    """Why an input was rejected; one value per distinct client-visible error code."""

    UNAUTHORIZED = "unauthorized"
    MALFORMED_JSON = "malformed_json"
    BAD_ENCODING = "bad_encoding"
    BATCH_TOO_LARGE = "batch_too_large"
    TOO_MANY_EVENTS = "too_many_events"
    EVENT_TOO_LARGE = "event_too_large"
    INVALID_EVENT = "invalid_event"
    MISSING_IDENTIFIER = "missing_identifier"
    #: Over a rate limit per client address or per write key (429).
    RATE_LIMITED = "rate_limited"
    #: A processor read a message that does not match its topic's contract.
    UNDECODABLE = "undecodable"
    #: A care task's webhook refused or missed every delivery attempt (docs/care.md).
    DELIVERY_FAILED = "delivery_failed"


class DeadLetter(BaseModel):
    """A rejected input as written to ``cdp.events.deadletter``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = 1
    reason: DeadLetterReason
    #: Dotted path of the offending field (``batch[3].userId``), or None for whole bodies.
    field: str | None
    message: str
    #: Index of the event in its batch, None when the whole body was rejected.
    index: int | None
    #: HTTP status the client received for this input (200 when the batch itself was accepted).
    status: int
    #: Write-key owner, when the key was known.
    source: str | None
    endpoint: str
    received_at: datetime
    request_id: str
    #: The offending event as parsed JSON, when it parsed.
    payload: JsonValue
    #: The raw bytes as text when the body did not parse (truncated to ``raw_limit``).
    raw: str | None = None
    raw_truncated: bool = False
    raw_sha256: str | None = None
    #: With field encryption on: ``{"payload", "raw"}`` sealed under the day's dead-letter key
    #: (payload and raw are then empty; docs/privacy.md).
    sealed: str | None = None
    #: How many rejected inputs this letter stands for: 1, or for a summary letter the
    #: refusals of its kind (reason, status, field, source, endpoint) that were counted but
    #: not written one by one (docs/architecture.md, "Refused requests"). The sum over the
    #: topic is the number of rejections. A summary's payload names its busiest client
    #: addresses.
    count: int = Field(default=1, ge=1)
    #: A summary letter: when the first of its refusals was received (``received_at``: the last).
    since: datetime | None = None
    #: A refused request's write key as SHA-256 (how sources store theirs): a re-drive finds
    #: the source once that key is added. Never the key itself.
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    #: A letter written by a re-drive (the input failed again): the id of the letter first
    #: re-driven (``<partition>-<offset>`` on this topic), whatever re-drive this was.
    redrive_of: str | None = None
