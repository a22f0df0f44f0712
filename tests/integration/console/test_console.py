"""The console in a real headless Chromium against `cdp run` fed a generated demo feed.

Each page is checked against the API it draws from (same tags as the profile lookup, same
count as the segment count, the lag of the running groups), and photographed into
artifacts/console/ (not committed).
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from contracts.segments import SavedSegment, SegmentDefinition
from deploy import topics
from deploy.demo import demo_key
from deploy.generator import LAST_EVENT
from deploy.lag import total_lag
from deploy.worker import STREAM_ROLES, group_id
from tests.conftest import make_settings
from tests.support.services import Services
from tests.support.stack import Stack, running_stack

ARTIFACTS = Path(__file__).resolve().parents[3] / "artifacts" / "console"
CONSOLE = {"Authorization": "Bearer tk_console"}
PAGES = ("customers", "segments", "tags", "ops")


@pytest.fixture(scope="module")
def stack(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = make_settings(services, f"t{uuid.uuid4().hex[:10]}.")
    topics.create_all(settings.kafka)
    with running_stack(settings, tmp_path_factory.mktemp("console")) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is not installed: run scripts/install.sh --test"
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


#: Requests the pages made anywhere but the console's own origin (refused, and a failure).
OUTSIDE: list[str] = []
#: Uncaught errors of the pages' scripts (a failure too).
ERRORS: list[str] = []


@pytest.fixture(autouse=True)
def nothing_from_outside_and_no_script_error() -> Iterator[None]:
    OUTSIDE.clear()
    ERRORS.clear()
    yield
    assert OUTSIDE == [], "the console reached outside its own origin"
    assert ERRORS == [], "a page's script failed"


def fresh_page(browser: Browser, stack: Stack) -> Page:
    """A page in a new browser context (no cookie) that may reach only the console's origin."""
    context = browser.new_context(viewport={"width": 1440, "height": 900}, locale="en-GB")

    def local_only(route: Route) -> None:
        if route.request.url.startswith(stack.base + "/"):
            route.continue_()
        else:
            OUTSIDE.append(route.request.url)
            route.abort()

    context.route("**/*", local_only)
    page = context.new_page()
    page.on("pageerror", lambda error: ERRORS.append(f"{page.url}: {error}"))
    return page


def signed_in(browser: Browser, stack: Stack, token: str) -> Page:
    """A fresh browser context signed in through the sign-in form."""
    page = fresh_page(browser, stack)
    page.goto(stack.base + "/console/customers")
    expect(page).to_have_url(f"{stack.base}/console/signin?next=/console/customers")
    page.fill("#token", token)
    page.click("button[type=submit]")
    expect(page).to_have_url(stack.base + "/console/customers")
    return page


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def api(stack: Stack, method: str, path: str, **kw: Any) -> Any:
    answer = httpx.request(method, stack.base + path, headers=CONSOLE, timeout=60, **kw)
    assert answer.is_success, answer.text
    return answer.json()


