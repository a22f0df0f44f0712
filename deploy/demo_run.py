"""`cdp demo`: push generated customers through the HTTP API and measure what came out."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from contracts.topics import EVENTS_RESOLVED, IDENTITY_MERGES
from deploy.demo import demo_key, post
from deploy.generator import Feed, linkable, pairwise
from deploy.lag import consumer_lag, render_table, total_lag
from deploy.settings import Settings
from runtime.readback import read_to_end
from tagging.catalog import load as load_catalog
from tagging.store import sync_catalog

#: Tags the demo summary counts: tiers, lifecycle, channels, service, satisfaction, reach.
HEADLINE_TAGS = (
    "tier_vip",
    "tier_core",
    "tier_ordinary",
    "tier_potential",
    "lifecycle_new",
    "lifecycle_active",
    "omnichannel",
    "service_open_complaint",
    "csat_last_dissatisfied",
    "loyalty_member",
    "b2b_account",
    "reachable_sms",
)


@dataclass
class DemoResult:
    """What the demo measured."""

    events: int
    seconds: float
    raw_identifiers: int
    profiles: int
    people: int
    precision: float
    recall: float
    #: Recall against the clusters the data can prove (see generator.linkable).
    linkable_recall: float
    decisions: Counter[str]
    junk_merges: int
    lag: str
    #: Profiles per headline tag, from the tag indexes.
    tag_counts: dict[str, int] = field(default_factory=dict)


def push(base_url: str, feed: Feed, concurrency: int = 4) -> float:
    """POST every call; fail on anything but 200 with nothing rejected. Return seconds."""
    started = time.perf_counter()

    def one(call: tuple[str, str, dict[str, Any]]) -> None:
        source, path, body = call
        answer = post(base_url, demo_key(source), path, body)
        if answer.status != 200 or answer.answer.get("rejected"):
            raise RuntimeError(f"{source} {path} -> {answer.status} {answer.answer}")

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, feed.calls))
    return time.perf_counter() - started


def wait_processed(
    settings: Settings, layouts: list[dict[str, list[str]]], timeout_s: float = 600
) -> list[str]:
    """Wait until the processors have consumed everything on the event topics; return their
    groups.

    ``layouts`` are the ways the processors may be deployed, each as consumer group -> the
    topics it reads (``cdp run``: a stream group on the raw topic and a history group on the
    rest; ``cdp worker`` with every role: one group). The one whose groups have caught up is
    the one running: a group nobody runs never has (every partition it never read counts).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        for layout in layouts:
            if not any(total_lag(settings.kafka, g, ts) for g, ts in layout.items()):
                return list(layout)
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"the processors did not consume the feed within {timeout_s:.0f} s "
                f"(consumer groups looked at: {sorted(g for lay in layouts for g in lay)})"
            )
        time.sleep(1)


def _read(settings: Settings, topic: str, wanted: set[str]) -> list[dict[str, Any]]:
    values = read_to_end(settings.kafka.bootstrap_servers, settings.kafka.topic(topic))
    return [v for v in values if (v.get("event_id") or v["event"]["event_id"]) in wanted]


def _survivors(settings: Settings, pids: set[str]) -> dict[str, str]:
    client = redis.Redis.from_url(settings.redis.url.get_secret_value(), decode_responses=True)
    aliases: dict[str, str] = client.hgetall(f"{settings.worker.namespace}:alias")  # type: ignore[assignment]  # decode_responses
    client.close()
    out = {}
    for pid in pids:
        cur = pid
        while cur in aliases:
            cur = aliases[cur]
        out[pid] = cur
    return out


def other_feeds(settings: Settings, seed: int, customers: int) -> list[str]:
    """Record this feed in the state; return the other demo feeds it already holds.

    Feeds share identifier spaces (member M0000772 is a different person in each), so a
    second feed on the same state merges with the first and its figures mix them.
    """
    url, ns = settings.redis.url.get_secret_value(), settings.worker.namespace
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        this = f"seed {seed}, {customers} customers"
        held: set[str] = client.smembers(f"{ns}:demo:feeds")  # type: ignore[assignment]  # decode_responses
        client.sadd(f"{ns}:demo:feeds", this)
        return sorted(held - {this})
    finally:
        client.close()


