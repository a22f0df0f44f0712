"""What the ops page shows: per-stage writes and consumption, lag, freshness, dead letters,
segment sizes over time. Pure shaping of what Kafka and the health checks answered."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from contracts.topics import (
    EVENTS_DEADLETTER,
    EVENTS_RAW,
    EVENTS_RESOLVED,
    IDENTITY_MERGES,
    PROFILES_CHANGES,
    SEGMENTS_MEMBERSHIP,
)
from runtime.readback import Tail

#: The stages of the flow, each by the topic it writes (throughput = that topic's growth).
STAGES: tuple[tuple[str, str], ...] = (
    ("ingest", EVENTS_RAW.name),
    ("identity", EVENTS_RESOLVED.name),
    ("merges", IDENTITY_MERGES.name),
    ("profiles", PROFILES_CHANGES.name),
    ("segments", SEGMENTS_MEMBERSHIP.name),
    ("deadletter", EVENTS_DEADLETTER.name),
)
#: Dead letters shown, newest first, of the last ones read per partition.
LATEST_LETTERS = 50


@dataclass(frozen=True)
class OpsSources:
    """Where the ops page reads from; the composition root binds them to its settings."""

    #: A registry topic's full name (the deployment's prefix).
    topic: Callable[[str], str]
    #: Messages ever written per topic.
    ends: Callable[[list[str]], dict[str, int]]
    #: Lag rows (group, topic, partition, committed, end, lag) of every consumer group.
    lag: Callable[[], list[dict[str, Any]]]
    #: The last messages of a topic, newest first.
    last: Callable[[str, int], list[Tail]]
    #: Kafka, Redis and ClickHouse reachability, as ``/healthz`` reports it.
    health: Callable[[], Awaitable[dict[str, dict[str, Any]]]]


def lag_by_group(rows: Iterable[dict[str, Any]], topics: set[str]) -> list[dict[str, Any]]:
    """Total lag and consumed messages per consumer group, on this deployment's topics."""
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["topic"] not in topics:
            continue
        group = groups.setdefault(
            row["group"], {"group": row["group"], "lag": 0, "consumed": 0, "topics": set()}
        )
        group["lag"] += row["lag"]
        group["consumed"] += row["committed"]
        group["topics"].add(row["topic"])
    return [{**g, "topics": sorted(g["topics"])} for _, g in sorted(groups.items())]


def dead_letters(tails: list[Tail], now_ms: int) -> dict[str, Any]:
    """Dead letters by reason, and the latest with their field and message."""
    letters = [orjson.loads(t.value) for t in tails if t.value is not None]
    reasons = Counter(str(letter.get("reason")) for letter in letters)
    latest = [
        {
            "received_at": letter.get("received_at"),
            "reason": letter.get("reason"),
            "field": letter.get("field"),
            "message": letter.get("message"),
            "source": letter.get("source"),
            "endpoint": letter.get("endpoint"),
            "status": letter.get("status"),
        }
        for letter in letters[:LATEST_LETTERS]
    ]
    age = (now_ms - tails[0].timestamp_ms) / 1000 if tails else None
    return {"by_reason": dict(reasons.most_common()), "latest": latest, "newest_age_s": age}


def freshness(tails: list[Tail], now_ms: int) -> float | None:
    """Seconds since a stage last wrote (its newest message); None when it never did."""
    return (now_ms - tails[0].timestamp_ms) / 1000 if tails else None


async def snapshot(sources: OpsSources) -> dict[str, Any]:
    """Everything the ops page shows, read now."""
    names = {stage: sources.topic(topic) for stage, topic in STAGES}
    ends = await asyncio.to_thread(sources.ends, list(names.values()))
    lag = await asyncio.to_thread(sources.lag)
    newest = await asyncio.gather(
        *(asyncio.to_thread(sources.last, name, 1) for name in names.values())
    )
    letters = await asyncio.to_thread(sources.last, names["deadletter"], LATEST_LETTERS)
    now_ms = int(time.time() * 1000)
    return {
        "at_ms": now_ms,
        "stages": [
            {
                "stage": stage,
                "topic": name,
                "written": ends.get(name, 0),
                "freshness_s": freshness(tails, now_ms),
            }
            for (stage, name), tails in zip(names.items(), newest, strict=True)
        ],
        "groups": lag_by_group(lag, set(names.values())),
        "dead_letters": dead_letters(letters, now_ms),
        "health": await sources.health(),
    }


def sizes(changes: Iterable[dict[str, Any]], segment_id: str) -> list[dict[str, Any]]:
    """A saved segment's size after each membership change, in time order (enters minus
    exits since it was saved)."""
    mine = sorted(
        (c for c in changes if c.get("segment_id") == segment_id), key=lambda c: str(c["at"])
    )
    points: list[dict[str, Any]] = []
    size = 0
    for change in mine:
        size += 1 if change["change"] == "enter" else -1
        if points and points[-1]["at"] == change["at"]:
            points[-1]["size"] = size
        else:
            points.append({"at": change["at"], "size": size})
    return points
