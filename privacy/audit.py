"""The audit log: who read personal data in clear, exported, erased, or changed keys/segments.

Each record is published to ``cdp.audit`` (acks=all) *before* the audited answer is given, so
an action the log could not record is refused (503), never done unrecorded. The history
worker copies the topic into ClickHouse (``audit`` table) for queries. Records name tokens,
profile ids, segment and request ids, and counts: never a personal value.
"""

from __future__ import annotations

import asyncio
import getpass
import uuid
from datetime import UTC, datetime
from typing import Any

import structlog
from fastapi import HTTPException, Request

from contracts.privacy import AuditRecord
from runtime.auth import Token
from runtime.exceptions import KafkaUnavailable
from runtime.publisher import Publisher, Record

log = structlog.get_logger()


def cli_actor() -> str:
    """The actor of a command run by an operator: ``cli:<login>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "cli:unknown"


class Audit:
    """Write audit records to the audit topic."""

    def __init__(self, publisher: Publisher, topic: str) -> None:
        self._publisher = publisher
        self._topic = topic

    async def record(
        self,
        actor: str,
        action: str,
        target: str = "",
        subjects: int = 0,
        origin: str = "",
        **detail: str | int | bool,
    ) -> AuditRecord:
        """Publish one record and wait for Kafka's acknowledgement; return it."""
        entry = AuditRecord(
            id=uuid.uuid4().hex,
            at=datetime.now(UTC),
            actor=actor,
            action=action,
            target=target,
            subjects=subjects,
            origin=origin,
            detail=detail,
        )
        await self._publisher.publish(
            [Record(self._topic, actor.encode(), entry.model_dump_json().encode())]
        )
        return entry


def origin(request: Request) -> str:
    """Where a request came from (the client address), for the audit log."""
    return request.client.host if request.client else ""


class Audited:
    """The API's audit hook: record what a token did, from where.

    ``now`` waits for Kafka's acknowledgement and refuses the action (503) if the log
    cannot take it: exports, erasures, segment changes. ``soon`` queues the record in the
    producer and answers at once: single profile reads, which other services make in
    milliseconds; a crash can lose the records of the last few milliseconds' reads.
    """

    def __init__(self, audit: Audit) -> None:
        self._audit = audit
        #: The log itself, for code that records on its own terms.
        self.log = audit
        self._pending: set[asyncio.Task[Any]] = set()

    async def now(
        self,
        token: Token,
        request: Request,
        action: str,
        target: str = "",
        subjects: int = 0,
        **detail: str | int | bool,
    ) -> None:
        """Record before answering; 503 if the audit log is unreachable."""
        try:
            await self._audit.record(
                token.name, action, target, subjects, origin(request), **detail
            )
        except KafkaUnavailable as exc:
            raise HTTPException(
                503,
                {
                    "code": "unavailable",
                    "message": "not done: the audit log could not record it; retry later",
                    "field": None,
                },
                headers={"Retry-After": "5"},
            ) from exc

    def soon(
        self,
        token: Token,
        request: Request,
        action: str,
        target: str = "",
        subjects: int = 0,
        **detail: str | int | bool,
    ) -> None:
        """Record without waiting (the record is queued in the producer)."""
        task = asyncio.create_task(
            self._audit.record(token.name, action, target, subjects, origin(request), **detail)
        )
        self._pending.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("audit.lost", error=str(task.exception()))


def query_audit(client: Any, db: str, query: dict[str, Any]) -> list[dict[str, Any]]:
    """Audit records from the ClickHouse copy of the log, newest first (blocking)."""
    where, params = ["1"], {"limit": int(query.get("limit") or 100)}
    for name, clause in (
        ("actor", "actor = {actor:String}"),
        ("target", "target = {target:String}"),
        ("action", "startsWith(action, {action:String})"),
        ("since", "at >= {since:DateTime64(3, 'UTC')}"),
        ("until", "at < {until:DateTime64(3, 'UTC')}"),
    ):
        if query.get(name) is not None:
            where.append(clause)
            params[name] = query[name]
    result = client.query(
        "SELECT id, at, actor, action, target, subjects, origin, detail "  # noqa: S608 - fixed
        f"FROM {db}.audit FINAL WHERE {' AND '.join(where)} ORDER BY at DESC, id "
        "LIMIT {limit:UInt32}",
        parameters=params,
    )
    return [
        {**dict(zip(result.column_names, row, strict=True)), "at": row[1].isoformat()}
        for row in result.result_rows
    ]


async def record_changes(
    redis: Any, namespace: str, audit: Audit, kind: str, items: dict[str, str]
) -> bool:
    """Record a change of configuration (tokens, sources, the tag catalog) found at start.

    ``items`` maps names (token, source, tag ids: never secrets or personal data) to a digest
    of what they are. Compared with what the last process recorded, a difference becomes one
    ``<kind>.changed`` record (actor ``system``) naming what was added, removed or changed;
    only then is the new state stored, so a change the log missed is recorded next time.
    Returns whether anything changed.
    """
    key = f"{namespace}:audit:config:{kind}"
    raw = await redis.hgetall(key)
    before = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    if before == items:
        return False
    added = sorted(set(items) - set(before))
    removed = sorted(set(before) - set(items))
    changed = sorted(n for n in set(items) & set(before) if items[n] != before[n])
    await audit.record(
        "system",
        f"{kind}.changed",
        kind,
        added=",".join(added)[:2000],
        removed=",".join(removed)[:2000],
        changed=",".join(changed)[:2000],
    )
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        if items:
            pipe.hset(key, mapping=items)
        await pipe.execute()
    return True
