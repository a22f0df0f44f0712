"""End-to-end stream benchmark: HTTP ingest -> identity -> profiles -> history.

Starts `cdp run` as its own process on a fresh topic prefix and Redis namespace, against the
services of `cdp up` (or CDP_* settings), then in one run measures:

1. sustained end-to-end rate: a pre-built feed posted as fast as 4 clients can, timed from
   the first POST until the processors' consumer group has no lag on any topic. The feed is
   by default what users send (``--feed realistic``: the demo generator's seven channels,
   several identifiers per event in varying spellings, merges and refusals, conflicting
   traits, event times over two years, sources interleaved and out of order); ``--feed pos``
   is the simple single-channel feed of known members at "now";
2. event-to-profile freshness p50/p99 at a paced rate (default 2,000 events/s): for every
   event, from the time ingest received it to the Kafka timestamp of its profile change
   record, which the stream publishes after the fold and the tags are stored (so an upper
   bound of "visible with its tags in a lookup"); and, as a second figure, to the change's
   ``at``, the start of the stream batch that folded it;
3. the ceiling: a do-nothing aiokafka consumer reading the same raw topic, in events/s.

    .venv/bin/cdp up
    .venv/bin/python bench/stream_rate.py --customers 25000 --prefill --layout one
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis.asyncio as redis
from aiokafka import AIOKafkaConsumer
from kafka.errors import KafkaError
from namespace import drop, drop_topics  # bench/namespace.py
from proc import cpu_seconds, named_children, own_cpu_seconds  # bench/proc.py

from deploy import topics
from deploy.demo import demo_key, demo_sources
from deploy.generator import generate
from deploy.lag import total_lag
from deploy.local.kafka import free_port
from deploy.settings import Settings
from deploy.worker import ROLES, group_id
from privacy.crypto import MasterKeys
from runtime.auth import Token, hash_token

SOURCE = "demo-pos"
TOPICS = [
    "cdp.events.raw",
    "cdp.events.resolved",
    "cdp.identity.merges",
    "cdp.profiles.changes",
    "cdp.profiles.snapshots",
]


Call = tuple[str, str, bytes, int]  # source, path, body, events in it


def batches(run: str, events: int, customers: int, batch: int = 500) -> list[Call]:
    """Pre-build POS batches: identify/order/visit events of ``customers`` members, "now"."""
    now = datetime.now(UTC).isoformat()
    bodies: list[Call] = []
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
        bodies.append((SOURCE, "/v1/batch", json.dumps({"batch": msgs}).encode(), len(msgs)))
    return bodies


def realistic(customers: int, seed: int, first: int, batch: int) -> tuple[list[Call], set[str]]:
    """What users send: every channel, several identifiers per event in varying spellings,
    merges and refused merges, conflicting traits, orders, surveys and tickets, event times
    over two years; the calls of all sources interleaved, each source's events shuffled."""
    feed = generate(
        seed=seed, customers=customers, batch=batch, first=first, span_days=730, all_channels=True
    )
    calls: list[Call] = []
    for source, path, body in feed.calls:
        n = len(body.get("batch", body.get("events", [])))
        calls.append((source, path, json.dumps(body).encode(), n))
    random.Random(seed).shuffle(calls)
    return calls, set(feed.truth)


async def post(base: str, calls: list[Call], rate: float | None, clients: int = 4) -> None:
    """POST the calls with ``clients`` workers; pace to ``rate`` events/s when given."""
    started = time.perf_counter()
    queue: asyncio.Queue[tuple[float, Call]] = asyncio.Queue()
    sent = 0
    for call in calls:
        queue.put_nowait((sent / rate if rate else 0.0, call))
        sent += call[3]

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            at, (source, path, body, _) = queue.get_nowait()
            await asyncio.sleep(max(0.0, started + at - time.perf_counter()))
            key = base64.b64encode(f"{demo_key(source)}:".encode()).decode()
            headers = {"Authorization": f"Basic {key}", "Content-Type": "application/json"}
            response = await client.post(path, content=body, headers=headers)
            if response.status_code != 200:
                raise SystemExit(f"POST failed: {response.status_code} {response.text[:200]}")

    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))


