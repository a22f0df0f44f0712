"""The profile processor: cdp.events.resolved -> Redis profiles (and their tags) +
cdp.profiles.changes."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from functools import partial
from typing import Any

from contracts.events import ResolvedEvent
from contracts.profiles import ProfileChange
from contracts.topics import (
    EVENTS_DEADLETTER,
    EVENTS_RESOLVED,
    PROFILES_CHANGES,
    PROFILES_SNAPSHOTS,
)
from profiles.store import Applied, Observed, latest, snapshot_value
from runtime.agents import batch_agent
from runtime.metrics import observe_freshness
from runtime.publisher import Record
from runtime.retry import until_done
from runtime.undecodable import dead_letters, split
from tagging.changes import change_records, tag_only
from tagging.store import TagChange

#: The most bytes of snapshots one ``cdp.profiles.snapshots`` record carries: well under the
#: 1 MB Kafka takes by default, and a few hundred profiles of the usual size.
SNAPSHOTS_RECORD_BYTES = 512 * 1024

#: How long a worker's claim on the tag backfill lasts unless renewed (every walk step renews
#: it): a worker killed mid-walk blocks the backfill this long, not until its next start.
BACKFILL_LEASE_S = 60

log = logging.getLogger(__name__)


def decode(events: list[Any]) -> tuple[list[ResolvedEvent], list[Any]]:
    """Split faust events into resolved events and undecodable messages."""
    good, bad = split(ResolvedEvent, events)
    return [r for r, _ in good], bad


def changed_names(applied: list[Applied]) -> dict[str, list[str] | None]:
    """Per changed profile, the union of its fold change names (None after a merge)."""
    out: dict[str, list[str] | None] = {}
    for a in applied:
        if a.change is None:
            continue
        pid, names = a.change.profile_id, out.get(a.change.profile_id, [])
        if a.change.merged or names is None:
            out[pid] = None
        else:
            out[pid] = [*names, *a.change.changed]
    return out


def with_tags(
    changes: list[ProfileChange], tagged: list[TagChange], at: datetime
) -> list[ProfileChange]:
    """Attach each profile's tag change to its last change record of the batch."""
    last = {c.profile_id: n for n, c in enumerate(changes)}
    out = list(changes)
    for t in tagged:
        update = {"tags_added": t.added, "tags_removed": t.removed}
        n = last.get(t.profile_id)
        if n is None:
            out.append(tag_only(t, "merge", at))
        else:
            update["changed"] = [*out[n].changed, "tags"]
            out[n] = out[n].model_copy(update=update)
    return out


def replayed_tags(applied: list[Applied]) -> dict[str, str]:
    """Per profile with a fold told again, its tags before the first such fold."""
    before: dict[str, str] = {}
    for a in applied:
        if a.replayed and a.change is not None:
            before.setdefault(a.profile_id, a.tags_before)
    return before


