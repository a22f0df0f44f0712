"""Measure the sustained rate of ``POST /v1/batch`` into Kafka, and reconcile the counts.

Runs the real API as a separate process (``cdp api``) against the services given by
``CDP_KAFKA__BOOTSTRAP_SERVERS`` (default: the `cdp up` stack), posts pre-built Segment
batches from a few concurrent clients, and reports events/s per repetition and the median.
In the same run it measures the ceiling: a bare aiokafka producer (acks=all, idempotent)
sending the same number of pre-serialised events, and prints the ratio.

    .venv/bin/cdp up
    .venv/bin/python bench/ingest_rate.py --events 50000 --batch 500 --concurrency 4
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
from aiokafka import AIOKafkaProducer
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient, OffsetSpec

from deploy import topics
from deploy.local.kafka import free_port
from deploy.settings import Settings
from ingest.sources import hash_key

KEY = "wk_bench_" + uuid.uuid4().hex


def build_batches(events: int, batch: int, rep: int = 0) -> list[bytes]:
    """Pre-build realistic Segment batches so the generator is not the bottleneck.

    Each repetition has its own customers (five events each), so caches warm up only as
    they would on real traffic, not across repetitions.
    """
    now = datetime.now(UTC).isoformat()
    customers = max(events // 5, 1)
    bodies = []
    for start in range(0, events, batch):
        msgs = []
        for i in range(start, min(start + batch, events)):
            customer = rep * customers + i % customers
            msgs.append(
                {
                    "type": "track" if i % 4 else "identify",
                    "event": "Order Completed",
                    "messageId": f"bench-{i}-{uuid.uuid4().hex[:8]}",
                    "userId": f"M-{customer:06d}",
                    "anonymousId": f"anon-{customer}",
                    "timestamp": now,
                    "traits": {
                        "email": f"User{customer}@Example.com",
                        "phone": f"138{customer:08d}",
                    },
                    "properties": {
                        "order_id": f"O-{i}",
                        "total": 100 + i % 500,
                        "currency": "CNY",
                        "items": [{"sku": f"SKU-{i % 97}", "qty": 1 + i % 3}],
                    },
                    "context": {"library": {"name": "bench", "version": "1"}, "ip": "10.0.0.1"},
                }
            )
        bodies.append(json.dumps({"batch": msgs, "sentAt": now}).encode())
    return bodies


async def post_all(base: str, bodies: list[bytes], concurrency: int) -> tuple[int, int, float]:
    """POST every body with ``concurrency`` clients; return (accepted, non-200s, seconds)."""
    auth = "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    accepted = failed = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal accepted, failed
        while not queue.empty():
            body = queue.get_nowait()
            response = await client.post("/v1/batch", content=body, headers=headers)
            if response.status_code == 200:
                accepted += response.json()["accepted"]
            else:
                failed += 1

    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return accepted, failed, time.perf_counter() - started


async def bare_producer(bootstrap: str, topic: str, values: list[bytes]) -> float:
    """Return seconds a bare idempotent producer needs to have ``values`` acknowledged."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=512 * 1024,
    )
    await producer.start()
    try:
        started = time.perf_counter()
        pending = [await producer.send(topic, v, key=v[:24]) for v in values]
        await asyncio.gather(*pending)
        return time.perf_counter() - started
    finally:
        await producer.stop()


def topic_total(bootstrap: str, topic: str, partitions: int) -> int:
    """Sum of end offsets of a topic (messages written)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        tps = {TopicPartition(topic, p): OffsetSpec.LATEST for p in range(partitions)}
        return sum(info.offset for info in admin.list_partition_offsets(tps).values())
    finally:
        admin.close()


def start_api(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    """Start `cdp api` as its own process with a bench source."""
    source = {"name": "bench", "channel": "web", "key_sha256": hash_key(KEY)}
    env = {
        **os.environ,
        "CDP_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "CDP_API__PORT": str(port),
        "CDP_INGEST__SOURCES": json.dumps([source]),
        "CDP_LOG_LEVEL": "warning",
        "CDP_CLICKHOUSE__PATH": str(Path(settings.local.state_dir) / "bench-chdb"),
    }
    proc = subprocess.Popen([sys.executable, "-m", "deploy", "api"], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("API did not become healthy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="events per repetition")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    base_settings = Settings()
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    settings = base_settings.model_copy(
        update={"kafka": base_settings.kafka.model_copy(update={"topic_prefix": prefix})}
    )
    topics.create_all(settings.kafka)
    raw_topic = settings.kafka.topic("cdp.events.raw")
    reps = [build_batches(args.events, args.batch, rep + 1) for rep in range(args.repeats)]
    warmup = build_batches(4 * args.batch, args.batch, 0)
    body_mb = sum(len(b) for b in reps[0]) / 1e6
    port = free_port()
    api = start_api(settings, port)
    rates, total_accepted, total_failed = [], 0, 0
    try:
        warm, _, _ = asyncio.run(post_all(f"http://127.0.0.1:{port}", warmup, args.concurrency))
        for rep, bodies in enumerate(reps):
            accepted, failed, seconds = asyncio.run(
                post_all(f"http://127.0.0.1:{port}", bodies, args.concurrency)
            )
            total_accepted += accepted
            total_failed += failed
            rates.append(accepted / seconds)
            print(
                f"rep {rep + 1}: {accepted} events in {seconds:.2f}s = {accepted / seconds:,.0f}"
                f" events/s ({failed} non-200)"
            )
    finally:
        api.terminate()
        api.wait(timeout=30)
    in_kafka = topic_total(settings.kafka.bootstrap_servers, raw_topic, settings.kafka.partitions)

    values = [json.dumps(m).encode() for b in reps[0] for m in json.loads(b)["batch"]]
    ceiling_topic = settings.kafka.topic("cdp.events.resolved")  # an empty topic of the run
    ceiling = len(values) / asyncio.run(
        bare_producer(settings.kafka.bootstrap_servers, ceiling_topic, values)
    )
    median = statistics.median(rates)
    print(
        f"\nPOST /v1/batch, {args.events} events/rep in batches of {args.batch} "
        f"({body_mb:.1f} MB), {args.concurrency} clients, {args.repeats} reps"
    )
    print(f"median {median:,.0f} events/s (min {min(rates):,.0f}, max {max(rates):,.0f})")
    print(
        f"bare aiokafka producer ceiling: {ceiling:,.0f} events/s; "
        f"API / ceiling = {median / ceiling:.2f}"
    )
    print(
        f"reconcile: accepted {total_accepted + warm} (incl. warm-up), in Kafka {in_kafka}, "
        f"non-200 responses {total_failed}"
    )
    if in_kafka != total_accepted + warm:
        raise SystemExit("counts do not reconcile")


if __name__ == "__main__":
    main()