def lag(settings: Settings, group: str, names: list[str]) -> int:
    """The group's lag on ``names``; unknown (-1) while its coordinator is being elected."""
    try:
        return total_lag(settings.kafka, group, names)
    except KafkaError:
        return -1


def wait_drained(
    settings: Settings, group: str, topics: list[str] = TOPICS, timeout_s: float = 900
) -> float:
    """Return the monotonic time at which the group had no lag on ``topics``."""
    names = [settings.kafka.topic(t) for t in topics]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if lag(settings, group, names) == 0:
            return time.monotonic()
        time.sleep(0.2)
    raise SystemExit("processors did not drain in time")


async def freshness(settings: Settings, ids: set[str]) -> tuple[list[float], list[float]]:
    """Seconds from ingest receipt to the profile change's publish (its record's Kafka
    timestamp), and to its batch's start (its ``at``), per event of the paced run."""
    received: dict[str, datetime] = {}
    changed: dict[str, datetime] = {}
    published: dict[str, float] = {}
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
                            if eid in ids:
                                sink[eid] = datetime.fromisoformat(v["event"]["received_at"])
                        elif v["event_id"] in ids and v["event_id"] not in sink:
                            sink[v["event_id"]] = datetime.fromisoformat(v["at"])
                            published[v["event_id"]] = r.timestamp / 1000
        finally:
            await consumer.stop()
    seen = [e for e in received if e in changed]
    return (
        [published[e] - received[e].timestamp() for e in seen],
        [(changed[e] - received[e]).total_seconds() for e in seen],
    )


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


def watch(commands: dict[str, int]) -> dict[str, list[int]]:
    """What to count CPU of: each command's process tree, except that a process with named
    children (``cdp run``: cdp-stream, cdp-api) is counted apart from each kind of child.
    A negative pid stands for the process alone, without its children."""
    watched: dict[str, list[int]] = {}
    for name, pid in commands.items():
        kinds = {k: v for k, v in named_children(pid).items() if k.startswith("cdp-")}
        if not kinds:
            watched[name] = [pid]
            continue
        watched[f"{name} (history, API)"] = [-pid]
        watched |= {f"{name}: {kind}": pids for kind, pids in kinds.items()}
    return watched


def cpu_of(pids: list[int]) -> float:
    """CPU seconds of process trees (a negative pid: that process alone)."""
    return sum(own_cpu_seconds(-p) if p < 0 else cpu_seconds(p) for p in pids)


def service_pids(settings: Settings) -> dict[str, int]:
    """The pids of the local stack's Kafka and Redis, when `cdp up` started them here."""
    found = {}
    for name in ("kafka", "redis"):
        pid_file = Path(settings.local.state_dir) / name / f"{name}.pid"
        if pid_file.exists():
            found[name] = int(pid_file.read_text().strip())
    return found


#: Read tokens the benchmark's API accepts (the names are the tokens: bench data only).
READ_TOKENS = [
    Token(
        name="tk_bench_pii",
        sha256=hash_token("tk_bench_pii"),
        scopes=frozenset({"profiles:read", "pii:read"}),
    ),
    Token(
        name="tk_bench_reader",
        sha256=hash_token("tk_bench_reader"),
        scopes=frozenset({"profiles:read"}),
    ),
]


async def redis_memory(settings: Settings) -> int:
    """Redis's ``used_memory`` in bytes."""
    client = redis.Redis.from_url(settings.redis.url.get_secret_value())
    try:
        return int((await client.info("memory"))["used_memory"])
    finally:
        await client.aclose()


async def profile_count(settings: Settings) -> int:
    """Profiles created in the run's namespace (merged ones included)."""
    client = redis.Redis.from_url(settings.redis.url.get_secret_value())
    try:
        return int(await client.get(f"{settings.worker.namespace}:seq") or 0)
    finally:
        await client.aclose()


