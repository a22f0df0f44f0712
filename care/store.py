"""Care state in Redis: tasks (created once per id), the due index and the delivery outbox.

Keys (under the namespace):

- ``care:task:<id>``: the task's current record (JSON); created with NX, so an occasion
  makes one task however often its trigger is seen;
- ``care:tasks``: task ids by creation time; ``care:open:<pid>``: a profile's open tasks;
  ``care:of:<pid>``: all its tasks (what an erasure removes);
- ``care:unpub``: tasks whose current state is not on ``cdp.care.tasks`` yet;
- ``care:due``: pending occasions -> when they fall due (a claim's lease end while claimed);
  ``care:pending:<pid>``: a profile's pending ``after_event`` occasions (a follow-up cancels
  them);
- ``care:outbox``: open tasks to deliver -> when the next attempt is due;
  ``care:attempts``: task id -> failed attempts so far; ``care:delivered``: task id -> when
  a delivery was accepted; ``care:closed_delivered``: task id -> when the delivery of its
  close was accepted (a delivered task closed is queued again, to tell the close);
- ``care:backfilled``: the date rules last scheduled over every profile.
"""

from __future__ import annotations

from datetime import datetime

import redis.asyncio as aioredis

from contracts.care import CareState, CareTask

#: Create a task once: 1 created, 2 exists but its record is not published yet, 0 exists.
_CREATE = """
local task, tasks, open, unpub, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local mine = KEYS[6]
local id, body, created, deliver = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('SET', task, body, 'NX') then
  redis.call('ZADD', tasks, created, id)
  redis.call('SADD', open, id)
  redis.call('SADD', mine, id)
  redis.call('SADD', unpub, id)
  if deliver == '1' then redis.call('ZADD', outbox, created, id) end
  return 1
end
if redis.call('SISMEMBER', unpub, id) == 1 then return 2 end
return 0
"""

#: Close an open task: 1 closed now, 0 it was not open. A task the webhook was told of is
#: queued to tell it the close (from the first attempt); one not yet told is not sent at all.
_CLOSE = """
local task, open, unpub, outbox, attempts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local delivered = KEYS[6]
local id, body, now = ARGV[1], ARGV[2], ARGV[3]
if redis.call('SREM', open, id) == 0 then return 0 end
redis.call('SET', task, body, 'XX')
redis.call('SADD', unpub, id)
if redis.call('HEXISTS', delivered, id) == 1 then
  redis.call('ZADD', outbox, now, id)
else
  redis.call('ZREM', outbox, id)
end
redis.call('HDEL', attempts, id)
return 1
"""

