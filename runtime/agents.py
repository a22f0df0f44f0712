"""A processor's agent: micro-batches of one topic's raw messages, one step per batch."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from runtime import metrics


def batch_agent(
    app: Any, deps: Any, topic: str, name: str, step: Callable[[list[Any]], Awaitable[None]]
) -> None:
    """Add agent ``name`` on registry topic ``topic`` to ``app``: ``step`` gets each batch.

    faust acks a batch's offsets when the agent asks for the next one, i.e. after ``step``
    returned: an offset is committed only once its effects are stored and published.
    """
    source = app.topic(deps.topic(topic), key_serializer="raw", value_serializer="raw")
    conf = deps.settings.worker

    async def consume(stream: Any) -> None:
        async for batch in stream.take_events(conf.batch_size, within=conf.batch_within_s):
            events = list(batch)
            with metrics.batch(name, len(events)):
                await step(events)

    app.agent(source, name=name)(consume)
