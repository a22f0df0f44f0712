"""Abuse limits on the real API and Kafka: requests over a rate limit get 429s while other
clients and write keys go on; refused requests (401, 429) get a few letters of their own, the
rest counted in summary letters, so the letters add up to every refusal."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from ipaddress import ip_network
from typing import Any

import httpx
from pydantic import SecretStr

from deploy.settings import PrivacySettings, Settings
from ingest.limits import RateLimits, RefusalLetters
from privacy.crypto import MasterKeys
from tests.support.kafka import read_topic, read_until
from tests.support.keys import key_of
from tests.support.server import running_api, running_api_processes


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


TRACK = json.dumps({"type": "track", "userId": "C-1", "event": "Viewed"}).encode()


def with_ingest(settings: Settings, **ingest: Any) -> Settings:
    """``settings`` with these ingest settings, and field encryption off (letters in clear)."""
    update = settings.ingest.model_copy(update=ingest)
    return settings.model_copy(update={"ingest": update, "privacy": PrivacySettings(enabled=False)})


def letters_of(settings: Settings, total: int) -> list[dict[str, Any]]:
    """Dead letters, read until they stand for ``total`` rejections (or the time runs out)."""
    return read_until(
        settings.kafka.bootstrap_servers,
        settings.kafka.topic("cdp.events.deadletter"),
        lambda found: sum(v["count"] for v in found) >= total,
    )


def unauthorized(base: str, n: int, headers: dict[str, str] | None = None) -> list[str]:
    """POST ``n`` requests with an unknown key, each on a new connection; their request ids."""
    ids = []
    for i in range(n):
        response = httpx.post(
            base + "/v1/track",
            content=TRACK,
            headers={**basic("wk_nope"), **(headers or {}), "X-Seq": str(i)},
        )
        assert response.status_code == 401
        body = response.json()
        assert (body["code"], body["field"]) == ("unauthorized", "Authorization")
        ids.append(body["request_id"])
    return ids


def test_a_flood_of_unauthenticated_requests_is_sampled_and_summarised(
    settings: Settings,
) -> None:
    letters = RefusalLetters(per_address=2, per_interval=100)
    flood = with_ingest(settings, refusal_letters=letters)
    with running_api_processes(flood, 2) as api:
        ids = unauthorized(api, 40)
    # Stopping writes what each process counted since its last summary.
    found = letters_of(settings, 40)
    assert sum(v["count"] for v in found) == 40
    own = [v for v in found if v["since"] is None]
    summaries = [v for v in found if v["since"] is not None]
    # Two per address for the deployment: one per process of two.
    assert 1 <= len(own) <= 2
    assert {v["request_id"] for v in own} <= set(ids)
    assert all(v["count"] == 1 for v in own)
    assert 1 <= len(summaries) <= 2
    for summary in summaries:
        assert (summary["reason"], summary["status"], summary["field"]) == (
            "unauthorized",
            401,
            "Authorization",
        )
        assert (summary["endpoint"], summary["source"]) == ("/v1/track", None)
        assert summary["payload"]["busiest_addresses"] == {"127.0.0.1": summary["count"]}
        assert summary["since"] <= summary["received_at"]


async def unauthorized_at_once(base: str, n: int) -> None:
    """POST ``n`` requests with an unknown key concurrently, each on its own connection."""
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(base_url=base, limits=limits) as client:
        answers = await asyncio.gather(
            *(client.post("/v1/track", content=TRACK, headers=basic("wk_nope")) for _ in range(n))
        )
    assert [a.status_code for a in answers] == [401] * n


def test_summaries_are_written_every_interval_while_the_api_runs(settings: Settings) -> None:
    letters = RefusalLetters(per_address=1, interval_s=1.0)
    with running_api(with_ingest(settings, refusal_letters=letters)) as api:
        asyncio.run(unauthorized_at_once(api, 25))
        found = letters_of(settings, 25)
        assert sum(v["count"] for v in found) == 25
        assert any(v["since"] is not None for v in found)


def test_an_unauthenticated_letter_keeps_only_the_start_of_the_body(settings: Settings) -> None:
    body = json.dumps({"batch": [{"type": "track", "event": "x" * 5000}]}).encode()
    letters = RefusalLetters(raw_bytes=100)
    with running_api(with_ingest(settings, refusal_letters=letters)) as api:
        response = httpx.post(api + "/v1/batch", content=body, headers=basic("wk_nope"))
        assert response.status_code == 401
    [letter] = letters_of(settings, 1)
    assert letter["request_id"] == response.json()["request_id"]
    assert letter["payload"] is None
    assert letter["raw"] == body[:100].decode()
    assert letter["raw_truncated"] is True
    assert letter["raw_sha256"] == hashlib.sha256(body).hexdigest()


def test_x_forwarded_for_names_no_client_unless_the_peer_is_a_trusted_proxy(
    settings: Settings,
) -> None:
    letters = RefusalLetters(per_address=1, per_interval=100)
    forwarded = [{"X-Forwarded-For": f"198.51.100.{n}"} for n in range(6)]
    # The API processes of `cdp api`: uvicorn would believe the header from a loopback peer.
    with running_api_processes(with_ingest(settings, refusal_letters=letters), 2) as api:
        for headers in forwarded:
            unauthorized(api, 1, headers)
    found = letters_of(settings, 6)
    # One client (the loopback peer): one letter of its own per process, the rest counted.
    assert sum(v["count"] for v in found) == 6
    assert 1 <= sum(1 for v in found if v["since"] is None) <= 2
    summaries = [v for v in found if v["since"] is not None]
    assert {a for v in summaries for a in v["payload"]["busiest_addresses"]} == {"127.0.0.1"}


def test_a_trusted_proxy_names_the_client(settings: Settings) -> None:
    letters = RefusalLetters(per_address=1, per_interval=100)
    proxies = [ip_network("127.0.0.1/32")]
    trusted = with_ingest(settings, refusal_letters=letters, trusted_proxies=proxies)
    forwarded = [{"X-Forwarded-For": f"198.51.100.{n % 3}"} for n in range(6)]
    with running_api(trusted) as api:
        for headers in forwarded:
            unauthorized(api, 1, headers)
    found = letters_of(settings, 6)
    # Three clients: one letter of its own each, the second request of each counted.
    assert sum(1 for v in found if v["since"] is None) == 3
    [summary] = [v for v in found if v["since"] is not None]
    assert summary["payload"]["busiest_addresses"] == {f"198.51.100.{n}": 1 for n in range(3)}


def test_with_field_encryption_a_summary_seals_the_client_addresses(settings: Settings) -> None:
    letters = RefusalLetters(per_address=1, per_interval=100)
    proxies = [ip_network("127.0.0.1/32")]
    keys = SecretStr(MasterKeys.generate().dumps())
    private = with_ingest(settings, refusal_letters=letters, trusted_proxies=proxies)
    private = private.model_copy(
        update={"privacy": PrivacySettings(enabled=True, master_keys=keys)}
    )
    with running_api(private) as api:
        unauthorized(api, 3, {"X-Forwarded-For": "198.51.100.77"})
    found = letters_of(settings, 3)
    assert sum(v["count"] for v in found) == 3
    [summary] = [v for v in found if v["since"] is not None]
    assert summary["payload"] is None and summary["sealed"]
    assert "198.51.100.77" not in json.dumps(found)


#: Next to no refill while a test runs: what passes is the burst, whatever the machine's speed.
TRICKLE = 0.001
PROXY = [ip_network("127.0.0.1/32")]


def post(
    base: str, key: str, client: str, events: int = 1
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST a batch of ``events`` as ``client`` (behind the trusted proxy), on a new connection."""
    batch = [{"type": "track", "userId": f"C-{n}", "event": "Viewed"} for n in range(events)]
    response = httpx.post(
        base + "/v1/batch",
        json={"batch": batch},
        headers={**basic(key), "X-Forwarded-For": client},
    )
    return response.status_code, response.json(), dict(response.headers)


