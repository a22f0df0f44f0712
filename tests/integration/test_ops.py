"""Topic admin, consumer lag, health and OpenAPI on the real services."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient

from contracts.topics import REGISTRY
from deploy import topics
from deploy.demo_run import other_feeds
from deploy.lag import consumer_lag
from deploy.lifecycle import Stop
from deploy.settings import Settings
from runtime.readback import read_to_end
from tests.support.server import running_api


def test_topics_create_is_idempotent_and_uses_the_registry(settings: Settings) -> None:
    # The `settings` fixture already created them once.
    again = topics.create_all(settings.kafka)
    expected = {settings.kafka.topic(name) for name in REGISTRY}
    assert again == dict.fromkeys(expected, "exists")
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        described = admin.describe_topics(sorted(expected))
    finally:
        admin.close()
    assert {t["name"]: len(t["partitions"]) for t in described} == dict.fromkeys(expected, 3)


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "CDP_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "CDP_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "CDP_LOG_LEVEL": "warning",
    }
    return subprocess.run(
        [sys.executable, "-m", "deploy", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_lag_is_end_minus_committed_per_partition(settings: Settings) -> None:
    topic = settings.kafka.topic("cdp.events.raw")
    bootstrap = settings.kafka.bootstrap_servers
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(9):
        producer.send(topic, b"x", partition=i % 3)
    producer.flush()
    producer.close()
    group = f"{settings.kafka.topic_prefix}lag-test"
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    consumer.assign([TopicPartition(topic, p) for p in range(3)])
    # Commit 1, 2 and 3 consumed messages on partitions 0, 1, 2: lags 2, 1, 0.
    consumer.commit({TopicPartition(topic, p): _om(p + 1) for p in range(3)})
    consumer.close()

    rows = consumer_lag(settings.kafka, group)
    assert [(r.partition, r.committed, r.end, r.lag) for r in rows] == [
        (0, 1, 3, 2),
        (1, 2, 3, 1),
        (2, 3, 3, 0),
    ]

    cli = _cli(settings, "lag", "--group", group, "--json")
    assert cli.returncode == 0, cli.stderr
    assert [row["lag"] for row in json.loads(cli.stdout)] == [2, 1, 0]
    table = _cli(settings, "lag", "--group", group)
    assert f"total lag {group}: 3" in table.stdout


def _om(offset: int) -> object:
    from kafka.structs import OffsetAndMetadata

    return OffsetAndMetadata(offset, "", -1)


def test_a_legacy_groups_offsets_go_to_the_groups_that_replace_it(settings: Settings) -> None:
    from deploy.lag import adopt_offsets

    raw = settings.kafka.topic("cdp.events.raw")
    resolved = settings.kafka.topic("cdp.events.resolved")
    bootstrap = settings.kafka.bootstrap_servers
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(12):
        producer.send(raw if i % 2 else resolved, b"x", partition=i % 3)
    producer.flush()
    producer.close()
    p = settings.kafka.topic_prefix
    legacy, stream, history = f"{p}all", f"{p}stream", f"{p}history"
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=legacy, enable_auto_commit=False)
    parts = [TopicPartition(t, n) for t in (raw, resolved) for n in range(3)]
    consumer.assign(parts)
    consumer.commit({tp: _om(1 + n) for n, tp in enumerate(parts)})
    consumer.close()
    heirs = {stream: [raw], history: [resolved]}

    assert adopt_offsets(settings.kafka, legacy, heirs) == 6

    rows = {(r.group, r.topic, r.partition): r.committed for r in consumer_lag(settings.kafka)}
    assert {k: v for k, v in rows.items() if k[0] in (legacy, stream, history)} == {
        (stream, raw, 0): 1,
        (stream, raw, 1): 2,
        (stream, raw, 2): 3,
        (history, resolved, 0): 4,
        (history, resolved, 1): 5,
        (history, resolved, 2): 6,
    }
    # Once adopted, the legacy group is gone: a second start hands nothing over.
    assert adopt_offsets(settings.kafka, legacy, heirs) == 0


def test_offsets_of_a_group_still_consuming_are_left_to_it(settings: Settings) -> None:
    from deploy.lag import adopt_offsets

    raw = settings.kafka.topic("cdp.events.raw")
    bootstrap = settings.kafka.bootstrap_servers
    p = settings.kafka.topic_prefix
    legacy, heir = f"{p}busy", f"{p}heir"
    consumer = KafkaConsumer(
        raw, bootstrap_servers=bootstrap, group_id=legacy, enable_auto_commit=False
    )
    try:
        deadline = time.monotonic() + 60
        while not consumer.assignment():  # a member of the group, with its partitions
            assert time.monotonic() < deadline, "the consumer never joined its group"
            consumer.poll(timeout_ms=500)
        consumer.commit({tp: _om(0) for tp in consumer.assignment()})
        assert adopt_offsets(settings.kafka, legacy, {heir: [raw]}) == 0
        groups = {r.group for r in consumer_lag(settings.kafka)}
        assert legacy in groups and heir not in groups
    finally:
        consumer.close()


def test_healthz_checks_all_three_services(settings: Settings) -> None:
    with running_api(settings, owns_history=True) as api:  # as in `cdp run`
        answer = httpx.get(api + "/healthz")
    assert answer.status_code == 200
    assert answer.json() == {
        "ok": True,
        "pid": os.getpid(),  # this test serves the API in its own process
        "checks": {"kafka": {"ok": True}, "redis": {"ok": True}, "clickhouse": {"ok": True}},
    }


def test_healthz_answers_503_once_the_process_is_stopping(settings: Settings) -> None:
    stop = Stop()  # this process's own stop would end the test run
    with running_api(settings, stop=stop) as api:
        assert httpx.get(api + "/healthz").status_code == 200
        stop.begin(signal.SIGTERM)
        answer = httpx.get(api + "/healthz")
    assert answer.status_code == 503
    assert answer.json() == {"ok": False, "pid": os.getpid(), "stopping": True, "checks": {}}


def test_healthz_of_a_split_api_leaves_the_workers_embedded_clickhouse_alone(
    settings: Settings, tmp_path: Path
) -> None:
    # `cdp api` beside a history worker: the data directory is the worker's; opening it here
    # would break one of the two. A directory no process has opened stays unopened.
    chdb = tmp_path / "workers-chdb"
    split = settings.model_copy(
        update={"clickhouse": settings.clickhouse.model_copy(update={"path": chdb})}
    )
    with running_api(split) as api:
        answer = httpx.get(api + "/healthz")
    assert answer.status_code == 200
    assert answer.json()["checks"]["clickhouse"] == {
        "ok": True,
        "used": False,
        "note": "embedded ClickHouse belongs to the history worker",
    }
    assert not chdb.exists()


def test_openapi_lists_every_ingest_route(api: str) -> None:
    paths = httpx.get(api + "/openapi.json").json()["paths"]
    assert {
        f"/v1/{p}"
        for p in ("batch", "events", "identify", "track", "page", "screen", "group", "alias")
    } <= set(paths)
    assert httpx.get(api + "/docs").status_code == 200


def test_read_to_end_returns_exactly_what_was_there_and_fails_loudly(settings: Settings) -> None:
    topic = settings.kafka.topic("cdp.events.raw")
    assert read_to_end(settings.kafka.bootstrap_servers, topic) == []
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    for n in range(57):  # keyed round the 3 partitions, unevenly
        producer.send(topic, key=str(n % 5).encode(), value=json.dumps({"n": n}).encode())
    producer.flush()
    got = read_to_end(settings.kafka.bootstrap_servers, topic)
    assert sorted(v["n"] for v in got) == list(range(57))
    producer.send(topic, value=b'{"n": 57}')
    producer.flush()
    producer.close()
    again = read_to_end(settings.kafka.bootstrap_servers, topic)
    assert sorted(v["n"] for v in again) == list(range(58))
    with pytest.raises(TimeoutError, match="no partitions"):
        read_to_end(settings.kafka.bootstrap_servers, topic + ".missing", timeout_s=1)


def test_a_second_demo_feed_on_the_same_state_is_flagged(settings: Settings) -> None:
    # Real Redis, the test's own namespace: the first feed finds nothing, a repeat of the
    # same feed is not "another", a different one names what is already there.
    assert other_feeds(settings, seed=7, customers=1000) == []
    assert other_feeds(settings, seed=7, customers=1000) == []
    assert other_feeds(settings, seed=11, customers=300) == ["seed 7, 1000 customers"]
    assert other_feeds(settings, seed=7, customers=1000) == ["seed 11, 300 customers"]
