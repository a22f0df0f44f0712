"""Read the rows of a file export (CSV, JSON lines, Parquet) in chunks, never all at once."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

import orjson

FORMATS = ("csv", "jsonl", "parquet")
_SUFFIXES = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


class Undecodable(str):
    """A JSON line that did not parse: kept as its text, so its rejection can hold it."""


def file_format(path: Path, given: str | None = None) -> str:
    """The format of ``path``: as given, else by its suffix; ``ValueError`` if unknown."""
    if given:
        if given not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}: {given!r}")
        return given
    suffix = path.suffix.lower()
    if suffix == ".gz" or suffix not in _SUFFIXES:
        raise ValueError(f"{path.name}: cannot tell its format; say csv, jsonl or parquet")
    return _SUFFIXES[suffix]


def fingerprint(path: Path) -> str:
    """SHA-256 of the file's bytes: the same export imported again is recognised."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """A Parquet value as JSON has it (times as ISO-8601, decimals as numbers)."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


class RowFile:
    """The rows of one file, in chunks, with how far the reading got (for a progress bar)."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path, self.format = path, fmt
        self._raw: BinaryIO | None = None
        self._rows_read = 0

    @property
    def total(self) -> int:
        """What ``done`` counts to: bytes (CSV, JSON lines) or rows (Parquet)."""
        if self.format == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(self.path).metadata.num_rows)
        return self.path.stat().st_size

    @property
    def done(self) -> int:
        """How far the reading got, in the unit of ``total``."""
        if self.format == "parquet":
            return self._rows_read
        return self._raw.tell() if self._raw is not None and not self._raw.closed else 0

    def chunks(self, size: int) -> Iterator[list[Any]]:
        """Lists of at most ``size`` rows, in file order."""
        rows = self._parquet(size) if self.format == "parquet" else self._lines()
        chunk: list[Any] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def _lines(self) -> Iterator[Any]:
        with self.path.open("rb") as raw:
            self._raw = raw
            if self.format == "csv":
                # utf-8-sig: spreadsheet exports start with a byte-order mark.
                text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
                yield from csv.DictReader(text)
                return
            for line in raw:
                if line.strip():
                    yield _json_row(line)

    def _parquet(self, size: int) -> Iterator[Any]:
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=size):
            for row in batch.to_pylist():
                self._rows_read += 1
                yield {k: _plain(v) for k, v in row.items()}


def _json_row(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return Undecodable(line.decode("utf-8", "replace").rstrip("\r\n"))
