"""Data-subject rights and accountability: erasure records and audit records.

Neither carries personal data: a person is named by profile ids and, at most, the type of
the identifier they were found by.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Note = Annotated[str, StringConstraints(max_length=500)]


class ErasureState(StrEnum):
    """Where an erasure is."""

    REQUESTED = "requested"
    COMPLETED = "completed"


class TopicFate(BaseModel):
    """What the erasure could do about one Kafka topic, which cannot edit its log."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topic: str
    #: ``tombstoned`` (compacted: the person's records are replaced by tombstones),
    #: ``unreadable`` (retained: the person's values are sealed under destroyed keys) or
    #: ``until_retention`` (retained, in clear: gone when retention deletes the segments).
    fate: str
    #: When retention will have deleted every record written before the erasure (None: never,
    #: a compacted topic).
    gone_by: datetime | None = None


class Receipt(BaseModel):
    """What an erasure removed, where, and when it completed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    completed_at: datetime
    #: Every profile id erased: the person's and those merged into it.
    profiles: list[str]
    #: Identifiers of the person erased and suppressed.
    identifiers: int
    #: Identifiers also held by another profile (a family phone): kept for that person,
    #: neither suppressed nor shredded.
    shared_identifiers_kept: int
    #: Redis: profiles, identifier links, keys and other entries removed.
    redis: dict[str, int]
    #: ClickHouse: rows deleted per table.
    clickhouse: dict[str, int]
    #: Data keys destroyed (with field encryption; 0 without).
    keys_shredded: int
    kafka: list[TopicFate]


class Erasure(BaseModel):
    """An erasure of one person, as ``cdp.privacy.erasures`` carries it (key: its id)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = 1
    id: str
    state: ErasureState
    #: Token name (API) or ``cli:<user>`` of who asked; with dual approval, who approved.
    requested_by: str
    approved_by: str | None = None
    requested_at: datetime
    #: How the person was named: an identifier type (``phone``) or ``profile``; never a value.
    found_by: str
    #: The profile ids found when it was asked (the erasure follows later merges).
    profile_ids: list[str]
    #: A reference the requester gave (a ticket number); not personal data.
    reference: Note | None = None
    receipt: Receipt | None = None


class AuditRecord(BaseModel):
    """One audited action, as ``cdp.audit`` carries it. Never holds personal data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = 1
    id: str
    at: datetime
    #: Token name, ``cli:<user>``, or ``system`` (a processor acting on a request).
    actor: str
    #: Dotted verb, e.g. ``profile.read_clear``, ``subject.export``, ``erasure.requested``.
    action: str
    #: What it acted on: a profile id, segment id, erasure id, request id; never a value.
    target: str = ""
    #: How many people it touched (a segment export: its rows).
    subjects: int = 0
    #: Where it came from: the client address, or ``cli``.
    origin: str = ""
    #: Counts and names that explain it (no personal data).
    detail: dict[str, str | int | bool] = Field(default_factory=dict)


class ApprovalState(StrEnum):
    """Where a request for a second person's approval is."""

    PENDING = "pending"
    APPROVED = "approved"
    #: Carried out (an export downloaded, a rotation run): an approval is used once.
    USED = "used"


class Approval(BaseModel):
    """A bulk action on personal data, asked by one token and approved by another."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    #: ``erasure`` (of more people than the threshold), ``export`` (in clear) or
    #: ``rotate-master``.
    action: str
    #: Profile ids (never identifier values) the action is about; empty for a rotation.
    profile_ids: list[str] = Field(default_factory=list)
    state: ApprovalState
    requested_by: str
    requested_at: datetime
    expires_at: datetime
    approved_by: str | None = None
    #: What approving started (the erasures' ids).
    outcome: list[str] = Field(default_factory=list)
