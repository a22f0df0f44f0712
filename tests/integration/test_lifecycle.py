"""`cdp run`, `cdp api` and `cdp worker` stop in bounded time whatever is down, and fail
fast, in one line, when they cannot start.

The outage tests stop services, so each starts a Kafka broker and a Redis server of its own
(never the session's); ClickHouse is the command's own embedded chDB.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from kafka.errors import KafkaError

from deploy import topics
from deploy.lag import total_lag
from deploy.local.kafka import KafkaBroker, free_port
from deploy.local.redis import RedisServer
from deploy.settings import Settings
from deploy.worker import ROLES, STREAM_ROLES, group_id
from runtime.readback import read_to_end
from tests.conftest import make_settings
from tests.integration.test_bad_input import basic
from tests.support.keys import key_of, known_sources, known_tokens
from tests.support.server import running_api
from tests.support.services import Services
from tests.support.spawned import Spawned

#: CDP_SHUTDOWN_TIMEOUT_S of the commands under test.
BOUND = 10.0
#: The exit must come within the bound; this much more is this shared two-core machine's
#: slack (signal delivery under load, process teardown), not the product's.
SLACK = 15.0
OUTAGES = {"kafka": ("kafka",), "redis": ("redis",), "both": ("kafka", "redis")}
READER = {"Authorization": "Bearer tk_reader"}


@dataclass
class Own:
    """Services of one test's own, which it may stop and start again."""

    broker: KafkaBroker
    redis: RedisServer
    settings: Settings
    home: Path

    def stop(self, names: tuple[str, ...]) -> None:
        for name in names:
            (self.broker if name == "kafka" else self.redis).stop()

    def start(self, names: tuple[str, ...]) -> None:
        for name in names:
            (self.broker if name == "kafka" else self.redis).start()

    def env(self) -> dict[str, str]:
        """The commands' settings: these services, a state and a port of their own."""
        s = self.settings
        return {
            "CDP_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
            "CDP_KAFKA__TOPIC_PREFIX": s.kafka.topic_prefix,
            "CDP_KAFKA__PARTITIONS": str(s.kafka.partitions),
            "CDP_REDIS__URL": s.redis.url.get_secret_value(),
            "CDP_WORKER__NAMESPACE": s.worker.namespace,
            "CDP_WORKER__INSTANCE_ID": "lifecycle",  # a restart takes its partitions back
            "CDP_CLICKHOUSE__PATH": str(self.home / "chdb"),
            "CDP_API__PORT": str(s.api.port),
            "CDP_INGEST__SOURCES": json.dumps([x.model_dump(mode="json") for x in known_sources()]),
            "CDP_API__TOKENS": json.dumps([t.model_dump(mode="json") for t in known_tokens()]),
            "XDG_STATE_HOME": str(self.home / "state"),
            "CDP_SHUTDOWN_TIMEOUT_S": str(BOUND),
            "CDP_PRIVACY__ENABLED": "false",
        }

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.settings.api.port}"


@pytest.fixture
def own(tmp_path: Path, prefix: str) -> Iterator[Own]:
    broker = KafkaBroker(tmp_path / "kafka", free_port(), free_port(), heap="256m")
    redis = RedisServer(tmp_path / "redis", free_port())
    broker.start()
    redis.start()
    try:
        found = Services(broker.bootstrap, redis.url, tmp_path / "chdb", {})
        settings = make_settings(found, prefix)
        # Field encryption off in the test's own ingest as in the commands (no master keys).
        settings = settings.model_copy(
            update={
                "api": settings.api.model_copy(update={"port": free_port()}),
                "privacy": settings.privacy.model_copy(update={"enabled": False}),
            }
        )
        topics.create_all(settings.kafka)
        yield Own(broker, redis, settings, tmp_path)
    finally:
        broker.stop()
        redis.stop()


