"""Field encryption end to end: a demo feed through the real API, Kafka, worker, Redis and chDB.

The leak scan reads every topic of the deployment, DUMPs every Redis key, reads every
ClickHouse table and the worker's log, and asks the read API without ``pii:read``: not one
phone number, email or member/customer id the feed sent may appear in clear.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis
import redis.asyncio as aioredis
from kafka import KafkaAdminClient
from pydantic import SecretStr

from deploy import topics
from deploy.demo import demo_sources
from deploy.demo_run import measure, push, tag_counts
from deploy.generator import Feed, generate
from deploy.privacy import blinding, key_store, wrapper
from deploy.settings import PrivacySettings, Settings
from identity.normalize import normalize_email, normalize_phone
from identity.rules import DEFAULT_BLOCKLIST
from privacy.crypto import MasterKeys
from privacy.reveal import ERASED, Revealer
from runtime.publisher import Publisher
from runtime.readback import read_records
from tagging.catalog import load as load_catalog
from tests.conftest import make_settings
from tests.support.keys import key_of
from tests.support.server import running_api
from tests.support.services import Services
from tests.support.worker import PIPELINE_TOPICS as TOPICS
from tests.support.worker import WorkerProcess

ROLES = ["history", "identity", "profiles"]
PII = {"Authorization": "Bearer tk_pii"}
READER = {"Authorization": "Bearer tk_reader"}
#: A rejected event (no userId or anonymousId) that carries a phone number.
REJECTED_PHONE = "13912345678"


def feed() -> Feed:
    return generate(seed=23, customers=30, all_channels=True)


def _strings(value: Any, key: str, out: dict[str, set[str]]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _strings(v, k, out)
    elif isinstance(value, list):
        for v in value:
            _strings(v, key, out)
    elif isinstance(value, str) and value.strip():
        kind = {"userId": "id", "phone": "phone", "mobile": "phone", "email": "email"}.get(key)
        if kind:
            out[kind].add(value)


def sensitive_values(fed: Feed) -> set[str]:
    """Every phone (as sent and normalised), email and user id the feed carries."""
    found: dict[str, set[str]] = {"id": set(), "phone": set(), "email": set()}
    for _, _, body in fed.calls:
        _strings(body, "", found)
        for event in body.get("events", []):
            for ident in event.get("identifiers", []):
                kind = {"phone": "phone", "email": "email"}.get(ident["type"], "id")
                found[kind].add(ident["value"])
    values = {v.strip() for v in found["id"]}
    for phone in found["phone"]:
        e164 = normalize_phone(phone)
        if e164:
            values.update({e164, e164.removeprefix("+86")})
    for email in found["email"]:
        values.add(normalize_email(email) or email.strip())
    values.add(REJECTED_PHONE)
    return {v for v in values if v.lower() not in DEFAULT_BLOCKLIST and len(v) >= 6}


def one_partition(settings: Settings) -> Settings:
    """Settings whose topics have one partition: both runs resolve in the posting order.

    Resolution depends on the order events meet (a device that later proves junk links
    whoever came first), and blind indexes spread events over partitions differently from
    clear keys; with one partition the order is the same, and so must be every outcome.
    """
    kafka = settings.kafka.model_copy(update={"partitions": 1})
    return settings.model_copy(update={"kafka": kafka})


def unsealed(settings: Settings) -> Settings:
    """Settings with field encryption off, whatever master keys this machine's state holds
    (``cdp up`` writes some)."""
    return settings.model_copy(update={"privacy": PrivacySettings(enabled=False)})


def private(settings: Settings) -> Settings:
    keys = MasterKeys.generate()
    return settings.model_copy(
        update={
            "privacy": PrivacySettings(enabled=True, master_keys=SecretStr(keys.dumps())),
            "ingest": settings.ingest.model_copy(
                update={"sources": [*settings.ingest.sources, *demo_sources()]}
            ),
        }
    )


def process(
    settings: Settings, fed: Feed, home: Path, workers: list[WorkerProcess]
) -> WorkerProcess:
    home.mkdir(parents=True, exist_ok=True)
    worker = WorkerProcess(settings, home, ROLES).start()
    workers.append(worker)
    with running_api(settings) as base:
        push(base, fed, concurrency=1)
        answer = httpx.post(
            base + "/v1/batch",
            json={"batch": [{"type": "identify", "traits": {"phone": REJECTED_PHONE}}]},
            auth=(key_of("test-pos"), ""),
            timeout=30,
        )
        assert answer.status_code == 400, answer.text
    worker.wait_caught_up(TOPICS, timeout_s=300)
    return worker


def kafka_bytes(settings: Settings) -> bytes:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        names = [t for t in admin.list_topics() if t.startswith(settings.kafka.topic_prefix)]
    finally:
        admin.close()
    assert len(names) >= 8, names
    out = bytearray()
    for name in names:
        for key, value in read_records(settings.kafka.bootstrap_servers, name, timeout_s=60):
            out += (key or b"") + b"\n" + (value or b"") + b"\n"
    return bytes(out)


def redis_bytes(settings: Settings, at_least: int = 100) -> bytes:
    client = redis.Redis.from_url(settings.redis.url.get_secret_value())
    out = bytearray()
    try:
        keys = list(client.scan_iter(match=f"{settings.worker.namespace}:*", count=1000))
        assert len(keys) > at_least
        for key in keys:
            out += key + b"\n" + (client.dump(key) or b"") + b"\n"  # type: ignore[operator]
            kind = client.type(key)
            if kind == b"hash":
                for f, v in client.hgetall(key).items():  # type: ignore[union-attr]
                    out += f + b"=" + v + b"\n"
            elif kind == b"set":
                out += b"\n".join(client.smembers(key)) + b"\n"  # type: ignore[arg-type]
            elif kind == b"list":
                out += b"\n".join(client.lrange(key, 0, -1)) + b"\n"  # type: ignore[arg-type]
    finally:
        client.close()
    return bytes(out)


DUMP_TABLES = """
import sys, clickhouse_connect
client = clickhouse_connect.get_client(dsn="chdb://" + sys.argv[1])
tables = [r[0] for r in client.query("SHOW TABLES FROM " + sys.argv[2]).result_rows]
assert "events" in tables and "profile_snapshots" in tables, tables
for t in tables:
    result = client.query(f"SELECT * FROM {sys.argv[2]}.{t}")
    print(t, len(result.result_rows))
    for row in result.result_rows:
        print(repr(row))
