"""How long the history keeps what happened: a ClickHouse TTL on the per-event tables."""

from __future__ import annotations

import re
from typing import Any

#: The tables that record each event and what it changed, and the time a row expires after:
#: events by when they happened, change records by when they were made. The merge ledger and
#: the alias table are kept while the profiles they join exist (every query resolves merged
#: ids through them); snapshots are each profile's current state, not history.
EXPIRING = {"events": "timestamp", "profile_changes": "at", "tag_changes": "at"}

_TTL = re.compile(r"\sTTL\s(?P<ttl>.+?)(?:\sSETTINGS\s|$)")


def ttl_of(client: Any, db: str, table: str) -> str | None:
    """The table's TTL as ClickHouse states it (``timestamp + toIntervalDay(30)``), or None."""
    rows = client.query(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} "
        "AND name = {table:String}",
        parameters={"db": db, "table": table},
    ).result_rows
    found = _TTL.search(str(rows[0][0])) if rows else None
    return found.group("ttl").strip() if found else None


def apply(client: Any, db: str, days: int) -> dict[str, str]:
    """Make each expiring table drop rows ``days`` after their time (0: keep them forever).

    Idempotent: a table whose TTL is already that is left alone. A new TTL is applied to the
    rows already stored as well (ClickHouse rewrites the table's parts once); from then on,
    rows go at the merges that apply the TTL. Returns table -> 'set', 'removed' or 'kept'.
    """
    outcome = {}
    for table, column in EXPIRING.items():
        wanted = f"{column} + toIntervalDay({days})" if days else None
        if ttl_of(client, db, table) == wanted:
            outcome[table] = "kept"
        elif wanted is None:
            client.command(f"ALTER TABLE {db}.{table} REMOVE TTL")
            outcome[table] = "removed"
        else:
            client.command(f"ALTER TABLE {db}.{table} MODIFY TTL {column} + INTERVAL {days} DAY")
            outcome[table] = "set"
    return outcome
