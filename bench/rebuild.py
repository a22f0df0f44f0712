"""Rebuild benchmark: `cdp rebuild`'s replay of history into Redis, in events/s.

Builds, once, a history like the one the stream writes: the demo generator's realistic feed
(seven channels, several identifiers per event in varying spellings, merges and refusals,
two years of event times) is taken in by ingest's own intake (validation, normalisation),
resolved and folded into a "live" Redis namespace through the stream's scripts (events
spread over the raw topic's partitions by their key, offsets in order), with every tag
evaluated, and written to a temporary embedded ClickHouse with the history writer. Then it
times ``Rebuild.run`` into fresh namespaces (``--repeats``), checks the first against the
live namespace with ``compare``, and prints the median rate.

    .venv/bin/cdp up     # Redis (the Kafka broker is not used)
    .venv/bin/python bench/rebuild.py --customers 100000 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import tempfile
import time
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from namespace import drop  # bench/namespace.py

from contracts.events import Event
from deploy.demo import demo_sources
from deploy.generator import generate
from deploy.rebuild import Rebuild, compare
from deploy.settings import Settings
from identity.store import IdentityStore, Located
from ingest import intake
from ingest.limits import Limits
from profiles.store import ProfileStore
from sinks.clickhouse import connect
from sinks.history import HistoryWriter, event_batches, migrate
from tagging.catalog import load as load_catalog
from tagging.store import TagStore

PARTITIONS = 3
BATCH = 1_000


def feed_events(customers: int, seed: int) -> list[Event]:
    """The realistic feed as ingest accepts it, in posting order."""
    sources = {s.name: s for s in demo_sources()}
    fed = generate(seed=seed, customers=customers, all_channels=True)
    out: list[Event] = []
    now = datetime.now(UTC)
    for n, (source, path, body) in enumerate(fed.calls):
        # received one after another, as ingest stamps them
        stamp = intake.Stamp(sources[source], now + timedelta(milliseconds=n), Limits(), "CN")
        if path.endswith("/batch"):
            taken = intake.segment_batch(body, stamp)
        elif path.endswith("/events"):
            taken = intake.native(body, stamp)
        else:
            continue
        out += taken.events
    return out


def tag_store(redis: aioredis.Redis, url: str, profiles: ProfileStore, ns: str) -> TagStore:
    store = TagStore(redis, load_catalog(Settings().tags.catalog), profiles, ns)
    store.bind(url)
    return store


async def live(redis: aioredis.Redis, url: str, ns: str, events: list[Event]) -> list[Any]:
    """Resolve, fold and tag the feed as the stream does; return (resolved, partition, offset)."""
    settings = Settings()
    identity = IdentityStore(redis, settings.identity, ns)
    profiles = ProfileStore(redis, settings.profiles, ns)
    tags = tag_store(redis, url, profiles, ns)
    offsets = [0] * PARTITIONS
    located = []
    for e in events:
        part = zlib.crc32(e.partition_key()) % PARTITIONS
        located.append(Located(e, part, offsets[part]))
        offsets[part] += 1
    out: list[Any] = []
    for start in range(0, len(located), BATCH):
        chunk = located[start : start + BATCH]
        now = datetime.now(UTC)
        outcomes = await identity.resolve(chunk, now)
        await identity.settle(chunk)
        resolved = [o.resolved for o in outcomes if o.kept]
        applied = await profiles.apply(resolved, now)
        await profiles.settle(resolved)
        changed = {a.profile_id: None for a in applied if a.change is not None}
        await tags.after_fold(changed, now)
        out += [(r, r.raw_partition, r.raw_offset) for r in resolved if r.profile_id]
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--step-rows", type=int, default=20_000, help="rows per step (cdp rebuild --step-rows)"
    )
    args = parser.parse_args()

    settings = Settings()
    url = settings.redis.url.get_secret_value()
    redis = aioredis.from_url(url)
    run = f"rb{uuid.uuid4().hex[:6]}"
    started = time.perf_counter()
    events = feed_events(args.customers, args.seed)
    print(f"feed: {len(events):,} events of {args.customers:,} customers "
          f"({time.perf_counter() - started:.0f} s)")  # fmt: skip
    started = time.perf_counter()
    items = await live(redis, url, run, events)
    print(f"live namespace: {len(items):,} events resolved, folded and tagged "
          f"({time.perf_counter() - started:.0f} s)")  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="cdp-bench-rebuild-") as tmp:
        client = connect(None, Path(tmp))
        migrate(client, "cdp")
        writer = HistoryWriter(client, "cdp")
        for start in range(0, len(items), 20_000):
            for batch in event_batches("cdp.events.raw", items[start : start + 20_000]):
                writer.write(batch)

        async def query(sql: str, params: dict[str, Any]) -> list[Any]:
            return await asyncio.to_thread(writer.rows, sql, params)

        # `cdp rebuild` freezes its startup heap; here the heap also holds the feed and the
        # live build, which a rebuild process does not: frozen too, as it would not be there.
        gc.collect()
        gc.freeze()
        rates, namespaces = [], []
        try:
            for n in range(args.repeats):
                ns = f"{run}-r{n}"
                namespaces.append(ns)
                profiles = ProfileStore(redis, settings.profiles, ns)
                job = Rebuild(
                    redis,
                    ns,
                    IdentityStore(redis, settings.identity, ns),
                    profiles,
                    tag_store(redis, url, profiles, ns),
                    query,
                    "cdp",
                    step_rows=args.step_rows,
                )
                if os.environ.get("CDP_BENCH_PROFILE") and n == 0:
                    import cProfile
                    import pstats

                    prof = cProfile.Profile()
                    prof.enable()
                    report = await job.run()
                    prof.disable()
                    pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
                else:
                    report = await job.run()
                rates.append(report.rate())
                print(
                    f"rebuild {n + 1}: {report.events:,} events -> {report.profiles:,} profiles "
                    f"({report.merged:,} merged ids) in {report.seconds:.1f} s = "
                    f"{report.rate():,.0f} events/s"
                )
                if n == 0:
                    live_store = ProfileStore(redis, settings.profiles, run)
                    tag_store(redis, url, live_store, run)
                    diff = await compare(redis, (run, live_store), (ns, profiles))
                    summary = {k: v for k, v in diff.__dict__.items() if v}
                    print("compare with live:", orjson.dumps(summary).decode()[:500])
                else:
                    drop(url, ns)
            print(f"median: {statistics.median(rates):,.0f} events/s over {args.repeats} runs")
        finally:
            for ns in [run, *namespaces]:
                drop(url, ns)
            await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
