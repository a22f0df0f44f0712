"""faust with one flow-control wait per fetched batch instead of one per message.

faust-streaming's fetch loop (``Consumer._drain_messages``) hands every message to the
conductor through ``Service.wait_first(callback(message), suspend_flow.wait())``: two new
tasks, an ``asyncio.wait`` and their cleanup, per message. Measured on this machine that is
about a third of the ~115 µs of CPU a do-nothing agent spends per event (docs/benchmarks.md).

Here the same loop delivers the whole batch that ``getmany`` returned inside a single
``wait_first``. The semantics that matter are kept: messages are delivered in offset order,
read offsets, gaps and ``commit_every`` are tracked per message as faust does, and when a
rebalance suspends the flow the delivery is cancelled, so nothing after that point is marked
read (the next assignment fetches it again from the committed offset).

The loop mirrors ``faust.transport.consumer.Consumer._drain_messages`` of faust-streaming 0.15,
which pyproject.toml pins (<0.16); check it against the new loop before raising the pin.

Topics read in micro-batches (every processor here: ``App.batches``) skip faust's
per-message path altogether: the fetch loop hands each fetched list of their messages to
the topic's batch queue, and the loop reading it takes micro-batches of up to ``size``
messages, gathered for at most ``within`` seconds. No faust event, channel queue or stream
per message (~88 µs of CPU each on this machine, against 24 µs this way, measured by
bench/components.py); the messages are still tracked as unacknowledged until the batch
after them is asked for, so faust's commits, rebalances and stops treat them as an agent's
events.

A stopping app waits for the batches in progress only so long (``App._consumer_wait_empty``):
faust waits for them without end, and a batch retrying against a Redis that is down never
ends, so neither would the stop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import faust
import structlog
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as driver
from faust.types import ConsumerT
from mode import Service
from mode.utils.queues import ThrowableQueue

from deploy.lifecycle import STOP

log = structlog.get_logger()

#: Share of the stop's bound given to the batches in progress; the rest is for the agents,
#: the last commit, the producer's flush and the child processes.
WAIT_SHARE = 0.5


class Delivered:
    """A message as a batch loop gets it: ``message`` is faust's ``ConsumerMessage``."""

    __slots__ = ("message",)

    def __init__(self, message: Any) -> None:
        self.message = message


class BatchQueue(ThrowableQueue[Any]):
    """Fetched lists of one topic's messages; a rebalance clears it and bumps ``generation``
    (faust clears every flow-controlled queue when partitions are revoked)."""

    generation = 0

    def clear(self) -> None:
        self.generation += 1
        super().clear()