#: Claim up to ARGV[3] members due by ARGV[1]: leased until ARGV[2] (a crash meanwhile
#: leaves them to be claimed again when the lease ends).
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], m) end
return due
"""


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class CareStore:
    """Tasks, pending occasions and deliveries of one namespace."""

    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self._redis = client
        self._ns = namespace
        self._create = client.register_script(_CREATE)
        self._close = client.register_script(_CLOSE)
        self._claim = client.register_script(_CLAIM)

    def _k(self, *parts: str) -> str:
        return ":".join((self._ns, "care", *parts))

    # -- tasks -----------------------------------------------------------------------

    async def create(self, task: CareTask, deliver: bool) -> bool:
        """Store ``task`` unless its id exists; True when its record must be published."""
        keys = [
            self._k("task", task.task_id),
            self._k("tasks"),
            self._k("open", task.profile_id),
            self._k("unpub"),
            self._k("outbox"),
            self._k("of", task.profile_id),
        ]
        args: list[str | int] = [
            task.task_id,
            task.model_dump_json(),
            _ms(task.created_at),
            int(deliver),
        ]
        return int(await self._create(keys, args)) > 0

    async def close(self, task: CareTask, at: datetime, by: str) -> CareTask | None:
        """Close ``task`` if it is open; the closed record, or None if it was not open."""
        closed = task.model_copy(
            update={"state": CareState.CLOSED, "closed_at": at, "closed_by": by}
        )
        keys = [
            self._k("task", task.task_id),
            self._k("open", task.profile_id),
            self._k("unpub"),
            self._k("outbox"),
            self._k("attempts"),
            self._k("delivered"),
        ]
        done = await self._close(keys, [task.task_id, closed.model_dump_json(), _ms(at)])
        return closed if int(done) else None

    async def published(self, task_ids: list[str]) -> None:
        """Mark the tasks' current records as acknowledged by Kafka."""
        if task_ids:
            await self._redis.srem(self._k("unpub"), *task_ids)

    async def get(self, task_id: str) -> CareTask | None:
        """The task's current record."""
        raw = await self._redis.get(self._k("task", task_id))
        return CareTask.model_validate_json(raw) if raw else None

    async def get_many(self, task_ids: list[str]) -> list[CareTask]:
        """The current records of the tasks that exist, in order."""
        if not task_ids:
            return []
        raws = await self._redis.mget([self._k("task", t) for t in task_ids])
        return [CareTask.model_validate_json(r) for r in raws if r]

    async def open_of(self, profile_id: str) -> list[CareTask]:
        """The profile's open tasks."""
        ids = sorted(_text(i) for i in await self._redis.smembers(self._k("open", profile_id)))
        return await self.get_many(ids)

    async def listing(
        self, profile_id: str | None, state: CareState | None, limit: int
    ) -> list[CareTask]:
        """Tasks, newest first: of one profile, in one state, at most ``limit``."""
        if profile_id is not None and state == CareState.OPEN:
            tasks = await self.open_of(profile_id)
        else:
            found = await self._redis.zrange(self._k("tasks"), 0, -1, desc=True)
            ids = [_text(i) for i in found if isinstance(i, bytes | str)]
            tasks = []
            for start in range(0, len(ids), 500):
                for t in await self.get_many(ids[start : start + 500]):
                    if profile_id is not None and t.profile_id != profile_id:
                        continue
                    if state is not None and t.state != state:
                        continue
                    tasks.append(t)
                if len(tasks) >= limit:
                    break
        tasks.sort(key=lambda t: t.created_at, reverse=True)
        return tasks[:limit]

    # -- pending occasions -------------------------------------------------------------

    async def schedule(self, member: str, at: datetime, profile_id: str | None = None) -> None:
        """Make ``member`` due at ``at``; ``profile_id``: cancellable by a follow-up."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.zadd(self._k("due"), {member: _ms(at)})
        if profile_id is not None:
            pipe.sadd(self._k("pending", profile_id), member)
        await pipe.execute()

    async def unschedule(self, member: str, profile_id: str | None = None) -> None:
        """Forget a pending occasion (it fired, or it no longer applies)."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(self._k("due"), member)
        if profile_id is not None:
            pipe.srem(self._k("pending", profile_id), member)
        await pipe.execute()

    async def pending_of(self, profile_id: str) -> list[str]:
        """The profile's cancellable pending occasions."""
        return [_text(m) for m in await self._redis.smembers(self._k("pending", profile_id))]

    async def claim_due(self, now: datetime, lease_s: float, limit: int = 500) -> list[str]:
        """Pending occasions due by ``now``, leased for ``lease_s``."""
        args = [_ms(now), _ms(now) + int(lease_s * 1000), limit]
        return [_text(m) for m in await self._claim([self._k("due")], args)]

    # -- deliveries --------------------------------------------------------------------

    async def claim_deliveries(self, now: datetime, lease_s: float, limit: int) -> list[str]:
        """Task ids whose next delivery attempt is due, leased for ``lease_s``."""
        args = [_ms(now), _ms(now) + int(lease_s * 1000), limit]
        return [_text(m) for m in await self._claim([self._k("outbox")], args)]

    async def delivered(self, task_id: str, at: datetime) -> None:
        """A delivery was accepted: nothing more to send."""
        await self._accepted("delivered", task_id, at)

    async def close_delivered(self, task_id: str, at: datetime) -> None:
        """A close's delivery was accepted: nothing more to send for the task."""
        await self._accepted("closed_delivered", task_id, at)

    async def _accepted(self, record: str, task_id: str, at: datetime) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(self._k("outbox"), task_id)
        pipe.hdel(self._k("attempts"), task_id)
        pipe.hset(self._k(record), task_id, _ms(at))
        await pipe.execute()

    async def close_delivered_at(self, task_id: str) -> int | None:
        """Epoch ms of the accepted delivery of the task's close, if any."""
        raw = await self._redis.hget(self._k("closed_delivered"), task_id)
        return int(raw) if raw else None

    async def failed(self, task_id: str) -> int:
        """Count a failed attempt; the attempts so far."""
        return int(await self._redis.hincrby(self._k("attempts"), task_id, 1))

    async def retry_at(self, task_id: str, at: datetime) -> None:
        """Try again at ``at`` (only while the task is still in the outbox)."""
        await self._redis.zadd(self._k("outbox"), {task_id: _ms(at)}, xx=True)

    async def give_up(self, task_id: str) -> None:
        """Stop delivering (the task went to the dead letters)."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(self._k("outbox"), task_id)
        pipe.hdel(self._k("attempts"), task_id)
        await pipe.execute()

    async def requeue(self, task_id: str, at: datetime) -> None:
        """Deliver a task again from the first attempt (after a dead letter, on request)."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(self._k("attempts"), task_id)
        pipe.zadd(self._k("outbox"), {task_id: _ms(at)})
        await pipe.execute()

    async def delivered_at(self, task_id: str) -> int | None:
        """Epoch ms of the accepted delivery, if any."""
        raw = await self._redis.hget(self._k("delivered"), task_id)
        return int(raw) if raw else None

    async def tasks_of(self, profile_id: str) -> list[str]:
        """Every task id of a profile, open or closed."""
        return sorted(_text(m) for m in await self._redis.smembers(self._k("of", profile_id)))

    async def erase(self, profile_id: str, task_ids: list[str], rule_ids: list[str]) -> None:
        """Remove a profile's tasks, pending occasions and deliveries (an erasure)."""
        pending = await self.pending_of(profile_id)
        pipe = self._redis.pipeline(transaction=True)
        if task_ids:
            pipe.delete(*(self._k("task", t) for t in task_ids))
            pipe.zrem(self._k("tasks"), *task_ids)
            pipe.zrem(self._k("outbox"), *task_ids)
            pipe.srem(self._k("unpub"), *task_ids)
            pipe.hdel(self._k("attempts"), *task_ids)
            pipe.hdel(self._k("delivered"), *task_ids)
            pipe.hdel(self._k("closed_delivered"), *task_ids)
        due = [*pending, *(f"d|{r}|{profile_id}" for r in rule_ids)]
        if due:
            pipe.zrem(self._k("due"), *due)
        for key in ("open", "of", "pending"):
            pipe.delete(self._k(key, profile_id))
        await pipe.execute()

    async def backfilled(self) -> str | None:
        """The fingerprint of the date rules last backfilled over every profile."""
        raw = await self._redis.get(self._k("backfilled"))
        return _text(raw) if raw is not None else None

    async def mark_backfilled(self, fingerprint: str) -> None:
        """Record a finished backfill of the date rules ``fingerprint`` names."""
        await self._redis.set(self._k("backfilled"), fingerprint)

    async def lock(self, name: str, holder: str, ttl_s: int) -> bool:
        """Take lock ``name`` for ``ttl_s`` unless someone holds it."""
        return bool(await self._redis.set(self._k("lock", name), holder, nx=True, ex=ttl_s))

    async def unlock(self, name: str) -> None:
        """Release lock ``name``."""
        await self._redis.delete(self._k("lock", name))

    async def unpublished(self) -> list[str]:
        """Task ids whose current record is not acknowledged by Kafka yet."""
        return [_text(m) for m in await self._redis.smembers(self._k("unpub"))]
