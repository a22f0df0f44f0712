"""Measure what one rate-limit check costs an API process: in-process buckets against Redis.

The in-process check is what ingest does (``ingest/ratelimit.py``: two token buckets per
request, the address's and the write key's). The alternative, one limiter shared by every API
process, needs a Redis round trip per request; it is measured as the smallest such trip, one
``EVALSHA`` of a token-bucket script per request over redis-py's asyncio client (what the API
uses), with ``concurrency`` requests in flight as the API has under load. Reports the API
process's CPU per check and the wall time per check.

    .venv/bin/cdp up
    .venv/bin/python bench/rate_limit_cost.py
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
import uuid

import redis.asyncio as aioredis
import uvloop

from deploy.settings import Settings
from ingest.limits import RateLimits
from ingest.ratelimit import Limiter

#: A token bucket in Redis: refill, take one if there is one, remember. One round trip.
BUCKET = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
tokens = math.min(burst, tokens + (now - (tonumber(state[2]) or now)) * rate)
local ok = 0
if tokens >= 1 then tokens = tokens - 1; ok = 1 end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('PEXPIRE', KEYS[1], 60000)
return ok
"""


def cpu() -> float:
    """This process's user + system CPU seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def local(checks: int) -> tuple[float, float]:
    """(CPU us, wall us) per request of the in-process limiter (address and key)."""
    limiter = Limiter(RateLimits(address_requests_per_s=1e9, key_events_per_s=1e9), 2)
    addresses = [f"10.0.{n // 256}.{n % 256}" for n in range(4096)]
    started_cpu, started = cpu(), time.perf_counter()
    for n in range(checks):
        limiter.check_address(addresses[n % len(addresses)])
        limiter.check_key("web", 100)
    return 1e6 * (cpu() - started_cpu) / checks, 1e6 * (time.perf_counter() - started) / checks


async def shared(url: str, checks: int, concurrency: int) -> tuple[float, float]:
    """(CPU us, wall us) per request of a Redis limiter, ``concurrency`` requests in flight."""
    client = aioredis.from_url(url)
    script = client.register_script(BUCKET)
    prefix = f"bench:ratelimit:{uuid.uuid4().hex[:8]}:"

    async def worker(w: int, n: int) -> None:
        for i in range(n):
            await script(keys=[f"{prefix}{(w * n + i) % 4096}"], args=[1e9, 1e9, time.time()])

    try:
        await worker(0, 1000)  # connect, load the script
        started_cpu, started = cpu(), time.perf_counter()
        await asyncio.gather(*(worker(w, checks // concurrency) for w in range(concurrency)))
        elapsed_cpu, elapsed = cpu() - started_cpu, time.perf_counter() - started
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
    return 1e6 * elapsed_cpu / checks, 1e6 * elapsed * concurrency / checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checks", type=int, default=40_000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    url = Settings().redis.url.get_secret_value()
    cpu_us, wall_us = local(args.checks)
    print(f"in-process buckets (address + key): {cpu_us:.2f} us CPU per request")
    for concurrency in (1, args.concurrency):
        cpu_us, wall_us = uvloop.run(shared(url, args.checks, concurrency))
        print(
            f"Redis token bucket, {concurrency} in flight: {cpu_us:.1f} us of the API's CPU "
            f"per request, {wall_us:.0f} us added to each request's latency"
        )


if __name__ == "__main__":
    main()