def sent_phones(stack: Stack) -> dict[str, set[str]]:
    """Every phone the feed sent (11 digits), with the spellings it was sent in."""
    found: dict[str, set[str]] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if value.get("type") == "phone" and isinstance(value.get("value"), str):
                note(value["value"])
            if isinstance(value.get("phone"), str):
                note(value["phone"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    def note(spelling: str) -> None:
        digits = re.sub(r"\D", "", spelling)
        found.setdefault(digits[-11:], set()).add(spelling)

    for _, _, body in stack.feed.calls:
        walk(body)
    return found


def customer_with_orders(stack: Stack) -> tuple[str, dict[str, Any]]:
    """A demo customer's phone digits and profile (as the API answers), one who ordered."""
    phones = sent_phones(stack)
    for phone in sorted(phones):
        found = httpx.get(
            stack.base + "/v1/profiles/lookup",
            params={"type": "phone", "value": phone},
            headers=CONSOLE,
            timeout=30,
        )
        if found.status_code == 200 and found.json()["order_count"] > 0:
            return phone.removeprefix("+86"), found.json()
    raise AssertionError("no demo customer with orders")


def test_without_a_token_every_page_sends_to_sign_in(stack: Stack, browser: Browser) -> None:
    page = fresh_page(browser, stack)
    for name in PAGES:
        page.goto(f"{stack.base}/console/{name}")
        expect(page).to_have_url(f"{stack.base}/console/signin?next=/console/{name}")
        expect(page.locator("#token")).to_be_visible()
    page.close()
    answer = httpx.get(stack.base + "/console/api/v1/tags", timeout=10)
    assert answer.status_code == 401, answer.text
    forged = httpx.get(
        stack.base + "/console/api/v1/tags", cookies={"cdp_console": "tk_forged"}, timeout=10
    )
    assert forged.status_code == 401, forged.text


def test_no_page_answers_a_cross_origin_request(stack: Stack) -> None:
    cookie = {"cdp_console": "tk_console"}
    for path in ("/console/customers", "/console/api/v1/tags", "/console/api/ops"):
        for header in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
            answer = httpx.get(stack.base + path, headers=header, cookies=cookie, timeout=10)
            assert answer.status_code == 403, (path, header, answer.text)
            assert answer.json()["code"] == "cross_origin"
            assert "access-control-allow-origin" not in answer.headers
    posted = httpx.post(
        stack.base + "/console/signin",
        content="token=tk_console",
        headers={"Origin": "http://evil.example"},
        timeout=10,
    )
    assert posted.status_code == 403 and "set-cookie" not in posted.headers
    own = httpx.get(
        stack.base + "/console/api/v1/tags",
        headers={"Origin": stack.base, "Sec-Fetch-Site": "same-origin"},
        cookies=cookie,
        timeout=10,
    )
    assert own.status_code == 200 and own.json()["count"] == 238
    page = httpx.get(stack.base + "/console/signin", timeout=10)
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    timeline = httpx.get(
        stack.base + "/console/api/history/timeline",
        params={"profile_id": "1"},
        cookies=cookie,
        timeout=30,
    )
    assert timeline.status_code == 200, timeline.text
    assert len(timeline.headers.get_list("content-security-policy")) == 1


def test_customer_360_finds_a_phone_spelled_differently(stack: Stack, browser: Browser) -> None:
    digits, expected = customer_with_orders(stack)
    spelled = f"+86 {digits[:3]} {digits[3:7]} {digits[7:]}"
    assert spelled not in sent_phones(stack)[digits]
    page = signed_in(browser, stack, "tk_console")
    page.select_option("#id-type", "email")
    page.fill("#id-value", f"nobody.{digits}@example.com")
    page.click("#find")
    expect(page.locator("#not-found")).to_be_visible()
    page.select_option("#id-type", "phone")
    page.fill("#id-value", spelled)
    page.click("#find")
    expect(page.locator("#profile-id")).to_have_text(expected["profile_id"])
    tags = page.locator("#tags [data-tag]")
    expect(tags).to_have_count(len(expected["tags"]))
    assert sorted(tags.evaluate_all("els => els.map(e => e.dataset.tag)")) == sorted(
        expected["tags"]
    )
    explain = api(
        stack, "GET", "/v1/identity/explain", params={"profile_id": expected["profile_id"]}
    )
    identifiers = page.locator("#identifiers .chip")
    expect(identifiers).to_have_count(len(explain["identifiers"]))
    expect(page.locator("#identity-graph canvas")).to_have_count(1)
    rows = page.locator("#timeline tbody tr")
    expect(rows.first).to_be_visible()
    assert rows.count() == min(expected["events"], 300)
    page.select_option("#tl-type", "order_completed")
    expect(page.locator("#timeline tbody tr")).to_have_count(expected["order_count"])
    shot(page, "customers")

    # The language switch: labels, tag and category names from the catalog, in Chinese.
    catalog = api(stack, "GET", "/v1/tags")
    zh = {t["id"]: t["name_zh"] for t in catalog["tags"]}
    page.click("#lang")
    expect(page.locator("[data-nav=customers]")).to_have_text("客户360")
    expect(page.locator("#key-facts dt").first).to_have_text("客户等级")
    chip = page.locator("#tags [data-tag]").first
    assert chip.text_content() == zh[str(chip.get_attribute("data-tag"))]
    category = {c["id"]: c["name_zh"] for c in catalog["categories"]}
    first = page.locator("#tags [data-category]").first
    expect(first.locator("b")).to_have_text(
        category[str(first.get_attribute("data-category"))] + ":"
    )
    shot(page, "customers-zh")
    page.click("#lang")
    expect(page.locator("[data-nav=customers]")).to_have_text("Customer 360")


def test_personal_data_is_masked_unless_the_token_may_read_it(
    stack: Stack, browser: Browser
) -> None:
    digits, profile = customer_with_orders(stack)
    shown = {}
    for token in ("tk_console", "tk_pii"):
        page = signed_in(browser, stack, token)
        page.select_option("#id-type", "phone")
        page.fill("#id-value", digits)
        page.click("#find")
        expect(page.locator("#profile-id")).to_have_text(profile["profile_id"])
        phone = page.locator("#traits dt", has_text="phone").locator(
            "xpath=following-sibling::dd[1]"
        )
        shown[token] = phone.text_content()
        page.context.close()
    assert shown["tk_pii"] is not None and digits in shown["tk_pii"].replace(" ", "")
    assert shown["tk_console"] is not None and "*" in shown["tk_console"]
    assert digits not in shown["tk_console"]


def window_days() -> str:
    """A window reaching the demo feed's first events, however long ago it was generated."""
    return f"{(datetime.now(UTC) - LAST_EVENT).days + 200}d"


def counted(definition: dict[str, Any]) -> str:
    """The body the page says its live count is for (as the browser serialises it)."""
    return json.dumps({"definition": definition}, separators=(",", ":"), ensure_ascii=False)


def add_tag(page: Page, tag: dict[str, Any]) -> None:
    page.click("[data-add=tag] >> nth=0")
    row = page.locator(".cond[data-kind=tag]").last
    row.locator(".tag-category").select_option(tag["category"])
    row.locator(".tag-pick").select_option(tag["id"])


def test_segment_builder_counts_like_the_api_and_saves(stack: Stack, browser: Browser) -> None:
    _, profile = customer_with_orders(stack)
    catalog = {t["id"]: t for t in api(stack, "GET", "/v1/tags")["tags"]}
    picked = [catalog[t] for t in sorted(profile["tags"]) if catalog[t]["category"] != "consent"]
    a, b = picked[0], picked[-1]
    within = window_days()
    definition = {
        "all": [
            {"tag": a["id"]},
            {"tag": b["id"]},
            {"event": "order_completed", "op": "gte", "value": 1, "within": {"last": within}},
        ]
    }
    expected = api(stack, "POST", "/v1/segments/count", json={"definition": definition})
    assert expected["count"] >= 1 and expected["source"] == "history"

    page = signed_in(browser, stack, "tk_console")
    page.goto(stack.base + "/console/segments")
    page.select_option("#code-format", "json")
    add_tag(page, a)
    add_tag(page, b)
    page.click("[data-add=event] >> nth=0")
    event = page.locator(".cond[data-kind=event]")
    event.locator(".value").fill("1")
    event.locator(".event-within").fill(within)
    live = page.locator("#live")
    expect(live).to_have_attribute("data-for", counted(definition))
    assert live.get_attribute("data-count") == str(expected["count"])
    expect(page.locator("#live-source")).to_have_text("history")
    assert json.loads(page.locator("#code").input_value()) == {"definition": definition}

    page.click("#preview-btn")
    expect(page.locator("#preview-table tbody tr")).to_have_count(min(expected["count"], 20))
    for fmt, lines in (("csv", expected["count"] + 1), ("jsonl", expected["count"])):
        page.select_option("#export-format", fmt)
        with page.expect_download() as download:
            page.click("#export-btn")
        path = download.value.path()
        assert download.value.suggested_filename == f"segment.{fmt}"
        assert len(Path(path).read_text().splitlines()) == lines
    page.fill("#seg-id", "console-built")
    page.fill("#seg-name", "Built in the console")
    page.click("#save-btn")
    expect(page.locator("#saved-version")).to_contain_text("1")
    saved = api(stack, "GET", "/v1/segments/console-built")
    stored = SavedSegment.model_validate(saved)
    assert (
        stored.definition == SegmentDefinition.model_validate({"definition": definition}).definition
    )
    assert stored.name == "Built in the console" and saved["version"] == 1
    expect(page.locator("#saved-table tbody tr")).to_have_count(1)
    expect(page.locator("#saved-table tbody td").nth(5)).to_have_text(str(expected["count"]))

    # The scheduled refresh publishes who entered; the size over time ends at the count.
    # The refresh's records go to every partition of the membership topic, and the page
    # reads it to its end: until the refresh published all of them, the size is short.
    cookie = {"cdp_console": "tk_console"}

    def sizes() -> list[dict[str, Any]]:
        answer = httpx.get(
            stack.base + "/console/api/history/segments/console-built/sizes",
            cookies=cookie,
            timeout=30,
        )
        assert answer.is_success, answer.text
        points: list[dict[str, Any]] = answer.json()["points"]
        return points

    stack.process.wait_for(
        f"the saved segment's size over time ending at {expected['count']}",
        lambda: (points := sizes()) and points[-1]["size"] == expected["count"],
        timeout_s=120,
    )
    page.click("#saved-table button >> nth=1")
    expect(page.locator("#sizes canvas")).to_have_count(1)
    shot(page, "segments")


def test_every_kind_of_condition_and_nesting_is_built_with_forms(
    stack: Stack, browser: Browser
) -> None:
    within = window_days()
    definition = {
        "all": [
            {
                "not": {
                    "any": [
                        {"trait": "city", "op": "eq", "value": "Shanghai"},
                        {"attribute": "order_count", "op": "gte", "value": 4},
                    ]
                }
            },
            {"consent": "sms"},
            {
                "event": "order_completed",
                "op": "gte",
                "value": 1,
                "within": {"last": within},
                "where": [{"field": "channel", "op": "eq", "value": "pos"}],
            },
        ]
    }
    expected = api(stack, "POST", "/v1/segments/count", json={"definition": definition})
    assert expected["count"] >= 1

    page = signed_in(browser, stack, "tk_console")
    page.goto(stack.base + "/console/segments")
    page.click("#form > .group > .adds [data-add=group]")
    nested = page.locator(".group .group")
    nested.locator("> .row .negate").check()
    nested.locator("[data-add=trait]").click()
    trait = page.locator(".cond[data-kind=trait]")
    trait.locator(".trait-name").fill("city")
    trait.locator(".value").fill("Shanghai")
    nested.locator("[data-add=attribute]").click()
    attribute = page.locator(".cond[data-kind=attribute]")
    attribute.locator(".attribute-name").select_option("order_count")
    attribute.locator(".op").select_option("gte")
    attribute.locator(".value").fill("4")
    page.click("#form > .group > .adds [data-add=consent]")
    page.locator(".cond[data-kind=consent] .consent-purpose").select_option("sms")
    page.click("#form > .group > .adds [data-add=event]")
    event = page.locator(".cond[data-kind=event]")
    event.locator(".value").fill("1")
    event.locator(".event-within").fill(within)
    event.locator(".add-where").click()
    event.locator(".where .value").fill("pos")

    live = page.locator("#live")
    expect(live).to_have_attribute("data-for", counted(definition))
    assert live.get_attribute("data-count") == str(expected["count"])
    expect(page.locator("#live-source")).to_have_text("history")
    shot(page, "segments-nested")


def test_a_definition_pasted_back_is_built_again(stack: Stack, browser: Browser) -> None:
    page = signed_in(browser, stack, "tk_console")
    page.goto(stack.base + "/console/segments")
    yaml_text = (
        "definition:\n  any:\n    - tag: lifecycle_active\n    - not:\n        tag: tier_vip\n"
    )
    page.fill("#code", yaml_text)
    page.click("#code-load")
    expect(page.locator(".cond[data-kind=tag]")).to_have_count(2)
    expect(page.locator(".combinator").first).to_have_value("any")
    expect(page.locator(".cond[data-kind=tag] .negate").nth(1)).to_be_checked()
    definition = {"any": [{"tag": "lifecycle_active"}, {"not": {"tag": "tier_vip"}}]}
    expected = api(stack, "POST", "/v1/segments/count", json={"definition": definition})
    live = page.locator("#live")
    expect(live).to_have_attribute("data-for", counted(definition))
    assert live.get_attribute("data-count") == str(expected["count"])
    expect(page.locator("#live-source")).to_have_text("tags")


def test_a_token_without_segment_write_cannot_save(stack: Stack, browser: Browser) -> None:
    page = signed_in(browser, stack, "tk_console_readonly")
    page.goto(stack.base + "/console/segments")
    page.fill("#code", '{"definition": {"tag": "lifecycle_active"}}')
    page.click("#code-load")
    expect(page.locator("#live-count")).to_be_visible()
    page.fill("#seg-id", "not-allowed")
    page.click("#save-btn")
    expect(page.locator("#save-msg .error")).to_contain_text("segments:write")
    missing = httpx.get(stack.base + "/v1/segments/not-allowed", headers=CONSOLE, timeout=10)
    assert missing.status_code == 404
    page.click("text=Sign out")
    expect(page).to_have_url(stack.base + "/console/signin")
    page.goto(stack.base + "/console/segments")
    expect(page).to_have_url(f"{stack.base}/console/signin?next=/console/segments")


def test_tag_catalog_shows_every_tag_with_its_count(stack: Stack, browser: Browser) -> None:
    counts = api(stack, "GET", "/v1/tags/counts")["counts"]
    page = signed_in(browser, stack, "tk_console")
    page.goto(stack.base + "/console/tags")
    expect(page.locator("#tag-table tbody tr")).to_have_count(238)
    vip = page.locator("#tag-table tr[data-tag=tier_vip] .count")
    expect(vip).to_have_text(str(counts["tier_vip"]))
    expect(page.locator("#chart-tier canvas")).to_have_count(1)
    page.select_option("#category", "lifecycle")
    lifecycle = sum(
        1 for t in api(stack, "GET", "/v1/tags")["tags"] if t["category"] == "lifecycle"
    )
    expect(page.locator("#tag-table tbody tr")).to_have_count(lifecycle)
    shot(page, "tags")


def test_ops_shows_the_lag_of_the_running_groups(stack: Stack, browser: Browser) -> None:
    settings = stack.settings
    k = settings.kafka
    groups = {
        group_id(settings, STREAM_ROLES): [k.topic("cdp.events.raw")],
        group_id(settings, ["history"]): [
            k.topic(t)
            for t in ("cdp.events.resolved", "cdp.identity.merges", "cdp.profiles.changes")
        ],
    }
    bad = httpx.post(
        stack.base + "/v1/events",
        json={"events": [{"type": "order_completed", "properties": {"total": 1}}]},
        auth=(demo_key("demo-pos"), ""),
        timeout=30,
    )
    assert bad.status_code == 400 and bad.json()["rejected"] == 1, bad.text
    page = signed_in(browser, stack, "tk_console")
    page.goto(stack.base + "/console/ops")
    latest = page.locator("#deadletters tbody tr").first
    error = bad.json()["errors"][0]
    expect(latest.locator("td").nth(1)).to_have_text(error["code"])
    expect(latest.locator("td").nth(2)).to_have_text(error["field"])
    expect(latest.locator("td").nth(3)).to_have_text(error["message"])
    for group, group_topics in groups.items():
        shown = page.locator(f'.lag[data-group="{group}"]')
        expect(shown).to_be_visible()
        assert shown.text_content() == str(total_lag(k, group, group_topics))
    for service in ("kafka", "redis", "clickhouse"):
        expect(page.locator(f'[data-service="{service}"] b')).to_have_text("OK")
    expect(page.locator("#stages tbody tr")).to_have_count(6)
    # It refreshes itself: a newer snapshot replaces this one, with rates between the two.
    at = page.locator("#ops-at")
    expect(at).not_to_have_text(str(at.text_content()), timeout=20_000)
    expect(page.locator("#stages tbody tr td").nth(3)).to_have_text(re.compile(r"^\d+\.\d$"))
    shot(page, "ops")
