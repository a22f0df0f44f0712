"""Errors of the ingest room."""

from __future__ import annotations

from contracts.deadletter import DeadLetterReason
from contracts.errors import CDPError


class IngestError(CDPError):
    """Base class of ingest errors."""


class Rejected(IngestError):
    """An input the client must fix: carries the status, code and field to report."""

    def __init__(
        self,
        status: int,
        reason: DeadLetterReason,
        message: str,
        field: str | None = None,
        index: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.field = field
        self.index = index

    def at(self, index: int, prefix: str) -> Rejected:
        """Return this rejection placed at ``prefix[index]`` of a batch."""
        field = f"{prefix}[{index}]" + (f".{self.field}" if self.field else "")
        return Rejected(self.status, self.reason, self.message, field, index)


class Throttled(Rejected):
    """A request over a rate limit: a 429 naming the limit, with when to retry."""

    def __init__(self, message: str, field: str, retry_after_s: int) -> None:
        super().__init__(429, DeadLetterReason.RATE_LIMITED, message, field)
        self.retry_after_s = retry_after_s