def order(base: str, n: int) -> None:
    """One order of member M-1, acknowledged by Kafka (200) before this returns."""
    body = {
        "userId": "M-1",
        "event": "Order Completed",
        "messageId": f"o{n}",
        "properties": {"order_id": f"O-{n}", "total": 10},
    }
    r = httpx.post(f"{base}/v1/track", json=body, headers=basic(key_of("test-pos")), timeout=30)
    assert r.status_code == 200, r.text


def orders(base: str) -> int | None:
    """M-1's order count as the profile API reads it from Redis (None while unknown)."""
    r = httpx.get(
        f"{base}/v1/profiles/lookup",
        params={"type": "member_id", "value": "M-1"},
        headers=READER,
        timeout=30,
    )
    return int(r.json()["order_count"]) if r.status_code == 200 else None


#: What the history consumes; the stream processor reads the raw events.
HISTORY_TOPICS = [
    "cdp.events.resolved",
    "cdp.identity.merges",
    "cdp.profiles.changes",
    "cdp.profiles.snapshots",
]


def settled(own: Own, command: str) -> bool:
    """Whether the command's consumer groups committed everything there is to read."""
    k = own.settings.kafka
    if command == "worker":
        groups = {group_id(own.settings, sorted(ROLES)): ["cdp.events.raw", *HISTORY_TOPICS]}
    else:
        groups = {
            group_id(own.settings, STREAM_ROLES): ["cdp.events.raw"],
            group_id(own.settings, ["history"]): HISTORY_TOPICS,
        }
    try:
        return all(total_lag(k, g, [k.topic(t) for t in names]) == 0 for g, names in groups.items())
    except KafkaError:  # the group coordinator is still being elected
        return False


def reconciled(own: Own, sent: int) -> None:
    """Every order once, in Redis and in the history, read after the commands stopped."""
    got = cdp(own.env(), "profiles", "get", "--type", "member_id", "--value", "M-1")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["order_count"] == sent
    count = cdp(own.env(), "history", "count", "--table", "events")
    assert count.returncode == 0, count.stderr
    assert int(count.stdout.strip()) == sent


