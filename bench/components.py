"""Each stream-core component alone, on the same pre-built events, in one run.

Measures, against the services of `cdp up` (fresh Redis namespace, temporary chDB):

- decoding ``Event`` JSON with pydantic;
- identity resolution (resolve.lua, one call per chunk) and the Redis CPU it costs per event;
- the profile fold (fold.lua) and profile reads (read.lua), with their Redis CPU;
- history inserts of resolved events into embedded ClickHouse;
- one faust crossing: a do-nothing agent reading a prefilled topic, with faust's stock
  consumer, with the batched consumer of deploy/fastfaust.py, and with the batches the
  processors read (``App.batches``: no faust event or stream per message), in CPU µs per
  event.

    .venv/bin/cdp up
    .venv/bin/python bench/components.py --events 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import redis
import redis.asyncio as aioredis
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from namespace import drop  # bench/namespace.py

from contracts.events import Channel, Event, EventType, Identifier, ResolvedEvent
from deploy.settings import Settings
from identity.rules import IdentityRules
from identity.store import IdentityStore, Located
from profiles.fold import FoldRules
from profiles.store import ProfileStore
from sinks.clickhouse import connect
from sinks.history import HistoryWriter, event_batches, migrate

BATCH = 1_000


def events(n: int, customers: int) -> list[Event]:
    """POS-like events: identify (member, phone, email), orders and store visits."""
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        c, kind = i % customers, i % 5
        ids = [Identifier(type="member_id", value=f"M{c:07d}")]
        props: dict[str, object] = {}
        if kind == 0:
            ids += [
                Identifier(type="phone", value=f"+86139{c:08d}"),
                Identifier(type="email", value=f"u{c}@example.com"),
            ]
            etype = EventType.IDENTIFY
        elif kind in (1, 2):
            etype = EventType.ORDER_COMPLETED
            props = {"order_id": f"O{i}", "total": 10 + i % 300, "category": "shoes"}
        else:
            etype = EventType.STORE_VISITED
        out.append(
            Event(
                event_id=f"e{i}",
                type=etype,
                channel=Channel.POS,
                source="bench",
                identifiers=ids,
                traits={"age": 20 + c % 50} if kind == 0 else {},
                properties=props,
                original_timestamp=now,
                received_at=now,
                timestamp=now,
            )
        )
    return out


def script_usec(client: redis.Redis) -> float:
    """Microseconds Redis spent in EVALSHA so far."""
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return float(stats.get("usec", 0))


def rate(label: str, n: int, seconds: float, redis_usec: float | None = None) -> None:
    extra = f"; Redis {redis_usec / n:,.1f} µs/event in scripts" if redis_usec is not None else ""
    print(f"{label:<44} {n / seconds:>10,.0f} /s{extra}")


async def stores(settings: Settings, evs: list[Event]) -> list[ResolvedEvent]:
    ns = f"bc{uuid.uuid4().hex[:6]}"
    client = aioredis.from_url(settings.redis.url.get_secret_value())
    sync = redis.Redis.from_url(settings.redis.url.get_secret_value())
    identity = IdentityStore(client, IdentityRules(), ns)
    profiles = ProfileStore(client, FoldRules(), ns)
    located = [Located(e, 0, n) for n, e in enumerate(evs)]
    try:
        before, started = script_usec(sync), time.perf_counter()
        resolved = []
        for i in range(0, len(located), BATCH):
            out = await identity.resolve(located[i : i + BATCH], datetime.now(UTC))
            resolved += [o.resolved for o in out]
        rate("identity resolve (resolve.lua)", len(evs), time.perf_counter() - started,
             script_usec(sync) - before)  # fmt: skip

        before, started = script_usec(sync), time.perf_counter()
        for i in range(0, len(resolved), BATCH):
            await profiles.apply(resolved[i : i + BATCH], datetime.now(UTC))
        rate("profile fold (fold.lua)", len(evs), time.perf_counter() - started,
             script_usec(sync) - before)  # fmt: skip

        pids = sorted({r.profile_id for r in resolved})
        before, started = script_usec(sync), time.perf_counter()
        for i in range(0, len(pids), BATCH):
            await profiles.get_many(pids[i : i + BATCH])
        rate("profile read (read.lua), per profile", len(pids), time.perf_counter() - started,
             script_usec(sync) - before)  # fmt: skip
        return resolved
    finally:
        await client.aclose()
        drop(settings.redis.url.get_secret_value(), ns)


def history(resolved: list[ResolvedEvent]) -> None:
    with tempfile.TemporaryDirectory(prefix="cdp-bench-chdb-") as tmp:
        client = connect(None, Path(tmp))
        migrate(client, "cdp")
        writer = HistoryWriter(client, "cdp")
        items = [(r, 0, n) for n, r in enumerate(resolved)]
        started = time.perf_counter()
        for i in range(0, len(items), 10_000):
            for batch in event_batches("bench", items[i : i + 10_000]):
                writer.write(batch)
        rate("history insert into chDB (events rows)", len(items), time.perf_counter() - started)
        client.close()


def faust_child(kind: str, bootstrap: str, topic: str, n: int) -> None:
    """A do-nothing agent over ``n`` prefilled messages; prints events/s and CPU µs/event."""
    import faust

    from deploy.fastfaust import App

    app_class = faust.App if kind == "stock" else App
    app = app_class(
        f"bench-{topic}-{kind}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        web_enabled=False,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
    )
    source = app.topic(topic, key_serializer="raw", value_serializer="raw")
    state: dict[str, float] = {"n": 0}

    def count(batch: list[object]) -> None:
        if "t0" not in state:
            state["t0"], state["c0"] = time.perf_counter(), time.process_time()
        state["n"] += len(batch)
        if state["n"] >= n:
            wall, cpu = time.perf_counter() - state["t0"], time.process_time() - state["c0"]
            print(f"{n / wall:.0f} {cpu / n * 1e6:.1f}", flush=True)
            os._exit(0)

    if kind == "direct":  # the processors' path: batches straight from the fetch loop
        batches = cast(App, app).batches(source, BATCH, 0.05)

        @app.task
        async def nothing_direct() -> None:
            async for batch in batches:
                count(batch)

    else:

        @app.agent(source)
        async def nothing(stream: faust.StreamT[bytes]) -> None:
            async for batch in stream.take_events(BATCH, within=0.05):
                count(list(batch))

    @app.task
    async def no_monitor() -> None:
        app.sensors.remove(app.monitor)

    worker = faust.Worker(app, loglevel="warn", quiet=True, redirect_stdouts=False)
    worker.spinner = None
    worker.execute_from_commandline()


def faust_crossing(settings: Settings, evs: list[Event]) -> None:
    bootstrap = settings.kafka.bootstrap_servers
    topic = f"bench-crossing-{uuid.uuid4().hex[:6]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, settings.kafka.partitions, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=512 * 1024)
    for e in evs:
        producer.send(topic, key=e.partition_key(), value=e.model_dump_json().encode())
    producer.flush()
    producer.close()
    for kind in ("stock", "batched", "direct"):
        out = subprocess.run(
            [sys.executable, __file__, "--faust-child", kind, bootstrap, topic, str(len(evs))],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        ).stdout.split()
        print(
            f"{'faust do-nothing agent, ' + kind + ' consumer':<44} "
            f"{float(out[0]):>10,.0f} /s; {float(out[1]):,.1f} µs CPU/event"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--faust-child":
        kind, bootstrap, topic, n = sys.argv[2:6]
        del sys.argv[1:]  # faust's worker parses the command line too
        faust_child(kind, bootstrap, topic, int(n))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--customers", type=int, default=5_000)
    args = parser.parse_args()
    settings = Settings()
    evs = events(args.events, args.customers)
    raws = [e.model_dump_json().encode() for e in evs]
    started = time.perf_counter()
    for raw in raws:
        Event.model_validate_json(raw)
    rate("Event.model_validate_json", len(raws), time.perf_counter() - started)
    resolved = asyncio.run(stores(settings, evs))
    history(resolved)
    faust_crossing(settings, evs)


if __name__ == "__main__":
    main()
