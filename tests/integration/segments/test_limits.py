"""What a runaway segment query turns into: a clear error, not a plain-text 500."""

from __future__ import annotations

from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from segments.service import HistoryError, QueryTimeout, _failed
from sinks.clickhouse import connect
from tests.support.services import Services


def error_of(services: Services, sql: str, **settings: Any) -> DatabaseError:
    client = connect(None, services.chdb_path)
    with pytest.raises(DatabaseError) as info:
        client.query(sql, settings=settings)
    return info.value


def test_engine_errors_become_segment_errors(services: Services) -> None:
    # A real timeout of the engine the segments run on (ten billion rows in one second).
    slow = "SELECT count() FROM numbers(10000000000) WHERE sipHash64(number) % 7 = 1"
    timeout = _failed(error_of(services, slow, max_execution_time=1))
    assert isinstance(timeout, QueryTimeout) and "QUERY_TIMEOUT_S" in str(timeout)
    broken = _failed(error_of(services, "SELECT no_such_column FROM system.one"))
    assert isinstance(broken, HistoryError) and "no_such_column" in str(broken)
