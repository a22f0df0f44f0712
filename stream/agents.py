"""The one-pass processor: cdp.events.raw -> identity -> fold -> tags, one micro-batch each.

A worker with both the identity and the profiles role runs this instead of the two agents:
each raw event is decoded once and resolved, folded and tagged in the same batch, with no
round trip through ``cdp.events.resolved`` (which is still published, with the merge ledger
and the profile changes, for other services and the history sink). Every effect stays
idempotent as in the two-agent layout: identity holds each outcome until the batch's records
are acknowledged (a redelivery replays it), the fold applies each raw offset once per profile
and holds its change until then (a redelivery answers it again), and both are settled only
after the one publish of all the batch's records.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Any

from contracts.topics import EVENTS_RAW
from identity.agents import IdentityStep
from profiles.agents import ProfileStep
from runtime.agents import batch_agent
from runtime.metrics import observe_freshness
from runtime.retry import until_done


class StreamStep:
    """One raw micro-batch through identity, fold and tags; one acked publish; then settle."""

    def __init__(self, deps: Any) -> None:
        self.deps = deps
        self.identity = IdentityStep(deps)
        self.profiles = ProfileStep(deps)

    async def run(self, events: list[Any]) -> None:
        """Process one batch of raw faust events."""
        now = datetime.now(UTC)
        batch, outcomes, records = await self.identity.resolve(events, now)
        resolved = [o.resolved for o in outcomes if o.kept]
        folded, shots = await self.profiles.records(resolved, [], now)
        records += folded
        deps = self.deps
        await until_done("stream.publish", partial(deps.publisher.publish, records))
        observe_freshness("profile", [r.event.received_at for r in resolved])
        await until_done("identity.settle", partial(deps.identity.settle, batch))
        await until_done("profiles.settle", partial(deps.profiles.settle, resolved, shots))


def register(app: Any, deps: Any) -> None:
    """Add the one-pass agent on ``cdp.events.raw`` to ``app``."""
    batch_agent(app, deps, EVENTS_RAW.name, "stream", StreamStep(deps).run)
