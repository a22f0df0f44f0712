"""Errors of the shared plumbing."""

from __future__ import annotations

from contracts.errors import CDPError


class KafkaUnavailable(CDPError):
    """Kafka did not acknowledge in time: the caller must retry (503 at the API)."""


class StoreUnavailable(CDPError):
    """A store cannot take writes for now (unreachable, its disk full or read-only): the
    caller backs off and retries the same batch, which is idempotent."""
