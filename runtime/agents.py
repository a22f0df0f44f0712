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

    A ``batch_loop`` that raised acks nothing, but its task would end and its topic go
    unread until a restart (and a faust agent's ``take_events`` acks its batch when the
    generator closes, which an exception does: the failed batch would be lost). The error
    policy (``runtime.retry``) has already retried what is transient, so what reaches here
    is a bug: the process ends at once (exit 1) and its supervisor starts it again from the
    last committed offsets, replaying the batch (docs/operations.md).
    """
    try:
        yield
    except Exception:
        log.critical("processor.crashed", agent=agent, exc_info=True)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(EXIT_FAILED)


def batch_loop(
    app: Any,
    topic: str,
    name: str,
    size: int,
    within: float,
    body: Callable[[list[Any]], Awaitable[None]],
) -> None:
    """Run ``body`` on each micro-batch of topic ``topic`` (its full name) in ``app``.

    A batch is up to ``size`` messages gathered for at most ``within`` seconds, each with
    its faust ``message`` (``app.batches``: deploy/fastfaust.py). Its offsets are acked when
    the loop asks for the next batch, i.e. after ``body`` returned: an offset is committed
    only once its effects are stored and published.
    """
    source = app.topic(topic, key_serializer="raw", value_serializer="raw")
    batches = app.batches(source, size, within)

    async def loop() -> None:
        # Anything raised outside ``body`` too ends the process: a task that ended would
        # leave its topic unread until a restart, with nothing but lag to show for it.
        with fatal(name):
            async for events in batches:
                await body(events)

    loop.__name__ = loop.__qualname__ = name
    app.task(loop)


def batch_agent(
    app: Any, deps: Any, topic: str, name: str, step: Callable[[list[Any]], Awaitable[None]]
) -> None:
    """Add processor ``name`` on registry topic ``topic`` to ``app``: ``step`` gets each
    batch (``batch_loop``). A step that fails for good ends the process (``fatal``) before
    anything is acked."""
    conf = deps.settings.worker

    async def run(events: list[Any]) -> None:
        with fatal(name), metrics.batch(name, len(events)):
            await step(events)

    batch_loop(app, deps.topic(topic), name, conf.batch_size, conf.batch_within_s, run)
