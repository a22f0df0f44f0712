"""The unified profile as read by other services, and its change records."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ChannelActivity(BaseModel):
    """Presence of a profile in one channel."""

    model_config = ConfigDict(frozen=True)

    first_seen: datetime | None
    last_seen: datetime | None
    events: int


class TraitValue(BaseModel):
    """One of the values channels reported for a trait."""

    model_config = ConfigDict(frozen=True)

    value: Any
    #: The source that reported it last.
    source: str
    #: Events that reported it.
    count: int
    last_seen: datetime


class Profile(BaseModel):
    """One customer (or account) as every channel together knows them."""

    model_config = ConfigDict(frozen=True)

    profile_id: str
    identifiers: list[str]
    traits: dict[str, Any]
    first_seen: datetime | None
    last_seen: datetime | None
    channels: dict[str, ChannelActivity]
    events: int
    order_count: int
    total_spend: float
    average_spend: float | None
    first_purchase_at: datetime | None
    last_purchase_at: datetime | None
    refund_total: float
    categories: list[str]
    csat_last: int | None
    csat_average: float | None
    csat_count: int
    nps_last: int | None
    nps_class: str | None
    complaints: int
    open_tickets: int
    follow_ups: int
    #: Complaint tickets not resolved yet.
    open_complaints: int = 0
    tickets: int = 0
    tickets_resolved: int = 0
    #: Orders per local part of the day (morning 6-12, afternoon 12-18, evening 18-24, night).
    orders_by_daypart: dict[str, int] = Field(default_factory=dict)
    orders_weekend: int = 0
    #: Local months (YYYY-MM) with at least one order.
    purchase_months: list[str] = Field(default_factory=list)
    points_earned: int
    points_redeemed: int
    points_balance: int
    coupons_redeemed: int
    store_visits: int
    member_level: Any = None
    account: dict[str, Any] = Field(default_factory=dict)
    consent: dict[str, bool] = Field(default_factory=dict)
    #: Ids of the catalog tags that hold for this profile (see ``GET /v1/tags``).
    tags: list[str] = Field(default_factory=list)
    #: Traits channels disagree on: every value kept, most reported first (the trait's
    #: value in ``traits`` is the one its policy chose).
    conflicts: dict[str, list[TraitValue]] = Field(default_factory=dict)


class ProfileChange(BaseModel):
    """What one event (or merge) changed in a profile (``cdp.profiles.changes``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = 1
    profile_id: str
    event_id: str
    changed: list[str]
    merged: list[str] = Field(default_factory=list)
    #: Catalog tags the profile gained and lost with this change.
    tags_added: list[str] = Field(default_factory=list)
    tags_removed: list[str] = Field(default_factory=list)
    at: datetime


class ProfileSnapshot(BaseModel):
    """A profile as stored at one moment (``cdp.profiles.snapshots``).

    ``version`` orders the snapshots of one profile: the Redis server's clock (nanoseconds)
    at the moment the profile was read in this state, so snapshots taken by different
    processes order as the changes did. Of two snapshots of one profile, the higher version
    is the newer state.
    """

    model_config = ConfigDict(frozen=True)

    profile_id: str
    version: int
    at: datetime
    profile: Profile


class ProfileSnapshots(BaseModel):
    """The snapshots one micro-batch of the stream left (``cdp.profiles.snapshots``): one
    record carries many, so the topic costs a record per ~hundreds of profiles, not one per
    event. Snapshots of one profile may be in several records, in any order: the highest
    ``version`` is its newest state."""

    model_config = ConfigDict(frozen=True)

    snapshots: list[ProfileSnapshot]
