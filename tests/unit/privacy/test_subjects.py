"""The consent ledger's pure parts, and the export's streamed ZIP."""

from __future__ import annotations

import asyncio
import io
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson

from privacy.subjects import consent_changes, current_consent, jsonl, zipped


def at(day: int) -> datetime:
    return datetime(2026, 11, day, 12, 0, tzinfo=UTC)


def test_each_purpose_change_is_an_entry_and_the_latest_by_event_time_stands() -> None:
    rows = [
        ("e1", "identify", "pos", "pos-sh", at(1), at(1), '{"marketing": true, "sms": true}'),
        ("e2", "identify", "web", "shop", at(3), at(3), '{"marketing": false}'),
        # Arrived last but happened first: it does not override the withdrawal.
        ("e3", "identify", "member_app", "app", at(2), at(9), '{"marketing": true}'),
    ]
    changes = consent_changes(rows)
    assert [(c["purpose"], c["granted"], c["evidence"]["event_id"]) for c in changes] == [
        ("marketing", True, "e1"),
        ("sms", True, "e1"),
        ("marketing", False, "e2"),
        ("marketing", True, "e3"),
    ]
    assert changes[2]["source"] == "shop" and changes[2]["channel"] == "web"
    assert current_consent(changes) == {"marketing": False, "sms": True}


async def _lines(items: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for item in items:
        yield item


async def _collect(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


def test_the_zip_holds_one_json_lines_file_per_kind_and_the_same_lines_as_jsonl() -> None:
    items = [
        {"kind": "profile", "profile_id": "7"},
        {"kind": "consent", "purpose": "marketing"},
        *({"kind": "event", "event_id": f"e{n}"} for n in range(500)),
    ]
    archive = zipfile.ZipFile(io.BytesIO(asyncio.run(_collect(zipped(_lines(items))))))
    assert archive.namelist() == ["profile.jsonl", "consent.jsonl", "event.jsonl"]
    events = [orjson.loads(x) for x in archive.read("event.jsonl").splitlines()]
    assert events == items[2:]
    plain = asyncio.run(_collect(jsonl(_lines(items))))
    assert [orjson.loads(x) for x in plain.splitlines()] == items
