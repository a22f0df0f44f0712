"""A batch that fails for good ends the process before faust can ack it."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from runtime import agents
from runtime.agents import EXIT_FAILED, fatal


def test_a_failed_batch_ends_the_process_with_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    codes: list[int] = []
    monkeypatch.setattr(agents.os, "_exit", codes.append)
    with capture_logs() as logs, fatal("stream"):
        raise ValueError("a bug")
    assert codes == [EXIT_FAILED] == [1]
    assert [(e["event"], e["agent"]) for e in logs] == [("processor.crashed", "stream")]


def test_a_batch_that_succeeds_or_is_cancelled_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    codes: list[int] = []
    monkeypatch.setattr(agents.os, "_exit", codes.append)
    with fatal("stream"):
        pass
    with pytest.raises(KeyboardInterrupt), fatal("stream"):  # not an Exception: a stop
        raise KeyboardInterrupt
    assert codes == []
