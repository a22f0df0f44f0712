"""Browsers send events from shop pages: Segment's browser SDK, its wire format, and CORS.

analytics.js (@segment/analytics-next) loads its source settings from ``cdnURL``, then posts
each call as ``text/plain`` JSON to ``<apiHost>/<type's initial>`` (``/b`` in batching mode),
with the write key in the body. The first test runs the real SDK (pinned in
tests/sdk/browser, installed by ``scripts/install.sh --test``) in a jsdom page under Node;
the others send its requests by hand, from another origin, to check CORS and rejections.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from deploy.settings import Settings
from tests.support.kafka import read_topic
from tests.support.keys import key_of


@pytest.fixture
def api(api_processes: str) -> str:
    """Ingest is tested against several API processes sharing the port."""
    return api_processes


ORIGIN = "https://shop.example.com"
SDK_DIR = Path(__file__).parents[1] / "sdk" / "browser"


def run_real_sdk(api: str, mode: str, run: str) -> dict[str, Any]:
    """Run tests/sdk/browser/send.mjs; fail (never skip) when Node or the SDK is missing."""
    node = shutil.which("node")
    if node is None or not (SDK_DIR / "node_modules" / "@segment" / "analytics-next").is_dir():
        pytest.fail("Node or the browser SDK is missing: run `bash scripts/install.sh --test`")
    done = subprocess.run(
        [node, "send.mjs", api, key_of("test-web"), mode, run],
        cwd=SDK_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("mode", ["standard", "batching"])
def test_the_real_browser_sdk_delivers_to_kafka(mode: str, settings: Settings, api: str) -> None:
    run = uuid.uuid4().hex[:8]
    sent = run_real_sdk(api, mode, run)

    assert sent["failures"] == []
    calls = [(r["method"], r["url"].removeprefix(api), r["status"]) for r in sent["requests"]]
    settings_call = ("GET", f"/v1/projects/{key_of('test-web')}/settings", 200)
    if mode == "standard":
        assert calls == [settings_call] + [("POST", f"/v1/{c}", 200) for c in "itp"]
    else:  # three tracks, two per request
        assert calls == [settings_call, ("POST", "/v1/b", 200), ("POST", "/v1/b", 200)]
        assert [r.get("events") for r in sent["requests"]] == [None, 2, 1]
    assert {r["contentType"] for r in sent["requests"][1:]} == {"text/plain"}

    ids = sent["messageIds"]
    got = read_topic(
        settings.kafka.bootstrap_servers,
        settings.kafka.topic("cdp.events.raw"),
        len(ids),
        where=lambda v: v["event_id"] in ids,
    )
    events = {v["event_id"]: v for _, v in got}
    assert len(got) == 3 and set(events) == set(ids)
    assert {(v["source"], v["channel"]) for v in events.values()} == {("test-web", "web")}
    anonymous = ("anonymous_id", sent["anonymousId"])
    if mode == "standard":
        identify, track, page = (events[i] for i in ids)
        assert {(i["type"], i["value"]) for i in identify["identifiers"]} == {
            anonymous,
            ("customer_id", f"C-{run}"),
            ("email", f"zhang.wei+{run}@example.com"),
            ("phone", "+8613800138000"),
        }
        assert (track["type"], track["name"]) == ("track", "Product Added")
        assert track["properties"] == {"sku": "A1", "price": 99, "run": run}
        assert {(i["type"], i["value"]) for i in track["identifiers"]} == {
            anonymous,
            ("customer_id", f"C-{run}"),
        }
        assert (page["type"], page["name"], page["properties"]["run"]) == ("page", "Cart", run)
    else:
        assert sorted(v["name"] for v in events.values()) == [f"Batch Test {n}" for n in (1, 2, 3)]
        assert all(
            [(i["type"], i["value"]) for i in v["identifiers"]] == [anonymous]
            for v in events.values()
        )


def ajs(call: str, run: str, n: int, **fields: Any) -> dict[str, Any]:
    """One call as analytics.js's segmentio plugin serialises it."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return {
        "type": call,
        "messageId": f"ajs-next-{run}-{n}",
        "anonymousId": f"anon-{run}",
        "timestamp": now,
        "sentAt": now,
        "writeKey": key_of("test-web"),
        "integrations": {},
        "context": {
            "page": {"path": "/cart", "url": f"{ORIGIN}/cart", "title": "购物车", "search": ""},
            "userAgent": "Mozilla/5.0",
            "locale": "zh-CN",
            "library": {"name": "analytics.js", "version": "npm:next-1.70.0"},
        },
        "_metadata": {"bundled": ["Segment.io"], "unbundled": [], "bundledIds": []},
        "userId": None,
        **fields,
    }


