"""Segment latency: exact counts on the history (embedded ClickHouse) and live tag counts.

1. Generates a history in a fresh chDB directory with the real schema (typed snapshot
   columns materialised at insert): ``--profiles`` profile snapshots (traits, tags, consent),
   ``--events`` events over the last 400 days, and ~10% of profiles merged into another
   (so every event condition follows aliases; chains included). Generation is SQL over
   ``numbers()``. The snapshots are then merged into one part, and five small parts of newer
   versions (0.2% of profiles each) are added, the older versions deleted as the history
   writer does: the state a live system is in between background merges. Timing starts
   once the load's background merges and mutations are done (a steady state).
2. Times counts of segments compiled by the real compiler (segments/sql.py), each run
   ``--runs`` times after one warm-up: median and p95. The headline is a 3-condition segment
   (tag + trait + event window).
3. Builds tag bitmaps over ``--profiles`` ordinals in a fresh Redis namespace (the layout
   apply.lua keeps) and times live tag-segment counts (segments/live.lua): p50, p99.

    .venv/bin/cdp up
    .venv/bin/python bench/segment_queries.py --profiles 1000000 --events 10000000
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from namespace import drop  # bench/namespace.py

from contracts.segments import SegmentDefinition
from deploy.settings import Settings
from segments.live import LiveIndex, program
from segments.sql import Compiler
from sinks.clickhouse import connect
from sinks.history import dedupe_snapshots, migrate
from tagging.catalog import load

DB = "bench"
TAGS = ["tier_vip", "repeat_buyer", "lifecycle_at_risk", "consent_sms_allowed", "buys_shoes"]

SEGMENTS: dict[str, dict[str, Any]] = {
    "3 conditions: tag + trait + purchases in 90d": {
        "all": [
            {"tag": "tier_vip"},
            {"trait": "city", "op": "eq", "value": "Shanghai"},
            {"event": "order_completed", "op": "gte", "value": 3, "within": {"last": "90d"}},
        ]
    },
    "lapsed: 3+ orders in 90d, none in 30d": {
        "all": [
            {"event": "order_completed", "op": "gte", "value": 3, "within": {"last": "90d"}},
            {"event": "order_completed", "op": "eq", "value": 0, "within": {"last": "30d"}},
        ]
    },
    "spend >= 5000 in 12 months": {
        "event": "order_completed",
        "measure": "sum",
        "property": "amount",
        "op": "gte",
        "value": 5000,
        "within": {"last": "12mo"},
    },
    "last CSAT <= 2 (property of last survey)": {
        "event": "survey_answered",
        "measure": "last",
        "property": "csat",
        "op": "lte",
        "value": 2,
    },
    "traits and tags only (no events)": {
        "all": [
            {"tag": "repeat_buyer"},
            {"trait": "age", "op": "between", "value": [25, 34]},
            {"not": {"tag": "lifecycle_at_risk"}},
        ]
    },
}


def generate(client: Any, profiles: int, events: int) -> None:
    """Fill the history tables with SQL (fast: no Python per row)."""
    tags = ", ".join(f"'{t}'" for t in TAGS)
    client.command(
        f"""
        INSERT INTO {DB}.profile_snapshots (profile_id, snapshot, version, at)
        SELECT toString(number) AS pid,
          concat(
            '{{"profile_id":"', pid, '","identifiers":["member_id:M', pid, '"],',
            '"traits":{{"city":"',
            ['Shanghai','Beijing','Shenzhen','Hangzhou','Chengdu'][number % 5 + 1],
            '","age":', toString(18 + intHash32(number) % 50), '}},',
            '"tags":', toJSONString(
                arrayFilter((t, i) -> bitTest(intHash64(number), i), [{tags}], range(5))),
            ',"consent":{{"sms":', if(intHash32(number + 7) % 3 = 0, 'false', 'true'), '}},',
            '"channels":{{"pos":{{"first_seen":null,"last_seen":null,"events":1}}}},',
            '"events":', toString(intHash32(number + 1) % 40), ',',
            '"order_count":', toString(intHash32(number + 2) % 20), ',',
            '"total_spend":', toString(intHash32(number + 3) % 20000), ',',
            '"nps_class":"detractor","store_visits":', toString(intHash32(number + 4) % 6), '}}'
          ),
          1, now64(3)
        FROM numbers({profiles})
        SETTINGS max_insert_threads = 2
        """
    )
    client.command(
        f"""
        INSERT INTO {DB}.events
          (event_id, profile_id, type, name, channel, source, identifiers, timestamp,
           received_at, order_id, amount, traits, properties, consent, src_partition,
           src_offset, ingested_at)
        SELECT toString(number), toString(intHash64(number) % {profiles}) AS pid,
          multiIf(number % 10 < 5, 'order_completed', number % 10 < 8, 'store_visited',
                  number % 10 < 9, 'survey_answered', 'page') AS t,
          t, 'pos', 'pos', [concat('member_id:M', pid)],
          now64(3) - toIntervalSecond(intHash32(number) % (400 * 86400)) AS ts, ts,
          if(t = 'order_completed', toString(number), ''),
          if(t = 'order_completed', toDecimal64(intHash32(number + 9) % 3000, 2),
             toDecimal64(0, 2)),
          '{{}}',
          if(t = 'survey_answered',
             concat('{{"csat":', toString(1 + intHash32(number + 5) % 5), '}}'),
             if(t = 'order_completed', '{{"category":"shoes"}}', '{{}}')),
          '{{}}', number % 4, number, now64(3)
        FROM numbers({events})
        SETTINGS max_insert_threads = 2
        """
    )
    # ~10% of profiles merged into a lower id: their events count for the survivor.
    client.command(
        f"""
        INSERT INTO {DB}.profile_aliases
        SELECT toString(number), toString(intHash32(number) % greatest(number, 1)),
               'merge', now64(3)
        FROM numbers(1, {profiles - 1}) WHERE intHash64(number + 11) % 10 = 0
        """
    )


def recent_snapshots(client: Any, profiles: int, parts: int = 5) -> None:
    """Newer versions of 0.2% of profiles in each of ``parts`` small parts, the older versions
    deleted as the history writer does: the state between background merges while the
    history worker writes a snapshot batch every 2 s."""
    for n in range(parts):
        client.command(
            f"""INSERT INTO {DB}.profile_snapshots (profile_id, snapshot, version, at)
            SELECT profile_id, snapshot, version + 1 + {n}, now64(3)
            FROM {DB}.profile_snapshots
            WHERE merged_into = '' AND cityHash64(profile_id, {n}) % 500 = 0"""
        )
        dedupe_snapshots(client, DB)


def settle(client: Any, timeout_s: float = 300) -> float:
    """Wait until the bulk load's background merges and mutations are done: the queries are
    timed in a steady state, not against the load's aftermath. Returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        busy = client.query(
            "SELECT (SELECT count() FROM system.merges), "
            "(SELECT count() FROM system.mutations WHERE NOT is_done)"
        ).result_rows[0]
        if busy == (0, 0):
            break
        time.sleep(1)
    return time.monotonic() - start


