"""Change records of ``cdp.profiles.changes`` for tags, as every processor and CLI writes them."""

from __future__ import annotations

from datetime import datetime

from contracts.profiles import ProfileChange
from runtime.publisher import Record
from tagging.store import TagChange


def change_records(topic: str, changes: list[ProfileChange]) -> list[Record]:
    """``changes`` as records of ``cdp.profiles.changes`` (key = profile id)."""
    return [Record(topic, c.profile_id.encode(), c.model_dump_json().encode()) for c in changes]


def tag_only(t: TagChange, cause: str, at: datetime) -> ProfileChange:
    """A change record for tags that changed without an event (time passing, backfill)."""
    ms = int(at.timestamp() * 1000)
    return ProfileChange(
        profile_id=t.profile_id,
        event_id=f"tags:{cause}:{ms}",
        changed=["tags"],
        tags_added=t.added,
        tags_removed=t.removed,
        at=at,
    )