def post(api: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        api + path,
        content=orjson.dumps(body),
        headers={"Content-Type": "text/plain", "Origin": ORIGIN},
        timeout=30,
    )


def test_analytics_js_calls_land_in_kafka(settings: Settings, api: str) -> None:
    loaded = httpx.get(f"{api}/v1/projects/{key_of('test-web')}/settings", timeout=10)
    assert loaded.status_code == 200
    segmentio = loaded.json()["integrations"]["Segment.io"]
    host = api.removeprefix("http://")
    assert segmentio["apiKey"] == key_of("test-web")
    assert (segmentio["protocol"], segmentio["apiHost"]) == ("http", f"{host}/v1")

    run = uuid.uuid4().hex[:8]
    page = ajs("page", run, 1, name="Cart", properties={"path": "/cart"})
    identify = ajs("identify", run, 2, userId="C-9", traits={"email": " Li.Lei@Example.com "})
    track = ajs("track", run, 3, userId="C-9", event="Product Added", properties={"sku": "A1"})
    statuses = [post(api, f"/v1/{c['type'][0]}", c) for c in (page, identify, track)]
    assert [r.status_code for r in statuses] == [200, 200, 200]
    assert all(r.headers["access-control-allow-origin"] == "*" for r in statuses)
    batched = httpx.post(
        f"{api}/v1/b",
        content=orjson.dumps(
            {
                "writeKey": key_of("test-web"),
                "batch": [{k: v for k, v in ajs("track", run, 4, event="Cart Viewed").items()}],
                "sentAt": page["sentAt"],
            }
        ),
        headers={"Content-Type": "text/plain", "Origin": ORIGIN},
        timeout=30,
    )
    assert batched.status_code == 200 and batched.json()["accepted"] == 1

    got = read_topic(
        settings.kafka.bootstrap_servers,
        settings.kafka.topic("cdp.events.raw"),
        4,
        where=lambda v: v["event_id"].startswith(f"ajs-next-{run}"),
    )
    by_id = {v["event_id"]: v for _, v in got}
    assert len(got) == 4 and len(by_id) == 4
    assert {v["source"] for v in by_id.values()} == {"test-web"}
    assert {v["channel"] for v in by_id.values()} == {"web"}
    assert by_id[f"ajs-next-{run}-1"]["type"] == "page"
    ids = {(i["type"], i["value"]) for i in by_id[f"ajs-next-{run}-2"]["identifiers"]}
    assert ids == {
        ("anonymous_id", f"anon-{run}"),
        ("customer_id", "C-9"),
        ("email", "li.lei@example.com"),
    }
    assert by_id[f"ajs-next-{run}-3"]["name"] == "Product Added"
    assert by_id[f"ajs-next-{run}-4"]["name"] == "Cart Viewed"


def test_preflight_and_errors_are_readable_cross_origin(settings: Settings, api: str) -> None:
    # RudderStack's browser SDK sends the write key as Basic auth: a preflighted request.
    preflight = httpx.options(
        f"{api}/v1/track",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
        timeout=10,
    )
    assert preflight.status_code == 200
    allowed = preflight.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed

    # A rejection is readable by the page (status, JSON error naming the field) and dead-lettered.
    run = uuid.uuid4().hex[:8]
    bad = ajs("identify", run, 1) | {"writeKey": "wk_nobody"}
    refused = post(api, "/v1/i", bad)
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "*"
    assert refused.json()["field"] == "writeKey"
    letters = read_topic(
        settings.kafka.bootstrap_servers,
        settings.kafka.topic("cdp.events.deadletter"),
        1,
        where=lambda v: v["request_id"] == refused.json()["request_id"],
    )
    assert [(v["reason"], v["endpoint"]) for _, v in letters] == [("unauthorized", "/v1/i")]

    unknown = httpx.get(f"{api}/v1/projects/wk_nobody/settings", timeout=10)
    assert (unknown.status_code, unknown.json()["field"]) == (404, "writeKey")

    # Read APIs carry service tokens, not browser ones: no CORS there.
    profile = httpx.get(
        f"{api}/v1/profiles/1", headers={"Origin": ORIGIN, "Authorization": "Bearer tk_reader"}
    )
    assert "access-control-allow-origin" not in profile.headers