class Batches:
    """Micro-batches of one topic's messages, straight from the fetch loop (``App.batches``).

    Iterate it: each batch is a list of :class:`Delivered`, at most ``size`` long, gathered
    for at most ``within`` seconds from its first message. A batch's messages are acked when
    the next batch is asked for (after the loop's body finished), never when the iteration
    ends otherwise: a body that raised leaves them unacked, to be read again.
    """

    #: Fetched messages are queued in lists of at most this many; the fetch loop waits
    #: (back-pressure) while two batches' worth, or at least 4 lists, are queued.
    CHUNK = 500

    def __init__(self, app: Any, size: int, within: float) -> None:
        self.app = app
        self.size = size
        self.within = within
        queued = max(4, -(-2 * size // self.CHUNK))
        self.queue = BatchQueue(maxsize=queued, flow_control=app.flow_control, clear_on_resume=True)

    async def put(self, messages: list[Any]) -> bool:
        """Queue fetched ``messages`` (in fetch order); waits while the queue is full.

        A rebalance clears the queue, and cancels a put waiting for room: then the rest is
        dropped, unacked, as faust drops what its own queues held (fetched before the
        revoke, they are fetched again after the seek to the committed offsets that
        follows it, by this consumer or the partition's new owner), and this returns False.
        That ends the delivery, never the fetch loop: a fetcher that raises stops the worker.
        """
        generation = self.queue.generation
        for start in range(0, len(messages), self.CHUNK):
            try:
                await self.queue.put((generation, messages[start : start + self.CHUNK]))
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if generation == self.queue.generation or (task and task.cancelling()):
                    raise  # the task itself is being cancelled
                return False
        return True

    async def _get(self, timeout: float | None) -> tuple[int, list[Any]] | None:
        try:
            got: tuple[int, list[Any]] = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None
        return got

    async def __aiter__(self) -> AsyncIterator[list[Delivered]]:
        loop = asyncio.get_running_loop()
        pending: list[Any] = []
        generation = self.queue.generation
        deadline = 0.0
        while True:
            timeout = None if not pending else max(0.0, deadline - loop.time())
            got = None if len(pending) >= self.size else await self._get(timeout)
            if generation != self.queue.generation:
                # A rebalance: what is held may be another consumer's to process now.
                pending, generation = [], self.queue.generation
            if got is not None:
                fetched, messages = got
                if fetched == generation:  # not fetched before the rebalance
                    if not pending:
                        deadline = loop.time() + self.within
                    pending.extend(messages)
                # Held no longer than needed: faust's wait at a rebalance ends when the
                # messages it dropped are acked or garbage.
                del got, messages
                continue
            if not pending:
                continue
            batch, pending = pending[: self.size], pending[self.size :]
            yield [Delivered(m) for m in batch]
            consumer = self.app.consumer
            for message in batch:
                message.ack(consumer)  # the last of the topic's loops to ack it acks the offset
            deadline = loop.time() + self.within


class BatchedConsumer(driver.Consumer):
    """The aiokafka consumer with batch-level flow control in the fetch loop."""

    async def _deliver(self, batch: list[tuple[Any, Any]]) -> None:
        callback = self.callback
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        routes: dict[str, list[Batches]] = cast(Any, self.app).batch_routes
        routed: dict[str, list[Any]] = {}
        track = self.track_message
        for n, (tp, message) in enumerate(batch):
            offset = message.offset
            r_offset = read_offset[tp]
            if r_offset is not None and offset < r_offset:
                continue  # already delivered before a seek: faust drops these too
            gap = offset - (r_offset or 0)
            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                await self._add_gap(tp, r_offset + 1, offset)
            if commit_every is not None and self._n_acked >= commit_every:
                self._n_acked = 0
                await self.commit()
            readers = routes.get(message.topic)
            if readers:
                message.incref(len(readers))
                track(message)
                routed.setdefault(message.topic, []).append(message)
                read_offset[tp] = offset
                continue
            await callback(message)
            read_offset[tp] = offset
            if n % 100 == 99:
                await asyncio.sleep(0)  # let health checks and other agents run
        for topic, messages in routed.items():
            for route in routes[topic]:
                if not await route.put(messages):
                    return  # a rebalance: the rest was fetched before it too

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - faust loop
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = cast(AsyncIterator[Any], self.getmany(timeout=1.0))
                await self.sleep(0)
                if not self.should_stop:
                    batch = [item async for item in ait]
                    if batch:
                        deliver = self._deliver(batch)
                        del batch  # see below
                        await self.wait_first(deliver, self.suspend_flow.wait())
                        # faust's wait for in-flight messages at a rebalance waits until
                        # every tracked one is acked or garbage (a weak set): what a
                        # rebalance dropped must not stay referenced here meanwhile.
                        del deliver
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


class Transport(driver.Transport):
    """The aiokafka transport using :class:`BatchedConsumer`."""

    Consumer = BatchedConsumer


class App(faust.App):
    """A faust app whose consumer delivers fetched batches with one flow-control wait."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: topic name -> the batch loops reading it (``batches``)
        self.batch_routes: dict[str, list[Batches]] = {}

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)

    def batches(self, topic: Any, size: int, within: float) -> Batches:
        """Subscribe to ``topic`` and return its micro-batches (:class:`Batches`), for one
        loop to iterate. Several loops may read one topic: each gets every message, and an
        offset is acked once all of them have acked it."""
        route = Batches(self, size, within)
        for name in topic.topics:
            self.batch_routes.setdefault(name, []).append(route)
        self.topics.add(topic.clone(is_iterator=True))  # what the consumer subscribes to
        return route

    async def _consumer_wait_empty(self, consumer: ConsumerT, logger: Any) -> None:
        """Let the batches in progress finish, for at most a share of the stop's bound.

        The offsets of a batch still running then are not committed: it is read again on
        the next start (its effects are idempotent). A rebalance, not a stop, waits as long
        as faust does.
        """
        if not STOP.stopping:
            return await super()._consumer_wait_empty(consumer, logger)
        # faust's Consumer.wait_empty, with a deadline: it cannot be cancelled (its wait for
        # an ack swallows the cancellation).
        busy: Any = consumer
        deadline = time.monotonic() + STOP.remaining(WAIT_SHARE)
        while busy._unacked_messages and time.monotonic() < deadline:
            await consumer.commit()
            await busy._wait_for_ack(timeout=1)
            busy._clean_unacked_messages()
        if busy._unacked_messages:
            log.warning("stop.batches_left", messages=len(busy._unacked_messages))
        await consumer.commit()
