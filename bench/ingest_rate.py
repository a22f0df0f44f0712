"""Measure the sustained rate of ``POST /v1/batch`` into Kafka, and reconcile the counts.

Runs the real API as its own processes (``cdp api --workers N``, one server per worker count
asked for, all started before the first repetition and measured in alternation) against the
services given by ``CDP_KAFKA__BOOTSTRAP_SERVERS`` (default: the `cdp up` stack), posts
pre-built Segment batches from concurrent clients, and reports events/s per repetition, the
median per worker count, and the CPU each process spent per event (API processes, Kafka,
the load client). In the same run it measures the ceiling: a bare aiokafka producer (acks=all,
idempotent) sending the same number of pre-serialised events. The load shape by default is
the one the peer gateway was measured with on this machine (100 events of ~640 bytes per
request, 16 concurrent clients).

    .venv/bin/cdp up
    .venv/bin/python bench/ingest_rate.py --workers 1,2

Rate limits are off unless ``--limits on`` (or ``both``) checks them, at rates no load of
this bench reaches: the bench posts from one address under one write key, past the defaults.
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
from namespace import drop_topics  # bench/namespace.py
from proc import cpu_seconds  # bench/proc.py

from deploy import topics
from deploy.local.kafka import free_port
from deploy.settings import Settings
from ingest.sources import hash_key
from privacy.crypto import MasterKeys

KEY = "wk_bench_" + uuid.uuid4().hex
#: RudderStack's open-source gateway (rudder-server v1.70.2, gateway only, every event durable
#: in Postgres before its 200), measured on this machine with this load shape.
PEER = "rudder-server v1.70.2 gateway: 16,891 and 18,025 events/s"
USER_AGENT = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.47"
)


#: Whether each event brings an anonymousId never seen before (the default, as measured
#: since the first figures) or each customer keeps one, as a browser's cookie does.
ANONYMOUS_PER_EVENT = True


def message(i: int, customer: int, now: str) -> dict[str, object]:
    """One realistic Segment message (~640 bytes): an identify or an order, three ids."""
    anonymous = uuid.uuid4().hex[:12] if ANONYMOUS_PER_EVENT else "cookie"
    return {
        "type": "track" if i % 4 else "identify",
        "event": "Order Completed",
        "messageId": f"bench-{i}-{uuid.uuid4().hex[:8]}",
        "userId": f"M-{customer:06d}",
        "anonymousId": f"anon-{customer}-{anonymous}",
        "timestamp": now,
        "traits": {
            "email": f"User{customer}@Example.com",
            "phone": f"+86 138 {customer // 10000:04d} {customer % 10000:04d}",
        },
        "properties": {
            "order_id": f"O-{i}",
            "total": 100 + i % 500,
            "currency": "CNY",
            "items": [{"sku": f"SKU-{i % 97}", "qty": 1 + i % 3, "price": 49.9}],
        },
        "context": {
            "library": {"name": "analytics-python", "version": "2.3.3"},
            "ip": "10.0.0.1",
            "locale": "zh-CN",
            "userAgent": USER_AGENT,
        },
    }


def build_batches(events: int, batch: int, rep: int = 0) -> list[bytes]:
    """Pre-build Segment batches so the generator is not the bottleneck.

    Each repetition has its own customers (five events each), so caches warm up only as
    they would on real traffic, not across repetitions.
    """
    now = datetime.now(UTC).isoformat()
    customers = max(events // 5, 1)
    bodies = []
    for start in range(0, events, batch):
        msgs = [
            message(i, rep * customers + i % customers, now)
            for i in range(start, min(start + batch, events))
        ]
        bodies.append(json.dumps({"batch": msgs, "sentAt": now}).encode())
    return bodies


class Tally:
    """Events answered 200, requests answered otherwise, and each request's latency."""

    def __init__(self) -> None:
        auth = "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
        self.headers = {"Authorization": auth, "Content-Type": "application/json"}
        self.accepted = self.failed = 0
        self.latencies: list[float] = []

    async def post(self, client: httpx.AsyncClient, body: bytes) -> None:
        """POST one batch and count its answer."""
        sent = time.perf_counter()
        response = await client.post("/v1/batch", content=body, headers=self.headers)
        self.latencies.append(time.perf_counter() - sent)
        if response.status_code == 200:
            self.accepted += response.json()["accepted"]
        else:
            self.failed += 1


async def post_all(
    base: str, bodies: list[bytes], concurrency: int
) -> tuple[int, int, float, list[float]]:
    """POST every body with ``concurrency`` clients.

    Returns (accepted, non-200s, seconds, per-request latencies in seconds).
    """
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    tally = Tally()

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            await tally.post(client, queue.get_nowait())

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return tally.accepted, tally.failed, seconds, tally.latencies