def timed(fn: Any, runs: int) -> tuple[Any, list[float]]:
    fn()  # warm-up
    out, times = None, []
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, times


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def live_bench(
    settings: Settings, profiles: int, runs: int
) -> list[tuple[str, int, list[float]]]:
    """Tag bitmaps over ``profiles`` ordinals (5-50% density), then live counts."""
    url = settings.redis.url.get_secret_value()
    ns = f"segbench{uuid.uuid4().hex[:6]}"
    sync = redis.Redis.from_url(url)
    catalog = load()
    rng = random.Random(1)
    nbytes = (profiles + 7) // 8
    try:
        sync.set(
            f"{ns}:tags:all",
            b"\xff" * (profiles // 8)
            + bytes([0xFF << (8 - profiles % 8) & 0xFF] if profiles % 8 else []),
        )
        for n, tag in enumerate(TAGS):
            density = [0.05, 0.3, 0.2, 0.6, 0.5][n]
            bits = bytearray(
                rng.getrandbits(8) if rng.random() < density * 2 else 0 for _ in range(nbytes)
            )
            sync.set(f"{ns}:tag:{catalog.by_id[tag].bit}", bytes(bits))
        client = aioredis.from_url(url)
        live = LiveIndex(client, ns)
        cases = {
            "one tag": {"tag": "tier_vip"},
            "3 tags: a and b and not c": {
                "all": [
                    {"tag": "repeat_buyer"},
                    {"tag": "buys_shoes"},
                    {"not": {"tag": "lifecycle_at_risk"}},
                ]
            },
            "5 tags, nested any/all/not": {
                "any": [
                    {"all": [{"tag": "tier_vip"}, {"not": {"tag": "lifecycle_at_risk"}}]},
                    {
                        "all": [
                            {"tag": "repeat_buyer"},
                            {"tag": "buys_shoes"},
                            {"tag": "consent_sms_allowed"},
                        ]
                    },
                ]
            },
        }
        out = []
        for name, node in cases.items():
            prog = program(
                SegmentDefinition.model_validate({"definition": node}).definition, catalog
            )
            await live.count(prog)
            times = []
            n = 0
            for _ in range(runs):
                start = time.perf_counter()
                n = await live.count(prog)
                times.append(time.perf_counter() - start)
            out.append((name, n, times))
        await client.aclose()
        return out
    finally:
        sync.close()
        drop(url, ns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--live-runs", type=int, default=500)
    args = parser.parse_args()
    settings = Settings()
    path = Path(settings.local.state_dir) / f"bench-segments-{uuid.uuid4().hex[:6]}"
    try:
        client = connect(None, path)
        migrate(client, DB)
        start = time.perf_counter()
        generate(client, args.profiles, args.events)
        migrate(client, DB)  # tombstones for the merged ids, as a migration writes them
        client.command(f"OPTIMIZE TABLE {DB}.profile_snapshots FINAL")  # background merges
        recent_snapshots(client, args.profiles)
        took = time.perf_counter() - start
        waited = settle(client)
        rows = client.query(
            f"SELECT (SELECT count() FROM {DB}.events),"
            f" (SELECT count() FROM {DB}.profile_snapshots WHERE merged_into = ''),"
            f" (SELECT count() FROM {DB}.profile_aliases)"
        ).result_rows[0]
        print(
            f"history: {rows[0]:,} events, {rows[1]:,} profiles, {rows[2]:,} merged ids "
            f"({took:.0f}s to generate, {waited:.0f}s for background merges to finish)"
        )
        catalog = load()
        compiler = Compiler(DB, tags=list(catalog.by_id), purposes=["sms"])
        now = datetime.now(UTC)
        print(f"exact counts on embedded ClickHouse, {args.runs} runs each after a warm-up:")
        for name, node in SEGMENTS.items():
            seg = SegmentDefinition.model_validate({"definition": node})
            q = compiler.count(seg, now)

            def run(q: Any = q) -> int:
                return int(client.query(q.sql, parameters=q.params).result_rows[0][0])

            n, times = timed(run, args.runs)
            print(
                f"  {name:45} {n:>9,} members  median {statistics.median(times) * 1000:7.1f} ms"
                f"  p95 {pct(times, 0.95) * 1000:7.1f} ms"
            )
    finally:
        shutil.rmtree(path, ignore_errors=True)
    print(
        f"live tag counts over {args.profiles:,} profiles (Redis bitmaps), {args.live_runs} runs:"
    )
    for name, n, times in asyncio.run(live_bench(settings, args.profiles, args.live_runs)):
        print(
            f"  {name:45} {n:>9,} members  p50 {statistics.median(times) * 1000:6.2f} ms"
            f"  p99 {pct(times, 0.99) * 1000:6.2f} ms"
        )


if __name__ == "__main__":
    main()
