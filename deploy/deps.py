"""The dependencies processors share, built once by the composition root."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from deploy.settings import Settings
from identity.store import IdentityStore
from profiles.store import ProfileStore
from runtime.publisher import Publisher
from tagging.store import TagStore


@dataclass
class Deps:
    """What agents need: settings, stores and the acks=all publisher for their outputs."""

    settings: Settings
    redis: aioredis.Redis
    publisher: Publisher
    identity: IdentityStore
    profiles: ProfileStore
    #: The history writer (owns embedded ClickHouse); None in processes without that role.
    history: Any = None
    #: The history worker's ClickHouse serialiser (sinks/agents.History); None elsewhere.
    clickhouse: Any = None
    #: The history's filter of erased profiles (sinks/agents.Erased); None elsewhere.
    erased: Any = None
    #: Tags (evaluated by the profiles processor); None in processes without that role.
    tags: TagStore | None = None
    #: Live segment membership (segments/agents.py); None without the profiles role or tags.
    membership: Any = None
    #: The scheduled segment refresh; None in processes without the history role.
    refresher: Any = None
    #: Run when the worker stops, before its Redis client and publisher close (in order).
    on_stop: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)

    def topic(self, name: str) -> str:
        """Return a registry topic's deployed name."""
        return self.settings.kafka.topic(name)
