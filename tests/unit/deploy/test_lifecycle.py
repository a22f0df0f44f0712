"""The bounded stop of a process: marked by a signal, forced by a second one or the bound."""

from __future__ import annotations

import signal
import time

import pytest
from structlog.testing import capture_logs

from deploy import lifecycle
from deploy.lifecycle import EXIT_START, Stop, warn_if_scripts_can_be_cut


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The codes ``os._exit`` was called with; the test process goes on."""
    codes: list[int] = []
    monkeypatch.setattr(lifecycle.os, "_exit", codes.append)
    return codes


def test_the_first_signal_marks_the_stop_and_tells_the_children_once() -> None:
    stop, told = Stop(), []
    stop.on_begin(lambda: told.append("terminate"))
    assert not stop.stopping
    stop.begin(signal.SIGTERM)
    stop.begin()  # the end of the work after the signal: nothing more
    assert stop.stopping and told == ["terminate"]
    assert stop.exit_code(0) == 0


def test_a_second_signal_kills_the_children_and_exits_at_once(exits: list[int]) -> None:
    stop, killed = Stop(), []
    stop.on_force(lambda: killed.append("kill"))
    stop.begin(signal.SIGTERM)
    stop.begin(signal.SIGINT)
    assert killed == ["kill"] and exits == [128 + signal.SIGTERM]


def test_a_signal_during_a_stop_for_a_failure_exits_with_the_failures_code(
    exits: list[int],
) -> None:
    stop = Stop()
    stop.fail(EXIT_START)
    stop.begin()
    stop.begin(signal.SIGTERM)
    assert exits == [EXIT_START]


def test_the_bound_ends_a_stop_that_does_not_finish(exits: list[int]) -> None:
    stop = Stop().install(0.2)
    stop.begin(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while not exits:
        assert time.monotonic() < deadline, "the watchdog never fired"
        time.sleep(0.01)
    assert exits == [128 + signal.SIGTERM]


def test_a_stop_that_had_to_kill_a_child_is_not_clean() -> None:
    stop = Stop()
    stop.begin(signal.SIGINT)
    stop.incomplete = True
    assert stop.exit_code(0) == 130
    assert stop.exit_code(1) == 1  # a failure keeps its own code


class _Info:
    """A client whose INFO server section is ``server`` (the only call the check makes)."""

    def __init__(self, server: dict[str, str]) -> None:
        self.server = server

    def info(self, section: str) -> dict[str, str]:
        assert section == "server"
        return self.server


@pytest.mark.parametrize(
    ("server", "warned"),
    [
        ({"redis_version": "7.0.15"}, True),
        ({"redis_version": "6.2.14"}, True),
        ({"redis_version": "7.2.4"}, False),
        ({"redis_version": "8.0.2"}, False),
        ({"redis_version": "7.2.4", "valkey_version": "8.0.1"}, False),
    ],
)
def test_a_redis_that_can_cut_a_script_in_half_is_named_at_start(
    server: dict[str, str], warned: bool
) -> None:
    with capture_logs() as logs:
        warn_if_scripts_can_be_cut(_Info(server), "127.0.0.1:6379")  # type: ignore[arg-type]
    found = [e for e in logs if e["event"] == "redis.scripts_can_be_cut"]
    assert bool(found) is warned
    if warned:
        assert found[0]["version"] == server["redis_version"]
        assert found[0]["at"] == "127.0.0.1:6379"
