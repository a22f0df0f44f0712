"""The stream core end to end: HTTP -> Kafka -> identity -> profiles -> Redis and ClickHouse."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from deploy.demo_run import tag_counts
from deploy.settings import Settings
from runtime.readback import read_to_end
from tagging.catalog import load as load_catalog
from tests.support.keys import key_of
from tests.support.seed import untagged_profiles
from tests.support.worker import WorkerProcess

ALL = ["history", "identity", "profiles"]
TOPICS = {"cdp.events.raw", "cdp.events.resolved"}


def basic(source: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key_of(source)}:".encode()).decode()}


READER = {"Authorization": "Bearer tk_reader"}


def post(api: str, source: str, batch: list[dict[str, Any]]) -> None:
    response = httpx.post(
        api + "/v1/batch", json={"batch": batch}, headers=basic(source), timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.json()["rejected"] == 0


def test_cross_channel_customer_becomes_one_profile(
    settings: Settings, api: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    post(
        api,
        "test-pos",
        [
            {
                "type": "identify",
                "userId": "M-1",
                "messageId": "p1",
                "traits": {"phone": "+86 138-0013-8000", "age": 30},
            },
            {
                "type": "track",
                "userId": "M-1",
                "event": "Order Completed",
                "messageId": "p2",
                "properties": {"order_id": "O-1", "total": 100},
            },
        ],
    )
    post(
        api,
        "test-web",
        [
            {
                "type": "track",
                "userId": "C-7",
                "event": "Order Completed",
                "messageId": "w1",
                "context": {"traits": {"email": "A@X.com"}},
                "properties": {"order_id": "O-2", "total": 50.5},
            },
            {
                "type": "identify",
                "userId": "C-7",
                "messageId": "w2",
                "traits": {"email": "a@x.com", "phone": "13800138000"},
            },
        ],
    )
    workers.append(WorkerProcess(settings, tmp_path, ALL).start())
    workers[0].wait_caught_up(
        TOPICS | {"cdp.identity.merges", "cdp.profiles.changes", "cdp.profiles.snapshots"}
    )

    found = httpx.get(
        api + "/v1/profiles/lookup", params={"type": "email", "value": " A@x.COM"}, headers=READER
    )
    assert found.status_code == 200, found.text
    profile = found.json()
    assert profile["identifiers"] == [
        "customer_id:C-7",
        "email:a@x.com",
        "member_id:M-1",
        "phone:+8613800138000",
    ]
    assert (profile["order_count"], profile["total_spend"]) == (2, 150.5)
    assert set(profile["channels"]) == {"pos", "web"}
    # Tags were evaluated by the profiles processor and are read with the profile.
    assert {"repeat_buyer", "online_and_offline", "age_25_34", "spend_under_500"} <= set(
        profile["tags"]
    )
    assert "single_channel" not in profile["tags"]
    count = httpx.get(api + "/v1/tags/online_and_offline/count", headers=READER).json()
    assert count == {"tag": "online_and_offline", "count": 1}  # the merged-away one left
    assert tag_counts(settings, ("online_and_offline", "tier_vip")) == {  # cdp demo's summary
        "online_and_offline": 1,
        "tier_vip": 0,
    }
    catalog = httpx.get(api + "/v1/tags", params={"category": "value"}, headers=READER).json()
    assert catalog["count"] == len(catalog["tags"]) >= 30
    assert httpx.get(api + "/v1/tags/nope/count", headers=READER).status_code == 404

    explain = httpx.get(
        api + "/v1/identity/explain", params={"profile_id": profile["profile_id"]}, headers=READER
    ).json()
    merges = [h for h in explain["history"] if h["decision"] == "merged"]
    assert [(m["id"], m["event"]) for m in merges] == [("phone:+8613800138000", "w2")]
    merged_away = merges[0]["other"]
    via_alias = httpx.get(api + f"/v1/profiles/{merged_away}", headers=READER).json()
    assert via_alias["profile_id"] == profile["profile_id"]

    assert httpx.get(api + "/v1/profiles/999999", headers=READER).status_code == 404
    assert httpx.get(api + "/v1/profiles/1").status_code == 401
    denied = httpx.get(
        api + "/v1/identity/explain",
        params={"profile_id": "1"},
        headers={"Authorization": "Bearer tk_profiles_only"},
    )
    assert denied.status_code == 403 and denied.json()["code"] == "forbidden"

    assert workers[0].stop() == 0
    assert workers[0].cli("history", "count", "--table", "events").strip() == "4"
    assert workers[0].cli("history", "count", "--table", "profile_aliases").strip() == "1"
    latest = workers[0].cli(
        "history",
        "sql",
        "SELECT JSONExtractInt(snapshot, 'order_count') AS orders, "
        "JSONExtractString(snapshot, 'profile_id') AS pid FROM cdp.profile_snapshots FINAL "
        f"WHERE profile_id = '{int(profile['profile_id'])}'",
    )
    assert [json.loads(line) for line in latest.splitlines()] == [
        {"orders": 2, "pid": profile["profile_id"]}
    ]
    # The tag history: the survivor gained repeat_buyer once, through the event that made it.
    gained = workers[0].cli(
        "history",
        "sql",
        "SELECT tag, added FROM cdp.tag_changes FINAL "
        f"WHERE profile_id = '{profile['profile_id']}' AND tag = 'repeat_buyer'",
    )
    assert [json.loads(line) for line in gained.splitlines()] == [
        {"tag": "repeat_buyer", "added": 1}
    ]


def _events_in_redis(settings: Settings) -> int:
    client = redis.Redis.from_url(settings.redis.url.get_secret_value())
    ns = settings.worker.namespace
    total = 0
    for key in client.scan_iter(f"{ns}:pf:*", count=1000):
        if key.count(b":") == 2:  # the main hash, not :t / :s: / :h:
            total += int(client.hget(key, "n:events") or 0)
    client.close()
    return total


def _load(api: str, n: int, customers: int) -> None:
    for start in range(0, n, 500):
        post(
            api,
            "test-pos",
            [
                {
                    "type": "track",
                    "userId": f"M-{i % customers}",
                    "event": "Store Visited",
                    "messageId": f"load-{i}",
                    "traits": {},
                }
                for i in range(start, min(start + 500, n))
            ],
        )


@pytest.mark.parametrize("published", [False, True], ids=["snapshots-read-back", "published"])
def test_kill_9_mid_stream_loses_and_duplicates_nothing(
    settings: Settings, api: str, tmp_path: Path, workers: list[WorkerProcess], published: bool
) -> None:
    n = 6000
    _load(api, n, customers=300)

    def worker() -> WorkerProcess:
        process = WorkerProcess(settings, tmp_path, ALL)
        process.env["CDP_WORKER__PUBLISH_SNAPSHOTS"] = str(published).lower()
        return process

    first = worker().start()
    workers.append(first)
    first.wait_for(lambda: _events_in_redis(settings) >= n // 4, f"{n // 4} events folded")
    first.stop(signal.SIGKILL)
    partial = _events_in_redis(settings)
    assert 0 < partial < n  # really killed mid-stream

    second = worker().start()
    workers.append(second)
    # Every topic the history agent reads, so its last micro-batch is stored and committed.
    second.wait_caught_up(
        TOPICS | {"cdp.identity.merges", "cdp.profiles.changes", "cdp.profiles.snapshots"}
    )
    assert _events_in_redis(settings) == n
    assert second.stop() == 0
    # Every output: each event resolved, changed its profile and was stored exactly once
    # (a replayed batch may publish a record twice; its effects count once).
    topic = settings.kafka.topic
    bootstrap = settings.kafka.bootstrap_servers
    resolved = read_to_end(bootstrap, topic("cdp.events.resolved"))
    changes = read_to_end(bootstrap, topic("cdp.profiles.changes"))
    assert len({r["event"]["event_id"] for r in resolved}) == n
    assert len({c["event_id"] for c in changes if not c["event_id"].startswith("tags:")}) == n
    assert second.cli("history", "count", "--table", "events").strip() == str(n)
    # A change record per event; tag-only records (``tags:<cause>:<ms>``: a tag backfill that
    # met a profile before the live path had tagged it, time passing) are no event's change.
    by_event = second.cli(
        "history",
        "sql",
        "SELECT count() AS n, uniqExact(event_id) AS events FROM cdp.profile_changes FINAL "
        "WHERE NOT startsWith(event_id, 'tags:')",
    )
    assert json.loads(by_event) == {"n": n, "events": n}, second.cli(
        "history",
        "sql",
        "SELECT profile_id, event_id, changed FROM cdp.profile_changes FINAL WHERE event_id IN "
        "(SELECT event_id FROM cdp.profile_changes FINAL GROUP BY event_id HAVING count() > 1)",
    )
    assert second.cli("history", "count", "--table", "profile_snapshots").strip() == "300"
    # Each profile's stored snapshot is its last state (20 visits), with the tags it has now.
    stored = [
        json.loads(line)
        for line in second.cli(
            "history",
            "sql",
            "SELECT profile_id, JSONExtractInt(snapshot, 'store_visits') AS visits, tags "
            "FROM cdp.profile_snapshots FINAL ORDER BY profile_id",
        ).splitlines()
    ]
    assert {row["visits"] for row in stored} == {n // 300}
    for row in stored[:: len(stored) // 10]:
        now = httpx.get(f"{api}/v1/profiles/{row['profile_id']}", headers=READER).json()
        assert sorted(row["tags"]) == sorted(now["tags"]), row["profile_id"]


def test_a_tag_backfill_left_by_a_killed_worker_is_taken_over(
    settings: Settings, api: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    client = redis.Redis.from_url(settings.redis.url.get_secret_value())
    ns = settings.worker.namespace
    # Profiles stored before this catalog: a new namespace would have nothing to backfill.
    asyncio.run(untagged_profiles(settings))
    lock = f"{ns}:tags:backfill:lock"
    client.set(lock, "1", ex=600)  # a worker walking the backfill
    _load(api, 200, customers=20)
    worker = WorkerProcess(settings, tmp_path, ALL).start()
    workers.append(worker)
    worker.wait_caught_up(TOPICS)
    assert client.hlen(f"{ns}:tags:print") == 0  # it waits for the other one
    client.pexpire(lock, 1)  # which died: its claim lapses, not renewed
    tags = len(load_catalog(settings.tags.catalog).tags)
    worker.wait_for(
        lambda: client.hlen(f"{ns}:tags:print") == tags, "the catalog marked backfilled"
    )
    assert client.exists(lock) == 0
    client.close()


def test_two_workers_in_one_group_split_partitions_and_agree(
    settings: Settings, api: str, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    n = 3000
    _load(api, n, customers=200)
    roles = ["identity", "profiles"]
    for home in ("a", "b"):
        (tmp_path / home).mkdir()
        workers.append(WorkerProcess(settings, tmp_path / home, roles).start())
    # One pass: these roles read only the raw topic (resolved events are folded as resolved).
    workers[0].wait_caught_up({"cdp.events.raw"})
    assert _events_in_redis(settings) == n
    client = redis.Redis.from_url(settings.redis.url.get_secret_value())
    profiles = int(client.get(f"{settings.worker.namespace}:seq") or 0)
    client.close()
    assert profiles == 200  # one per customer: no split brain across the two workers
    logs = [w.log.read_text() for w in workers]
    assert all(w.proc is not None and w.proc.poll() is None for w in workers), logs


def test_a_named_worker_is_a_static_member_of_its_group(
    settings: Settings, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    worker = WorkerProcess(settings, tmp_path, ["identity", "profiles"])
    worker.env["CDP_WORKER__INSTANCE_ID"] = "shop-7"
    workers.append(worker.start())
    named: list[str] = []

    def joined() -> bool:
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
        try:
            described = admin.describe_groups([worker.group])
        except KafkaError:  # the group coordinator is still being elected
            return False
        finally:
            admin.close()
        members = described.get(worker.group, {}).get("members", [])
        named[:] = [m["group_instance_id"] for m in members]
        return bool(named)

    worker.wait_for(joined, "the worker in its group")
    assert named == ["shop-7"]
