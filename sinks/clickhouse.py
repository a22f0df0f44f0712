"""ClickHouse connection: embedded chDB by default, a server by URL; one code path."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import clickhouse_connect

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
