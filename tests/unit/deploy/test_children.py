"""The supervisor of child processes (API and stream processes of `cdp run`)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from deploy.serve import KILLED_STARTING_RESTARTS, ChildFailed, Children, die_with


def _fails_at_start(slot: int, parent: int, ready: Any) -> None:
    raise SystemExit(2)


def _ready_then_gone(slot: int, parent: int, ready: Any) -> None:
    die_with(parent, "cdp-test")
    ready.set()


def _ready_and_named(marker: str, slot: int, parent: int, ready: Any) -> None:
    die_with(parent, "cdp-test")
    Path(marker).write_text(f"{slot} {Path('/proc/self/comm').read_text().strip()}")
    ready.set()
    signal.pause()  # until the supervisor's SIGTERM


def _killed_once_while_starting(marker: str, slot: int, parent: int, ready: Any) -> None:
    die_with(parent, "cdp-test")
    if not Path(marker).exists():
        Path(marker).write_text("killed")
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
    ready.set()
    signal.pause()  # until the supervisor's SIGTERM


def _always_killed_while_starting(slot: int, parent: int, ready: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _wait_dead(children: Children) -> None:
    deadline = time.monotonic() + 30
    while any(p.is_alive() for p, _ in children.processes):
        assert time.monotonic() < deadline, "child did not exit"
        time.sleep(0.05)


def test_a_child_that_dies_before_it_is_ready_stops_the_supervisor() -> None:
    children = Children(_fails_at_start, (), 1).start()
    try:
        _wait_dead(children)
        with pytest.raises(ChildFailed, match="exited with 2 before it was ready"):
            children.check()
    finally:
        children.stop()


def test_a_child_that_dies_after_it_was_ready_is_replaced() -> None:
    children = Children(_ready_then_gone, (), 2).start()
    try:
        first = children.pids
        _wait_dead(children)
        children.check()
        assert len(children.pids) == 2
        assert set(children.pids).isdisjoint(first)
    finally:
        children.stop()


def test_children_are_named_and_stopped(tmp_path: Path) -> None:
    marker = tmp_path / "comm"
    children = Children(_ready_and_named, (str(marker),), 1).start()
    process, ready = children.processes[0]
    assert ready.wait(30)
    assert marker.read_text() == "0 cdp-test"
    children.stop()  # SIGTERM: a sleeping child ends at once
    assert not process.is_alive()
    assert process.exitcode == -15


def test_each_child_is_logged_once_when_it_is_first_seen_ready(tmp_path: Path) -> None:
    children = Children(_ready_and_named, (str(tmp_path / "comm"),), 2).start()
    try:
        assert all(ready.wait(30) for _, ready in children.processes)
        with capture_logs() as logs:
            children.check()
            children.check()
        ready = [e for e in logs if e["event"] == "child.process_ready"]
        assert sorted((e["slot"], e["pid"]) for e in ready) == list(enumerate(children.pids))
    finally:
        children.stop()


def test_a_child_killed_by_a_signal_while_starting_is_started_again(tmp_path: Path) -> None:
    children = Children(_killed_once_while_starting, (str(tmp_path / "killed"),), 1).start()
    try:
        first = children.pids
        _wait_dead(children)
        with capture_logs() as logs:
            children.check()  # started again, not a start fault
        assert [(e["event"], e["signal"]) for e in logs] == [
            ("child.process_killed_starting", "SIGKILL")
        ]
        assert children.pids != first
        assert children.processes[0][1].wait(30)
        assert children.processes[0][0].is_alive()
    finally:
        children.stop()


def test_a_child_killed_every_time_it_starts_stops_the_supervisor() -> None:
    children = Children(_always_killed_while_starting, (), 1).start()
    try:
        for _ in range(KILLED_STARTING_RESTARTS):
            _wait_dead(children)
            children.check()
        _wait_dead(children)
        with pytest.raises(
            ChildFailed,
            match=f"killed by SIGKILL before it was ready, {KILLED_STARTING_RESTARTS + 1} times",
        ):
            children.check()
    finally:
        children.stop()