class ProfileStep:
    """One micro-batch of the profile processor: fold, tag, publish, then settle.

    A crash after the fold and before the publish leaves the fold's change held in Redis;
    when the batch is redelivered the fold answers it again (``Applied.replayed``), and its
    tag change is recomputed from the tags held with it, so no change record is lost (it may
    be published twice: at least once, like every topic here).
    """

    def __init__(self, deps: Any) -> None:
        self.deps = deps
        self.changes_topic = deps.topic(PROFILES_CHANGES.name)
        publish = deps.settings.worker.publish_snapshots
        self.snapshots_topic = deps.topic(PROFILES_SNAPSHOTS.name) if publish else ""
        self.dead_topic = deps.topic(EVENTS_DEADLETTER.name)

    async def membership(self, tagged: list[TagChange], at: datetime) -> list[Record]:
        """Enters and exits of saved live segments that these tag changes caused."""
        if self.deps.membership is None or not tagged:
            return []
        found: list[Record] = await until_done(
            "segments.live", partial(self.deps.membership.records, tagged, at)
        )
        return found

    async def records(
        self, batch: list[ResolvedEvent], bad: list[Any], now: datetime
    ) -> tuple[list[Record], list[Observed]]:
        """Fold and tag ``batch``; return everything to publish for it, and the profiles
        whose snapshots it holds (``settle`` them once published)."""
        deps = self.deps
        # With tags, the fold answers the profiles it changed: the evaluation reads nothing.
        read = deps.tags is not None
        applied = await until_done("profiles.apply", partial(deps.profiles.apply, batch, now, read))
        changes = [a.change for a in applied if a.change is not None]
        members: list[Record] = []
        seen: dict[str, Observed] | None = {} if self.snapshots_topic else None
        if deps.tags is not None and changes:
            tagged = await until_done(
                "tags.evaluate",
                partial(deps.tags.after_fold, changed_names(applied), now, seen, latest(applied)),
            )
            before = replayed_tags(applied)
            if before:
                told = await until_done("tags.replayed", partial(deps.tags.since, before))
                tagged = [t for t in tagged if t.profile_id not in before] + told
            changes = with_tags(changes, tagged, now)
            departed = deps.tags.departed([x for a in applied for x in a.left])
            members = await self.membership(tagged + departed, now)
        dead = dead_letters(bad, "profiles", self.dead_topic)
        snapshots, shots = self.snapshot_records(list(seen.values()) if seen else [])
        out = dead + change_records(self.changes_topic, changes) + members
        return out + snapshots, shots

    def snapshot_records(self, seen: list[Observed]) -> tuple[list[Record], list[Observed]]:
        """The ``cdp.profiles.snapshots`` records of profiles as the tag evaluation left them
        (many per record, each record at most ``SNAPSHOTS_RECORD_BYTES``), and the profiles
        they carry. A profile too big for a record is left to the history to read back."""
        names = self.deps.profiles.tag_names
        if not seen or names is None:
            return [], []
        records: list[Record] = []
        shots: list[Observed] = []
        chunk: list[bytes] = []
        size = 0

        def close() -> None:
            key = shots[len(shots) - len(chunk)].stored.profile_id.encode()
            value = b'{"snapshots":[' + b",".join(chunk) + b"]}"
            records.append(Record(self.snapshots_topic, key, value))

        for o in seen:
            value = snapshot_value(o, names(o.tags) if o.tags else [])
            if len(value) > SNAPSHOTS_RECORD_BYTES:
                continue
            if chunk and size + len(value) > SNAPSHOTS_RECORD_BYTES:
                close()
                chunk, size = [], 0
            chunk.append(value)
            shots.append(o)
            size += len(value) + 1
        if chunk:
            close()
        return records, shots

    async def run(self, events: list[Any]) -> None:
        """Process one batch of faust events, publish (acked), then release its held changes."""
        batch, bad = decode(events)
        out, shots = await self.records(batch, bad, datetime.now(UTC))
        await until_done("profiles.publish", partial(self.deps.publisher.publish, out))
        observe_freshness("profile", [r.event.received_at for r in batch])
        await until_done("profiles.settle", partial(self.deps.profiles.settle, batch, shots))


def register(app: Any, deps: Any, *, consume: bool = True) -> None:
    """Add the profile agent, and the timed-tag and backfill tasks, to ``app``.

    ``consume=False``: the one-pass processor folds the events it resolves, so no agent reads
    ``cdp.events.resolved``; the timed-tag and backfill tasks are added all the same.
    """
    conf = deps.settings.worker
    step = ProfileStep(deps)

    def records(changes: list[ProfileChange]) -> list[Record]:
        return change_records(step.changes_topic, changes)

    if consume:
        batch_agent(app, deps, EVENTS_RESOLVED.name, "profiles", step.run)

    if deps.tags is None:
        return
    tags = deps.tags
    settings = deps.settings.tags

    async def publish_tag_changes(found: list[TagChange], cause: str) -> None:
        at = datetime.now(UTC)
        out = records([tag_only(t, cause, at) for t in found]) + await step.membership(found, at)
        await until_done("tags.publish", partial(deps.publisher.publish, out))

    @app.timer(settings.due_interval_s)
    async def tags_due() -> None:
        """Re-evaluate timed tags (recency windows, birthdays) of profiles that fell due."""
        due = await until_done("tags.due", partial(tags.run_due, datetime.now(UTC)))
        if due.changes:
            await publish_tag_changes(due.changes, "time")
        await until_done("tags.settle", partial(tags.settle_due, due))

    @app.task
    async def tags_backfill() -> None:
        """Backfill new or changed tags over existing profiles, once across workers."""
        if not tags.pending or not settings.backfill_on_start:
            return
        lock = f"{conf.namespace}:tags:backfill:lock"
        while not await deps.redis.set(lock, "1", nx=True, ex=BACKFILL_LEASE_S):
            # Another worker is on it: wait for it to finish (or its lease to lapse).
            await asyncio.sleep(BACKFILL_LEASE_S / 4)
            tags.pending = await tags.still_pending(tags.pending)
            if not tags.pending:
                return
        try:
            ids = [t.id for t in tags.pending]
            log.info("tags.backfill.start %d tags: %s", len(ids), ", ".join(ids[:10]))
            seen, changed = await tags.backfill(
                tags.pending,
                now=lambda: datetime.now(UTC),
                progress=lambda _seen, _total: deps.redis.expire(lock, BACKFILL_LEASE_S),
                on_changes=lambda found: publish_tag_changes(found, "backfill"),
            )
            log.info("tags.backfill.done profiles=%d changed=%d", seen, changed)
            tags.pending = []
        finally:
            await deps.redis.delete(lock)
