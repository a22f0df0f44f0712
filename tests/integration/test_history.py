"""History writes on embedded ClickHouse: values round-trip, and a retried batch adds nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from contracts.events import Channel, Event, EventType, Identifier, ResolvedEvent
from contracts.identity import Decision, LedgerEntry, Rule
from sinks.clickhouse import connect
from sinks.history import EVENT_COLUMNS, HistoryWriter, event_batches, ledger_batch, migrate
from tests.support.services import Services

AT = datetime(2026, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)


def resolved(n: int, **event: Any) -> ResolvedEvent:
    fields: dict[str, Any] = {
        "event_id": f"ev-{n}",
        "type": EventType.ORDER_COMPLETED,
        "channel": Channel.WEB,
        "source": "shop",
        "identifiers": [Identifier(type="email", value=f"u{n}@example.com")],
        "properties": {"order_id": f"O-{n}", "total": 199.9, "store": "上海一店"},
        "traits": {"name": "王小明", "age": 31},
        "consent": {"sms": True},
        "original_timestamp": AT,
        "received_at": AT,
        "timestamp": AT,
    } | event
    return ResolvedEvent(
        profile_id=str(100 + n), event=Event(**fields), raw_partition=0, raw_offset=n
    )


@pytest.fixture
def writer(services: Services) -> tuple[Any, str, HistoryWriter]:
    db = f"hist{uuid.uuid4().hex[:8]}"
    client = connect(None, services.chdb_path)
    migrate(client, db)
    return client, db, HistoryWriter(client, db)


def test_event_rows_keep_their_values(writer: tuple[Any, str, HistoryWriter]) -> None:
    client, db, w = writer
    for batch in event_batches("t", [(resolved(1), 3, 42)], now=AT):
        w.write(batch)
    row = client.query(
        f"SELECT event_id, profile_id, type, channel, identifiers, timestamp, order_id, amount, "
        f"JSONExtractString(properties, 'store'), JSONExtractString(traits, 'name'), "
        f"JSONExtractBool(consent, 'sms'), src_partition, src_offset FROM {db}.events"
    ).result_rows
    assert row == [
        (
            "ev-1",
            "101",
            "order_completed",
            "web",
            ["email:u1@example.com"],
            datetime(2026, 3, 1, 8, 30, 15, 123000),  # DateTime64(3): milliseconds kept
            "O-1",
            Decimal("199.90"),
            "上海一店",
            "王小明",
            True,
            3,
            42,
        )
    ]


def test_a_retried_batch_adds_no_rows(writer: tuple[Any, str, HistoryWriter]) -> None:
    client, db, w = writer
    items = [(resolved(n), n % 2, n) for n in range(50)]
    for retry in range(3):  # the first write, then two retries rebuilt later (new ingested_at)
        for batch in event_batches("t", items, now=AT + timedelta(seconds=retry)):
            w.write(batch)
    merge = LedgerEntry(
        decision=Decision.MERGED,
        rule=Rule.SHARED_IDENTIFIER,
        profile_id="101",
        other_profile_id="102",
        identifier="email:u1@example.com",
        event_id="ev-2",
        at=AT,
    )
    for _ in range(2):
        for batch in ledger_batch([merge], "ledger:0-0:1"):
            w.write(batch)
    # Without FINAL: the rows physically stored, not a deduplicated view of them. A merge of
    # parts would also collapse duplicates, but it keeps the newest ingested_at: only the
    # first write's rows mean the retries were never stored.
    assert w.count("events", final=False) == 50
    stored = client.query(f"SELECT DISTINCT ingested_at FROM {db}.events").result_rows
    assert stored == [(datetime(2026, 3, 1, 8, 30, 15, 123000),)]
    assert w.count("identity_ledger", final=False) == 1
    assert w.count("profile_aliases", final=False) == 1
    # A new range of the same partition is stored.
    for batch in event_batches("t", [(resolved(50), 0, 50)], now=AT):
        w.write(batch)
    assert w.count("events", final=False) == 51
    assert client.command(f"SELECT max(src_offset) FROM {db}.events") == 50


def _month_partitioned(client: Any, db: str) -> list[tuple[Any, ...]]:
    """History of the older schema (events partitioned by month) with 30 events; their rows."""
    from sinks.history import schema

    for statement in schema(db):
        client.command(
            statement.replace(
                "ORDER BY (profile_id, timestamp, event_id)",
                "PARTITION BY toYYYYMM(timestamp) ORDER BY (profile_id, timestamp, event_id)",
            )
        )
    assert client.command(
        f"SELECT partition_key FROM system.tables WHERE database = '{db}' AND name = 'events'"
    )
    items = [(resolved(n, timestamp=AT - timedelta(days=40 * n)), n % 3, n) for n in range(30)]
    for batch in event_batches("t", items, now=AT):
        HistoryWriter(client, db).write(batch)
    rows = client.query(
        f"SELECT {', '.join(EVENT_COLUMNS)} FROM {db}.events ORDER BY event_id"
    ).result_rows
    assert len(rows) == 30
    return rows


def test_events_of_the_month_partitioned_schema_are_moved_into_one_table(
    services: Services,
) -> None:
    from sinks.history import unpartition_events

    db = f"hist{uuid.uuid4().hex[:8]}"
    client = connect(None, services.chdb_path)
    before = _month_partitioned(client, db)

    migrate(client, db)

    key = client.command(
        f"SELECT partition_key FROM system.tables WHERE database = '{db}' AND name = 'events'"
    )
    assert key == ""
    after = client.query(
        f"SELECT {', '.join(EVENT_COLUMNS)} FROM {db}.events ORDER BY event_id"
    ).result_rows
    assert after == before
    # The numeric id twin and the projection exist on the new table.
    assert client.command(f"SELECT countIf(pid = 101) FROM {db}.events") == 1
    create = client.command(f"SHOW CREATE TABLE {db}.events")
    assert "PROJECTION by_type" in create
    tables = client.query(f"SELECT name FROM system.tables WHERE database = '{db}'").result_rows
    assert ("events_by_month",) not in tables
    assert unpartition_events(client, db) == 0  # nothing left to move


def test_a_move_cut_short_is_finished_by_the_next_start(services: Services) -> None:
    from sinks.history import schema

    db = f"hist{uuid.uuid4().hex[:8]}"
    client = connect(None, services.chdb_path)
    before = _month_partitioned(client, db)
    # Killed mid-move: the old table set aside, the new one holding part of the copy.
    client.command(f"RENAME TABLE {db}.events TO {db}.events_by_month")
    for statement in schema(db):
        client.command(statement)
    client.command(
        f"INSERT INTO {db}.events ({', '.join(EVENT_COLUMNS)}) "
        f"SELECT {', '.join(EVENT_COLUMNS)} FROM {db}.events_by_month LIMIT 7"
    )

    migrate(client, db)

    after = client.query(
        f"SELECT {', '.join(EVENT_COLUMNS)} FROM {db}.events ORDER BY event_id"
    ).result_rows
    assert after == before
