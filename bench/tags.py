"""Tag evaluation speed and Redis memory per profile, over the demo generator's customers.

Builds profiles the way the processors do (identity -> fold in Redis, real scripts) from
the seeded multi-channel generator, in a fresh Redis namespace of `cdp up`'s Redis, then:

- times a full evaluation of the whole catalog per profile (median, p99; pure CPU) and the
  conversion of a profile into facts;
- times the incremental evaluation one event triggers (only the tags its change can affect);
- measures Redis memory per profile with MEMORY USAGE over every key of the namespace,
  split into profile, identity and tag storage, and the tag storage's share;
- reports the Redis CPU of storing tags (apply.lua) per profile.

    .venv/bin/cdp up
    .venv/bin/python bench/tags.py --customers 87000      # about 100k profiles
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

import redis
import redis.asyncio as aioredis
from namespace import drop  # bench/namespace.py

from contracts.events import Event, ResolvedEvent
from deploy.demo import demo_sources
from deploy.generator import generate
from deploy.settings import Settings
from identity.rules import IdentityRules
from identity.store import IdentityStore, Located
from ingest.intake import Stamp, native, segment_batch
from profiles.agents import changed_names
from profiles.fold import FoldRules, fold
from profiles.store import ProfileStore, Stored
from tagging.catalog import load
from tagging.facts import facts_of, profile_facts
from tagging.store import TagStore

BATCH = 1_000


def demo_events(customers: int, seed: int) -> list[Event]:
    """The generator's HTTP calls, taken by ingest's own parsers, as accepted events."""
    feed = generate(seed=seed, customers=customers)
    sources = {s.name: s for s in demo_sources()}
    settings = Settings()
    out: list[Event] = []
    for source, path, body in feed.calls:
        stamp = Stamp(
            sources[source],
            datetime.now(UTC),
            settings.ingest.limits,
            settings.ingest.default_region,
        )
        intake = segment_batch(body, stamp) if path == "/v1/batch" else native(body, stamp)
        out += intake.events
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def script_usec(client: redis.Redis) -> float:
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return float(stats.get("usec", 0))


def memory(client: redis.Redis, ns: str) -> Counter[str]:
    """Bytes per key family of namespace ``ns`` (MEMORY USAGE, all samples)."""
    out: Counter[str] = Counter()
    keys = list(client.scan_iter(f"{ns}:*", count=5000))
    for start in range(0, len(keys), 5000):
        chunk = keys[start : start + 5000]
        pipe = client.pipeline(transaction=False)
        for key in chunk:
            pipe.memory_usage(key, samples=0)
        for key, size in zip(chunk, pipe.execute(), strict=True):
            part = key.decode().split(":")[1]
            family = "tags" if part in ("tag", "tags", "pord") else part
            out[family] += int(size or 0)
    return out


async def build(
    settings: Settings, events: list[Event], ns: str
) -> list[tuple[list[ResolvedEvent], dict[str, list[str] | None]]]:
    client = aioredis.from_url(settings.redis.url.get_secret_value())
    identity = IdentityStore(client, IdentityRules(), ns)
    profiles = ProfileStore(client, FoldRules(), ns)
    changes = []
    for start in range(0, len(events), BATCH):
        items = [Located(e, 0, start + n) for n, e in enumerate(events[start : start + BATCH])]
        resolved = [o.resolved for o in await identity.resolve(items, datetime.now(UTC))]
        applied = await profiles.apply(resolved, datetime.now(UTC))
        # As the processors do once their records are published.
        await identity.settle(items)
        await profiles.settle(resolved)
        changes.append((resolved, changed_names(applied)))
    await client.aclose()
    return changes


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    settings = Settings()
    url = settings.redis.url.get_secret_value()
    sync = redis.Redis.from_url(url)
    ns = f"bt{uuid.uuid4().hex[:6]}"
    catalog = load()

    t0 = time.perf_counter()
    events = demo_events(args.customers, args.seed)
    print(
        f"generated {len(events):,} events for {args.customers:,} customers "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    t0 = time.perf_counter()
    batches = await build(settings, events, ns)
    print(f"identity + fold in Redis: {time.perf_counter() - t0:.1f} s")
    try:
        before = memory(sync, ns)
        client = aioredis.from_url(url)
        store = TagStore(client, catalog, ProfileStore(client, FoldRules(), ns), ns)
        store.bind(url)
        pids: list[str] = []
        cursor = 0
        while True:
            cursor, found = await store.profiles(cursor, 5000)
            pids += found
            if cursor == 0:
                break
        now = datetime.now(UTC)
        clock = catalog.clock(now)

        # Full evaluation: every tag on every profile (CPU only, profiles read beforehand).
        stored = []
        for start in range(0, len(pids), 1000):
            stored += [s for s in await store._profiles.read(pids[start : start + 1000]) if s]
        everything = catalog.select(None)
        catalog.run({}, clock, everything)  # compile outside the timing
        facts_us, values_us, full_us = [], [], []
        all_facts = []
        for s in stored:
            t = time.perf_counter_ns()
            facts = facts_of(s.values, catalog.declared)  # what evaluation reads
            values_us.append((time.perf_counter_ns() - t) / 1000)
            t = time.perf_counter_ns()
            profile_facts(s.profile, catalog.declared)  # from the model (the API's explain)
            facts_us.append((time.perf_counter_ns() - t) / 1000)
            t = time.perf_counter_ns()
            catalog.run(facts, clock, everything)
            full_us.append((time.perf_counter_ns() - t) / 1000)
            all_facts.append(facts)
        print(f"profiles: {len(stored):,}; catalog: {len(catalog.tags)} tags")
        print(
            f"full evaluation per profile: median {statistics.median(full_us):.1f} µs, "
            f"p99 {percentile(full_us, 0.99):.1f} µs"
        )
        print(
            f"stored fields -> facts per profile: median {statistics.median(values_us):.1f} µs"
            f" (from the profile model: {statistics.median(facts_us):.1f} µs, model built"
            " beforehand)"
        )
        # A snapshot's JSON (what the history stores), from the fields and through the model.
        json_us, model_us = [], []
        for s in stored:
            fresh = Stored(s.values, s.version, s.tags, s.sealed, s.keys, s.main)
            t = time.perf_counter_ns()
            fresh.json()
            json_us.append((time.perf_counter_ns() - t) / 1000)
            t = time.perf_counter_ns()
            fresh.profile.model_dump_json()
            model_us.append((time.perf_counter_ns() - t) / 1000)
        print(
            f"snapshot JSON per profile: median {statistics.median(json_us):.1f} µs from the"
            f" stored fields, {statistics.median(model_us):.1f} µs building the model first"
        )

        # Incremental: the tags one event's change can affect, on that profile's facts.
        rules = FoldRules()
        by_pid = {s.profile_id: f for s, f in zip(stored, all_facts, strict=True)}
        inc_us, affected_n = [], []
        for resolved, _ in batches[:50]:
            for r in resolved:
                known = by_pid.get(r.profile_id)
                if known is None:
                    continue
                # Every name the event's operations touch: an upper bound of what changes.
                ops = fold(r, rules).ops
                names = [("trait:" + op[1]) if op[0] == "trait" else op[1] for op in ops]
                t = time.perf_counter_ns()
                selection = store.for_change(names)
                catalog.run(known, clock, selection)
                inc_us.append((time.perf_counter_ns() - t) / 1000)
                affected_n.append(len(selection.tags))
        print(
            f"incremental evaluation per event: median {statistics.median(inc_us):.1f} µs "
            f"({statistics.median(affected_n):.0f} of {len(catalog.tags)} tags affected)"
        )

        # Store every profile's tags through the real path (read, evaluate, apply.lua).
        usec = script_usec(sync)
        t0 = time.perf_counter()
        for start in range(0, len(pids), 1000):
            await store.evaluate_all(pids[start : start + 1000], catalog.tags, now)
        took = time.perf_counter() - t0
        apply_us = (script_usec(sync) - usec) / len(pids)
        print(
            f"tagging {len(pids):,} profiles end to end (read + evaluate + store): "
            f"{len(pids) / took:,.0f} profiles/s; Redis scripts {apply_us:.1f} µs/profile "
            "(read.lua + apply.lua)"
        )
        after = memory(sync, ns)
        n = len(pids)
        tag_bits = sum(len(s.profile.tags) for s in (await store._profiles.read(pids[:2000])) if s)
        print(f"tags per profile (mean over 2,000): {tag_bits / min(n, 2000):.1f}")
        total = sum(after.values())
        print(f"Redis memory per profile, all keys: {total / n:,.0f} B")
        for family, size in sorted(after.items(), key=lambda kv: -kv[1]):
            print(f"  {family:<8} {size / n:>8,.0f} B/profile")
        tag_cost = after["tags"] + (after["pf"] - before["pf"])
        print(
            f"tag storage per profile (bitmap field + tag indexes + ordinal map + due index): "
            f"{tag_cost / n:,.0f} B"
        )
        print(
            f"profile storage (pf:*) per profile with tags: {after['pf'] / n:,.0f} B; "
            f"with its tag indexes: {(after['pf'] + after['tags']) / n:,.0f} B"
        )
        await client.aclose()
    finally:
        sync.close()
        drop(url, ns)


if __name__ == "__main__":
    asyncio.run(main())
