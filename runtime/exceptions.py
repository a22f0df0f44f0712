"""Errors of the shared plumbing."""

from __future__ import annotations

from contracts.errors import CDPError


class KafkaUnavailable(CDPError):
    """Kafka did not acknowledge in time: the caller must retry (503 at the API)."""
