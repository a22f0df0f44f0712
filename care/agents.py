"""The care processor: profile changes and resolved events in, ``cdp.care.tasks`` out.

It reads the topics other services read (tag entries from ``cdp.profiles.changes``,
follow-ups and resolutions from ``cdp.events.resolved``) in a consumer group of its own, so
the stream's hot path does not change. A timer makes the tasks of occasions that fell due
and sends due webhook deliveries.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from functools import partial
from typing import Any

import httpx
import structlog

from care.delivery import Webhook
from care.processor import Care
from care.rules import for_catalog
from care.store import CareStore
from contracts.events import ResolvedEvent
from contracts.privacy import Erasure
from contracts.profiles import ProfileChange
from contracts.topics import (
    CARE_TASKS,
    EVENTS_DEADLETTER,
    EVENTS_RESOLVED,
    PRIVACY_ERASURES,
    PROFILES_CHANGES,
)
from runtime.agents import batch_agent
from runtime.retry import until_done
from runtime.undecodable import split
from tagging.catalog import Catalog

log = structlog.get_logger()


def build(deps: Any, catalog: Catalog) -> Care:
    """The care logic over the worker's Redis, profiles and publisher."""
    settings = deps.settings

    async def publish(records: list[Any]) -> None:
        await until_done("care.publish", partial(deps.publisher.publish, records))

    return Care(
        for_catalog(settings.care.rules, catalog),
        CareStore(deps.redis, settings.worker.namespace),
        deps.profiles,
        catalog.zone,
        publish,
        deps.topic(CARE_TASKS.name),
        deliver=settings.care.webhook_url is not None,
    )


def _decoded(model: Any, events: list[Any], agent: str) -> list[Any]:
    good, bad = split(model, events)
    if bad:
        # These topics' producers dead-letter what they cannot decode; here it is only noted.
        log.warning("care.undecodable", agent=agent, count=len(bad))
    return [value for value, _ in good]


async def backfill(care: Care) -> None:
    """Run the date rules' backfill if they changed since the last one, under a lock."""
    if await care.store.backfilled() == care.fingerprint():
        return
    if not await care.store.lock("backfill", str(os.getpid()), 3600):
        return  # another worker is at it
    try:
        seen = await care.backfill(datetime.now(UTC))
        log.info("care.backfilled", profiles=seen)
    finally:
        await care.store.unlock("backfill")


def register(app: Any, deps: Any, catalog: Catalog) -> Care:
    """Add the care agents and timers to ``app``; return the care logic."""
    care = build(deps, catalog)
    conf = deps.settings.care

    async def changes(events: list[Any]) -> None:
        decoded = _decoded(ProfileChange, events, "care-changes")
        await until_done("care.changes", partial(care.on_changes, decoded, datetime.now(UTC)))

    async def resolved(events: list[Any]) -> None:
        decoded = _decoded(ResolvedEvent, events, "care-events")
        await until_done("care.events", partial(care.on_events, decoded, datetime.now(UTC)))

    async def erasures(events: list[Any]) -> None:
        done = [e for e in _decoded(Erasure, events, "care-erasures") if e.receipt is not None]
        pids = sorted({p for e in done for p in e.receipt.profiles})
        if pids:
            removed = await until_done("care.erase", partial(care.erase, pids))
            log.info("care.erased", profiles=len(pids), tasks=removed)

    batch_agent(app, deps, PRIVACY_ERASURES.name, "care-erasures", erasures)
    batch_agent(app, deps, PROFILES_CHANGES.name, "care-changes", changes)
    batch_agent(app, deps, EVENTS_RESOLVED.name, "care-events", resolved)

    @app.task
    async def care_republish() -> None:
        """Publish the task records a crash left unacknowledged."""
        if n := await until_done("care.republish", care.republish):
            log.info("care.republished", tasks=n)

    @app.task
    async def care_backfill() -> None:
        """Schedule new or changed date rules over existing profiles (one worker at a time)."""
        await until_done("care.backfill", partial(backfill, care))

    @app.timer(conf.interval_s)
    async def care_due() -> None:
        """Make the tasks of occasions that fell due."""
        await until_done("care.due", partial(care.fire_due, datetime.now(UTC)))

    if conf.webhook_url is not None:
        assert conf.webhook_secret is not None
        client = httpx.AsyncClient()
        deps.on_stop.append(client.aclose)
        hook = Webhook(
            conf.webhook_url,
            conf.webhook_secret.get_secret_value().encode(),
            care.store,
            client,
            deps.publisher.publish,
            deps.topic(EVENTS_DEADLETTER.name),
            conf.max_attempts,
            conf.backoff_s,
            conf.backoff_max_s,
            conf.timeout_s,
        )

        @app.timer(conf.interval_s)
        async def care_deliver() -> None:
            """Send the webhook deliveries that are due."""
            await until_done("care.deliver", partial(hook.run_once, datetime.now(UTC)))

    return care
