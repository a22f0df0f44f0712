"""A processor's agent: micro-batches of one topic's raw messages, one step per batch."""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import structlog

from runtime import metrics

log = structlog.get_logger()

#: The exit code of a process that failed while running (deploy/lifecycle.py's EXIT_FAILED).
EXIT_FAILED = 1


@contextmanager
def fatal(agent: str) -> Iterator[None]:
    """End the process, committing nothing more, if the block raises.

    faust acks a batch's events when its ``take_events`` generator is closed, which an
    exception leaving the agent does; its supervisor then restarts the agent, and the
    failed batch's offsets are committed with no effect stored: lost. The error policy
    (``runtime.retry``) has already retried what is transient, so what reaches here is a
    bug: the process ends at once (exit 1) and its supervisor starts it again from the last
    committed offsets, replaying the batch (docs/operations.md).
    """
    try:
        yield
    except Exception:
        log.critical("processor.crashed", agent=agent, exc_info=True)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(EXIT_FAILED)


def batch_agent(
    app: Any, deps: Any, topic: str, name: str, step: Callable[[list[Any]], Awaitable[None]]
) -> None:
    """Add agent ``name`` on registry topic ``topic`` to ``app``: ``step`` gets each batch.

    faust acks a batch's offsets when the agent asks for the next one, i.e. after ``step``
    returned: an offset is committed only once its effects are stored and published. A
    step that fails for good ends the process (``fatal``) before anything is acked.
    """
    source = app.topic(deps.topic(topic), key_serializer="raw", value_serializer="raw")
    conf = deps.settings.worker

    async def consume(stream: Any) -> None:
        async for batch in stream.take_events(conf.batch_size, within=conf.batch_within_s):
            events = list(batch)
            with fatal(name), metrics.batch(name, len(events)):
                await step(events)

    app.agent(source, name=name)(consume)