def cdp(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run a command that must end by itself within a minute."""
    return subprocess.run(
        [sys.executable, "-m", "deploy", *args],
        env={**os.environ, "CDP_LOG_LEVEL": "warning", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def within_bound(code: int, seconds: float, log: str) -> None:
    """The stop ended within the bound: cleanly, or cut short by it (SIGTERM's code)."""
    print(f"exit {code} after {seconds:.1f} s")  # the measured figure, shown by -rP
    assert seconds < BOUND + SLACK, f"exit took {seconds:.1f} s\n{log}"
    assert code in (0, 143), log


@pytest.mark.parametrize("outage", sorted(OUTAGES))
def test_worker_stops_within_the_bound_and_a_restart_loses_nothing(own: Own, outage: str) -> None:
    worker = Spawned(["worker"], own.env(), own.home).start()
    try:
        with running_api(own.settings) as api:  # ingest, on the test's own services
            for n in range(5):
                order(api, n)
            worker.wait_for("the first orders folded", lambda: orders(api) == 5)
            for n in range(5, 10):  # still on their way when the services go
                order(api, n)
        own.stop(OUTAGES[outage])
        within_bound(*worker.stop(), worker.tail())

        own.start(OUTAGES[outage])
        again = Spawned(["worker"], own.env(), own.home).start()
        try:
            with running_api(own.settings) as api:
                again.wait_for("every order folded after the restart", lambda: orders(api) == 10)
            again.wait_for("every output in the history", lambda: settled(own, "worker"))
            # The first process may have finished every order before the outage, so the
            # restarted one can still be starting: stopped then, it exits 143 at once.
            within_bound(*again.stop(), again.tail())
        finally:
            again.kill()
    finally:
        worker.kill()
    reconciled(own, 10)


@pytest.mark.parametrize("outage", sorted(OUTAGES))
def test_run_stops_within_the_bound_and_a_restart_loses_nothing(own: Own, outage: str) -> None:
    args = ["run", "--api-workers", "2", "--stream-workers", "1"]
    run = Spawned(args, own.env(), own.home).start()
    try:
        run.wait_for("the API", lambda: httpx.get(own.base + "/healthz", timeout=5).is_success)
        for n in range(5):
            order(own.base, n)
        run.wait_for("the first orders folded", lambda: orders(own.base) == 5)
        for n in range(5, 10):
            order(own.base, n)
        own.stop(OUTAGES[outage])
        began = time.monotonic()
        assert run.proc is not None
        run.proc.send_signal(signal.SIGTERM)
        # While it stops, whoever still answers says so: a load balancer sends nothing more.
        while run.proc.poll() is None and time.monotonic() < began + BOUND + SLACK:
            try:
                health = httpx.get(own.base + "/healthz", timeout=2)
            except httpx.TransportError:
                continue
            assert health.status_code == 503, health.text
            assert health.json()["stopping"] is True
        within_bound(*run.exited(began), run.tail())

        own.start(OUTAGES[outage])
        again = Spawned(args, own.env(), own.home).start()
        try:
            again.wait_for("every order folded after the restart", lambda: orders(own.base) == 10)
            again.wait_for("every output in the history", lambda: settled(own, "run"))
            # The first process may have finished every order before the outage, so the
            # restarted one can still be starting: stopped then, it exits 143 at once.
            within_bound(*again.stop(), again.tail())
        finally:
            again.kill()
    finally:
        run.kill()
    reconciled(own, 10)


@pytest.mark.parametrize("outage", sorted(OUTAGES))
def test_api_stops_within_the_bound_and_a_restart_loses_nothing(own: Own, outage: str) -> None:
    api = Spawned(["api", "--workers", "2"], own.env(), own.home).start()
    try:
        api.wait_for("the API", lambda: httpx.get(own.base + "/healthz", timeout=5).is_success)
        for n in range(5):
            order(own.base, n)
        own.stop(OUTAGES[outage])
        within_bound(*api.stop(), api.tail())
    finally:
        api.kill()
    own.start(OUTAGES[outage])
    again = Spawned(["api", "--workers", "2"], own.env(), own.home).start()
    try:
        again.wait_for("the API", lambda: httpx.get(own.base + "/healthz", timeout=5).is_success)
        order(own.base, 5)
        code, seconds = again.stop()
        assert code == 0 and seconds < BOUND + SLACK, again.tail()
    finally:
        again.kill()
    raw = read_to_end(own.broker.bootstrap, own.settings.kafka.topic("cdp.events.raw"))
    assert sorted(e["event_id"] for e in raw) == [f"o{n}" for n in range(6)]


def test_a_second_signal_ends_a_stop_at_once(own: Own) -> None:
    # A stop that would wait for Kafka for two minutes ends at the operator's second signal.
    env = {**own.env(), "CDP_SHUTDOWN_TIMEOUT_S": "120"}
    worker = Spawned(["worker"], env, own.home).start()
    try:
        with running_api(own.settings) as api:
            order(api, 0)
            worker.wait_for("the order folded", lambda: orders(api) == 1)
        own.stop(("kafka",))
        assert worker.proc is not None
        began = time.monotonic()
        worker.proc.send_signal(signal.SIGINT)
        worker.proc.send_signal(signal.SIGTERM)
        code, seconds = worker.exited(began)
    finally:
        worker.kill()
    print(f"exit {code} after {seconds:.1f} s")  # the measured figure, shown by -rP
    assert code in (128 + signal.SIGINT, 128 + signal.SIGTERM), worker.tail()
    assert seconds < 60, worker.tail()
    assert "cdp: stopped by second signal" in worker.tail()


@pytest.mark.parametrize(
    "args",
    [["api", "--workers", "1"], ["api", "--workers", "2"], ["run", "--api-workers", "2"]],
    ids=["api", "api-processes", "run"],
)
def test_a_port_in_use_stops_the_start_naming_the_port(
    services: Services, prefix: str, tmp_path: Path, args: list[str]
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        env = {
            "CDP_KAFKA__BOOTSTRAP_SERVERS": services.kafka_bootstrap,
            "CDP_KAFKA__TOPIC_PREFIX": prefix,
            "CDP_REDIS__URL": services.redis_url,
            "CDP_API__PORT": str(port),
            "XDG_STATE_HOME": str(tmp_path / "state"),
        }
        result = cdp(env, *args)
    assert result.returncode == 3, result.stderr
    assert f"port 127.0.0.1:{port} is already in use (CDP_API__PORT)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["worker", "run"])
@pytest.mark.parametrize("down", ["kafka", "redis"])
def test_an_unreachable_service_stops_the_start_naming_it(
    services: Services, tmp_path: Path, command: str, down: str
) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    env = {
        "CDP_KAFKA__BOOTSTRAP_SERVERS": nobody if down == "kafka" else services.kafka_bootstrap,
        "CDP_REDIS__URL": f"redis://{nobody}/0" if down == "redis" else services.redis_url,
        "CDP_API__PORT": str(free_port()),
        "CDP_STARTUP_TIMEOUT_S": "3",
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    result = cdp(env, command)
    assert result.returncode == 3, result.stderr
    name = {"kafka": "Kafka", "redis": "Redis"}[down]
    assert f"error: {name} at {nobody} did not answer within 3 s" in result.stderr
    assert "Traceback" not in result.stderr


#: A wrong setting, the variable the message must name, and what it must say is wrong.
SETTINGS_ERRORS = {
    "json-cut-at-a-line-end": (
        {"CDP_API__TOKENS": '[{"name": "recsys", "sha256": "ab",'},
        "CDP_API__TOKENS is not valid JSON",
    ),
    "not-a-number": ({"CDP_API__PORT": "80a"}, "CDP_API__PORT: Input should be a valid integer"),
    "a-field-missing-in-json": (
        {"CDP_API__TOKENS": '[{"name": "recsys"}]'},
        "CDP_API__TOKENS at [0].sha256: Field required",
    ),
    "out-of-range": (
        {"CDP_SHUTDOWN_TIMEOUT_S": "0"},
        "CDP_SHUTDOWN_TIMEOUT_S: Input should be greater than 0",
    ),
    "unknown-choice": (
        {"CDP_API__LOOP": "tokio"},
        "CDP_API__LOOP: Input should be 'uvloop' or 'asyncio'",
    ),
    "missing-sources-file": (
        {"CDP_INGEST__SOURCES_FILE": "/nonexistent/sources.json"},
        "CDP_INGEST__SOURCES_FILE (/nonexistent/sources.json) cannot be read as JSON",
    ),
    "encryption-without-keys": (
        {"CDP_PRIVACY__ENABLED": "true"},
        "field encryption is on but no master key file at",
    ),
}


#: A worker reads neither the sources nor the master keys.
NOT_READ_BY_WORKERS = {"missing-sources-file", "encryption-without-keys"}


@pytest.mark.parametrize(
    ("case", "command"),
    [
        (case, command)
        for case in sorted(SETTINGS_ERRORS)
        for command in ("api", "run", "worker")
        if not (command == "worker" and case in NOT_READ_BY_WORKERS)
    ],
)
def test_a_settings_error_is_one_line_naming_the_variable(
    tmp_path: Path, case: str, command: str
) -> None:
    wrong, says = SETTINGS_ERRORS[case]
    env = {
        "CDP_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",  # never reached
        "XDG_STATE_HOME": str(tmp_path / "state"),
        **wrong,
    }
    result = cdp(env, command)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {says}"), result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
