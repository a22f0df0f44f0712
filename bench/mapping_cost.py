"""Measure what a source mapping costs per event at ingest, in process (no services).

Maps the ingest bench's realistic Segment batches (bench/ingest_rate.py: 100 events of
~660 bytes, identify/track with member id, anonymous id, email and phone) through the
intake exactly as the API does, for a source without a mapping and for sources whose
mapping (a) matches none of their events, (b) renames traits and converts an order's amount
on every order, (c) splits every track into two events. Reports the median microseconds per
message over ``--repeats`` passes.

    .venv/bin/python bench/mapping_cost.py --events 50000 --repeats 7

The unmapped mode also runs on a tree without mappings (``--unmapped-only``), so the cost of
the unmapped path can be compared across branches.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from ingest_rate import build_batches  # bench/ingest_rate.py

from ingest import intake
from ingest.limits import Limits
from ingest.sources import Source, hash_key

MAPPINGS: dict[str, dict[str, Any]] = {
    "no-match": {
        "name": "no-match",
        "events": [{"match": "Survey Submitted", "type": "survey_answered"}],
    },
    "rename+convert": {
        "name": "rename-convert",
        "traits": {"rename": {"phone": "mobile_phone"}},
        "events": [
            {
                "match": "Order Completed",
                "type": "order_completed",
                "rename": {"total": "total_fen"},
                "convert": {"total_fen": {"scale": 100, "to": "integer"}},
            }
        ],
    },
    "split in two": {
        "name": "split",
        "events": [
            {
                "match": "Order Completed",
                "emit": [
                    {"type": "order_completed"},
                    {"type": "points_earned", "rename": {"total": "points"}},
                ],
            }
        ],
    },
}


def _stamp(mapping: Any) -> intake.Stamp:
    source = Source(name="bench", channel="pos", user_id_type="member_id", key_sha256=hash_key("k"))
    now = datetime.now(UTC)
    if mapping is None:
        return intake.Stamp(source, now, Limits(), "CN")
    return intake.Stamp(source, now, Limits(), "CN", mapping)


def _pass(bodies: list[Any], stamp: intake.Stamp) -> tuple[float, int]:
    gc.collect()
    started = time.perf_counter()
    events = 0
    for body in bodies:
        events += len(intake.segment_batch(body, stamp).events)
    return time.perf_counter() - started, events


def measure(name: str, mapping: Any, bodies: list[Any], repeats: int, messages: int) -> None:
    """Print the median microseconds per message of one mode."""
    stamp = _stamp(mapping)
    _pass(bodies[:20], stamp)  # warm caches (phone normalisation, zones)
    runs = [_pass(bodies, stamp) for _ in range(repeats)]
    per = [seconds / messages * 1e6 for seconds, _ in runs]
    print(
        f"{name:16} {statistics.median(per):7.2f} us/message "
        f"(min {min(per):.2f}, max {max(per):.2f}); events out per message "
        f"{runs[0][1] / messages:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--unmapped-only", action="store_true")
    args = parser.parse_args()
    bodies = [orjson.loads(b) for b in build_batches(args.events, 100)]
    measure("no mapping", None, bodies, args.repeats, args.events)
    if args.unmapped_only:
        return
    from ingest.mapping import compile_mapping

    for name, spec in MAPPINGS.items():
        measure(name, compile_mapping(spec, name), bodies, args.repeats, args.events)


if __name__ == "__main__":
    main()
