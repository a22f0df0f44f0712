"""The audit log: who read personal data in clear, exported, erased, or changed keys/segments.

Each record is published to ``cdp.audit`` (acks=all) *before* the audited answer is given, so
an action the log could not record is refused (503), never done unrecorded. The history
worker copies the topic into ClickHouse (``audit`` table) for queries. Records name tokens,
profile ids, segment and request ids, and counts: never a personal value.
"""

from __future__ import annotations

import getpass
import uuid
from datetime import UTC, datetime

from contracts.privacy import AuditRecord
from runtime.publisher import Publisher, Record


def cli_actor() -> str:
    """The actor of a command run by an operator: ``cli:<login>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "cli:unknown"


class Audit:
    """Write audit records to the audit topic."""

    def __init__(self, publisher: Publisher, topic: str) -> None:
        self._publisher = publisher
        self._topic = topic

    async def record(
        self,
        actor: str,
        action: str,
        target: str = "",
        subjects: int = 0,
        origin: str = "",
        **detail: str | int | bool,
    ) -> AuditRecord:
        """Publish one record and wait for Kafka's acknowledgement; return it."""
        entry = AuditRecord(
            id=uuid.uuid4().hex,
            at=datetime.now(UTC),
            actor=actor,
            action=action,
            target=target,
            subjects=subjects,
            origin=origin,
            detail=detail,
        )
        await self._publisher.publish(
            [Record(self._topic, actor.encode(), entry.model_dump_json().encode())]
        )
        return entry
