"""The merge ledger (``cdp.identity.merges``): every merge and every refused merge."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class Decision(StrEnum):
    """What identity decided about two profiles or an identifier."""

    MERGED = "merged"
    REFUSED = "refused"
    #: An operator split a profile (``POST /v1/identity/splits``): the two are kept apart.
    SPLIT = "split"


class Rule(StrEnum):
    """The rule that allowed or refused a merge."""

    SHARED_IDENTIFIER = "shared_identifier"
    UNIQUE_CONFLICT = "unique_conflict"
    CAP = "cap"
    BLOCKLIST = "blocklist"
    SUPERNODE = "supernode"
    #: The value failed its type's validation (an email without a domain, a phone that is not
    #: a number: "call me", "无"): it identifies nobody, so it never links profiles.
    INVALID = "invalid"
    #: The two were split by an operator and are kept apart.
    SPLIT = "split"


class LedgerEntry(BaseModel):
    """One identity decision, with the event that triggered it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = 1
    decision: Decision
    rule: Rule
    #: The surviving (merge) or event's (refusal) profile.
    profile_id: str
    #: The merged-away profile, or the profile a refused merge would have joined.
    other_profile_id: str | None
    #: The identifier (``type:value``) that bridged or was refused.
    identifier: str
    event_id: str
    at: datetime
