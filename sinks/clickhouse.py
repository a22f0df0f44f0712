"""ClickHouse connection: embedded chDB by default, a server by URL; one code path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import clickhouse_connect


def connect(url: str | None, path: Path) -> Any:
    """Return a clickhouse-connect client for a server URL, else for chDB at ``path``.

    chDB allows one process per data directory, so in the embedded default the history
    sink and segment queries must live in the process that calls this.
    """
    if url:
        return clickhouse_connect.get_client(dsn=url)
    path.mkdir(parents=True, exist_ok=True)
    return clickhouse_connect.get_client(dsn=f"chdb://{path.resolve()}")
