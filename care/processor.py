"""The care processor's logic: tag entries, dates and events in; tasks and closes out.

Agents (care/agents.py) only decode and hand batches here. Every effect is idempotent: a
task is created once per id (rule, profile, occasion), so a replay, a retry or a second
worker fires nothing twice; a close applies once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import structlog

from care.rules import CareRule, date_due, event_due, month_day, next_occasion
from care.store import CareStore
from contracts.care import CareState, CareTask, task_id
from contracts.events import ResolvedEvent
from contracts.profiles import Profile, ProfileChange
from privacy.crypto import is_sealed
from profiles.store import ProfileStore
from runtime.publisher import Record

log = structlog.get_logger()

#: How long a claimed due occasion is held before another worker may take it.
LEASE_S = 60.0

Publish = Callable[[list[Record]], Awaitable[None]]


def anchor_of(profile: object, field: str) -> tuple[int | None, int, int] | None:
    """The (year, month, day) of a declared date field of a profile (``trait.birthday``,
    ``account.since``); a sealed date reads as the month and day kept beside it."""
    family, _, name = field.partition(".")
    values = getattr(profile, "traits" if family == "trait" else family, None)
    if not isinstance(values, dict):
        return None
    value = values.get(name)
    if is_sealed(value):
        value = values.get(f"{name}_md")
    return month_day(value)


def _trait_change(field: str) -> str:
    """The fold's change name for a declared field (profiles/fold.py)."""
    family, _, name = field.partition(".")
    return f"trait:{name}" if family == "trait" else f"trait:{field}"


