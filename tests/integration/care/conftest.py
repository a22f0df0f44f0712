"""The webhook receiver of the care tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.webhook import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(204)
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()
