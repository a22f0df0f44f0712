"""A generated history (profiles, events, merges) written through the real history writer,
and the same data as pandas frames for independent computations."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from contracts.events import Channel, Event, EventType, Identifier, ResolvedEvent
from contracts.identity import Decision, LedgerEntry, Rule
from contracts.profiles import ChannelActivity, Profile
from sinks.history import SNAPSHOT_COLUMNS, Batch, HistoryWriter, event_batches, ledger_batch

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
CITIES = ["上海", "Beijing", "Shenzhen", "Hangzhou", 'Xi\'an "West"']
TAGS = ["vip_customer", "core_customer", "churn_risk", "new_customer"]
CATEGORIES = ["shoes", "bags", "beauty", "kids"]


@dataclass
class History:
    """What was written: profiles (survivors and merged-away), events, aliases."""

    profiles: list[Profile]
    events: list[ResolvedEvent]
    #: merged id -> the profile it was merged into (one hop; chains exist).
    aliases: dict[str, str]

    def survivor(self, pid: str) -> str:
        """Follow the alias chain to its end."""
        while pid in self.aliases:
            pid = self.aliases[pid]
        return pid

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(profiles of survivors, events with their survivor) as data frames."""
        rows = []
        for p in self.profiles:
            if p.profile_id in self.aliases:
                continue
            rows.append(
                {
                    "profile_id": p.profile_id,
                    "city": p.traits.get("city"),
                    "age": p.traits.get("age"),
                    "tags": set(p.tags),
                    "sms": p.consent.get("sms"),
                    "nps_class": p.nps_class,
                    "store_visits": p.store_visits,
                    "channels": set(p.channels),
                    "order_count": p.order_count,
                    "last_purchase_at": p.last_purchase_at,
                }
            )
        events = [
            {
                "profile_id": r.profile_id,
                "survivor": self.survivor(r.profile_id),
                "type": r.event.type.value,
                "timestamp": r.event.timestamp,
                "amount": float(r.event.properties.get("total", 0)),
                "category": r.event.properties.get("category"),
                "csat": r.event.properties.get("csat"),
                "ticket_type": r.event.properties.get("type"),
            }
            for r in self.events
        ]
        return pd.DataFrame(rows), pd.DataFrame(events)


def _profile(pid: str, rng: random.Random) -> Profile:
    traits: dict[str, Any] = {}
    if rng.random() < 0.8:
        traits["city"] = rng.choice(CITIES)
    if rng.random() < 0.7:
        traits["age"] = rng.randint(16, 70)
    consent = {} if rng.random() < 0.3 else {"sms": rng.random() < 0.6}
    nps = rng.choice([None, None, 3, 6, 7, 8, 9, 10])
    nps_class = (
        None if nps is None else "promoter" if nps >= 9 else "passive" if nps >= 7 else "detractor"
    )
    chans = rng.sample([c.value for c in Channel][:6], rng.randint(1, 3))
    last_purchase = NOW - timedelta(days=rng.randint(0, 500)) if rng.random() < 0.7 else None
    return Profile(
        profile_id=pid,
        identifiers=[f"member_id:{pid}"],
        traits=traits,
        first_seen=NOW - timedelta(days=600),
        last_seen=NOW - timedelta(days=rng.randint(0, 300)),
        channels={c: ChannelActivity(first_seen=None, last_seen=None, events=1) for c in chans},
        events=rng.randint(1, 50),
        order_count=rng.randint(0, 20),
        total_spend=0.0,
        average_spend=None,
        first_purchase_at=None,
        last_purchase_at=last_purchase,
        refund_total=0.0,
        categories=[],
        csat_last=None,
        csat_average=None,
        csat_count=0,
        nps_last=nps,
        nps_class=nps_class,
        complaints=0,
        open_tickets=0,
        follow_ups=0,
        points_earned=0,
        points_redeemed=0,
        points_balance=0,
        coupons_redeemed=0,
        store_visits=rng.randint(0, 5),
        consent=consent,
        tags=sorted(t for t in TAGS if rng.random() < 0.25),
    )


def _event(n: int, pid: str, rng: random.Random) -> Event:
    kind = rng.choices(
        [
            EventType.ORDER_COMPLETED,
            EventType.STORE_VISITED,
            EventType.SURVEY_ANSWERED,
            EventType.TICKET_OPENED,
        ],
        weights=[5, 3, 1, 1],
    )[0]
    ts = NOW - timedelta(days=rng.uniform(0, 400))
    props: dict[str, Any] = {}
    if kind == EventType.ORDER_COMPLETED:
        props = {
            "order_id": f"O{n}",
            "total": round(rng.uniform(5, 2500), 2),
            "category": rng.choice(CATEGORIES),
        }
    elif kind == EventType.SURVEY_ANSWERED:
        props = {"csat": rng.randint(1, 5)} if rng.random() < 0.8 else {"nps": rng.randint(0, 10)}
    elif kind == EventType.TICKET_OPENED:
        props = {"ticket_id": f"T{n}", "type": rng.choice(["complaint", "question"])}
    return Event(
        event_id=f"ev-{n}",
        type=kind,
        name=kind.value,
        channel=Channel.POS,
        source="pos",
        identifiers=[Identifier(type="member_id", value=pid)],
        properties=props,
        original_timestamp=ts,
        received_at=ts,
        timestamp=ts,
    )


def generate(seed: int, profiles: int, events: int) -> History:
    """Profiles p0..pN with events; ~15% merged into an older profile, some in chains."""
    rng = random.Random(seed)
    ids = [f"p{n:06d}" for n in range(profiles)]
    aliases: dict[str, str] = {}
    for n in range(1, profiles):
        if rng.random() < 0.15:
            aliases[ids[n]] = ids[rng.randrange(0, n)]  # into an older one: chains happen
    made = [_profile(pid, rng) for pid in ids]
    evs = []
    for n in range(events):
        pid = rng.choice(ids)
        evs.append(
            ResolvedEvent(event=_event(n, pid, rng), profile_id=pid, raw_partition=0, raw_offset=n)
        )
    return History(made, evs, aliases)


def write(history: History, writer: HistoryWriter) -> None:
    """Insert the history through the writer's real batches (events, aliases, snapshots)."""
    items = [(r, n % 4, n) for n, r in enumerate(history.events)]
    for start in range(0, len(items), 20_000):
        for batch in event_batches("resolved", items[start : start + 20_000], NOW):
            writer.write(batch)
    ledger = [
        LedgerEntry(
            decision=Decision.MERGED,
            rule=Rule.SHARED_IDENTIFIER,
            profile_id=survivor,
            other_profile_id=merged,
            identifier=f"email:{merged}@example.com",
            event_id=f"merge-{merged}",
            at=NOW,
        )
        for merged, survivor in history.aliases.items()
    ]
    for batch in ledger_batch(ledger, "ledger:0"):
        writer.write(batch)
    writer.write(snapshot_batch(history.profiles, 1, NOW, "snapshots:1"))


def snapshot_batch(profiles: list[Profile], version: int, at: datetime, token: str) -> Batch:
    """A ``profile_snapshots`` batch of ``profiles`` built as models (what the history stores
    of a profile read from Redis is the same JSON)."""
    rows = [[p.profile_id, p.model_dump_json(), version, at] for p in profiles]
    return Batch("profile_snapshots", SNAPSHOT_COLUMNS, rows, token)
