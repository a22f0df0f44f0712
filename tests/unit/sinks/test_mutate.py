"""How long ``mutate`` waits for a pending delete: bounded without progress, not in all.

A scripted ``system.mutations`` and a clock that moves only when the code sleeps: pure logic
(the full-disk behaviour on real chDB is in tests/integration/faults).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from runtime.exceptions import StoreUnavailable
from sinks import clickhouse


class Looks:
    """Answers each look at ``system.mutations`` with the next (pending, reason, parts)."""

    def __init__(self, answers: list[tuple[int, str, int]]) -> None:
        self.answers = answers
        self.looks = 0

    def query(self, sql: str, parameters: dict[str, Any]) -> Any:
        answer = self.answers[min(self.looks, len(self.answers) - 1)]
        self.looks += 1
        return type("Result", (), {"result_rows": [answer]})()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [0.0]
    ticking = SimpleNamespace(
        monotonic=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s)
    )
    monkeypatch.setattr(clickhouse, "time", ticking)  # the module's clock only
    return now


def test_a_delete_that_keeps_rewriting_parts_is_waited_for_past_the_timeout(
    clock: list[float],
) -> None:
    # 400 parts, one fewer every look: ~100 s of looks at most 0.25 s apart, timeout 20 s.
    looks = Looks([(1, "", 400 - n) for n in range(400)] + [(0, "", 0)])
    clickhouse._applied(looks, "d", "events", timeout_s=20)
    assert looks.looks == 401
    assert clock[0] > 60


def test_a_delete_that_stops_progressing_fails_for_a_retry_after_the_timeout(
    clock: list[float],
) -> None:
    looks = Looks([(1, "", 9), (1, "", 8), (1, "", 7)])  # then stuck at 7 parts
    with pytest.raises(StoreUnavailable, match="after 20 s without progress"):
        clickhouse._applied(looks, "d", "events", timeout_s=20)
    # The deadline counts from the last progress, and not much longer.
    progress_at = sum(min(0.005 * 2**n, clickhouse.MAX_LOOK_GAP_S) for n in range(2))
    assert 20 + progress_at <= clock[0] <= 20 + progress_at + clickhouse.MAX_LOOK_GAP_S


def test_a_delete_clickhouse_fails_for_good_raises_at_once(clock: list[float]) -> None:
    looks = Looks([(1, "Code: 47. DB::Exception: Missing columns: 'nope'", 3)])
    with pytest.raises(RuntimeError, match="cannot apply a delete"):
        clickhouse._applied(looks, "d", "events", timeout_s=20)
    assert looks.looks == 1