async def time_reads(url: str, settings: Settings, n: int) -> dict[str, list[float]]:
    """Seconds per profile read, by token, alternating tokens over the same random ids."""
    client = redis.Redis.from_url(settings.redis.url.get_secret_value())
    try:
        top = int(await client.get(f"{settings.worker.namespace}:seq") or 0)
    finally:
        await client.aclose()
    rng = random.Random(5)
    ids = [rng.randint(1, top) for _ in range(n)]
    took: dict[str, list[float]] = {t.name: [] for t in READ_TOKENS}
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        for pid in ids[:50]:  # warm-up: connections, caches
            await http.get(f"/v1/profiles/{pid}", headers={"Authorization": "Bearer tk_bench_pii"})
        for pid in ids:
            for token in took:
                started = time.perf_counter()
                answer = await http.get(
                    f"/v1/profiles/{pid}", headers={"Authorization": f"Bearer {token}"}
                )
                took[token].append(time.perf_counter() - started)
                if answer.status_code not in (200, 404):
                    raise RuntimeError(f"profile read: {answer.status_code} {answer.text[:200]}")
    return took


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--feed",
        choices=["realistic", "pos"],
        default="realistic",
        help="realistic: the multi-channel demo generator over two years, out of order "
        "(~8 events per customer); pos: one POS source, one member id per event, all 'now'",
    )
    parser.add_argument("--events", type=int, default=60_000, help="pos feed only")
    parser.add_argument("--customers", type=int, default=25_000)
    parser.add_argument("--seed", type=int, default=11)
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
    parser.add_argument(
        "--privacy",
        action="store_true",
        help="field encryption on (fresh master keys): the API seals sensitive values",
    )
    parser.add_argument(
        "--reads",
        type=int,
        default=0,
        help="after the drain, time this many GET /v1/profiles/{id} with a pii:read token "
        "and as many with a token without it (p50/p99, one keep-alive client)",
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
    # The prefill posts as fast as the API takes it, from one address: past the default limits.
    env["CDP_INGEST__RATE_LIMITS__ADDRESS_REQUESTS_PER_S"] = "0"
    env["CDP_INGEST__RATE_LIMITS__KEY_EVENTS_PER_S"] = "0"
    env["CDP_API__TOKENS"] = json.dumps([t.model_dump(mode="json") for t in READ_TOKENS])
    if args.privacy:
        env["CDP_PRIVACY__ENABLED"] = "true"
        env["CDP_PRIVACY__MASTER_KEYS"] = MasterKeys.generate().dumps()
    else:  # off, even where `cdp up` made a key file (which turns encryption on by default)
        env["CDP_PRIVACY__ENABLED"] = "false"
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
        commands = [["api"]] + (commands if args.layout == "one" else commands[1:])
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
            (group_id(settings, ["identity", "profiles"]), TOPICS[:1]),  # one pass on raw
            (group_id(settings, ["history"]), TOPICS[1:]),
        ]
        if args.layout in ("one", "three")  # cdp run: its stream processes and itself
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

        if args.feed == "realistic":
            bulk, _ = realistic(args.customers, args.seed, 0, 500)
        else:
            bulk = batches("b" + tag, args.events, args.customers)
        events = sum(c[3] for c in bulk)
        memory_before = asyncio.run(redis_memory(settings))
        started = time.monotonic()
        asyncio.run(post(url, bulk, None))
        timing = f"posted in {time.monotonic() - started:.1f}s"
        if args.prefill:
            procs[0].kill()
            for n in range(1, len(commands)):
                start(n)
            raw = [settings.kafka.topic(TOPICS[0])]
            while not 0 <= lag(settings, groups[0][0], raw) < events:
                time.sleep(0.2)  # the processors are still starting
            started = time.monotonic()  # their first commit (commits are 1 s apart)
        watched = watch(
            {" ".join(commands[n]): p.pid for n, p in enumerate(procs) if p.poll() is None}
        )
        watched |= {name: [pid] for name, pid in service_pids(settings).items()}
        cpu_before = {name: cpu_of(pids) for name, pids in watched.items()}
        # Each group in turn (the history reads what the stream writes, so it is last):
        # which one the drain waited on.
        caught = [(g, wait_drained(settings, g, t)) for g, t in groups]
        drained = max(at for _, at in caught)
        cpu = {name: cpu_of(pids) - cpu_before[name] for name, pids in watched.items()}
        # A process that exited (a crash its supervisor restarted) takes its CPU with it.
        exited = [
            p for pids in watched.values() for p in pids if not Path(f"/proc/{abs(p)}").exists()
        ]
        e2e = events / (drained - started)
        timing += f", all processed {drained - started:.1f}s after " + (
            "the processors' first commit" if args.prefill else "the first POST"
        )
        timing += (
            " (groups caught up: "
            + ", ".join(f"{g.rsplit('-', 1)[-1]} {at - started:.1f}s" for g, at in caught)
            + ")"
        )
        fresh: list[float] = []
        started: list[float] = []
        if not args.prefill:
            paced_n = int(args.paced_rate * args.paced_seconds)
            run = "p" + tag
            if args.feed == "realistic":  # other people than the bulk feed's
                people = max(paced_n // 8, 1)
                body, ids = realistic(people, args.seed + 1, args.customers, 100)
            else:
                body = batches(run, paced_n, args.customers, batch=100)
                ids = {
                    json.loads(b)["batch"][i]["messageId"] for _, _, b, n in body for i in range(n)
                }
            asyncio.run(post(url, body, args.paced_rate))
            for g, t in groups:
                wait_drained(settings, g, t)
            fresh, started = asyncio.run(freshness(settings, ids))
        memory = asyncio.run(redis_memory(settings)) - memory_before
        profiles = asyncio.run(profile_count(settings))
        reads = asyncio.run(time_reads(url, settings, args.reads)) if args.reads else {}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=60)
        for n in range(len(commands)):  # the embedded ClickHouse of each process: bench data
            shutil.rmtree(f"{env['CDP_CLICKHOUSE__PATH']}-{n}", ignore_errors=True)
        drop(settings.redis.url.get_secret_value(), settings.worker.namespace)
    ceiling = asyncio.run(bare_consume(settings))
    drop_topics(settings.kafka.bootstrap_servers, prefix)
    print("CPU per event while processing (µs), by process:")
    for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<45} {seconds / events * 1e6:8.1f}")
    print(f"  {'total':<45} {sum(cpu.values()) / events * 1e6:8.1f}")
    if exited:
        print(f"  WARNING: watched processes {exited} exited during the run: CPU undercounted")
    what = "prefilled events" if args.prefill else "events"
    print(
        f"end-to-end, {args.feed} feed: {events} {what} ({args.customers} customers) {timing} "
        f"= {e2e:,.0f} events/s sustained"
    )
    if fresh:
        print(
            f"freshness at {args.paced_rate:,.0f} events/s for {args.paced_seconds:.0f}s "
            f"({len(fresh)} events): p50 {statistics.median(fresh) * 1000:,.0f} ms, "
            f"p99 {pct(fresh, 0.99) * 1000:,.0f} ms, max {max(fresh) * 1000:,.0f} ms "
            "(to the change's publish, after its tags are stored)"
        )
        print(
            f"  to the start of the batch that folded it: p50 "
            f"{statistics.median(started) * 1000:,.0f} ms, p99 {pct(started, 0.99) * 1000:,.0f} ms"
        )
    print(
        f"Redis memory after the drain: {memory / 2**20:,.1f} MiB for {profiles:,} profiles = "
        f"{memory / max(profiles, 1):,.0f} B per profile (all keys of the run, data keys included)"
    )
    for token, took in reads.items():
        print(
            f"GET /v1/profiles/{{id}} with {token} ({len(took)} reads): "
            f"p50 {statistics.median(took) * 1000:.2f} ms, p99 {pct(took, 0.99) * 1000:.2f} ms"
        )
    print(
        f"bare aiokafka consumer on the raw topic: {ceiling:,.0f} events/s; "
        f"end-to-end / ceiling = {e2e / ceiling:.3f}"
    )


if __name__ == "__main__":
    main()
