"""Refused requests on the real API and Kafka: a few letters of their own, the rest counted in
summary letters, so the letters add up to every refusal."""

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
from ingest.limits import RefusalLetters
from privacy.crypto import MasterKeys
from tests.support.kafka import read_until
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
