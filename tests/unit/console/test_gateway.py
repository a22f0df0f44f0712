"""The console's gateway: same origin only, the cookie's token as the bearer token."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from console.gateway import ConsoleGateway, cookie_token, cross_origin
from tagging.catalog import CATEGORIES, CATEGORY_NAMES


def scope(path: str, *headers: tuple[str, str]) -> dict[str, Any]:
    raw = [(b"host", b"cdp.example:8088"), *((k.encode(), v.encode()) for k, v in headers)]
    return {
        "type": "http",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "headers": raw,
    }


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ((), False),
        ((("origin", "http://cdp.example:8088"),), False),
        ((("sec-fetch-site", "same-origin"),), False),
        ((("sec-fetch-site", "none"),), False),
        ((("origin", "http://evil.example"),), True),
        ((("origin", "https://cdp.example:8088"),), True),
        ((("sec-fetch-site", "cross-site"),), True),
        ((("sec-fetch-site", "same-site"),), True),
    ],
)
def test_only_the_consoles_own_origin_is_answered(
    headers: tuple[tuple[str, str], ...], refused: bool
) -> None:
    assert (cross_origin(scope("/console/ops", *headers)) is not None) is refused


def test_the_token_comes_from_the_console_cookie_only() -> None:
    assert cookie_token(scope("/x", ("cookie", "a=1; cdp_console=tk_abc"))) == "tk_abc"
    assert cookie_token(scope("/x", ("cookie", "other=tk_abc"))) is None
    assert cookie_token(scope("/x")) is None


def test_api_calls_become_v1_calls_with_the_bearer_token() -> None:
    seen: list[dict[str, Any]] = []

    async def app(s: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(s)

    gateway = ConsoleGateway(app)
    given = scope(
        "/console/api/v1/segments/count",
        ("cookie", "cdp_console=tk_abc"),
        ("authorization", "Bearer tk_smuggled"),
        ("origin", "http://cdp.example:8088"),
    )
    asyncio.run(gateway(given, None, None))
    inner = seen[0]
    assert inner["path"] == "/v1/segments/count" and inner["raw_path"] == b"/v1/segments/count"
    auth = [v for k, v in inner["headers"] if k == b"authorization"]
    assert auth == [b"Bearer tk_abc"]
    assert not [k for k, _ in inner["headers"] if k == b"origin"]


def test_a_cross_origin_request_is_refused_before_the_app() -> None:
    sent: list[dict[str, Any]] = []

    async def app(s: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("the app must not see it")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    given = scope("/console/api/v1/tags", ("origin", "http://evil.example"))
    asyncio.run(ConsoleGateway(app)(given, None, send))
    assert sent[0]["status"] == 403
    assert b'"field":"Origin"' in sent[1]["body"]


def test_every_category_has_an_english_and_a_chinese_name() -> None:
    assert set(CATEGORY_NAMES) == set(CATEGORIES)
    assert all(en and zh and en != zh for en, zh in CATEGORY_NAMES.values())
