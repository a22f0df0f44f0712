"""Redis memory of identity's retry window, per event, at a given event rate.

Identity remembers each event's fingerprint (a 64-bit hash of source and message id) for the
retry window, in day sets spread over ``RETRY_BUCKETS`` buckets (identity/resolve.lua). The
memory per event depends on how full the sets are, i.e. on the rate: this fills a sample of
buckets to the size one day at ``--rate`` events/s gives them, exactly as the script writes
them (same keys, same fingerprints, same expiry), and reports MEMORY USAGE per event and the
total for the whole window at that rate. The held outcomes (until their records are
published) are bounded by the events in flight, not by the window, and are not counted.

    .venv/bin/cdp up
    .venv/bin/python bench/identity_memo.py --rate 1000 --window-days 7
"""

from __future__ import annotations

import argparse
import uuid

import redis

from deploy.settings import Settings
from identity.store import RETRY_BUCKETS, fingerprint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s")
    parser.add_argument("--window-days", type=int, default=7)
    parser.add_argument("--buckets", type=int, default=RETRY_BUCKETS)
    parser.add_argument("--sample", type=int, default=2048, help="buckets filled and measured")
    args = parser.parse_args()
    client = redis.Redis.from_url(Settings().redis.url.get_secret_value())
    ns = f"bm{uuid.uuid4().hex[:6]}"
    per_day = args.rate * 86_400
    events, day, n = 0, 20_000, 0
    sample = set(range(args.sample))
    try:
        pipe = client.pipeline(transaction=False)
        # Draw fingerprints until the sampled buckets hold a day's share of events each.
        target = per_day * args.sample / args.buckets
        while events < target:
            fp = fingerprint("pos", f"{uuid.uuid4()}")
            bucket = fp % args.buckets
            n += 1
            if bucket not in sample:
                continue
            key = f"{ns}:ev:w:{day}:{bucket}"
            pipe.sadd(key, str(fp))
            pipe.expire(key, (args.window_days + 1) * 86_400)
            events += 1
            if len(pipe) >= 20_000:
                pipe.execute()
        pipe.execute()
        keys = [f"{ns}:ev:w:{day}:{b}" for b in sample]
        sizes = client.pipeline(transaction=False)
        for key in keys:
            sizes.memory_usage(key, samples=0)
        used = sum(int(s or 0) for s in sizes.execute())
        encodings = {client.object("encoding", k) for k in keys[:50]}
    finally:
        for key in client.scan_iter(f"{ns}:*", count=5000):
            client.delete(key)
        client.close()
    per_event = used / events
    window = per_day * args.window_days
    print(
        f"{events:,} fingerprints in {args.sample:,} of {args.buckets:,} buckets "
        f"({events / args.sample:.0f} per set, encodings {sorted(e.decode() for e in encodings)})"
    )
    print(
        f"{per_event:.1f} B per event; at {args.rate:,.0f} events/s a {args.window_days}-day "
        f"window holds {window / 1e6:,.0f}M events = {per_event * window / 2**30:.2f} GiB"
    )


if __name__ == "__main__":
    main()
