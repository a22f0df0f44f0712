"""The ops page's shaping of what Kafka answered: pure functions, no service."""

from __future__ import annotations

import orjson

from console.ops import dead_letters, freshness, lag_by_group, sizes
from runtime.readback import Tail


def letter(ts: int, reason: str, field: str | None) -> Tail:
    body = {"reason": reason, "field": field, "message": f"{field}: bad", "received_at": ts}
    return Tail(0, ts, ts, b"demo-pos", orjson.dumps(body))


def test_dead_letters_are_counted_by_reason_and_listed_newest_first() -> None:
    tails = [letter(3000, "invalid_event", "events[0].type"), letter(2000, "malformed_json", None)]
    tails.append(letter(1000, "invalid_event", "batch[2].userId"))
    shown = dead_letters(tails, now_ms=5000)
    assert shown["by_reason"] == {"invalid_event": 2, "malformed_json": 1}
    assert [x["field"] for x in shown["latest"]] == ["events[0].type", None, "batch[2].userId"]
    assert shown["latest"][0]["message"] == "events[0].type: bad"
    assert shown["newest_age_s"] == 2.0


def test_no_dead_letters_and_a_stage_that_never_wrote() -> None:
    assert dead_letters([], now_ms=1) == {"by_reason": {}, "latest": [], "newest_age_s": None}
    assert freshness([], now_ms=1) is None
    assert freshness([letter(1500, "x", None)], now_ms=4000) == 2.5


def test_lag_is_summed_per_group_on_this_deployments_topics_only() -> None:
    rows = [
        {"group": "g", "topic": "p.raw", "partition": 0, "committed": 5, "end": 9, "lag": 4},
        {"group": "g", "topic": "p.raw", "partition": 1, "committed": 7, "end": 8, "lag": 1},
        {"group": "h", "topic": "p.changes", "partition": 0, "committed": 3, "end": 3, "lag": 0},
        {"group": "other", "topic": "q.raw", "partition": 0, "committed": 0, "end": 9, "lag": 9},
    ]
    assert lag_by_group(rows, {"p.raw", "p.changes"}) == [
        {"group": "g", "lag": 5, "consumed": 12, "topics": ["p.raw"]},
        {"group": "h", "lag": 0, "consumed": 3, "topics": ["p.changes"]},
    ]


def test_sizes_follow_enters_and_exits_of_one_segment() -> None:
    def change(at: str, what: str, segment: str = "vip") -> dict[str, str]:
        return {"segment_id": segment, "change": what, "at": at, "profile_id": "1"}

    changes = [
        change("2026-01-02T00:00:00Z", "exit"),
        change("2026-01-01T00:00:00Z", "enter"),
        change("2026-01-01T00:00:00Z", "enter"),
        change("2026-01-01T00:00:00Z", "enter", segment="other"),
        change("2026-01-03T00:00:00Z", "enter"),
    ]
    assert sizes(changes, "vip") == [
        {"at": "2026-01-01T00:00:00Z", "size": 2},
        {"at": "2026-01-02T00:00:00Z", "size": 1},
        {"at": "2026-01-03T00:00:00Z", "size": 2},
    ]
    assert sizes(changes, "none") == []
