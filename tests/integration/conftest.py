"""Fixtures of the integration tests."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.support.worker import WorkerProcess


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    """Worker processes a test starts; any still running at its end is killed."""
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        if w.proc is not None and w.proc.poll() is None:
            w.stop(signal.SIGKILL)
