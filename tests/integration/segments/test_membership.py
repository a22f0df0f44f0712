"""Saved segments' membership events end to end: HTTP -> Kafka -> workers -> membership topic.

A live (tag-only) segment emits as the profiles processor re-tags a profile; a segment on the
history emits when the history worker's scheduled refresh recomputes it.
"""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.events import Event
from contracts.segments import SegmentDefinition
from deploy.settings import Settings
from segments.agents import LiveMembership
from segments.store import SegmentStore
from tests.integration.tagging.test_tags import Tagged
from tests.support.events import ev
from tests.support.kafka import read_topic
from tests.support.keys import key_of
from tests.support.services import Services
from tests.support.worker import WorkerProcess

WRITER = {"Authorization": "Bearer tk_segments_rw"}


@pytest.fixture
def worker(settings: Settings, tmp_path: Path) -> Iterator[WorkerProcess]:
    w = WorkerProcess(settings, tmp_path, ["history", "identity", "profiles"])
    w.env["CDP_SEGMENTS__REFRESH_INTERVAL_S"] = "1"
    w.env["CDP_WORKER__SNAPSHOT_INTERVAL_S"] = "0.5"
    yield w
    if w.proc is not None and w.proc.poll() is None:
        w.stop(signal.SIGKILL)


def send(api: str, batch: list[dict[str, Any]]) -> None:
    auth = base64.b64encode(f"{key_of('test-pos')}:".encode()).decode()
    r = httpx.post(
        api + "/v1/batch",
        json={"batch": batch},
        headers={"Authorization": f"Basic {auth}"},
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["rejected"] == 0, r.text


def order(n: int, member: str, total: float) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": member,
        "event": "Order Completed",
        "messageId": f"o{n}",
        "properties": {"order_id": f"O{n}", "total": total},
    }


def test_live_and_refreshed_segments_publish_enters_and_exits(
    settings: Settings, api: str, worker: WorkerProcess
) -> None:
    live = {"id": "repeat", "definition": {"tag": "repeat_buyer"}}
    spenders = {
        "id": "spenders",
        "definition": {
            "event": "order_completed",
            "measure": "sum",
            "property": "amount",
            "op": "gte",
            "value": 1000,
            "within": {"last": "30d"},
        },
    }
    for seg in (live, spenders):
        r = httpx.post(api + "/v1/segments", json=seg, headers=WRITER, timeout=30)
        assert r.status_code == 201, r.text
    # M-1 buys twice (a repeat buyer, 1,200 spent); M-2 once (neither).
    send(api, [order(1, "M-1", 200), order(2, "M-1", 1000), order(3, "M-2", 50)])
    worker.start()
    topic = settings.kafka.topic("cdp.segments.membership")
    enters = read_topic(
        settings.kafka.bootstrap_servers, topic, expected=2, timeout_s=90, alive=worker.check
    )
    by_segment = {v["segment_id"]: (k, v) for k, v in enters}
    assert set(by_segment) == {"repeat", "spenders"}
    assert by_segment["repeat"][1]["change"] == "enter"
    assert by_segment["repeat"][1]["cause"] == "live"
    assert by_segment["spenders"][1]["cause"] == "refresh"
    member = by_segment["repeat"][0]
    assert by_segment["spenders"][0] == member  # key = profile id, the same person
    assert len(enters) == 2  # M-2 entered nothing, and nothing was repeated

    # A refund does not make M-1 leave (tags and sums are of orders); a redefinition does:
    # the refresh after an update publishes the exit.
    stricter = {**spenders, "definition": {**spenders["definition"], "value": 5000}}
    stricter.pop("id")
    r = httpx.put(api + "/v1/segments/spenders", json=stricter, headers=WRITER, timeout=30)
    assert r.status_code == 200 and r.json()["version"] == 2
    changes = read_topic(
        settings.kafka.bootstrap_servers, topic, expected=3, timeout_s=60, alive=worker.check
    )
    last = changes[-1][1]
    assert (last["segment_id"], last["change"], last["segment_version"]) == (
        "spenders",
        "exit",
        2,
    )
    assert changes[-1][0] == member


def test_live_membership_follows_tag_changes(services: Services) -> None:
    t = Tagged(services.redis_url)
    try:
        store = SegmentStore(t.client, t.ns)
        now = datetime(2026, 3, 2, 4, tzinfo=UTC)
        seg = SegmentDefinition.model_validate(
            {
                "purpose": "sms",
                "definition": {
                    "all": [{"tag": "single_channel"}, {"not": {"tag": "repeat_buyer"}}]
                },
            }
        )
        t.loop.run_until_complete(store.put(seg, "one-channel", create=True))
        live = LiveMembership(store, t.tags.catalog, "membership", reload_s=0)

        def changes(events: list[Event]) -> list[tuple[str, str]]:
            found = t.loop.run_until_complete(live.records(t.run(events, now), now))
            return [(r.key.decode(), json.loads(r.value)["change"]) for r in found]

        member = [("member_id", "M-9")]
        # A POS order without SMS consent: one channel, not a repeat buyer, but no consent.
        assert changes([ev(1, "order_completed", "pos", member, now, order_id="A", total=5)]) == []
        # Consent granted: now a member.
        assert changes([ev(2, "identify", "pos", member, now, consent={"sms": True})]) == [
            ("1", "enter")
        ]
        # A second order: a repeat buyer, so out.
        assert changes([ev(3, "order_completed", "pos", member, now, order_id="B", total=5)]) == [
            ("1", "exit")
        ]
    finally:
        t.close()


def test_a_merged_away_member_exits_live_segments(services: Services) -> None:
    t = Tagged(services.redis_url)
    try:
        store = SegmentStore(t.client, t.ns)
        now = datetime(2026, 3, 2, 4, tzinfo=UTC)
        seg = SegmentDefinition.model_validate(
            {"definition": {"all": [{"tag": "single_channel"}, {"not": {"tag": "repeat_buyer"}}]}}
        )
        t.loop.run_until_complete(store.put(seg, "one-channel", create=True))
        live = LiveMembership(store, t.tags.catalog, "membership", reload_s=0)

        def changes(events: list[Event]) -> list[tuple[str, str]]:
            tagged = t.run(events, now)
            found = t.loop.run_until_complete(live.records(tagged + t.departed, now))
            return sorted((r.key.decode(), json.loads(r.value)["change"]) for r in found)

        email, member = ("email", "a@example.com"), ("member_id", "M-9")
        older = changes([ev(1, "page", "web", [email], now)])
        assert older == [("1", "enter")]  # one channel (web), no orders
        newer = changes([ev(2, "order_completed", "pos", [member], now, order_id="A", total=5)])
        assert newer == [("2", "enter")]
        # The member turns out to be the web visitor: profile 2 is merged into the older 1.
        # 2 is no profile any more, so it leaves; 1 now has two channels, so it leaves too.
        merged = changes([ev(3, "identify", "pos", [member, email], now)])
        assert merged == [("1", "exit"), ("2", "exit")]
        assert t.stored("2")[0] == "1"  # read through the alias: the survivor
        assert t.count("single_channel") == 0
    finally:
        t.close()
