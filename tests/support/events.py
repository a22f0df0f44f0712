"""Build contract events for tests that feed the processors' steps directly."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from contracts.events import Event, Identifier


def ev(
    n: int, kind: str, channel: str, ids: list[tuple[str, str]], at: datetime, **kw: Any
) -> Event:
    """Event ``e<n>`` of ``kind`` from ``channel`` at ``at``; ``traits=``/``consent=`` go to
    their fields, other keywords are properties."""
    return Event(
        event_id=f"e{n}",
        type=kind,
        name=kind,
        channel=channel,
        source=channel,
        identifiers=[Identifier(type=t, value=v) for t, v in ids],
        traits=kw.pop("traits", {}),
        consent=kw.pop("consent", {}),
        properties=kw,
        original_timestamp=at,
        received_at=at,
        timestamp=at,
    )