async def paced(
    base: str, bodies: list[bytes], rate: float, per_body: int
) -> tuple[int, int, list[float]]:
    """POST ``bodies`` at ``rate`` events/s, each request on its own schedule (open loop)."""
    tally = Tally()

    async def one(client: httpx.AsyncClient, body: bytes, at: float) -> None:
        await asyncio.sleep(max(at - time.perf_counter(), 0))
        await tally.post(client, body)

    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        start = time.perf_counter() + 0.2
        interval = per_body / rate
        await asyncio.gather(
            *(one(client, body, start + n * interval) for n, body in enumerate(bodies))
        )
    return tally.accepted, tally.failed, tally.latencies


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


def kafka_pid(settings: Settings) -> int | None:
    """The pid of the `cdp up` broker, when it runs here."""
    pid_file = Path(settings.local.state_dir) / "kafka" / "kafka.pid"
    return int(pid_file.read_text().strip()) if pid_file.exists() else None


#: Rate limits no load of this bench reaches: what they cost is the check on every request.
UNREACHED = "1e12"


def start_api(
    settings: Settings, port: int, workers: int, sealed: bool = False, limited: bool = False
) -> subprocess.Popen[bytes]:
    """Start `cdp api --workers N` as its own process tree with a bench source; ``sealed``:
    field encryption on, with fresh master keys (else explicitly off); ``limited``: the rate
    limits checked on every request, at rates never reached (else off)."""
    source = {"name": "bench", "channel": "web", "key_sha256": hash_key(KEY)}
    env = {
        **os.environ,
        "CDP_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "CDP_API__PORT": str(port),
        "CDP_INGEST__SOURCES": json.dumps([source]),
        "CDP_LOG_LEVEL": "warning",
        "CDP_CLICKHOUSE__PATH": str(Path(settings.local.state_dir) / "bench-chdb"),
        "CDP_PRIVACY__ENABLED": "true" if sealed else "false",
        "CDP_INGEST__RATE_LIMITS__ADDRESS_REQUESTS_PER_S": UNREACHED if limited else "0",
        "CDP_INGEST__RATE_LIMITS__KEY_EVENTS_PER_S": UNREACHED if limited else "0",
    }
    if sealed:
        env["CDP_PRIVACY__MASTER_KEYS"] = MasterKeys.generate().dumps()
    args = [sys.executable, "-m", "deploy", "api", "--workers", str(workers)]
    proc = subprocess.Popen(args, env=env)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("API did not become healthy")