"""


def clickhouse_text(settings: Settings, home: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-c", DUMP_TABLES, str(home / "chdb"), settings.clickhouse.database],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return out.stdout


def leaks(blob: bytes | str, values: set[str]) -> list[str]:
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    lower = text.lower()
    return sorted(v for v in values if v.lower() in lower)


def test_demo_feed_rests_encrypted_everywhere_and_resolves_as_in_clear(
    services: Services, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    fed = feed()
    values = sensitive_values(fed)
    assert len(values) > 100

    # The same feed in clear, for identity's figures.
    clear = unsealed(one_partition(make_settings(services, f"t{uuid.uuid4().hex[:10]}.")))
    clear = clear.model_copy(
        update={
            "ingest": clear.ingest.model_copy(
                update={"sources": [*clear.ingest.sources, *demo_sources()]}
            )
        }
    )
    topics.create_all(clear.kafka)
    plain = process(clear, fed, tmp_path / "clear", workers)
    assert leaks(redis_bytes(clear), values), "the scan must find values stored in clear"
    in_clear = measure(clear, fed, plain.group, 1.0)
    plain.stop()

    settings = private(one_partition(make_settings(services, f"t{uuid.uuid4().hex[:10]}.")))
    topics.create_all(settings.kafka)
    worker = process(settings, fed, tmp_path / "sealed", workers)
    sealed = measure(settings, fed, worker.group, 1.0, stored=blinding(settings).stored_key)
    assert (sealed.events, sealed.profiles) == (in_clear.events, in_clear.profiles)
    assert (sealed.precision, sealed.recall, sealed.linkable_recall) == (
        in_clear.precision,
        in_clear.recall,
        in_clear.linkable_recall,
    )
    assert sealed.junk_merges == in_clear.junk_merges
    assert sealed.decisions == in_clear.decisions
    every = tuple(load_catalog(settings.tags.catalog).by_id)
    counts = tag_counts(settings, every)
    assert counts == tag_counts(
        clear, every
    )  # birthday tags too: a sealed birthday keeps its month
    assert sum(counts.values()) > 100

    # Reads: masked without pii:read, in clear with it, for the same profile.
    with running_api(settings) as base:
        phones = sorted(v for v in values if v.startswith("+86"))
        found = 0
        answers = []
        for phone in phones:
            masked = httpx.get(
                base + "/v1/profiles/lookup",
                params={"type": "phone", "value": phone},
                headers=READER,
                timeout=10,
            )
            if masked.status_code != 200:
                continue  # shared by two people (409) or only refused (404)
            found += 1
            full = httpx.get(
                base + "/v1/profiles/lookup",
                params={"type": "phone", "value": phone},
                headers=PII,
                timeout=10,
            ).json()
            assert f"phone:{phone}" in full["identifiers"]
            masked_phone = f"phone:{phone[3:6]}****{phone[-4:]}"
            assert masked_phone in masked.json()["identifiers"]
            assert ERASED not in json.dumps(full)
            answers.append(masked.text)
            explain = httpx.get(
                base + "/v1/identity/explain",
                params={"profile_id": full["profile_id"]},
                headers=READER,
                timeout=10,
            )
            assert explain.status_code == 200
            answers.append(explain.text)
        assert found >= len(phones) // 2

        # A live segment's export: masked for a segments reader, in clear with pii:read.
        def export(token: str) -> list[dict[str, Any]]:
            got = httpx.post(
                base + "/v1/segments/export",
                params={"format": "jsonl", "fields": ["traits.phone", "traits.email"]},
                json={"definition": {"tag": "loyalty_member"}},
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            assert got.status_code == 200, got.text
            answers.append(got.text)
            return [json.loads(line) for line in got.text.splitlines()]

        masked_rows, clear_rows = export("tk_segments"), export("tk_segments_pii")
        answers.pop()  # the clear export is what pii:read is for
        assert len(masked_rows) == len(clear_rows) > 5
        phones_out = [r["traits.phone"] for r in clear_rows if r["traits.phone"]]
        assert phones_out and all(p in values or normalize_phone(p) in values for p in phones_out)
        assert all("****" in r["traits.phone"] for r in masked_rows if r["traits.phone"])

    worker.stop()
    scanned = {
        "kafka": leaks(kafka_bytes(settings), values),
        "redis": leaks(redis_bytes(settings), values),
        "clickhouse": leaks(clickhouse_text(settings, tmp_path / "sealed"), values),
        "worker log": leaks(worker.log.read_text(errors="replace"), values),
        "reads without pii:read": leaks("\n".join(answers), values),
    }
    assert scanned == {k: [] for k in scanned}


def person(n: int, member: str, phone: str, email: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "identify",
            "messageId": f"p{n}-identify",
            "userId": member,
            "traits": {"phone": phone, "email": email, "name": f"Person {n}", "city": "Shanghai"},
        },
        {
            "type": "track",
            "messageId": f"p{n}-order",
            "userId": member,
            "event": "Order Completed",
            "properties": {"total": 10 * n, "receiver_phone": phone},
        },
    ]


def lookup(base: str, member: str, headers: dict[str, str]) -> dict[str, Any]:
    got = httpx.get(
        base + "/v1/profiles/lookup",
        params={"type": "member_id", "value": member},
        headers=headers,
        timeout=10,
    )
    assert got.status_code == 200, got.text
    return dict(got.json())


def cli(settings: Settings, *args: str) -> str:
    env = {
        **os.environ,
        "CDP_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "CDP_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "CDP_REDIS__URL": settings.redis.url.get_secret_value(),
        "CDP_WORKER__NAMESPACE": settings.worker.namespace,
        "CDP_PRIVACY__ENABLED": "true",
        # The approval flow of rotations has its own test (test_rights.py).
        "CDP_PRIVACY__ROTATION_NEEDS_APPROVAL": "false",
        "CDP_LOG_LEVEL": "warning",
    }
    if settings.privacy.master_keys is not None:
        env["CDP_PRIVACY__MASTER_KEYS"] = settings.privacy.master_keys.get_secret_value()
    else:
        env["CDP_PRIVACY__MASTER_KEY_FILE"] = str(settings.privacy.master_key_file)
    out = subprocess.run(
        [sys.executable, "-m", "deploy", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_shredding_a_person_makes_their_values_unreadable_even_replayed_from_offset_zero(
    settings: Settings, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    settings = private(settings)
    a = ("M-SHRED-1", "+8613800138101", "a.one@example.com")
    b = ("M-KEEP-2", "+8613800138102", "b.two@example.com")
    worker = WorkerProcess(settings, tmp_path, ROLES).start()
    workers.append(worker)
    with running_api(settings) as base:
        answer = httpx.post(
            base + "/v1/batch",
            json={"batch": person(1, *a) + person(2, *b)},
            auth=(key_of("test-pos"), ""),
            timeout=30,
        )
        assert answer.status_code == 200 and answer.json()["accepted"] == 4
        worker.wait_caught_up(TOPICS)
        before = lookup(base, a[0], PII)
        assert f"phone:{a[1]}" in before["identifiers"]
        # The same lookup with the value in the body, out of URLs and proxy logs.
        by_body = httpx.post(
            base + "/v1/profiles/lookup",
            json={"type": "phone", "value": "138 0013 8101"},
            headers=PII,
            timeout=10,
        )
        assert by_body.status_code == 200 and by_body.json() == before
        bad = httpx.post(
            base + "/v1/profiles/lookup", json={"type": "phone"}, headers=PII, timeout=10
        )
        assert bad.status_code == 400 and bad.json()["field"] == "value"
        assert before["traits"]["email"] == a[2]

    said = cli(settings, "keys", "shred", "--profile", before["profile_id"])
    assert said.startswith("3 data keys destroyed")  # member id, phone, email
    worker.stop()

    # Replay the raw topic from offset 0 into fresh state: another namespace, group, history.
    fresh = settings.model_copy(
        update={
            "worker": settings.worker.model_copy(
                update={"namespace": settings.worker.namespace + "-replay", "app_id": "replay"}
            )
        }
    )
    replay = WorkerProcess(fresh, tmp_path / "replay", ROLES)
    (tmp_path / "replay").mkdir()
    replay.env |= {"CDP_WORKER__APP_ID": "replay"}
    workers.append(replay.start())
    replay.wait_caught_up({"cdp.events.raw"})
    with running_api(fresh) as base:
        gone, kept = lookup(base, a[0], PII), lookup(base, b[0], PII)
        assert gone["profile_id"] != kept["profile_id"]
        shown = json.dumps(gone)
        for value in a:
            assert value not in shown
        assert gone["traits"]["email"] == gone["traits"]["phone"] == ERASED
        assert {i.partition(":")[2] for i in gone["identifiers"]} == {ERASED}
        assert kept["traits"]["email"] == b[2]
        assert f"phone:{b[1]}" in kept["identifiers"] and f"member_id:{b[0]}" in kept["identifiers"]

    # Every envelope of the raw log, opened by a process that never saw a key before: the
    # shredded person's under no key, the other's to exactly what was sent.
    raw = read_records(
        settings.kafka.bootstrap_servers, settings.kafka.topic("cdp.events.raw"), timeout_s=60
    )
    events = [json.loads(v) for _, v in raw if v]
    assert len(events) == 4
    opened = asyncio.run(open_all(settings, events))
    for event in opened:
        text = json.dumps(event)
        if event["event_id"].startswith("p1-"):
            assert ERASED in text and not any(v in text for v in a)
        else:
            assert ERASED not in text and b[1] in text
            assert {i["sealed"] for i in event["identifiers"]} <= set(b)


async def open_all(settings: Settings, events: list[dict[str, Any]]) -> list[Any]:
    client = aioredis.from_url(settings.redis.url.get_secret_value())
    publisher = Publisher(settings.kafka.bootstrap_servers)
    try:
        store = key_store(settings, client, publisher, wrapper(settings))
        return [await Revealer(store).document(e, clear=True) for e in events]
    finally:
        await publisher.stop()
        await client.aclose()


def test_rotating_the_master_key_while_events_flow_loses_nothing(
    settings: Settings, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    keyfile = tmp_path / "master-keys.json"
    MasterKeys.generate().save(keyfile)
    settings = private(settings)
    settings = settings.model_copy(
        update={"privacy": PrivacySettings(enabled=True, master_key_file=keyfile)}
    )
    worker = WorkerProcess(settings, tmp_path, ROLES).start()
    workers.append(worker)
    posted: list[str] = []
    stop = threading.Event()

    def post_people(base: str) -> None:
        n = 0
        while not stop.is_set():
            batch = []
            for _ in range(5):
                n += 1
                batch += person(n, f"M-ROT-{n}", f"+86138{n:08d}", f"rot{n}@example.com")
            answer = httpx.post(
                base + "/v1/batch", json={"batch": batch}, auth=(key_of("test-pos"), ""), timeout=30
            )
            assert answer.status_code == 200, answer.text
            posted.extend(f"M-ROT-{m}" for m in range(n - 4, n + 1))

    def wait_posted(count: int) -> None:
        deadline = time.monotonic() + 120
        while len(posted) < count:
            assert poster.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)

    with running_api(settings) as base:
        poster = threading.Thread(target=post_people, args=(base,), daemon=True)
        poster.start()
        wait_posted(20)
        said = cli(settings, "keys", "rotate-master", "--retire")
        assert "current key-encryption key k2" in said and "retired 1" in said
        seen = len(posted)
        wait_posted(seen + 20)
        stop.set()
        poster.join(timeout=60)
    assert list(json.loads(keyfile.read_text())["keks"]) == ["k2"]
    worker.wait_caught_up(TOPICS)
    raw = read_records(
        settings.kafka.bootstrap_servers, settings.kafka.topic("cdp.events.raw"), timeout_s=60
    )
    assert len(raw) == 2 * len(posted)
    # Every person, read by a process that only knows the new key-encryption key.
    with running_api(settings) as base:
        for n, member in enumerate(posted, start=1):
            found = lookup(base, member, PII)
            assert found["traits"]["phone"] == f"+86138{n:08d}"
            assert f"member_id:{member}" in found["identifiers"]