class Care:
    """Rules applied to profile changes, resolved events and the clock."""

    def __init__(
        self,
        rules: list[CareRule],
        store: CareStore,
        profiles: ProfileStore,
        zone: ZoneInfo,
        publish: Publish,
        topic: str,
        deliver: bool,
    ) -> None:
        self.rules = {r.id: r for r in rules}
        self.store = store
        self._profiles = profiles
        self._zone = zone
        self._publish = publish
        self._topic = topic
        self._deliver = deliver
        self._by_tag: dict[str, list[CareRule]] = {}
        for r in rules:
            if r.trigger.tag_entered:
                self._by_tag.setdefault(r.trigger.tag_entered, []).append(r)
        self._dated = [r for r in rules if r.trigger.date]
        self._after = [r for r in rules if r.trigger.after_event]
        self._closing = [r for r in rules if r.closes_on]

    # -- inputs ------------------------------------------------------------------------

    async def on_changes(self, changes: list[ProfileChange], now: datetime) -> None:
        """Tags entered make tasks; a changed date field (or a merge) re-schedules."""
        made: list[CareTask] = []
        for c in changes:
            for tag in c.tags_added:
                for rule in self._by_tag.get(tag, ()):
                    occasion = c.at.astimezone(self._zone).date()
                    made += await self._make(rule, c.profile_id, occasion, c.at, c.event_id, now)
            for rule in self._dated:
                assert rule.trigger.date is not None
                if c.merged or _trait_change(rule.trigger.date) in c.changed:
                    await self.schedule_date(rule, c.profile_id, now)
        await self._emit(made)

    async def on_events(self, events: list[ResolvedEvent], now: datetime) -> None:
        """Closing events close (and cancel); ``after_event`` triggers are scheduled."""
        closed: list[CareTask] = []
        for r in events:
            pid, ev = r.profile_id, r.event
            if not pid:
                continue
            target = ev.properties.get("task_id")
            for rule in self._closing:
                if rule.closed_by(ev):
                    closed += await self._close_rule(
                        rule, pid, ev.timestamp, ev.event_id, now, target
                    )
            for rule in self._after:
                if ev.type.value == rule.trigger.after_event and await self._applies(rule, r):
                    occasion, due = event_due(rule, ev.timestamp, self._zone)
                    ms = int(ev.timestamp.timestamp() * 1000)
                    member = f"e|{rule.id}|{pid}|{occasion.isoformat()}|{ms}|{ev.event_id}"
                    await self.store.schedule(member, due, pid)
        await self._emit(closed)

    async def _applies(self, rule: CareRule, r: ResolvedEvent) -> bool:
        """Whether a ``ticket: complaint`` rule's event is a complaint's, not followed up."""
        if rule.trigger.ticket != "complaint":
            return True
        ticket = r.event.properties.get("ticket_id")
        if ticket is None:
            return False
        pid = await self._profiles.survivor(r.profile_id)  # merged since: its survivor holds it
        if not await self._profiles.has_entry(pid, "complaints", str(ticket)):
            return False
        # A follow-up that arrived before the resolution (late events) already did the work.
        return not await self._profiles.has_entry(pid, "follow_ups", str(ticket))

    async def schedule_date(self, rule: CareRule, pid: str, now: datetime) -> None:
        """(Re-)schedule the next occasion of a date rule for a profile."""
        await self._schedule(rule, pid, await self._profiles.get(pid), now)

    async def _schedule(
        self, rule: CareRule, pid: str, profile: Profile | None, now: datetime
    ) -> None:
        assert rule.trigger.date is not None
        member = f"d|{rule.id}|{pid}"
        if profile is not None and profile.profile_id != pid:
            profile = None  # merged into another profile, which has its own schedule
        anchor = anchor_of(profile, rule.trigger.date) if profile else None
        if anchor is None:
            await self.store.unschedule(member)
            return
        _, due = date_due(rule, anchor, now.astimezone(self._zone).date(), self._zone)
        await self.store.schedule(member, due)

    def fingerprint(self) -> str:
        """What a backfill of the date rules depends on: their ids and triggers."""
        return ";".join(
            sorted(f"{r.id}={r.trigger.label}-{r.trigger.days_before}" for r in self._dated)
        )

    async def backfill(self, now: datetime, progress: Callable[[int], None] | None = None) -> int:
        """Schedule the date rules over every stored profile (profiles whose date arrived
        before these rules ran); the number of profiles seen."""
        cursor, seen = 0, 0
        while True:
            cursor, pids = await self._profiles.scan_ids(cursor)
            if pids and self._dated:
                for pid, profile in zip(pids, await self._profiles.get_many(pids), strict=True):
                    for rule in self._dated:
                        await self._schedule(rule, pid, profile, now)
            seen += len(pids)
            if progress is not None:
                progress(seen)
            if cursor == 0:
                break
        await self.store.mark_backfilled(self.fingerprint())
        return seen

    # -- the clock -----------------------------------------------------------------------

    async def fire_due(self, now: datetime) -> int:
        """Make the tasks of the occasions that fell due; the number of tasks made."""
        made: list[CareTask] = []
        for member in await self.store.claim_due(now, LEASE_S):
            kind, rule_id, pid, *rest = member.split("|", 5)
            rule = self.rules.get(rule_id)
            if rule is None or not (rule.trigger.date if kind == "d" else rule.trigger.after_event):
                # A rule removed, or now of another kind: its occasions go with it.
                await self.store.unschedule(member, pid if kind == "e" else None)
            elif kind == "d":
                made += await self._fire_date(rule, pid, member, now)
            else:
                occasion, ms, cause = date.fromisoformat(rest[0]), int(rest[1]), rest[2]
                due = datetime.fromtimestamp(ms / 1000, self._zone) + timedelta(
                    days=rule.trigger.days
                )
                made += await self._make(rule, pid, occasion, due, cause, now)
                await self.store.unschedule(member, pid)
        await self._emit(made)
        return len(made)

    async def _fire_date(
        self, rule: CareRule, pid: str, member: str, now: datetime
    ) -> list[CareTask]:
        assert rule.trigger.date is not None
        profile = await self._profiles.get(pid)
        if profile is not None and profile.profile_id != pid:
            profile = None  # merged into another profile, which has its own schedule
        anchor = anchor_of(profile, rule.trigger.date) if profile else None
        if anchor is None:
            await self.store.unschedule(member)
            return []
        today = now.astimezone(self._zone).date()
        occasion, due = date_due(rule, anchor, today, self._zone)
        if due > now:  # the date changed since it was scheduled
            await self.store.schedule(member, due)
            return []
        made = await self._make(rule, pid, occasion, due, "care:due", now)
        following = next_occasion(anchor, occasion + timedelta(days=1))
        _, next_due = date_due(rule, anchor, following, self._zone)
        await self.store.schedule(member, next_due)
        return made

    # -- tasks ---------------------------------------------------------------------------

    async def _make(
        self, rule: CareRule, pid: str, occasion: date, due: datetime, cause: str, now: datetime
    ) -> list[CareTask]:
        task = CareTask(
            task_id=task_id(rule.id, pid, occasion),
            rule=rule.id,
            title=rule.title,
            profile_id=pid,
            occasion=occasion,
            trigger=rule.trigger.label,
            cause=cause,
            state=CareState.OPEN,
            due_at=due,
            created_at=now,
        )
        if not await self.store.create(task, self._deliver):
            return []
        stored = await self.store.get(task.task_id)  # a retried create keeps the first record
        log.info("care.task", rule=rule.id, profile_id=pid, task_id=task.task_id)
        return [stored or task]

    async def _close_rule(
        self, rule: CareRule, pid: str, at: datetime, by: str, now: datetime, target: object
    ) -> list[CareTask]:
        """Close the profile's open tasks of ``rule`` (only task ``target`` when the event
        names one) and cancel its pending occasions that came before the event."""
        if target is not None:
            found = await self.store.get(str(target))
            if found is None or found.rule != rule.id or found.profile_id != pid:
                return []
            done = await self.store.close(found, now, by)
            return [done] if done else []
        for member in await self.store.pending_of(pid):
            parts = member.split("|", 5)
            if parts[1] == rule.id and int(parts[4]) <= at.timestamp() * 1000:
                await self.store.unschedule(member, pid)
        out = []
        for task in await self.store.open_of(pid):
            if task.rule == rule.id and (done := await self.store.close(task, now, by)):
                out.append(done)
        return out

    async def close(self, task: CareTask, by: str, now: datetime) -> CareTask | None:
        """Close one open task (API, CLI): its closed record is published first, so a Kafka
        that does not acknowledge it (``KafkaUnavailable``) leaves it open. None when it was
        not open."""
        if task.state != CareState.OPEN:
            return None
        closed = task.model_copy(
            update={"state": CareState.CLOSED, "closed_at": now, "closed_by": by}
        )
        record = Record(self._topic, task.task_id.encode(), closed.model_dump_json().encode())
        await self._publish([record])
        done = await self.store.close(task, now, by)
        await self.store.published([task.task_id])
        return done

    async def erase(self, profile_ids: list[str]) -> int:
        """Forget erased profiles: tombstones for their tasks on ``cdp.care.tasks`` (published
        first, so a crash repeats the erasure), then their state in Redis. Tasks removed."""
        removed = 0
        for pid in profile_ids:
            ids = await self.store.tasks_of(pid)
            if ids:
                await self._publish([Record(self._topic, t.encode(), None) for t in ids])
            await self.store.erase(pid, ids, sorted(self.rules))
            removed += len(ids)
        return removed

    async def _emit(self, tasks: list[CareTask]) -> None:
        if not tasks:
            return
        records = [
            Record(self._topic, t.task_id.encode(), t.model_dump_json().encode()) for t in tasks
        ]
        await self._publish(records)
        await self.store.published([t.task_id for t in tasks])

    async def republish(self) -> int:
        """Publish the records a crash left unacknowledged (run once when a worker starts)."""
        ids = await self.store.unpublished()
        tasks = await self.store.get_many(ids)
        await self._emit(tasks)
        return len(tasks)
