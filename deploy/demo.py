"""A small multi-channel demo feed pushed through the HTTP API, then read back from Kafka."""

from __future__ import annotations

import base64
import gzip
import json
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from contracts.topics import EVENTS_DEADLETTER, EVENTS_RAW
from deploy.settings import Settings
from ingest.sources import Source
from runtime.auth import Token, hash_token
from runtime.readback import read_to_end

DEMO_SOURCES_FILE = Path(__file__).parent / "local" / "demo-sources.json"
#: How often a request over a rate limit (429) is sent again before its answer is given up.
RATE_LIMITED_ATTEMPTS = 5


def demo_key(source_name: str) -> str:
    """Return the documented write key of a demo source (for local demos only)."""
    return f"wk_{source_name}_key"


#: The documented token of the local demo's console (``cdp run --demo`` only): every read
#: scope and saving segments, personal data masked (no ``pii:read``).
DEMO_CONSOLE_TOKEN = "tk_demo_console"  # noqa: S105 - documented, for local demos only
DEMO_CONSOLE_SCOPES = frozenset(
    {"profiles:read", "identity:read", "segments:read", "segments:write", "ops:read"}
)


def demo_tokens() -> list[Token]:
    """Return the demo's console token (for local demos only)."""
    return [
        Token(
            name="demo-console", sha256=hash_token(DEMO_CONSOLE_TOKEN), scopes=DEMO_CONSOLE_SCOPES
        )
    ]


def demo_sources() -> list[Source]:
    """Return the demo sources (POS, member app, web, mini-program, service desk, delivery
    platform, survey tool)."""
    return [Source.model_validate(s) for s in json.loads(DEMO_SOURCES_FILE.read_text())]


@dataclass(frozen=True)
class Posted:
    """One HTTP call of the feed and what the API answered."""

    source: str
    path: str
    status: int
    answer: dict[str, Any]


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _msg(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "messageId": str(uuid.uuid4()), **fields}


def feed(now: datetime) -> list[tuple[str, str, dict[str, Any]]]:
    """Return (source, path, body) calls: one customer seen in five channels, plus noise."""
    t = now - timedelta(minutes=5)
    pos = [
        _msg(
            "identify",
            userId="M-000123",
            timestamp=_iso(t),
            traits={"name": "Li Wei", "phone": "+86 138-0013-8000", "age": 34},
        ),
        _msg(
            "track",
            userId="M-000123",
            event="Order Completed",
            timestamp=_iso(t),
            properties={
                "order_id": "POS-88121",
                "total": 268.0,
                "currency": "CNY",
                "store": "Shanghai Jing'an",
            },
        ),
    ]
    app = [
        _msg(
            "identify",
            userId="M-000123",
            anonymousId="dev-7f3a",
            traits={"email": "LI.WEI@Example.com ", "age": 52},
            context={"device": {"id": "a1b2c3d4-device"}},
            timestamp=_iso(t),
        ),
        _msg(
            "track",
            userId="M-000123",
            event="Points Earned",
            properties={"points": 268},
            timestamp=_iso(t),
        ),
    ]
    web = [
        _msg(
            "page",
            anonymousId="web-anon-55",
            name="Winter sale",
            properties={"url": "https://shop.example.com/sale"},
            timestamp=_iso(t),
        ),
        _msg(
            "track",
            userId="C-9001",
            event="Order Completed",
            context={"traits": {"email": "li.wei@example.com"}},
            properties={"order_id": "WEB-5512", "total": 99.5},
            timestamp=_iso(t),
        ),
        _msg("track", userId="C-9001", properties={"note": "no event name: rejected"}),
    ]
    mini = [
        _msg(
            "identify",
            userId="o6_bmjrPTlm6_2sgVt7hMZOPfL2M",
            traits={"phone": "13800138000"},
            timestamp=_iso(t),
        )
    ]
    desk = {
        "events": [
            {
                "event_id": str(uuid.uuid4()),
                "type": "ticket_opened",
                "identifiers": [{"type": "phone", "value": "138 0013 8000"}],
                "properties": {"ticket_id": "T-771", "category": "complaint"},
                "original_timestamp": _iso(t),
            }
        ]
    }
    return [
        ("demo-pos", "/v1/batch", {"batch": pos, "sentAt": _iso(now)}),
        ("demo-app", "/v1/batch", {"batch": app, "sentAt": _iso(now)}),
        ("demo-web", "/v1/batch", {"batch": web, "sentAt": _iso(now)}),
        ("demo-miniprogram", "/v1/batch", {"batch": mini}),
        ("demo-servicedesk", "/v1/events", desk),
    ]


