"""End-to-end stream benchmark: HTTP ingest -> identity -> profiles -> history.

Starts `cdp run` as its own process on a fresh topic prefix and Redis namespace, against the
services of `cdp up` (or CDP_* settings), then in one run measures:

1. sustained end-to-end rate: N pre-built events posted as fast as 4 clients can, timed from
   the first POST until the processors' consumer group has no lag on any topic;
2. event-to-profile freshness p50/p99 at a paced rate (default 2,000 events/s): for every
   event, the time its profile change was applied minus the time ingest received it;
3. the ceiling: a do-nothing aiokafka consumer reading the same raw topic, in events/s.

    .venv/bin/cdp up
    .venv/bin/python bench/stream_rate.py --events 60000 --paced-rate 2000 --paced-seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer
from namespace import drop  # bench/namespace.py

from deploy import topics
from deploy.demo import demo_key, demo_sources
from deploy.lag import total_lag
from deploy.local.kafka import free_port
from deploy.settings import Settings
from deploy.worker import ROLES, group_id

SOURCE = "demo-pos"
TOPICS = ["cdp.events.raw", "cdp.events.resolved", "cdp.identity.merges", "cdp.profiles.changes"]


def batches(run: str, events: int, customers: int, batch: int = 500) -> list[bytes]:
    """Pre-build POS batches: identify/order/visit events of ``customers`` members."""
    now = datetime.now(UTC).isoformat()
    bodies = []
    for start in range(0, events, batch):
        msgs = []
        for i in range(start, min(start + batch, events)):
            c = i % customers
            kind = i % 5
            msg: dict[str, object] = {
                "messageId": f"{run}-{i}",
                "userId": f"M{run}{c:07d}",
                "timestamp": now,
            }
            if kind == 0:
                msg |= {
                    "type": "identify",
                    "traits": {
                        "phone": f"139{c:08d}",
                        "age": 20 + c % 50,
                        "email": f"u{c}.{run}@example.com",
                    },
                }
            elif kind in (1, 2):
                msg |= {
                    "type": "track",
                    "event": "Order Completed",
                    "properties": {
                        "order_id": f"{run}-O{i}",
                        "total": 10 + i % 300,
                        "category": ["shoes", "bags", "beauty"][i % 3],
                    },
                }
            else:
                msg |= {"type": "track", "event": "Store Visited", "properties": {"store": "SH-1"}}
            msgs.append(msg)
        bodies.append(json.dumps({"batch": msgs}).encode())
    return bodies


async def post(base: str, bodies: list[bytes], rate: float | None, clients: int = 4) -> None:
    """POST bodies with ``clients`` workers; pace to ``rate`` events/s when given."""
    headers = {
        "Authorization": "Basic " + base64.b64encode(f"{demo_key(SOURCE)}:".encode()).decode(),
        "Content-Type": "application/json",
    }
    per_body = len(json.loads(bodies[0])["batch"])
    started = time.perf_counter()
    queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    for n, body in enumerate(bodies):
        queue.put_nowait((n, body))

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            n, body = queue.get_nowait()
            if rate:
                await asyncio.sleep(max(0.0, started + n * per_body / rate - time.perf_counter()))
            response = await client.post("/v1/batch", content=body, headers=headers)
            if response.status_code != 200:
                raise SystemExit(f"POST failed: {response.status_code} {response.text[:200]}")

    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))


def wait_drained(
    settings: Settings, group: str, topics: list[str] = TOPICS, timeout_s: float = 900
) -> float:
    """Return the monotonic time at which the group had no lag on ``topics``."""
    names = [settings.kafka.topic(t) for t in topics]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if total_lag(settings.kafka, group, names) == 0:
            return time.monotonic()
        time.sleep(0.2)
    raise SystemExit("processors did not drain in time")


async def freshness(settings: Settings, run: str) -> list[float]:
    """Seconds from ingest receipt to profile change, per event of the paced run."""
    received: dict[str, datetime] = {}
    changed: dict[str, datetime] = {}
    for topic, sink in (("cdp.events.resolved", received), ("cdp.profiles.changes", changed)):
        consumer = AIOKafkaConsumer(
            settings.kafka.topic(topic),
            bootstrap_servers=settings.kafka.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            while True:
                got = await consumer.getmany(timeout_ms=2000, max_records=10_000)
                if not got:
                    break
                for records in got.values():
                    for r in records:
                        v = json.loads(r.value)
                        if topic == "cdp.events.resolved":
                            eid = v["event"]["event_id"]
                            if eid.startswith(run):
                                sink[eid] = datetime.fromisoformat(v["event"]["received_at"])
                        elif v["event_id"].startswith(run):
                            sink[v["event_id"]] = datetime.fromisoformat(v["at"])
        finally:
            await consumer.stop()
    return [(changed[e] - received[e]).total_seconds() for e in received if e in changed]


async def bare_consume(settings: Settings) -> float:
    """Events/s of a do-nothing consumer reading the whole raw topic."""
    consumer = AIOKafkaConsumer(
        settings.kafka.topic("cdp.events.raw"),
        bootstrap_servers=settings.kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    n, started = 0, time.perf_counter()
    try:
        while True:
            got = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if not got:
                break
            n += sum(len(v) for v in got.values())
    finally:
        await consumer.stop()
    return n / (time.perf_counter() - started - 1.0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_pids(settings: Settings) -> dict[str, int]:
    """The pids of the local stack's Kafka and Redis, when `cdp up` started them here."""
    found = {}
    for name in ("kafka", "redis"):
        pid_file = Path(settings.local.state_dir) / name / f"{name}.pid"
        if pid_file.exists():
            found[name] = int(pid_file.read_text().strip())
    return found


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--paced-rate", type=float, default=2000)
    parser.add_argument("--paced-seconds", type=float, default=20)
    parser.add_argument(
        "--layout",
        choices=["one", "split", "three"],
        default="one",
        help="one: cdp run; split: cdp api + cdp worker; three: api + identity/profiles "
        "worker + history worker (separate processes, separate groups)",
    )
    parser.add_argument(
        "--prefill",
        action="store_true",
        help="post all events with only the API running, then start the processors and time "
        "how fast they drain the backlog (the stream core without HTTP ingest competing for "
        "the CPUs); skips the freshness run",
    )
    args = parser.parse_args()

    base = Settings()
    tag = uuid.uuid4().hex[:6]
    prefix = f"sb{tag}."
    settings = base.model_copy(
        update={
            "kafka": base.kafka.model_copy(update={"topic_prefix": prefix}),
            "worker": base.worker.model_copy(update={"namespace": f"sb{tag}"}),
        }
    )
    topics.create_all(settings.kafka)
    port = free_port()
    env = {
        **os.environ,
        "CDP_KAFKA__TOPIC_PREFIX": prefix,
        "CDP_WORKER__NAMESPACE": f"sb{tag}",
        "CDP_API__PORT": str(port),
        "CDP_LOG_LEVEL": "warning",
        "CDP_CLICKHOUSE__PATH": str(Path(settings.local.state_dir) / f"bench-{tag}-chdb"),
    }
    env["CDP_INGEST__SOURCES"] = json.dumps([s.model_dump(mode="json") for s in demo_sources()])
    layouts = {
        "one": [["run"]],
        "split": [["api"], ["worker"]],
        "three": [
            ["api"],
            ["worker", "--role", "identity", "--role", "profiles"],
            ["worker", "--role", "history"],
        ],
    }
    commands = layouts[args.layout]
    if args.prefill:  # the API first, alone; the processors later, without it
        commands = [["api"]] + ([["worker"]] if args.layout == "one" else commands[1:])
    procs: list[subprocess.Popen[bytes]] = []

    def start(n: int) -> None:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "deploy", *commands[n]],
                env={**env, "CDP_CLICKHOUSE__PATH": f"{env['CDP_CLICKHOUSE__PATH']}-{n}"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    for n in range(1 if args.prefill else len(commands)):
        start(n)
    url = f"http://127.0.0.1:{port}"
    groups = (
        [
            (group_id(settings, ["identity", "profiles"]), TOPICS[:2]),
            (group_id(settings, ["history"]), TOPICS[1:]),
        ]
        if args.layout == "three"
        else [(group_id(settings, sorted(ROLES)), TOPICS)]
    )
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)

        bulk = batches("b" + tag, args.events, args.customers)
        started = time.monotonic()
        asyncio.run(post(url, bulk, None))
        timing = f"posted in {time.monotonic() - started:.1f}s"
        if args.prefill:
            procs[0].kill()
            for n in range(1, len(commands)):
                start(n)
            raw = [settings.kafka.topic(TOPICS[0])]
            while total_lag(settings.kafka, groups[0][0], raw) >= args.events:
                time.sleep(0.2)  # the processors are still starting
            started = time.monotonic()  # their first commit (commits are 1 s apart)
        watched = {" ".join(commands[n]): p.pid for n, p in enumerate(procs) if p.poll() is None}
        watched |= service_pids(settings)
        cpu_before = {name: cpu_seconds(pid) for name, pid in watched.items()}
        drained = max(wait_drained(settings, g, t) for g, t in groups)
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in watched.items()}
        e2e = args.events / (drained - started)
        timing += f", all processed {drained - started:.1f}s after " + (
            "the processors' first commit" if args.prefill else "the first POST"
        )
        fresh: list[float] = []
        if not args.prefill:
            paced_n = int(args.paced_rate * args.paced_seconds)
            run = "p" + tag
            body = batches(run, paced_n, args.customers, batch=100)
            asyncio.run(post(url, body, args.paced_rate))
            for g, t in groups:
                wait_drained(settings, g, t)
            fresh = asyncio.run(freshness(settings, run))
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=60)
        for n in range(len(commands)):  # the embedded ClickHouse of each process: bench data
            shutil.rmtree(f"{env['CDP_CLICKHOUSE__PATH']}-{n}", ignore_errors=True)
        drop(settings.redis.url.get_secret_value(), settings.worker.namespace)
    ceiling = asyncio.run(bare_consume(settings))
    print("CPU per event while processing (µs), by process:")
    for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<45} {seconds / args.events * 1e6:8.1f}")
    print(f"  {'total':<45} {sum(cpu.values()) / args.events * 1e6:8.1f}")
    what = "prefilled events" if args.prefill else "events"
    print(
        f"end-to-end: {args.events} {what} ({args.customers} customers) {timing} "
        f"= {e2e:,.0f} events/s sustained"
    )
    if fresh:
        print(
            f"freshness at {args.paced_rate:,.0f} events/s for {args.paced_seconds:.0f}s "
            f"({len(fresh)} events): p50 {statistics.median(fresh) * 1000:,.0f} ms, "
            f"p99 {pct(fresh, 0.99) * 1000:,.0f} ms, max {max(fresh) * 1000:,.0f} ms"
        )
    print(
        f"bare aiokafka consumer on the raw topic: {ceiling:,.0f} events/s; "
        f"end-to-end / ceiling = {e2e / ceiling:.3f}"
    )


if __name__ == "__main__":
    main()