def label(api: tuple[int, bool, bool]) -> str:
    """How an API of the run is set up: processes, encryption, rate limits."""
    workers, sealed, limited = api
    return (
        f"{workers} API process(es)"
        + (", encryption on" if sealed else "")
        + (", rate limits checked" if limited else "")
    )


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="events per repetition")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="repetitions per worker count")
    parser.add_argument(
        "--workers", default="2", help="API process counts to compare, e.g. 1,2 (alternating)"
    )
    parser.add_argument(
        "--paced-rate", type=float, default=5000, help="events/s offered for the latency run"
    )
    parser.add_argument("--paced-seconds", type=float, default=10)
    parser.add_argument(
        "--privacy",
        choices=["off", "on", "both"],
        default="off",
        help="field encryption of the API (both: alternate APIs with it off and on)",
    )
    parser.add_argument(
        "--limits",
        choices=["off", "on", "both"],
        default="off",
        help="rate limits of the API, at rates never reached (both: alternate APIs without "
        "and with them, to measure the check)",
    )
    parser.add_argument(
        "--anonymous",
        choices=["per-event", "per-customer"],
        default="per-event",
        help="a new anonymousId in every event (with encryption: a new data key per event, the "
        "worst case), or one per customer as a browser cookie",
    )
    args = parser.parse_args()
    global ANONYMOUS_PER_EVENT
    ANONYMOUS_PER_EVENT = args.anonymous == "per-event"

    base_settings = Settings()
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    settings = base_settings.model_copy(
        update={"kafka": base_settings.kafka.model_copy(update={"topic_prefix": prefix})}
    )
    topics.create_all(settings.kafka)
    raw_topic = settings.kafka.topic("cdp.events.raw")
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.privacy]
    limit_modes = {"off": [False], "on": [True], "both": [False, True]}[args.limits]
    counts = [
        (int(w), sealed, limited)
        for w in args.workers.split(",")
        for sealed in modes
        for limited in limit_modes
    ]
    reps = [build_batches(args.events, args.batch, rep + 1) for rep in range(args.repeats)]
    body_bytes = sum(len(b) for b in reps[0])
    ports = {w: free_port() for w in counts}
    apis = {w: start_api(settings, port, *w) for w, port in ports.items()}
    broker = kafka_pid(settings)
    rates: dict[tuple[int, bool, bool], list[float]] = {w: [] for w in counts}
    cpu: dict[tuple[int, bool, bool], dict[str, float]] = {
        w: {"api": 0.0, "kafka": 0.0, "client": 0.0} for w in counts
    }
    measured: dict[tuple[int, bool, bool], int] = dict.fromkeys(counts, 0)
    total_accepted = total_failed = 0
    latency: dict[tuple[int, bool, bool], list[float]] = {}
    try:
        for w in counts:  # warm-up: every API process sees traffic before the measurement
            url = f"http://127.0.0.1:{ports[w]}"
            warm = build_batches(20 * args.batch, args.batch, 0)
            got, failed, _, _ = asyncio.run(post_all(url, warm, args.concurrency))
            total_accepted, total_failed = total_accepted + got, total_failed + failed
        for rep, bodies in enumerate(reps):
            for w in counts:
                url = f"http://127.0.0.1:{ports[w]}"
                before = (cpu_seconds(apis[w].pid), cpu_seconds(broker) if broker else 0.0)
                client_before = sum(os.times()[:2])
                accepted, failed, seconds, _ = asyncio.run(post_all(url, bodies, args.concurrency))
                cpu[w]["api"] += cpu_seconds(apis[w].pid) - before[0]
                cpu[w]["kafka"] += (cpu_seconds(broker) if broker else 0.0) - before[1]
                cpu[w]["client"] += sum(os.times()[:2]) - client_before
                measured[w] += accepted
                total_accepted += accepted
                total_failed += failed
                rates[w].append(accepted / seconds)
                print(
                    f"rep {rep + 1}, {label(w)}: "
                    f"{accepted} events in {seconds:.2f}s"
                    f" = {accepted / seconds:,.0f} events/s ({failed} non-200)",
                    flush=True,
                )
        for w in counts:
            url = f"http://127.0.0.1:{ports[w]}"
            n = int(args.paced_rate * args.paced_seconds)
            bodies = build_batches(n, args.batch, args.repeats + 1 + w[0] + 10 * w[1] + 20 * w[2])
            accepted, failed, latency[w] = asyncio.run(
                paced(url, bodies, args.paced_rate, args.batch)
            )
            total_accepted += accepted
            total_failed += failed
    finally:
        for proc in apis.values():
            proc.terminate()
        for proc in apis.values():
            proc.wait(timeout=60)
    in_kafka = topic_total(settings.kafka.bootstrap_servers, raw_topic, settings.kafka.partitions)

    values = [json.dumps(m).encode() for b in reps[0] for m in json.loads(b)["batch"]]
    ceiling_topic = settings.kafka.topic("cdp.events.resolved")  # an empty topic of the run
    ceiling = len(values) / asyncio.run(
        bare_producer(settings.kafka.bootstrap_servers, ceiling_topic, values)
    )
    drop_topics(settings.kafka.bootstrap_servers, prefix)
    print(
        f"\nPOST /v1/batch, {args.events} events/rep in batches of {args.batch} "
        f"({body_bytes / args.events:.0f} bytes/event in the body), {args.concurrency} clients, "
        f"{args.repeats} reps per API process count, alternating"
    )
    for w in counts:
        median = statistics.median(rates[w])
        per = {k: 1e6 * v / max(measured[w], 1) for k, v in cpu[w].items()}
        lat = latency[w]
        print(
            f"{label(w)}: "
            f"median {median:,.0f} events/s "
            f"(min {min(rates[w]):,.0f}, max {max(rates[w]):,.0f}); CPU per event: "
            f"API {per['api']:.1f} us, Kafka {per['kafka']:.1f} us, "
            f"load client {per['client']:.1f} us; at {args.paced_rate:,.0f} events/s offered: "
            f"request p50 {1000 * pct(lat, 0.5):.1f} ms, p99 {1000 * pct(lat, 0.99):.1f} ms"
        )
    print(f"peer, measured on this machine with this load shape: {PEER}")
    print(f"bare aiokafka producer ceiling: {ceiling:,.0f} events/s")
    print(
        f"reconcile: accepted {total_accepted} (incl. warm-up and paced), in Kafka {in_kafka}, "
        f"non-200 responses {total_failed}"
    )
    if in_kafka != total_accepted:
        raise SystemExit("counts do not reconcile")


if __name__ == "__main__":
    main()
