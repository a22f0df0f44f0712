"""Rows of file exports become Segment messages with ids derived from the row."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest import intake
from ingest.imports import row_id, row_messages
from ingest.limits import Limits
from ingest.mapping import RowRules
from ingest.rowfile import RowFile, file_format
from ingest.sources import Source, hash_key

NOW = datetime(2026, 11, 23, tzinfo=UTC)
ERP = Source(name="erp", channel="erp", key_sha256=hash_key("k"))


def take(rows: list[object], rules: RowRules | None) -> intake.Intake:
    stamp = intake.Stamp(ERP, NOW, Limits(), "CN")
    return intake.rows(rows, stamp, row_messages("erp", rules), 1)


def test_a_flat_row_becomes_a_message_with_an_id_from_its_key_columns() -> None:
    rules = RowRules(
        event="Invoice Paid", user_id="cust", timestamp="at", message_id=["no"], traits=["tier"]
    )
    row = {"cust": "C-1", "at": "2026-03-01T10:00:00Z", "no": "I-9", "amount": "10", "tier": "A"}
    (event,) = take([row, {**row, "amount": "11"}], rules).events[:1]
    assert event.event_id == row_id("erp", ["I-9"])
    assert (event.name, event.properties, event.traits) == (
        "Invoice Paid",
        {"no": "I-9", "amount": "10"},
        {"tier": "A"},
    )
    assert event.timestamp == datetime(2026, 3, 1, 10, tzinfo=UTC)
    # The same key columns are the same event, whatever else changed in the export.
    assert take([{**row, "amount": "11"}], rules).events[0].event_id == event.event_id


def test_an_identify_row_puts_every_other_column_in_traits() -> None:
    rules = RowRules(type="identify", user_id="cust")
    (event,) = take([{"cust": "C-1", "city": "Shanghai", "empty": ""}], rules).events
    assert (event.type.value, event.traits) == ("identify", {"city": "Shanghai"})


def test_json_lines_without_row_rules_are_messages_and_a_broken_line_is_rejected(
    tmp_path: Path,
) -> None:
    path = tmp_path / "calls.jsonl"
    path.write_bytes(
        b'{"type": "track", "userId": "u", "event": "A"}\n\n{oops\n'
        b'{"type": "track", "userId": "u", "event": "A", "messageId": "m"}\n'
    )
    (chunk,) = RowFile(path, "jsonl").chunks(10)
    result = take(chunk, None)
    assert [e.event_id for e in result.events] == [
        row_id("erp", {"type": "track", "userId": "u", "event": "A"}),
        "m",
    ]
    ((rejected, payload),) = result.rejections
    assert (rejected.field, rejected.index, payload) == ("row[2]", 2, "{oops")


def test_parquet_rows_are_read_in_chunks_with_plain_values(tmp_path: Path) -> None:
    path = tmp_path / "orders.parquet"
    table = pa.table(
        {
            "cust": ["C-1", "C-2", "C-3"],
            "amount": pa.array([Decimal("1.50"), Decimal("2.00"), None], pa.decimal128(5, 2)),
            "at": [datetime(2026, 3, 1, 10, tzinfo=UTC)] * 3,
        }
    )
    pq.write_table(table, path)
    rows = RowFile(path, "parquet")
    chunks = list(rows.chunks(2))
    assert [len(c) for c in chunks] == [2, 1] and rows.done == rows.total == 3
    assert chunks[0][0] == {"cust": "C-1", "amount": 1.5, "at": "2026-03-01T10:00:00+00:00"}


def test_the_format_comes_from_the_suffix_or_is_asked_for() -> None:
    assert file_format(Path("a.CSV")) == "csv" and file_format(Path("a.ndjson")) == "jsonl"
    assert file_format(Path("upload"), "parquet") == "parquet"
    with pytest.raises(ValueError, match="cannot tell its format"):
        file_format(Path("a.xlsx"))


def test_a_row_rules_track_needs_an_event_name() -> None:
    with pytest.raises(ValueError, match="event"):
        RowRules(user_id="c")