def assert_429(body: dict[str, Any], headers: dict[str, str], field: str) -> None:
    assert (body["success"], body["code"], body["field"]) == (False, "rate_limited", field)
    assert body["message"] and body["request_id"]
    assert int(headers["retry-after"]) >= 1


def reconciled(settings: Settings, accepted_events: int, refused: int) -> list[dict[str, Any]]:
    """The raw topic holds the accepted events, and the letters add up to the refusals."""
    bootstrap = settings.kafka.bootstrap_servers
    raw = read_topic(bootstrap, settings.kafka.topic("cdp.events.raw"), accepted_events)
    assert len(raw) == accepted_events
    letters = letters_of(settings, refused)
    assert sum(v["count"] for v in letters) == refused
    return letters


def test_a_flooding_address_gets_429s_while_another_keeps_getting_200s(
    settings: Settings,
) -> None:
    limits = RateLimits(address_requests_per_s=TRICKLE, address_burst=10, key_events_per_s=0)
    limited = with_ingest(settings, rate_limits=limits, trusted_proxies=PROXY)
    flood, other = [], []
    with running_api_processes(limited, 2) as api:
        for n in range(30):
            flood.append(post(api, key_of("test-web"), "203.0.113.7"))
            if n % 6 == 0:  # 5 requests: within the burst even if one process gets them all
                other.append(post(api, key_of("test-pos"), "198.51.100.9"))
    assert [status for status, _, _ in other] == [200] * 5
    passed = [status for status, _, _ in flood].count(200)
    # The burst of 10 for the deployment: 5 for each of two processes.
    assert 1 <= passed <= 10
    refused = [(body, headers) for status, body, headers in flood if status == 429]
    assert len(refused) == 30 - passed
    for body, headers in refused:
        assert_429(body, headers, "client_address")
    letters = reconciled(settings, passed + 5, len(refused))
    assert {(v["reason"], v["status"], v["field"], v["source"]) for v in letters} == {
        ("rate_limited", 429, "client_address", None)
    }
    own = [v for v in letters if v["since"] is None]
    assert own and all(v["raw"] is None and v["payload"] is None for v in own)


