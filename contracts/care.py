"""Care and follow-up tasks (``cdp.care.tasks``): what a service desk or marketing tool acts on."""

from __future__ import annotations

import hashlib
from datetime import date, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class CareState(StrEnum):
    """Where a task stands: open until a follow-up (or someone) closes it."""

    OPEN = "open"
    CLOSED = "closed"


def task_id(rule: str, profile_id: str, occasion: date) -> str:
    """The id of ``rule``'s task for ``profile_id`` on ``occasion``: the same on a replay, a
    retry or a second worker, so an occasion makes one task."""
    text = f"{rule}:{profile_id}:{occasion.isoformat()}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class CareTask(BaseModel):
    """One care or follow-up task as written to ``cdp.care.tasks`` (key = task id).

    The topic is compacted: the last record of a task is its current state.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    #: ``task_id(rule, profile_id, occasion)``: 32 hex characters.
    task_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    #: The care rule that made it (``cdp care rules``).
    rule: str
    #: The rule's name, for the people acting on it.
    title: str
    profile_id: str
    #: The day the task is about: the birthday, the anniversary, the day a complaint was
    #: resolved, the day a tag was entered (in the rules' time zone).
    occasion: date
    #: What fired it: ``tag_entered:<tag>``, ``date:<field>`` or ``after_event:<type>``.
    trigger: str
    #: The change or event that fired it, or ``care:due`` for a time that came.
    cause: str
    state: CareState
    #: When the rule made it due.
    due_at: datetime
    created_at: datetime
    closed_at: datetime | None = None
    #: The event id of the follow-up that closed it, or ``api:<token name>``/``cli:<user>``.
    closed_by: str | None = None
