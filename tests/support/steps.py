"""The stream's dependencies on the real services, driven step by step from a test."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from contracts.events import Event, ResolvedEvent
from deploy.settings import Settings
from deploy.worker import build_deps
from identity.store import Located


class StepWorld:
    """A stream worker's dependencies (identity, profiles, tags: real Redis), built as the
    worker builds them and run on an event loop of the test's own."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.settings = settings
        self.deps = build_deps(settings, ["identity", "profiles"])
        assert self.deps.tags is not None

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def resolve_at(self, events: list[Event], offset: int, now: datetime) -> list[ResolvedEvent]:
        """Resolve ``events`` as read from partition 0 at ``offset`` onwards."""
        located = [Located(e, 0, offset + n) for n, e in enumerate(events)]
        return [o.resolved for o in self.run(self.deps.identity.resolve(located, now))]

    def close(self) -> None:
        self.run(self.deps.redis.aclose())
        self.loop.close()
