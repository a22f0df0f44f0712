"""Split benchmark: undo a wrong merge of a profile with 1,000 events, in seconds.

Two customers (member app and web, 500 events each: identifies, page views, orders) are
merged by one event that carries the other's email (a cashier's mistake). The events are
resolved, folded and tagged into a Redis namespace through the stream's scripts and written
to a temporary embedded ClickHouse with the history writer (bench/rebuild.py), then
``Splitter.split`` undoes the merge: it waits for history, replays the 1,000 events apart,
swaps the result in, evaluates tags and moves the history rows. The records it would publish
are collected, not sent (no broker here). Each repetition uses fresh customers.

    .venv/bin/cdp up     # Redis
    .venv/bin/python bench/split.py --events 1000 --repeats 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from namespace import drop  # bench/namespace.py
from rebuild import live, tag_store  # bench/rebuild.py

from contracts.events import Channel, Event, EventType, Identifier
from deploy.settings import Settings
from deploy.split import Splitter, clickhouse_io
from profiles.store import ProfileStore
from runtime.publisher import Record
from sinks.clickhouse import connect
from sinks.history import HistoryWriter, event_batches, migrate


def story(run: str, events: int) -> list[Event]:
    """Two customers of ``events`` events in all, merged by the one in the middle."""
    start = datetime.now(UTC) - timedelta(days=90)
    email = f"till-{run}@store.example"
    people = {
        "a": [Identifier(type="anonymous_id", value=f"{run}-a"),
              Identifier(type="phone", value=f"+86138{uuid.uuid4().int % 10**8:08d}")],
        "b": [Identifier(type="anonymous_id", value=f"{run}-b"),
              Identifier(type="phone", value=f"+86139{uuid.uuid4().int % 10**8:08d}")],
    }  # fmt: skip
    out = []
    for n in range(events):
        who = "a" if n % 2 == 0 else "b"
        ids = people[who] if n < 2 else people[who][:1]
        kind, props, channel = EventType.PAGE, {"path": f"/p/{n % 40}"}, Channel.WEB
        if n == 0:
            ids = [*ids, Identifier(type="email", value=email)]
            kind = EventType.IDENTIFY
        elif n == 1:
            kind = EventType.IDENTIFY
        elif n == events // 2 + 1:  # b's record gets the store's email: the wrong merge
            ids, kind = [*ids, Identifier(type="email", value=email)], EventType.IDENTIFY
        elif n % 5 == 0:
            kind, channel = EventType.ORDER_COMPLETED, Channel.MEMBER_APP
            props = {"order_id": f"{run}-{n}", "total": 10 + n % 90, "category": "shoes"}
        at = start + timedelta(minutes=n)
        out.append(
            Event(
                event_id=f"{run}-{n}",
                type=kind,
                channel=channel,
                source="bench",
                identifiers=ids,
                properties=props,
                original_timestamp=at,
                received_at=at,
                timestamp=at,
            )
        )
    return out


async def once(redis: aioredis.Redis, url: str, client: Any, events: int) -> dict[str, Any]:
    settings = Settings()
    run = f"sp{uuid.uuid4().hex[:6]}"
    db = run  # a database per repetition: each namespace numbers its profiles from 1
    items = await live(redis, url, run, story(run, events))
    migrate(client, db)
    writer = HistoryWriter(client, db)
    for batch in event_batches("cdp.events.raw", items):
        writer.write(batch)

    query, command, insert = clickhouse_io(client, db)
    sent: list[Record] = []

    async def publish(records: list[Record]) -> None:
        sent.extend(records)

    profiles = ProfileStore(redis, settings.profiles, run)
    splitter = Splitter(
        redis,
        run,
        settings.identity,
        settings.profiles,
        tag_store(redis, url, profiles, run),
        db,
        query,
        command,
        insert,
        publish,
        lambda name: name,
    )
    survivor = items[0][0].profile_id
    merged = await splitter._identity.merged(survivor)
    done = await splitter.split(survivor, merged[0])
    drop(url, run)
    client.command(f"DROP DATABASE {db}")
    return {"seconds": round(done.seconds, 3), "events": done.events, "moved": done.moved,
            "profiles": {p: v["events"] for p, v in done.profiles.items()},
            "records": len(sent)}  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    url = Settings().redis.url.get_secret_value()
    redis = aioredis.from_url(url)
    times = []
    tmp = tempfile.TemporaryDirectory(prefix="cdp-bench-split-")
    client = connect(None, Path(tmp.name))  # one embedded ClickHouse per process
    try:
        for n in range(args.repeats):
            got = await once(redis, url, client, args.events)
            times.append(got["seconds"])
            print(f"split {n + 1}: {got}")
        print(f"median: {statistics.median(times):.3f} s for a profile of {args.events} events")
    finally:
        await redis.aclose()
        tmp.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
