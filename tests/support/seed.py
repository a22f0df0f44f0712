"""Stored state that earlier builds left, made through the real stores."""

from __future__ import annotations

from datetime import UTC, datetime

import redis.asyncio as aioredis

from contracts.events import Event, Identifier
from deploy.settings import Settings
from identity.store import IdentityStore, Located
from profiles.agents import changed_names
from profiles.store import ProfileStore


async def untagged_profiles(settings: Settings) -> None:
    """Two customers folded into Redis with tagging off (as before a catalog existed)."""
    client = aioredis.from_url(settings.redis.url.get_secret_value())
    ns = settings.worker.namespace
    identity = IdentityStore(client, settings.identity, ns)
    profiles = ProfileStore(client, settings.profiles, ns)
    events = []
    for n, (member, total) in enumerate([("M1", 2500), ("M2", 80)]):
        at = datetime(2026, 1, 5, tzinfo=UTC)
        events.append(
            Located(
                Event(
                    event_id=f"e{n}",
                    type="order_completed",
                    name="Order Completed",
                    channel="pos",
                    source="pos",
                    identifiers=[Identifier(type="member_id", value=member)],
                    properties={"order_id": f"O{n}", "total": total},
                    original_timestamp=at,
                    received_at=at,
                    timestamp=at,
                ),
                0,
                n,
            )
        )
    resolved = [o.resolved for o in await identity.resolve(events, events[0].event.timestamp)]
    applied = await profiles.apply(resolved, events[0].event.timestamp)
    assert len(changed_names(applied)) == 2
    await client.aclose()
