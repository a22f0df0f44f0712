"""App.batches: micro-batches straight from the fetch loop (deploy/fastfaust.py)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable
from typing import Any

from mode.utils.queues import FlowControlEvent

from deploy.fastfaust import Batches


class Message:
    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.acked_by: list[Any] = []

    def ack(self, consumer: Any) -> bool:
        self.acked_by.append(consumer)
        return True


class App:
    def __init__(self) -> None:
        self.flow_control = FlowControlEvent()
        self.flow_control.resume()
        self.consumer = object()


def offsets(batch: list[Any]) -> list[int]:
    return [d.message.offset for d in batch]


async def until(condition: Callable[[], bool], deadline_s: float = 5.0) -> None:
    """Let the loop run until ``condition`` holds; fail after ``deadline_s``."""
    async with asyncio.timeout(deadline_s):
        while not condition():
            await asyncio.sleep(0)


def test_batches_are_cut_at_size_and_acked_only_when_the_next_is_asked_for() -> None:
    async def run() -> None:
        app = App()
        batches = Batches(app, size=3, within=0.3)
        messages = [Message(n) for n in range(5)]
        await batches.put(messages[:2])
        await batches.put(messages[2:])
        it = batches.__aiter__()
        first = await it.__anext__()
        assert offsets(first) == [0, 1, 2]
        assert all(not m.acked_by for m in messages)  # the body is still running
        second = await asyncio.wait_for(it.__anext__(), 5)  # the rest, after `within`
        assert offsets(second) == [3, 4]
        assert [len(m.acked_by) for m in messages] == [1, 1, 1, 0, 0]
        assert messages[0].acked_by == [app.consumer]

    asyncio.run(run())


def test_a_batch_closes_after_within_seconds_from_its_first_message() -> None:
    async def run() -> None:
        batches = Batches(App(), size=100, within=0.05)
        await batches.put([Message(0)])
        it = batches.__aiter__()
        assert offsets(await asyncio.wait_for(it.__anext__(), 5)) == [0]

    asyncio.run(run())


def test_messages_fetched_before_a_rebalance_are_dropped_unacked() -> None:
    async def run() -> None:
        app = App()
        batches = Batches(app, size=10, within=0.2)
        stale = [Message(0), Message(1)]
        await batches.put(stale[:1])
        it = batches.__aiter__()
        nxt = asyncio.ensure_future(it.__anext__())
        await until(batches.queue.empty)  # the loop holds offset 0, waiting for more
        await batches.put(stale[1:])
        app.flow_control.clear()  # partitions revoked: faust clears every queue
        assert not nxt.done()
        await batches.put([Message(7)])  # fetched after the new assignment
        assert offsets(await asyncio.wait_for(nxt, 5)) == [7]
        assert all(not m.acked_by for m in stale)

    asyncio.run(run())


def test_the_fetch_loop_waits_while_two_batches_are_queued() -> None:
    async def run() -> None:
        batches = Batches(App(), size=Batches.CHUNK, within=0.05)
        messages = [Message(n) for n in range(Batches.CHUNK * 5)]
        put = asyncio.ensure_future(batches.put(messages))
        await until(batches.queue.full)
        assert not put.done()  # 4 chunks queued, the fifth waits for the loop
        it = batches.__aiter__()
        assert offsets(await it.__anext__()) == list(range(Batches.CHUNK))
        await asyncio.wait_for(put, 5)

    asyncio.run(run())


def test_a_rebalance_while_the_fetch_loop_waits_for_room_ends_only_that_delivery() -> None:
    """faust clears its queues on a revoke, which cancels a put waiting for room. That put
    must end quietly: an error out of the fetch loop stops the worker (seen at every
    second process's join while a backlog filled the queue)."""

    async def run() -> None:
        app = App()
        batches = Batches(app, size=Batches.CHUNK, within=0.05)
        stale = [Message(n) for n in range(Batches.CHUNK * 6)]
        put = asyncio.ensure_future(batches.put(stale))
        await until(batches.queue.full)
        assert not put.done()
        app.flow_control.clear()  # partitions revoked
        assert await asyncio.wait_for(put, 5) is False  # the rest dropped, and no error
        fresh = [Message(10_000 + n) for n in range(3)]
        await batches.put(fresh)
        it = batches.__aiter__()
        assert offsets(await asyncio.wait_for(it.__anext__(), 5)) == [10_000, 10_001, 10_002]
        assert all(not m.acked_by for m in stale)

    asyncio.run(run())


def test_messages_a_rebalance_dropped_are_left_to_the_garbage_collector() -> None:
    """faust's wait for in-flight messages at a rebalance ends when each tracked message is
    acked or garbage (a weak set); one the batch loop kept would hold the rebalance until
    the broker's session timeout dropped the worker from its group."""

    async def run() -> list[weakref.ref[Message]]:
        app = App()
        batches = Batches(app, size=10, within=0.05)
        stale = [Message(n) for n in range(3)]
        refs = [weakref.ref(m) for m in stale]
        await batches.put(stale[:1])
        it = batches.__aiter__()
        nxt = asyncio.ensure_future(it.__anext__())
        await until(batches.queue.empty)  # the loop holds offset 0, waiting for more
        await batches.put(stale[1:])
        del stale
        app.flow_control.clear()  # partitions revoked
        await until(lambda: gc.collect() >= 0 and all(r() is None for r in refs))
        assert not nxt.done()  # and no batch was cut of them
        nxt.cancel()
        return refs

    asyncio.run(run())
