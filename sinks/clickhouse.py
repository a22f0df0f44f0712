"""ClickHouse connection: embedded chDB by default, a server by URL; one code path."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import clickhouse_connect
import structlog
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

from runtime.exceptions import StoreUnavailable

#: ClickHouse error codes of a store that cannot take writes for now, whatever is written:
#: its disk (NOT_ENOUGH_SPACE, CANNOT_WRITE_TO_FILE_DESCRIPTOR, CANNOT_OPEN_FILE,
#: CANNOT_FSYNC, CANNOT_CREATE_DIRECTORY), a read-only table or replica, too many parts
#: waiting for merges, the network, the server's own limits (TIMEOUT_EXCEEDED, SYSTEM_ERROR).
UNAVAILABLE_CODES = frozenset({75, 76, 159, 209, 210, 242, 243, 252, 425})
#: What an operating-system error says when the disk is the cause (any code).
DISK_ERRORS = ("No space left on device", "Read-only file system", "Disk quota exceeded")

_EMBEDDED: dict[Path, Any] = {}
_LOCK = threading.Lock()

#: How a MergeTree mutation entry (``mutation_<n>.txt``) starts, and a line it must have.
_MUTATION_HEADER = b"format version: 1\n"
_MUTATION_COMMANDS = b"\ncommands: "

log = structlog.get_logger(__name__)


def set_aside_broken_mutations(path: Path) -> list[Path]:
    """Rename (``broken_<name>``) the mutation entries under the embedded data directory
    ``path`` that a full disk left empty or cut short, and return them.

    ClickHouse writes a mutation's entry before it runs it. When the disk fills between the
    history's room check and that write (the delete that keeps one snapshot per profile),
    the entry can be left empty, and ClickHouse then cannot load the table: chDB refuses to
    open the whole directory, at every later start. Such a mutation never ran, so setting
    its entry aside loses only that delete: older snapshot rows of its profiles stay until
    their next snapshot deletes them.
    """
    moved = []
    for entry in sorted(
        [*path.glob("store/*/*/mutation_*.txt"), *path.glob("data/*/*/mutation_*.txt")]
    ):
        try:
            text = entry.read_bytes()
        except OSError:
            continue
        if text.startswith(_MUTATION_HEADER) and _MUTATION_COMMANDS in text:
            continue
        target = entry.with_name("broken_" + entry.name)
        entry.rename(target)
        moved.append(target)
        log.warning("clickhouse.mutation_set_aside", entry=str(entry), bytes=len(text))
    return moved


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
            set_aside_broken_mutations(path)
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
    return _for_now(str(exc))


def _for_now(text: str) -> bool:
    """Whether an error's text names a cause that passes (the disk, the server's limits)."""
    if any(marker in text for marker in DISK_ERRORS):
        return True
    return any(f"Code: {code}." in text for code in UNAVAILABLE_CODES)


#: How long ``mutate`` waits for a delete that makes no progress before the caller hears
#: ``StoreUnavailable`` (and backs off, logging it).
MUTATION_WAIT_S = 20.0
#: The longest pause between two looks at a pending mutation.
MAX_LOOK_GAP_S = 0.25
#: Short of disk room, a delete is issued without ClickHouse's own wait, which then has no
#: end: a mutation it cannot start (no space for its result) is neither run nor failed, and
#: the waiting call, with every call of a process's embedded client behind it, hangs until
#: space comes back.
_NO_WAIT = {"lightweight_deletes_sync": 0, "mutations_sync": 0}
#: With room, ClickHouse's own wait (``ALTER TABLE ... DELETE`` does not wait by default).
_WAIT = {"lightweight_deletes_sync": 2, "mutations_sync": 2}


def mutate(
    client: Any,
    db: str,
    table: str,
    sql: str,
    parameters: dict[str, Any] | None = None,
    timeout_s: float = MUTATION_WAIT_S,
) -> None:
    """Run a delete (``DELETE FROM`` or ``ALTER TABLE ... DELETE``) on ``db.table`` and
    return once ClickHouse applied it, as its synchronous settings would, but, when the disks
    are short of room, giving up after ``timeout_s`` without progress (with room, ClickHouse's
    own wait, which costs no looks). ``StoreUnavailable`` when it is still pending then; a
    retry first waits for that one instead of queueing another. A delete ClickHouse failed
    to run for another reason than its disk raises ``RuntimeError`` (a bug: fail loudly).
    ``sql`` carries no ``SETTINGS`` of its own: they would override the wait chosen here."""
    _applied(client, db, table, timeout_s)
    if _room_for(client, db, table):
        client.command(sql, parameters=parameters, settings=_WAIT)  # its own wait: no looks
        return
    client.command(sql, parameters=parameters, settings=_NO_WAIT)
    _applied(client, db, table, timeout_s)


def _room_for(client: Any, db: str, table: str) -> bool:
    """Whether every disk has room for the table twice over (a mutation reserves about the
    size of the parts it rewrites), so ClickHouse can start a delete on it at once."""
    return bool(
        client.command(
            "SELECT (SELECT min(unreserved_space) FROM system.disks) > 2 * ("
            "SELECT sum(bytes_on_disk) FROM system.parts WHERE database = {db:String} "
            "AND table = {table:String} AND active)",
            parameters={"db": db, "table": table},
        )
    )


def _applied(client: Any, db: str, table: str, timeout_s: float) -> None:
    """Wait until ``db.table`` has no mutation left to apply, for as long as its mutations
    make progress (fewer parts left to do) and at most ``timeout_s`` without any: a large
    delete may rewrite parts for minutes, one without room does not start. Each look at
    ``system.mutations`` costs chDB ~3 ms of CPU, so looks are 5 ms apart at first and at
    most ``MAX_LOOK_GAP_S`` later on."""
    deadline = time.monotonic() + timeout_s
    pause = 0.005
    least = float("inf")  # the fewest parts left to do seen so far
    while True:
        pending, reason, parts = client.query(
            "SELECT count(), anyLast(latest_fail_reason), sum(parts_to_do) FROM system.mutations "
            "WHERE database = {db:String} AND table = {table:String} AND NOT is_done",
            parameters={"db": db, "table": table},
        ).result_rows[0]
        if not pending:
            return
        if reason and not _for_now(reason):
            raise RuntimeError(f"ClickHouse cannot apply a delete on {db}.{table}: {reason}")
        now = time.monotonic()
        if parts < least:  # progress: the wait is bounded without any, not in all
            deadline, least = now + timeout_s, parts
        if now >= deadline:
            why = reason or "ClickHouse did not start it: is its disk full?"
            raise StoreUnavailable(
                f"a delete on {db}.{table} is not applied after {timeout_s:.0f} s "
                f"without progress ({why})"
            )
        time.sleep(pause)
        pause = min(pause * 2, MAX_LOOK_GAP_S)