def post(base_url: str, write_key: str, path: str, body: Any, gzipped: bool = False) -> Posted:
    """POST ``body`` as JSON with the write key as HTTP Basic username."""
    data = json.dumps(body).encode()
    headers = {
        "Content-Type": "application/json",
        "Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode(),
    }
    if gzipped:
        data, headers["Content-Encoding"] = gzip.compress(data), "gzip"
    if not base_url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {base_url}")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        base_url + path, data=data, headers=headers, method="POST"
    )
    for attempt in range(1, RATE_LIMITED_ATTEMPTS + 1):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our API
                return Posted("", path, response.status, json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            answer = json.loads(exc.read() or b"{}")
            if exc.code != 429 or attempt == RATE_LIMITED_ATTEMPTS:
                return Posted("", path, exc.code, answer)
            # Over a rate limit: wait as told and send the same body again, as SDKs do.
            time.sleep(min(float(exc.headers.get("Retry-After") or 1), 30.0))
    raise AssertionError("unreachable")


def _ids(body: Any) -> set[str]:
    items = body.get("batch") or body.get("events") or []
    return {str(m.get("messageId") or m.get("event_id")) for m in items}


def run_feed(base_url: str) -> tuple[list[Posted], set[str]]:
    """Push the demo feed; return what the API answered per call and the event ids sent."""
    results, sent = [], set()
    for source, path, body in feed(datetime.now(UTC)):
        answer = post(base_url, demo_key(source), path, body, gzipped=source == "demo-web")
        results.append(Posted(source, path, answer.status, answer.answer))
        sent |= _ids(body)
    return results, sent


def read_back(settings: Settings, topic_name: str, wanted: Any) -> list[Any]:
    """The messages of a topic, up to its current end, that pass ``wanted``."""
    topic = settings.kafka.topic(topic_name)
    return [v for v in read_to_end(settings.kafka.bootstrap_servers, topic) if wanted(v)]


def report(
    settings: Settings, results: list[Posted], sent: set[str], raw: list[dict[str, Any]]
) -> str:
    """Describe what was sent and what arrived in Kafka (``raw``: the feed's raw events, with
    sealed identifiers already opened and masked when field encryption is on)."""
    requests = {r.answer.get("request_id") for r in results}
    accepted = sum(r.answer.get("accepted", 0) for r in results)
    rejected = sum(r.answer.get("rejected", 0) for r in results)
    lines = ["calls:"]
    lines += [
        f"  {r.source:17} POST {r.path:10} -> {r.status} accepted={r.answer.get('accepted')}"
        f" rejected={r.answer.get('rejected')}"
        for r in results
    ]
    dead = read_back(settings, EVENTS_DEADLETTER.name, lambda d: d["request_id"] in requests)
    lines.append(f"the API took {accepted} events and refused {rejected}")
    lines.append(f"arrived in {settings.kafka.topic(EVENTS_RAW.name)}: {len(raw)} events")
    for event in raw:
        ids = ", ".join(
            f"{i['type']}={i.get('sealed') or i['value']}" for i in event["identifiers"]
        )
        lines.append(f"  {event['channel']:13} {event['type']:16} {ids}")
    lines.append(
        f"arrived in {settings.kafka.topic(EVENTS_DEADLETTER.name)}: {len(dead)} dead letters"
    )
    for letter in dead:
        lines.append(f"  {letter['reason']} field={letter['field']}: {letter['message']}")
    return "\n".join(lines)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def wait_healthy(base_url: str, timeout_s: float = 60.0) -> None:
    """Poll /healthz until it answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base_url + "/healthz", timeout=3) as r:  # noqa: S310
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{base_url} did not become healthy")


def wait_caught_up(settings: Settings, group: str, timeout_s: float = 60.0) -> list[Any]:
    """Wait until ``group`` has no lag on any topic it reads; return the lag rows."""
    from deploy.lag import consumer_lag

    deadline = time.monotonic() + timeout_s
    rows = consumer_lag(settings.kafka, group)
    while time.monotonic() < deadline:
        rows = consumer_lag(settings.kafka, group)
        topics = {r.topic for r in rows}
        if len(topics) >= 3 and all(r.lag == 0 for r in rows):
            break
        time.sleep(0.5)
    return rows


def profiles_report(profiles: list[Any], ledger: dict[str, int]) -> str:
    """Describe the unified profiles the feed produced."""
    lines = [
        f"unified profiles: {len(profiles)}; merges {ledger.get('merged', 0)}, "
        f"refused merges {ledger.get('refused', 0)}"
    ]
    for p in profiles:
        lines.append(f"  profile {p.profile_id}: {', '.join(p.identifiers)}")
        lines.append(
            f"    channels={','.join(p.channels)} orders={p.order_count} "
            f"spend={p.total_spend:.2f} points={p.points_balance} "
            f"open_tickets={p.open_tickets} age={p.traits.get('age')}"
        )
    return "\n".join(lines)


def add_demo_task(app: Any, settings: Settings, base_url: str, exit_after: bool) -> None:
    """Push the demo feed once the API serves, then report what arrived and the profiles."""
    import asyncio
    import os
    import signal

    import redis.asyncio as aioredis

    from contracts.events import Identifier
    from contracts.profiles import Profile
    from deploy.lag import render_table
    from deploy.privacy import build as build_privacy
    from identity.store import IdentityStore
    from profiles.api import opened
    from profiles.store import ProfileStore
    from runtime.publisher import Publisher

    @app.task
    async def demo() -> None:
        await asyncio.to_thread(wait_healthy, base_url)
        results, sent = await asyncio.to_thread(run_feed, base_url)
        client = aioredis.from_url(settings.redis.url.get_secret_value())
        publisher = Publisher(settings.kafka.bootstrap_servers)
        sealing = build_privacy(settings, client, publisher)
        identity = IdentityStore(client, settings.identity, settings.worker.namespace)
        revealer = sealing.revealer if sealing else None

        async def masked(events: list[Any]) -> Any:
            # What an operator may see of the raw events: sealed values opened, masked.
            return await revealer.document(events, False) if revealer else events

        raw = await asyncio.to_thread(
            read_back, settings, EVENTS_RAW.name, lambda e: e["event_id"] in sent
        )
        print(
            await asyncio.to_thread(report, settings, results, sent, await masked(raw)),
            flush=True,
        )
        lag = await asyncio.to_thread(wait_caught_up, settings, app.conf.id)
        store = ProfileStore(client, settings.profiles, settings.worker.namespace)
        keys = {Identifier.model_validate(i).key() for e in raw for i in e["identifiers"]}
        pids = set()
        for key in keys:
            members = await client.smembers(f"{settings.worker.namespace}:i:{key}")
            pids |= {
                await store.survivor(m.decode() if isinstance(m, bytes) else m) for m in members
            }
        found = [p for p in [await store.get(pid) for pid in sorted(pids)] if p]
        profiles = [
            Profile.model_validate(
                await opened(revealer, identity, p.model_dump(mode="json"), False)
            )
            for p in found
        ]
        ledger = await asyncio.to_thread(
            read_back, settings, "cdp.identity.merges", lambda e: e["event_id"] in sent
        )
        decisions: dict[str, int] = {}
        for entry in ledger:
            decisions[entry["decision"]] = decisions.get(entry["decision"], 0) + 1
        print(f"raw identifiers: {len(keys)} across {len(raw)} events", flush=True)
        print(profiles_report(profiles, decisions), flush=True)
        print(render_table(lag), flush=True)
        await publisher.stop()
        await client.aclose()
        if exit_after:
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            print("serving; Ctrl-C to stop", flush=True)
