"""ClickHouse connection: embedded chDB by default, a server by URL; one code path."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

#: ClickHouse error codes of a store that cannot take writes for now, whatever is written:
#: its disk (NOT_ENOUGH_SPACE, CANNOT_WRITE_TO_FILE_DESCRIPTOR, CANNOT_OPEN_FILE,
#: CANNOT_FSYNC, CANNOT_CREATE_DIRECTORY), a read-only table or replica, too many parts
#: waiting for merges, the network, the server's own limits (TIMEOUT_EXCEEDED, SYSTEM_ERROR).
UNAVAILABLE_CODES = frozenset({75, 76, 159, 209, 210, 242, 243, 252, 425})
#: What an operating-system error says when the disk is the cause (any code).
DISK_ERRORS = ("No space left on device", "Read-only file system", "Disk quota exceeded")

_EMBEDDED: dict[Path, Any] = {}
_LOCK = threading.Lock()


def connect(url: str | None, path: Path) -> Any:
    """Return a clickhouse-connect client for a server URL, else for chDB at ``path``.

    chDB allows one process per data directory, so in the embedded default the history
    sink and segment queries must live in the process that calls this. Within a process
    every caller shares one embedded client per directory (the history writer, health
    checks, segment queries): its backend serialises calls, so they cannot interleave.
    Shared clients are never closed by their users; the process's exit closes them.
    """
    if url:
        return clickhouse_connect.get_client(dsn=url)
    path = path.resolve()
    with _LOCK:
        client = _EMBEDDED.get(path)
        if client is None:
            path.mkdir(parents=True, exist_ok=True)
            client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
            _EMBEDDED[path] = client
        return client


def is_embedded(url: str | None) -> bool:
    """True when ``connect`` would return a shared embedded client (no server URL)."""
    return not url


def unavailable(exc: ClickHouseError) -> bool:
    """Whether ``exc`` says ClickHouse cannot take writes for now (so retry), not that the
    write is wrong (a bug: fail loudly)."""
    if isinstance(exc, OperationalError):  # the server did not answer
        return True
    if not isinstance(exc, DatabaseError):
        return False
    text = str(exc)
    if any(marker in text for marker in DISK_ERRORS):
        return True
    return any(f"Code: {code}." in text for code in UNAVAILABLE_CODES)
