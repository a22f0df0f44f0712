"""Rows of published snapshots: the newest per profile; what does not decode is set apart."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from sinks.agents import published_snapshots

#: 2026-12-01T10:00:00.123456Z in nanoseconds.
T = int(datetime(2026, 12, 1, 10, tzinfo=UTC).timestamp()) * 10**9 + 123_456_000


def _event(*shots: dict[str, Any]) -> Any:
    value = json.dumps({"snapshots": list(shots)}, ensure_ascii=False).encode()
    return SimpleNamespace(message=SimpleNamespace(value=value))


def _shot(pid: str, version: int, orders: int) -> dict[str, Any]:
    profile = {"profile_id": pid, "order_count": orders, "traits": {"city": "上海"}}
    at = "2026-12-01T10:00:00.000000Z"
    return {"profile_id": pid, "version": version, "at": at, "profile": profile}


def test_the_newest_snapshot_of_each_profile_is_kept_whatever_the_order() -> None:
    newer, older = T + 20_000, T + 10_000  # nanoseconds of the Redis clock
    events = [
        _event(_shot("1", newer, 2), _shot("2", T, 1)),
        _event(_shot("1", older, 1)),  # a record published before, read after
    ]
    rows, bad = published_snapshots(events)
    assert bad == []
    assert [(r[0], r[2], json.loads(r[1])["order_count"]) for r in rows] == [
        ("1", newer, 2),
        ("2", T, 1),
    ]
    assert json.loads(rows[0][1])["traits"] == {"city": "上海"}
    assert rows[0][3] == datetime(2026, 12, 1, 10, 0, 0, 123_476, tzinfo=UTC)  # the version's


def test_records_that_do_not_decode_are_set_apart() -> None:
    def raw(value: bytes) -> Any:
        return SimpleNamespace(message=SimpleNamespace(value=value))

    broken = [
        raw(b"{"),
        raw(b'{"profile_id": "1"}'),
        raw(b'{"snapshots": [{"profile_id": 1, "version": 1, "profile": {}}]}'),
        raw(b"[]"),
        _event(_shot("4", 1, 0), {"profile_id": "5"}),  # one bad snapshot: the whole record
    ]
    rows, bad = published_snapshots([*broken, _event(_shot("3", 7, 0))])
    assert [r[0] for r in rows] == ["3"]
    assert bad == broken
