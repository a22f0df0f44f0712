"""The identity processor: cdp.events.raw -> cdp.events.resolved + cdp.identity.merges."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Any

import structlog

from contracts.events import Event
from contracts.topics import EVENTS_DEADLETTER, EVENTS_RAW, EVENTS_RESOLVED, IDENTITY_MERGES
from identity.store import Located, Outcome
from runtime.agents import batch_agent
from runtime.metrics import count_ledger
from runtime.publisher import Record
from runtime.retry import until_done
from runtime.undecodable import dead_letters, split

log = structlog.get_logger()


def decode(events: list[Any]) -> tuple[list[Located], list[Any]]:
    """Split faust events into decodable ones (with their offsets) and undecodable ones."""
    good, bad = split(Event, events)
    return [Located(e, ev.message.partition, ev.message.offset) for e, ev in good], bad


class IdentityStep:
    """One micro-batch of raw events: decode, resolve, and the records it publishes."""

    def __init__(self, deps: Any) -> None:
        self.deps = deps
        self.resolved_topic = deps.topic(EVENTS_RESOLVED.name)
        self.ledger_topic = deps.topic(IDENTITY_MERGES.name)
        self.dead_topic = deps.topic(EVENTS_DEADLETTER.name)

    async def resolve(
        self, events: list[Any], now: datetime
    ) -> tuple[list[Located], list[Outcome], list[Record]]:
        """Resolve the decodable events; return them, their outcomes and the records to publish
        (dead letters for the undecodable, resolved events and ledger entries for the rest)."""
        batch, bad = decode(events)
        records = dead_letters(bad, "identity", self.dead_topic)
        outcomes = await until_done(
            "identity.resolve", partial(self.deps.identity.resolve, batch, now)
        )
        for o in outcomes:
            if not o.kept:
                continue
            key = o.resolved.profile_id.encode()
            records.append(Record(self.resolved_topic, key, o.resolved.model_dump_json().encode()))
            records += [
                Record(self.ledger_topic, e.profile_id.encode(), e.model_dump_json().encode())
                for e in o.ledger
            ]
        count_ledger((e.decision, e.rule) for o in outcomes if o.kept for e in o.ledger)
        return batch, outcomes, records

    async def run(self, events: list[Any]) -> None:
        """Resolve one batch, publish its records (acked), then release its held outcomes."""
        batch, _, records = await self.resolve(events, datetime.now(UTC))
        await until_done("identity.publish", partial(self.deps.publisher.publish, records))
        await until_done("identity.settle", partial(self.deps.identity.settle, batch))


def register(app: Any, deps: Any) -> None:
    """Add the identity agent to ``app``."""
    batch_agent(app, deps, EVENTS_RAW.name, "identity", IdentityStep(deps).run)
