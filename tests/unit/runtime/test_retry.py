"""Which failures the processors wait out, and which crash them."""

from __future__ import annotations

import asyncio

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from runtime.exceptions import StoreUnavailable
from runtime.retry import transient, until_done
from sinks.clickhouse import unavailable

MISCONF = "MISCONF Errors writing to the AOF file: No space left on device"


def test_a_full_or_read_only_redis_is_waited_out_other_answers_crash() -> None:
    assert transient(ResponseError(MISCONF))
    assert transient(
        ResponseError(f"Command # 1 (EVALSHA x 0) of pipeline caused error: {MISCONF}")
    )
    quoted = f"Command # 1 (EVALSHA y 0) of pipeline caused error: ('{MISCONF} script: y',)"
    assert transient(ResponseError(quoted))
    assert transient(ResponseError("READONLY You can't write against a read only replica."))
    assert transient(RedisConnectionError("Connection refused"))
    assert transient(StoreUnavailable("disk full"))
    assert not transient(ResponseError("ERR wrong number of arguments for 'hset' command"))
    assert not transient(ResponseError("WRONGTYPE Operation against a key holding the wrong kind"))
    assert not transient(ValueError("a bug"))


def test_clickhouse_that_cannot_take_writes_for_now_is_told_from_a_bad_write() -> None:
    full = "Code: 243. DB::Exception: Cannot reserve 1.94 MiB, not enough space. (NOT_ENOUGH_SPACE)"
    assert unavailable(DatabaseError(full))
    assert unavailable(DatabaseError("Code: 1001. std::exception: No space left on device"))
    assert unavailable(OperationalError("Error HTTPConnectionPool: connection refused"))
    assert not unavailable(
        DatabaseError("Code: 16. DB::Exception: No such column nope (NO_SUCH_COLUMN_IN_TABLE)")
    )
    assert not unavailable(DatabaseError("Code: 62. DB::Exception: Syntax error (SYNTAX_ERROR)"))


def test_until_done_retries_the_transient_and_raises_the_rest() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ResponseError(MISCONF)
        return "done"

    assert asyncio.run(until_done("test", flaky, max_wait_s=0.01)) == "done"
    assert len(calls) == 3

    async def broken() -> None:
        raise ResponseError("ERR unknown command 'NOPE'")

    with pytest.raises(ResponseError):
        asyncio.run(until_done("test", broken))