def tag_counts(settings: Settings, tags: tuple[str, ...] = HEADLINE_TAGS) -> dict[str, int]:
    """How many profiles have each tag now (BITCOUNT of the tag indexes)."""
    url, ns = settings.redis.url.get_secret_value(), settings.worker.namespace
    catalog = load_catalog(settings.tags.catalog)
    sync_catalog(url, catalog, ns)
    client = redis.Redis.from_url(url)
    try:
        return {t: int(client.bitcount(f"{ns}:tag:{catalog.by_id[t].bit}")) for t in tags}
    finally:
        client.close()


def measure(
    settings: Settings,
    feed: Feed,
    groups: str | list[str],
    seconds: float,
    stored: Callable[[str], str] | None = None,
) -> DemoResult:
    """Compare what the platform made of the feed with the ground truth.

    ``stored`` maps a ``type:value`` the feed sent to the identifier as stored (its blind
    index with field encryption on).
    """
    junk = {stored(k) for k in feed.junk} if stored else feed.junk
    wanted = set(feed.truth)
    resolved = _read(settings, EVENTS_RESOLVED.name, wanted)
    if len({r["event"]["event_id"] for r in resolved}) != len(wanted):
        raise RuntimeError(
            f"only {len(resolved)} of {len(wanted)} events reached {EVENTS_RESOLVED.name}; "
            "is the `cdp run --demo` you posted to using these settings?"
        )
    survivors = _survivors(settings, {r["profile_id"] for r in resolved if r["profile_id"]})
    predicted = {
        r["event"]["event_id"]: survivors.get(r["profile_id"], f"none:{n}")
        for n, r in enumerate(resolved)
    }
    precision, recall = pairwise(predicted, feed.truth)
    ids = {
        r["event"]["event_id"]: [f"{i['type']}:{i['value']}" for i in r["event"]["identifiers"]]
        for r in resolved
    }
    _, linkable_recall = pairwise(predicted, linkable(feed, ids, junk))
    ledger = _read(settings, IDENTITY_MERGES.name, wanted)
    decisions = Counter(f"{e['decision']}:{e['rule']}" for e in ledger)
    junk_merges = sum(1 for e in ledger if e["decision"] == "merged" and e["identifier"] in junk)
    identifiers = {f"{i['type']}:{i['value']}" for r in resolved for i in r["event"]["identifiers"]}
    return DemoResult(
        events=len(resolved),
        seconds=seconds,
        raw_identifiers=len(identifiers),
        profiles=len(set(predicted.values())),
        people=feed.people,
        precision=precision,
        recall=recall,
        linkable_recall=linkable_recall,
        decisions=decisions,
        junk_merges=junk_merges,
        lag=render_table(
            [
                row
                for g in ([groups] if isinstance(groups, str) else groups)
                for row in consumer_lag(settings.kafka, g)
            ]
        ),
        tag_counts=tag_counts(settings) if settings.tags.enabled else {},
    )


def render(r: DemoResult) -> str:
    """The demo's printed summary."""
    lines = [
        f"events accepted and resolved: {r.events} ({r.events / r.seconds:,.0f} events/s "
        "through the HTTP API)",
        f"raw identifiers: {r.raw_identifiers}  ->  unified profiles: {r.profiles} "
        f"(ground truth: {r.people} people)",
        f"identity vs ground truth: pairwise precision {r.precision:.4f}, recall {r.recall:.4f}"
        f" (recall {r.linkable_recall:.4f} of what the data links)",
        "ledger: " + ", ".join(f"{k} {v}" for k, v in sorted(r.decisions.items())),
        f"merges through blocklisted/junk identifiers: {r.junk_merges}",
        "tags (profiles): " + ", ".join(f"{k} {v}" for k, v in r.tag_counts.items()),
        r.lag,
    ]
    return "\n".join(lines)


def write_truth(feed: Feed, path: Path) -> None:
    """Write the ground truth as JSON lines {event_id, person}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for event_id, person in feed.truth.items():
            out.write(json.dumps({"event_id": event_id, "person": person}) + "\n")
