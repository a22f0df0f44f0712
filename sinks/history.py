"""History in ClickHouse: schema, and batched idempotent inserts from the topics."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
from clickhouse_connect.driver.exceptions import ClickHouseError

from contracts.events import Channel, EventType, ResolvedEvent
from contracts.identity import Decision, LedgerEntry
from contracts.privacy import AuditRecord
from contracts.profiles import ProfileChange
from profiles.store import epoch_ms
from runtime.exceptions import StoreUnavailable
from sinks.clickhouse import mutate, unavailable

if TYPE_CHECKING:
    from profiles.store import Stored

#: Same-data retries within this many recent inserts per table are dropped by ClickHouse.
DEDUP_WINDOW = 10_000


def _num(field: str, ch_type: str = "Int64") -> str:
    return f"JSONExtract(snapshot, '{field}', '{ch_type}')"


def _time_of(field: str) -> str:
    return f"parseDateTime64BestEffortOrNull(JSONExtractString(snapshot, '{field}'), 3, 'UTC')"


#: Typed columns of ``profile_snapshots``, materialised from the snapshot JSON at insert so
#: segment queries filter columns instead of parsing JSON: name -> (type, expression, kind).
#: ``kind`` is how a segment condition may compare it (number, time, string, list, map).
PROFILE_COLUMNS: dict[str, tuple[str, str, str]] = {
    "tags": (
        "Array(LowCardinality(String))",
        "JSONExtract(snapshot, 'tags', 'Array(String)')",
        "list",
    ),
    "traits": (
        "Map(String, String)",
        "CAST(JSONExtractKeysAndValuesRaw(snapshot, 'traits'), 'Map(String, String)')",
        "map",
    ),
    "consent": (
        "Map(String, UInt8)",
        "CAST(JSONExtractKeysAndValues(snapshot, 'consent', 'UInt8'), 'Map(String, UInt8)')",
        "map",
    ),
    "account": (
        "Map(String, String)",
        "CAST(JSONExtractKeysAndValuesRaw(snapshot, 'account'), 'Map(String, String)')",
        "map",
    ),
    "channels": ("Array(LowCardinality(String))", "JSONExtractKeys(snapshot, 'channels')", "list"),
    "categories": ("Array(String)", "JSONExtract(snapshot, 'categories', 'Array(String)')", "list"),
    "identifier_types": (
        "Array(LowCardinality(String))",
        "arrayDistinct(arrayMap(i -> splitByChar(':', i)[1], "
        "JSONExtract(snapshot, 'identifiers', 'Array(String)')))",
        "list",
    ),
    "events": ("Int64", _num("events"), "number"),
    "order_count": ("Int64", _num("order_count"), "number"),
    "total_spend": ("Float64", _num("total_spend", "Float64"), "number"),
    "average_spend": ("Nullable(Float64)", _num("average_spend", "Nullable(Float64)"), "number"),
    "refund_total": ("Float64", _num("refund_total", "Float64"), "number"),
    "csat_last": ("Nullable(Int64)", _num("csat_last", "Nullable(Int64)"), "number"),
    "csat_average": ("Nullable(Float64)", _num("csat_average", "Nullable(Float64)"), "number"),
    "nps_last": ("Nullable(Int64)", _num("nps_last", "Nullable(Int64)"), "number"),
    "nps_class": ("LowCardinality(String)", "JSONExtractString(snapshot, 'nps_class')", "string"),
    "complaints": ("Int64", _num("complaints"), "number"),
    "open_complaints": ("Int64", _num("open_complaints"), "number"),
    "tickets": ("Int64", _num("tickets"), "number"),
    "open_tickets": ("Int64", _num("open_tickets"), "number"),
    "follow_ups": ("Int64", _num("follow_ups"), "number"),
    "points_balance": ("Int64", _num("points_balance"), "number"),
    "coupons_redeemed": ("Int64", _num("coupons_redeemed"), "number"),
    "store_visits": ("Int64", _num("store_visits"), "number"),
    "orders_weekend": ("Int64", _num("orders_weekend"), "number"),
    "member_level": (
        "String",
        "multiIf(JSONType(snapshot, 'member_level') = 'String', "
        "JSONExtractString(snapshot, 'member_level'), "
        "JSONType(snapshot, 'member_level') = 'Null', '', "
        "JSONExtractRaw(snapshot, 'member_level'))",
        "string",
    ),
    "first_seen": ("Nullable(DateTime64(3, 'UTC'))", _time_of("first_seen"), "time"),
    "last_seen": ("Nullable(DateTime64(3, 'UTC'))", _time_of("last_seen"), "time"),
    "first_purchase_at": ("Nullable(DateTime64(3, 'UTC'))", _time_of("first_purchase_at"), "time"),
    "last_purchase_at": ("Nullable(DateTime64(3, 'UTC'))", _time_of("last_purchase_at"), "time"),
    #: Set on a merged-away profile's tombstone (see ``ledger_batch``): not a member of anything.
    "merged_into": ("String", "JSONExtractString(snapshot, 'merged_into')", "internal"),
}


def numeric_id(column: str) -> str:
    """A profile id as UInt64 for joins, sets and group-bys (hashing strings costs ~2x).

    Identity mints ids from a Redis counter, so they are decimal numbers; any other id is
    hashed (cityHash64), which keeps it distinct in practice.
    """
    return f"ifNull(toUInt64OrNull({column}), cityHash64({column}))"


#: Numeric twins of the profile id columns, per table: column -> source column.
NUMERIC_IDS = {
    "events": {"pid": "profile_id"},
    "profile_snapshots": {"pid": "profile_id"},
    "profile_aliases": {"pid": "profile_id", "sid": "survivor"},
}

#: A tombstone outranks every snapshot of its profile: a merged-away id never comes back.
TOMBSTONE_VERSION = 2**64 - 1


def schema(db: str) -> list[str]:
    """Return the DDL of the history tables (idempotent)."""
    settings = f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}"
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        # Not partitioned by time: a feed spread over two years (an import, a channel that
        # delivers late) would write one part per month touched by every insert, ~10x the
        # history worker's cost; one part per insert also makes the insert atomic. Time
        # windows are served by the by_type projection, sorted by type and time.
        f"""CREATE TABLE IF NOT EXISTS {db}.events (
            event_id String, profile_id String, type LowCardinality(String), name String,
            channel LowCardinality(String), source LowCardinality(String),
            identifiers Array(String), timestamp DateTime64(3, 'UTC'),
            received_at DateTime64(3, 'UTC'), order_id String, amount Decimal(18, 2),
            traits String, properties String, consent String,
            src_partition UInt32, src_offset UInt64, ingested_at DateTime64(3, 'UTC')
        ) ENGINE = ReplacingMergeTree(ingested_at)
        ORDER BY (profile_id, timestamp, event_id) {settings}""",
        # What a rebuild of Redis from history needs besides the columns above (deploy/
        # rebuild.py): a group call's account, the identifiers that failed normalisation,
        # each sealed identifier's sealed value (what the read API opens), and the event's
        # place in the order of resolution. Rows stored before these columns existed
        # rebuild without them.
        *(
            f"ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS {column}"
            for column in REBUILD_COLUMNS
        ),
        f"""CREATE TABLE IF NOT EXISTS {db}.profile_aliases (
            profile_id String, survivor String, event_id String, merged_at DateTime64(3, 'UTC')
        ) ENGINE = ReplacingMergeTree(merged_at) ORDER BY profile_id {settings}""",
        f"""CREATE TABLE IF NOT EXISTS {db}.identity_ledger (
            decision LowCardinality(String), rule LowCardinality(String), profile_id String,
            other_profile_id String, identifier String, event_id String,
            at DateTime64(3, 'UTC')
        ) ENGINE = ReplacingMergeTree(at)
        ORDER BY (profile_id, event_id, decision, rule, identifier, other_profile_id) {settings}""",
        f"""CREATE TABLE IF NOT EXISTS {db}.profile_changes (
            profile_id String, event_id String, changed Array(String), merged Array(String),
            at DateTime64(3, 'UTC')
        ) ENGINE = ReplacingMergeTree(at) ORDER BY (profile_id, event_id) {settings}""",
        f"""CREATE TABLE IF NOT EXISTS {db}.tag_changes (
            profile_id String, tag LowCardinality(String), added UInt8, event_id String,
            at DateTime64(3, 'UTC')
        ) ENGINE = ReplacingMergeTree(at) ORDER BY (profile_id, tag, event_id) {settings}""",
        # The audit log (cdp.audit): no personal data; an id once, however often delivered.
        f"""CREATE TABLE IF NOT EXISTS {db}.audit (
            id String, at DateTime64(3, 'UTC'), actor LowCardinality(String),
            action LowCardinality(String), target String, subjects UInt64, origin String,
            detail String
        ) ENGINE = ReplacingMergeTree ORDER BY (at, id) {settings}""",
        f"""CREATE TABLE IF NOT EXISTS {db}.profile_snapshots (
            profile_id String, snapshot String, version UInt64, at DateTime64(3, 'UTC')
        ) ENGINE = ReplacingMergeTree(version) ORDER BY profile_id {settings}""",
        *(
            f"ALTER TABLE {db}.profile_snapshots ADD COLUMN IF NOT EXISTS {name} {ch_type} "
            f"MATERIALIZED {expression}"
            for name, (ch_type, expression, _) in PROFILE_COLUMNS.items()
        ),
        *(
            f"ALTER TABLE {db}.{table} ADD COLUMN IF NOT EXISTS {name} UInt64 "
            f"MATERIALIZED {numeric_id(source)}"
            for table, columns in NUMERIC_IDS.items()
            for name, source in columns.items()
        ),
        # Segment conditions on an event type in a time window read this copy, sorted by
        # type and time, instead of every event of the window's months (~25% faster at 10M
        # events). Merges that deduplicate rebuild it. Parts stored before it existed are
        # read from the table until merges rewrite them.
        f"ALTER TABLE {db}.events MODIFY SETTING deduplicate_merge_projection_mode = 'rebuild'",
        f"""ALTER TABLE {db}.events ADD PROJECTION IF NOT EXISTS by_type
            (SELECT type, name, timestamp, pid, amount ORDER BY type, timestamp)""",
        # Tombstones for merges stored before tombstones existed (idempotent).
        f"""INSERT INTO {db}.profile_snapshots (profile_id, snapshot, version, at)
        SELECT profile_id, concat('{{"profile_id":', toJSONString(profile_id),
                                  ',"merged_into":', toJSONString(survivor), '}}'),
               {TOMBSTONE_VERSION}, merged_at
        FROM {db}.profile_aliases FINAL
        WHERE profile_id NOT IN (
            SELECT profile_id FROM {db}.profile_snapshots WHERE version = {TOMBSTONE_VERSION})""",  # noqa: S608 - db validated in settings
    ]


def dedupe_snapshots(client: Any, db: str) -> int:
    """Delete every snapshot that is not its profile's newest (older builds kept them for
    ``FINAL``; segment queries now read one row per profile). Returns how many were extra."""
    extra = int(
        client.command(
            f"SELECT count() - uniqExact(profile_id) FROM {db}.profile_snapshots"  # noqa: S608
        )
    )
    if extra:
        client.command(
            f"DELETE FROM {db}.profile_snapshots WHERE (profile_id, version) NOT IN ("  # noqa: S608
            f"SELECT profile_id, max(version) FROM {db}.profile_snapshots GROUP BY profile_id)"
        )
    return extra


TABLES = frozenset(
    {
        "events",
        "profile_aliases",
        "identity_ledger",
        "profile_changes",
        "profile_snapshots",
        "tag_changes",
        "audit",
    }
)


def _partition_key(client: Any, db: str, table: str) -> str | None:
    rows = client.query(
        "SELECT partition_key FROM system.tables WHERE database = {db:String} "
        "AND name = {table:String}",
        parameters={"db": db, "table": table},
    ).result_rows
    return str(rows[0][0]) if rows else None


def unpartition_events(client: Any, db: str) -> int:
    """Move ``events`` of an older schema (partitioned by month) into the current table.

    Renames the old table aside, lets the schema create the new one, copies the rows and
    drops the old table. A crash in between is finished by the next start: the new table is
    emptied and the copy runs again from the table set aside. Returns the rows copied.
    """
    aside = f"{db}.events_by_month"
    if _partition_key(client, db, "events"):
        client.command(f"RENAME TABLE {db}.events TO {aside}")
    if _partition_key(client, db, "events_by_month") is None:
        return 0
    for statement in schema(db):
        client.command(statement)
    columns = ", ".join(BASE_EVENT_COLUMNS)
    client.command(f"TRUNCATE TABLE {db}.events")
    client.command(
        f"INSERT INTO {db}.events ({columns}) SELECT {columns} FROM {aside}",  # noqa: S608
        settings={"insert_deduplicate": 0},
    )
    copied = int(client.command(f"SELECT count() FROM {db}.events"))  # noqa: S608
    client.command(f"DROP TABLE {aside}")
    return copied


def migrate(client: Any, db: str) -> None:
    """Create the database and tables if missing; bring older tables up to date."""
    client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    unpartition_events(client, db)
    for statement in schema(db):
        client.command(statement)
    dedupe_snapshots(client, db)
    patch_deletes(client, db)


#: How the history deletes superseded snapshots where ClickHouse has lightweight updates
#: (25.7+; embedded chDB has them): the delete writes a patch part, like an insert, that
#: reads and merges apply, instead of a mutation that rewrites every part holding one of the
#: profiles. Measured at 50,000 profiles, 3,500 per delete, with the insert before it: ~150 ms
#: of CPU and ~110 ms of wait against ~350 ms and ~270 ms (bench/snapshot_supersede.py); a
#: mutation's cost also grows with the table, a patch's with the rows it deletes.
PATCH_DELETE = {"lightweight_delete_mode": "lightweight_update"}


def patch_deletes(client: Any, db: str) -> None:
    """Turn on the block columns that patch-part deletes of ``profile_snapshots`` need, if
    ClickHouse has lightweight updates; an existing table keeps its parts (idempotent)."""
    has_updates = int(
        client.command("SELECT count() FROM system.settings WHERE name = 'lightweight_delete_mode'")
    )
    if has_updates and not patches_on(client, db):
        client.command(
            f"ALTER TABLE {db}.profile_snapshots MODIFY SETTING "
            "enable_block_number_column = 1, enable_block_offset_column = 1"
        )


def patches_on(client: Any, db: str) -> bool:
    """Whether ``profile_snapshots`` keeps the block columns that patch parts need."""
    engine = str(
        client.command(
            "SELECT engine_full FROM system.tables "
            "WHERE database = {db:String} AND name = 'profile_snapshots'",
            parameters={"db": db},
        )
    )
    return all(
        f"{name} = 1" in engine
        for name in ("enable_block_number_column", "enable_block_offset_column")
    )


BASE_EVENT_COLUMNS = [
    "event_id",
    "profile_id",
    "type",
    "name",
    "channel",
    "source",
    "identifiers",
    "timestamp",
    "received_at",
    "order_id",
    "amount",
    "traits",
    "properties",
    "consent",
    "src_partition",
    "src_offset",
    "ingested_at",
]

#: Added columns of ``events``, as (name, type) DDL.
REBUILD_COLUMNS = (
    "group_id String",
    "invalid_ids Array(String)",
    "sealed_ids Map(String, String)",
    "resolution UInt64",
)

EVENT_COLUMNS = BASE_EVENT_COLUMNS + [c.split()[0] for c in REBUILD_COLUMNS]


def _amount(props: dict[str, Any]) -> float:
    for key in ("total", "revenue", "value", "amount"):
        value = props.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return 0.0


def ms(moment: datetime) -> int:
    """A time as a ``DateTime64(3)`` value: epoch ms, exactly. The hot tables' rows carry
    their times so, which clickhouse-connect writes as they are, instead of turning each
    ``datetime`` into ticks in Python (~4% of the history process's CPU)."""
    return epoch_ms(moment) or 0


def event_row(r: ResolvedEvent, partition: int, offset: int, now: datetime) -> list[Any]:
    """Flatten a resolved event into a row of ``events`` (times as epoch ms, ``ms``)."""
    e = r.event
    return [
        e.event_id,
        r.profile_id,
        e.type.value,
        e.name or "",
        e.channel.value,
        e.source,
        [i.key() for i in e.identifiers],
        ms(e.timestamp),
        ms(e.received_at),
        str(e.properties.get("order_id") or ""),
        _amount(e.properties),
        orjson.dumps(e.traits).decode(),
        orjson.dumps(e.properties).decode(),
        orjson.dumps(e.consent).decode(),
        partition,
        offset,
        ms(now),
        e.group_id or "",
        [i.key() for i in e.identifiers if not i.normalized],
        {i.key(): i.sealed for i in e.identifiers if i.sealed is not None},
        r.resolution,
    ]


_EVENT_TYPES = frozenset(t.value for t in EventType)
_CHANNELS = frozenset(c.value for c in Channel)


def _utc(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def resolved_row(value: bytes, partition: int, offset: int, now: datetime) -> list[Any]:
    """The ``events`` row of a ``cdp.events.resolved`` record, read as JSON without building
    its model: the row ``event_row`` makes of the validated record (~10x cheaper).

    Raises ``ValueError``, ``KeyError``, ``TypeError`` or ``AttributeError`` for a record
    this reading cannot vouch for (a newer schema version, an unknown event type or
    channel, a missing field); the caller then validates it against the contract.
    """
    r = orjson.loads(value)
    e = r["event"]
    if r.get("schema_version", 1) != 1 or e.get("schema_version", 1) != 1:
        raise ValueError("schema version")
    if e["type"] not in _EVENT_TYPES or e["channel"] not in _CHANNELS:
        raise ValueError("event type or channel")
    ids = e["identifiers"]
    keys = [f"{i['type']}:{i['value']}" for i in ids]
    props = e.get("properties") or {}
    return [
        e["event_id"],
        r["profile_id"],
        e["type"],
        e.get("name") or "",
        e["channel"],
        e["source"],
        keys,
        ms(_utc(e["timestamp"])),
        ms(_utc(e["received_at"])),
        str(props.get("order_id") or ""),
        _amount(props),
        orjson.dumps(e.get("traits") or {}).decode(),
        orjson.dumps(props).decode(),
        orjson.dumps(e.get("consent") or {}).decode(),
        partition,
        offset,
        ms(now),
        e.get("group_id") or "",
        [k for k, i in zip(keys, ids, strict=True) if not i.get("normalized", True)],
        {k: i["sealed"] for k, i in zip(keys, ids, strict=True) if i.get("sealed") is not None},
        int(r.get("resolution", 0)),
    ]


@dataclass(frozen=True)
class Batch:
    """Rows for one table from one source partition, with the offsets they came from."""

    table: str
    columns: list[str]
    rows: list[list[Any]]
    token: str


class HistoryWriter:
    """Insert batches into ClickHouse with a deduplication token per partition range."""

    def __init__(self, client: Any, db: str) -> None:
        self._client = client
        self._db = db
        self._patches: bool | None = None  # whether supersedes are patch parts (first use)

    @property
    def client(self) -> Any:
        """The ClickHouse client (erasures delete through it, on the same thread)."""
        return self._client

    def write(self, batch: Batch) -> None:
        """Insert one batch (blocking: call from a worker thread). ``StoreUnavailable`` when
        ClickHouse cannot take it for now (its disk full, unreachable): the caller retries
        the same batch, whose deduplication token makes a second insert a no-op."""
        try:
            self._write(batch)
        except ClickHouseError as exc:
            if not unavailable(exc):
                raise
            raise StoreUnavailable(f"ClickHouse refused the {batch.table} batch: {exc}") from exc

    def _write(self, batch: Batch) -> None:
        if batch.rows:
            self._client.insert(
                f"{self._db}.{batch.table}",
                batch.rows,
                column_names=batch.columns,
                settings={"insert_deduplication_token": batch.token},
            )
            if batch.table == "profile_snapshots":
                self._supersede(batch)

    def _supersede(self, batch: Batch) -> None:
        """Keep only the newest snapshot of the profiles just stored (a lightweight delete:
        a patch part where ClickHouse has them, see ``PATCH_DELETE``, else a mutation).

        The snapshot table stays a ReplacingMergeTree, but segment queries read it without
        ``FINAL`` (which costs them ~2x): they rely on one row per profile. Whichever arrives
        last, a newer snapshot or an older one (a replay), only the newest stays. A crash
        between the insert and this delete leaves the profiles in the dirty set being taken,
        so their snapshot is written again, and this runs again, on restart.
        """
        ids = sorted({row[0] for row in batch.rows})
        sql = (
            f"DELETE FROM {self._db}.profile_snapshots "  # noqa: S608 - db validated
            "WHERE profile_id IN {ids:Array(String)} AND (profile_id, version) NOT IN ("
            f"SELECT profile_id, max(version) FROM {self._db}.profile_snapshots "
            "WHERE profile_id IN {ids:Array(String)} GROUP BY profile_id)"
        )
        if self._patches is None:
            self._patches = patches_on(self._client, self._db)
        if self._patches:
            # A patch part, written before the call returns, like an insert: no mutation to
            # wait for; a full disk fails it as it fails an insert (``StoreUnavailable``).
            self._client.command(sql, parameters={"ids": ids}, settings=PATCH_DELETE)
        else:
            mutate(self._client, self._db, "profile_snapshots", sql, {"ids": ids})

    def high_water(self) -> dict[int, int]:
        """Return the highest resolved-topic offset stored per partition (resume point)."""
        rows = self._client.query(
            f"SELECT src_partition, max(src_offset) FROM {self._db}.events GROUP BY src_partition"  # noqa: S608 - db name validated in settings
        ).result_rows
        return {int(p): int(o) for p, o in rows}

    def query(self, sql: str) -> list[dict[str, Any]]:
        """Run a read query; rows as dicts (an operator's tool: the SQL is theirs)."""
        result = self._client.query(sql)
        return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]

    def rows(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run a compiled read query with bound parameters (segments); plain rows."""
        return list(self._client.query(sql, parameters=params).result_rows)

    def count(self, table: str, final: bool = True) -> int:
        """Count rows of a table (FINAL: after deduplication)."""
        suffix = " FINAL" if final else ""
        if table not in TABLES:
            raise ValueError(f"unknown history table {table!r}")
        sql = f"SELECT count() FROM {self._db}.{table}{suffix}"  # noqa: S608 - allow-listed
        return int(self._client.command(sql))


def event_batches(
    topic: str, items: list[tuple[ResolvedEvent, int, int]], now: datetime | None = None
) -> list[Batch]:
    """One token-carrying batch of (event, partition, offset), whatever the partitions.

    One insert is one part of ``events`` (atomic); its token names the offset range taken
    from each source partition, so a retry of the same batch is dropped by ClickHouse.
    """
    now = now or datetime.now(UTC)
    return row_batches(topic, [(event_row(r, part, off, now), part, off) for r, part, off in items])


def row_batches(topic: str, items: list[tuple[list[Any], int, int]]) -> list[Batch]:
    """``event_batches`` of rows already made: (row, partition, offset)."""
    if not items:
        return []
    ranges: dict[int, list[int]] = defaultdict(list)
    for _, part, off in items:
        ranges[part].append(off)
    span = ",".join(f"{p}:{min(o)}-{max(o)}:{len(o)}" for p, o in sorted(ranges.items()))
    return [Batch("events", EVENT_COLUMNS, [i[0] for i in items], f"{topic}:{span}")]


def ledger_batch(entries: list[LedgerEntry], token: str) -> list[Batch]:
    """Rows for the ledger and, for merges, the alias table and the merged profile's tombstone."""
    ledger = [
        [
            e.decision.value,
            e.rule.value,
            e.profile_id,
            e.other_profile_id or "",
            e.identifier,
            e.event_id,
            e.at,
        ]
        for e in entries
    ]
    aliases = [
        [e.other_profile_id, e.profile_id, e.event_id, e.at]
        for e in entries
        if e.decision == Decision.MERGED and e.other_profile_id
    ]
    tombstones = [
        [
            e.other_profile_id,
            orjson.dumps({"profile_id": e.other_profile_id, "merged_into": e.profile_id}).decode(),
            TOMBSTONE_VERSION,
            e.at,
        ]
        for e in entries
        if e.decision == Decision.MERGED and e.other_profile_id
    ]
    return [
        Batch(
            "identity_ledger",
            ["decision", "rule", "profile_id", "other_profile_id", "identifier", "event_id", "at"],
            ledger,
            token,
        ),
        Batch(
            "profile_aliases", ["profile_id", "survivor", "event_id", "merged_at"], aliases, token
        ),
        # The merged-away profile's last snapshot must stop counting as a person: a tombstone
        # replaces it, so segment queries exclude it with a column filter.
        Batch("profile_snapshots", ["profile_id", "snapshot", "version", "at"], tombstones, token),
    ]


class Change(NamedTuple):
    """What the history stores of a ``cdp.profiles.changes`` record (``ProfileChange``)."""

    profile_id: str
    event_id: str
    changed: list[str]
    merged: list[str]
    tags_added: list[str]
    tags_removed: list[str]
    at: datetime


_CHANGE_FIELDS = frozenset(ProfileChange.model_fields)


def read_change(value: bytes) -> Change:
    """A ``cdp.profiles.changes`` record read as JSON without building its model (what the
    model would hold; ~5x cheaper).

    Raises ``ValueError``, ``KeyError``, ``TypeError`` or ``AttributeError`` for a record
    this reading cannot vouch for (a field unknown or of another type, a newer schema
    version, a time that is not ISO text); the caller then validates it against the contract.
    """
    c = orjson.loads(value)
    if c.keys() - _CHANGE_FIELDS or c.get("schema_version", 1) != 1:
        raise ValueError("fields or schema version")
    pid, eid, at = c["profile_id"], c["event_id"], c["at"]
    if type(pid) is not str or type(eid) is not str or type(at) is not str:
        raise TypeError("profile_id, event_id or at")
    changed, merged = c["changed"], c.get("merged", [])
    added, removed = c.get("tags_added", []), c.get("tags_removed", [])
    for names in (changed, merged, added, removed):
        if type(names) is not list or any(type(n) is not str for n in names):
            raise TypeError("a list of names")
    return Change(pid, eid, changed, merged, added, removed, _utc(at))


def change_batch(changes: list[ProfileChange] | list[Change], token: str) -> Batch:
    """Rows for ``profile_changes``."""
    rows = [[c.profile_id, c.event_id, c.changed, c.merged, ms(c.at)] for c in changes]
    return Batch(
        "profile_changes", ["profile_id", "event_id", "changed", "merged", "at"], rows, token
    )


def tag_batch(changes: list[ProfileChange] | list[Change], token: str) -> Batch:
    """Rows for ``tag_changes``: one per tag gained (added=1) or lost (added=0)."""
    rows = [
        [c.profile_id, tag, added, c.event_id, at]
        for c in changes
        for at in (ms(c.at),)
        for added, tags in ((1, c.tags_added), (0, c.tags_removed))
        for tag in tags
    ]
    return Batch("tag_changes", ["profile_id", "tag", "added", "event_id", "at"], rows, token)


#: The columns a snapshot is inserted with (the typed ones are materialised from it).
SNAPSHOT_COLUMNS = ["profile_id", "snapshot", "version", "at"]


def snapshot_rows(profiles: list[Stored], version: int, at: datetime) -> list[list[Any]]:
    """Rows for ``profile_snapshots``: each profile as stored, as the ``Profile`` JSON.

    ``version`` orders snapshots of one profile (ReplacingMergeTree keeps the highest), so a
    replayed batch can only write the same or a newer state.
    """
    return [[p.profile_id, p.json().decode(), version, at] for p in profiles]


AUDIT_COLUMNS = ["id", "at", "actor", "action", "target", "subjects", "origin", "detail"]


def audit_batch(records: list[AuditRecord], token: str) -> Batch:
    """Rows of the audit table."""
    rows = [
        [
            r.id,
            r.at,
            r.actor,
            r.action,
            r.target,
            r.subjects,
            r.origin,
            orjson.dumps(r.detail).decode(),
        ]
        for r in records
    ]
    return Batch("audit", AUDIT_COLUMNS, rows, token)
