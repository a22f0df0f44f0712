"""Every malformed request gets its status, a JSON error naming the field, and a dead letter."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import httpx
import pytest

from deploy.settings import Settings
from tests.support.kafka import read_topic
from tests.support.keys import key_of


@pytest.fixture
def api(api_processes: str) -> str:
    """Ingest is tested against several API processes sharing the port."""
    return api_processes


KEY = key_of("test-web")


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def track(**extra: Any) -> dict[str, Any]:
    return {"type": "track", "userId": "C-1", "event": "Viewed", **extra}


BIG = "x" * 33_000
CASES: list[tuple[str, str, dict[str, str], bytes, int, str, str | None]] = [
    # (case, path, headers, body, status, code, field)
    (
        "no key",
        "/v1/batch",
        {},
        json.dumps({"batch": [track()]}).encode(),
        401,
        "unauthorized",
        "writeKey",
    ),
    (
        "unknown key",
        "/v1/track",
        basic("wk_nope"),
        json.dumps(track()).encode(),
        401,
        "unauthorized",
        "Authorization",
    ),
    (
        "unknown key in body",
        "/v1/batch",
        {},
        json.dumps({"batch": [track()], "writeKey": "wk_nope"}).encode(),
        401,
        "unauthorized",
        "writeKey",
    ),
    (
        "malformed json",
        "/v1/batch",
        basic(KEY),
        b'{"batch": [{"type": "tr',
        400,
        "malformed_json",
        "body",
    ),
    (
        "not gzip",
        "/v1/batch",
        {**basic(KEY), "Content-Encoding": "gzip"},
        b'{"batch": []}',
        400,
        "bad_encoding",
        "Content-Encoding",
    ),
    (
        "unsupported encoding",
        "/v1/batch",
        {**basic(KEY), "Content-Encoding": "br"},
        b"{}",
        415,
        "bad_encoding",
        "Content-Encoding",
    ),
    (
        "batch over 500 KB",
        "/v1/batch",
        basic(KEY),
        json.dumps({"batch": [track(properties={"p": "y" * 30_000}) for _ in range(20)]}).encode(),
        413,
        "batch_too_large",
        "body",
    ),
    (
        "gzip inflating over 500 KB",
        "/v1/batch",
        {**basic(KEY), "Content-Encoding": "gzip"},
        gzip.compress(json.dumps({"batch": [track(properties={"p": "0" * 600_000})]}).encode()),
        413,
        "batch_too_large",
        "body",
    ),
    (
        "2,501 events",
        "/v1/batch",
        basic(KEY),
        json.dumps({"batch": [{"type": "page", "anonymousId": "a"}] * 2501}).encode(),
        413,
        "too_many_events",
        "batch",
    ),
    (
        "event over 32 KB",
        "/v1/track",
        basic(KEY),
        json.dumps(track(properties={"p": BIG})).encode(),
        413,
        "event_too_large",
        None,
    ),
    ("no batch array", "/v1/batch", basic(KEY), b'{"events": []}', 400, "invalid_event", "batch"),
    (
        "track without event",
        "/v1/track",
        basic(KEY),
        b'{"userId": "C-1"}',
        400,
        "invalid_event",
        "event",
    ),
    (
        "no identifier",
        "/v1/track",
        basic(KEY),
        b'{"event": "x"}',
        400,
        "missing_identifier",
        "userId",
    ),
    (
        "traits not an object",
        "/v1/identify",
        basic(KEY),
        b'{"userId": "C-1", "traits": [1]}',
        400,
        "invalid_event",
        "traits",
    ),
    (
        "bad timestamp",
        "/v1/track",
        basic(KEY),
        json.dumps(track(timestamp="soon")).encode(),
        400,
        "invalid_event",
        "timestamp",
    ),
    (
        "type mismatch",
        "/v1/page",
        basic(KEY),
        json.dumps(track()).encode(),
        400,
        "invalid_event",
        "type",
    ),
    (
        "native: unknown type",
        "/v1/events",
        basic(KEY),
        b'{"type": "teleported", "identifiers": [{"type": "email", "value": "a@b.c"}]}',
        400,
        "invalid_event",
        "type",
    ),
    (
        "native: no identifiers",
        "/v1/events",
        basic(KEY),
        b'{"type": "track", "identifiers": []}',
        400,
        "invalid_event",
        "identifiers",
    ),
    (
        "native: wrong field type",
        "/v1/events",
        basic(KEY),
        b'{"events": [{"type": "track", "identifiers": [{"type": "email", "value": "a@b.c"}],'
        b' "properties": "x"}]}',
        400,
        "invalid_event",
        "events[0].properties",
    ),
]


@pytest.mark.parametrize(
    ("path", "headers", "body", "status", "code", "field"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_rejection_has_status_json_error_and_dead_letter(
    settings: Settings,
    api: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
    code: str,
    field: str | None,
) -> None:
    response = httpx.post(
        api + path, content=body, headers={"Content-Type": "application/json", **headers}
    )
    assert response.status_code == status, response.text
    error = response.json()
    assert (error["success"], error["code"], error["field"]) == (False, code, field)
    assert error["message"]

    letters = read_topic(
        settings.kafka.bootstrap_servers, settings.kafka.topic("cdp.events.deadletter"), 1
    )
    assert [v["request_id"] for _, v in letters] == [error["request_id"]]
    letter = letters[0][1]
    assert (letter["reason"], letter["field"], letter["status"]) == (code, field, status)
    assert letter["endpoint"] == path
    if code in ("malformed_json", "bad_encoding", "batch_too_large"):
        assert letter["payload"] is None and letter["raw_sha256"]
    raw = read_topic(
        settings.kafka.bootstrap_servers, settings.kafka.topic("cdp.events.raw"), 0, timeout_s=2
    )
    assert raw == []


def test_a_mixed_batch_accepts_the_valid_and_dead_letters_each_invalid(
    settings: Settings, api: str
) -> None:
    batch = [
        track(messageId="ok-1"),
        {"type": "track", "userId": "C-1", "messageId": "bad-1"},
        track(messageId="ok-2", properties={"p": BIG}),
        {"type": "page", "anonymousId": "anon-1", "messageId": "ok-3"},
        "not an object",
    ]
    response = httpx.post(api + "/v1/batch", json={"batch": batch}, headers=basic(KEY))
    assert response.status_code == 200
    answer = response.json()
    assert (answer["received"], answer["accepted"], answer["rejected"]) == (5, 2, 3)
    assert answer["accepted"] + answer["rejected"] == answer["received"]
    assert [(e["index"], e["field"], e["code"]) for e in answer["errors"]] == [
        (1, "batch[1].event", "invalid_event"),
        (2, "batch[2]", "event_too_large"),
        (4, "batch[4]", "invalid_event"),
    ]
    bootstrap = settings.kafka.bootstrap_servers
    raw = read_topic(bootstrap, settings.kafka.topic("cdp.events.raw"), 2)
    letters = read_topic(bootstrap, settings.kafka.topic("cdp.events.deadletter"), 3)
    assert sorted(v["event_id"] for _, v in raw) == ["ok-1", "ok-3"]
    assert sorted(v["index"] for _, v in letters) == [1, 2, 4]
    assert {
        v["payload"] if isinstance(v["payload"], str) else v["payload"]["messageId"]
        for _, v in letters
    } == {"bad-1", "ok-2", "not an object"}


def test_a_batch_with_nothing_valid_is_a_400_with_every_error(settings: Settings, api: str) -> None:
    response = httpx.post(
        api + "/v1/batch",
        headers=basic(KEY),
        json={"batch": [{"type": "track"}, {"type": "identify"}]},
    )
    assert response.status_code == 400
    answer = response.json()
    assert (answer["accepted"], answer["rejected"], answer["field"]) == (0, 2, "batch[0].event")
    letters = read_topic(
        settings.kafka.bootstrap_servers, settings.kafka.topic("cdp.events.deadletter"), 2
    )
    assert len(letters) == 2
