"""The profile processor: cdp.events.resolved -> Redis profiles + cdp.profiles.changes."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Any

from contracts.events import ResolvedEvent
from contracts.topics import EVENTS_DEADLETTER, EVENTS_RESOLVED, PROFILES_CHANGES
from deploy.retry import until_done
from deploy.undecodable import dead_letters, split
from ingest.publisher import Record


def decode(events: list[Any]) -> tuple[list[ResolvedEvent], list[Any]]:
    """Split faust events into resolved events and undecodable messages."""
    good, bad = split(ResolvedEvent, events)
    return [r for r, _ in good], bad


def register(app: Any, deps: Any) -> None:
    """Add the profile agent to ``app``."""
    source = app.topic(
        deps.topic(EVENTS_RESOLVED.name), key_serializer="raw", value_serializer="raw"
    )
    changes_topic = deps.topic(PROFILES_CHANGES.name)
    dead_topic = deps.topic(EVENTS_DEADLETTER.name)
    conf = deps.settings.worker

    @app.agent(source, name="profiles")
    async def profiles(stream: Any) -> None:
        async for events in stream.take_events(conf.batch_size, within=conf.batch_within_s):
            batch, bad = decode(list(events))
            now = datetime.now(UTC)
            applied = await until_done("profiles.apply", partial(deps.profiles.apply, batch, now))
            records = dead_letters(bad, "profiles", dead_topic)
            records += [
                Record(changes_topic, a.profile_id.encode(), a.change.model_dump_json().encode())
                for a in applied
                if a.change is not None
            ]
            await until_done("profiles.publish", partial(deps.publisher.publish, records))