def test_a_write_key_over_its_events_gets_429s_while_another_key_keeps_getting_200s(
    settings: Settings,
) -> None:
    limits = RateLimits(address_requests_per_s=0, key_events_per_s=TRICKLE, key_burst=20)
    limited = with_ingest(settings, rate_limits=limits, trusted_proxies=PROXY)
    web, pos = [], []
    with running_api_processes(limited, 2) as api:
        for n in range(20):
            # From ever new addresses: only the key's limit can refuse them.
            web.append(post(api, key_of("test-web"), f"203.0.113.{n}", events=4))
            if n % 4 == 0:
                pos.append(post(api, key_of("test-pos"), f"198.51.100.{n}"))
    assert [status for status, _, _ in pos] == [200] * 5
    passed = [status for status, _, _ in web].count(200)
    # 10 events per process: batches of 4 leave 6, 2, then a debt of 2.
    assert 1 <= passed <= 6
    refused = [(body, headers) for status, body, headers in web if status == 429]
    assert len(refused) == 20 - passed
    for body, headers in refused:
        assert_429(body, headers, "writeKey")
    letters = reconciled(settings, 4 * passed + 5, len(refused))
    assert {(v["reason"], v["field"], v["source"]) for v in letters} == {
        ("rate_limited", "writeKey", "test-web")
    }


def test_without_trusted_proxies_x_forwarded_for_does_not_escape_the_address_limit(
    settings: Settings,
) -> None:
    limits = RateLimits(address_requests_per_s=TRICKLE, address_burst=10)
    with running_api_processes(with_ingest(settings, rate_limits=limits), 2) as api:
        statuses = [post(api, key_of("test-web"), f"203.0.113.{n}")[0] for n in range(30)]
    assert statuses.count(200) <= 10
    assert statuses.count(429) == 30 - statuses.count(200)
