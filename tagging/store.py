"""Tags in Redis: evaluate after folds and when time makes them due; compact indexes.

Per profile, the tags are one hex bitmap field of its main hash (``_tg``: bit i = the tag of
ordinal i), about 60 bytes for 240 tags instead of a 240-member set. Per tag, the index is a
Redis bitmap over profile ordinals (``tag:<ordinal>``), one bit per profile: BITCOUNT is the
count, BITOP combines tags. Tag ordinals are assigned once and never reused, so a bitmap
means the same thing across catalog versions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from identity.scripts import BatchScript, chunks
from profiles.store import Observed, ProfileStore, Stored
from tagging.catalog import Catalog, Selection, Tag
from tagging.facts import changed_facts, facts_of

log = logging.getLogger(__name__)
_HERE = Path(__file__).parent
_BITS = _HERE / "bits.lua"
#: How long a claimed due profile is held before another worker may take it again.
DUE_LEASE_MS = 60_000
_ATTEMPTS = 5

_ORDINALS = """
local ns = ARGV[1]
local out = {}
for n = 2, #ARGV do
  local ord = redis.call('HGET', ns .. ':tags:ord', ARGV[n])
  if not ord then
    ord = redis.call('INCR', ns .. ':tags:next') - 1
    redis.call('HSET', ns .. ':tags:ord', ARGV[n], ord)
  end
  table.insert(out, tonumber(ord))
end
return out
"""

# A namespace where no profile was ever created (``seq``, identity/resolve.lua) or tagged
# (``pord:next``, tagging/apply.lua) holds no stale tag value: the tags are recorded as
# backfilled, atomically with that check, so a first start over a backlog does not walk the
# profiles the stream is creating (each is evaluated on every tag when first tagged).
# ARGV[1] namespace, then tag id, fingerprint pairs. Returns 1 when it recorded them.
_FRESH = """
local ns = ARGV[1]
if redis.call('EXISTS', ns .. ':seq', ns .. ':pord:next') > 0 then return 0 end
for n = 2, #ARGV, 2 do redis.call('HSET', ns .. ':tags:print', ARGV[n], ARGV[n + 1]) end
return 1
"""


def sync_catalog(
    redis_url: str, catalog: Catalog, namespace: str, evaluator: bool = False
) -> list[Tag]:
    """Bind ``catalog`` to its stored ordinals (new tags get new ones), before any evaluation.

    Blocking on purpose: processors call it before their event loop starts. Returns the tags
    whose rule is new or changed since their last backfill: their stored values are missing
    or stale until ``TagStore.backfill`` has run over the existing profiles.

    ``evaluator`` (profiles processors only, which evaluate tags) also drops the indexes of
    stored tags this catalog no longer has, and in a namespace with no profile yet records
    its tags as backfilled (``_FRESH``: none is pending). Readers (API, CLI) do neither: one
    deployed with an older catalog must not delete the index of a tag the processors
    evaluate, nor vouch for a rule they do not run.
    """
    client = redis.Redis.from_url(redis_url)
    try:
        ids = [t.id for t in catalog.tags]
        ords = client.eval(_ORDINALS, 0, namespace, *ids)
        catalog.bind(dict(zip(ids, (int(o) for o in ords), strict=True)))
        # Tags no longer in the catalog: drop their index and fingerprint. Their ordinal stays
        # reserved (a tag that comes back gets it again, and a backfill, as its print is gone).
        every = {text(k): int(v) for k, v in client.hgetall(f"{namespace}:tags:ord").items()}
        retired = sorted(set(every) - set(ids)) if evaluator else []
        if retired:
            client.delete(*(f"{namespace}:tag:{every[t]}" for t in retired))
            client.hdel(f"{namespace}:tags:print", *retired)
            log.info("tags retired: %s", ", ".join(retired))
        stored = client.hgetall(f"{namespace}:tags:print")
        _ensure_universe(client, namespace)
        known = {text(k): text(v) for k, v in stored.items()}
        pending = [t for t in catalog.tags if known.get(t.id) != t.fingerprint]
        prints = [x for t in pending for x in (t.id, t.fingerprint)]
        if evaluator and prints and client.eval(_FRESH, 0, namespace, *prints):
            log.info("tags: a new namespace, nothing to backfill (%d tags)", len(pending))
            pending = []
    finally:
        client.close()
    return pending


def _ensure_universe(client: redis.Redis, namespace: str) -> None:
    """Build ``tags:all`` (every tagged profile's ordinal) if an older version left none.

    ``pord:<n>`` hashes hold exactly the ordinals of live tagged profiles (a merge removes
    the merged one), so they give the universe; afterwards apply.lua and untag keep it.
    """
    universe = f"{namespace}:tags:all"
    if client.exists(universe) or not client.exists(f"{namespace}:pord:next"):
        return
    last = int(client.get(f"{namespace}:pord:next") or 0)
    pipe = client.pipeline(transaction=False)
    for n in range(last // 128 + 1):
        for ordinal in client.hkeys(f"{namespace}:pord:{n}"):
            pipe.setbit(universe, int(ordinal), 1)
    pipe.execute()


@dataclass
class Due:
    """One claim of due profiles: the tag changes to publish, then settle."""

    changes: list[TagChange]
    #: Per claimed profile, its next due time in ms (0: none; -1: keep the lease).
    next_due: dict[str, int]
    #: The claim's lease end: a due time still equal to it was not moved by anyone else.
    lease_until: int


@dataclass(frozen=True)
class TagChange:
    """Tags a profile gained and lost in one evaluation, and its tag bits before and after."""

    profile_id: str
    added: list[str]
    removed: list[str]
    #: The profile's tag bitmaps (bit = ``Tag.bit``) before and after: live segments compare
    #: membership on them.
    before: int = field(default=0, compare=False, repr=False)
    after: int = field(default=0, compare=False, repr=False)


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bits(mask: int) -> list[int]:
    """Indexes of the set bits of ``mask``."""
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


def _hex(mask: int) -> str:
    # "0", not "": a profile evaluated with no tag must not look never evaluated (which
    # would make every change re-evaluate its whole catalog).
    return format(mask, "x")


class TagStore:
    """Evaluates the catalog against profiles and keeps tags and indexes in Redis."""

    def __init__(
        self,
        client: aioredis.Redis,
        catalog: Catalog,
        profiles: ProfileStore,
        namespace: str = "cdp",
    ) -> None:
        self._redis = client
        self.catalog = catalog
        self._profiles = profiles
        self._ns = namespace
        self._apply = BatchScript(client, _HERE / "apply.lua", [_BITS])
        self._claim = BatchScript(client, _HERE / "due.lua")
        self._settle = BatchScript(client, _HERE / "settle.lua")
        profiles.tag_names = self.names
        #: Tags new or changed since their last backfill (set by ``sync_catalog``'s caller).
        self.pending: list[Tag] = []
        #: True once the catalog is bound to the stored ordinals (``bind``).
        self.bound = False
        self._by_change: dict[frozenset[str], Selection] = {}
        self._bind_lock = asyncio.Lock()

    def bind(self, redis_url: str, evaluator: bool = False) -> list[Tag]:
        """Bind the catalog to its stored ordinals (blocking); remember the pending tags.

        ``evaluator``: this process evaluates tags (see sync_catalog).
        """
        self.pending = sync_catalog(redis_url, self.catalog, self._ns, evaluator)
        self._by_change = {}  # bits may have moved
        self.bound = True
        return self.pending

    async def ensure_bound(self, redis_url: str) -> None:
        """Bind once, from the event loop (readers bind lazily: Redis may start after them)."""
        async with self._bind_lock:
            if not self.bound:
                await asyncio.to_thread(self.bind, redis_url)

    def names(self, hex_bitmap: str) -> list[str]:
        """The tag ids set in a stored bitmap (bits of retired tags are ignored)."""
        if not hex_bitmap or not self.bound:
            return []
        return self.catalog.ids(int(hex_bitmap, 16))

    async def still_pending(self, tags: list[Tag]) -> list[Tag]:
        """Those of ``tags`` that no worker has backfilled with their current rule yet."""
        if not tags:
            return []
        stored = await self._redis.hmget(f"{self._ns}:tags:print", [t.id for t in tags])
        return [
            t
            for t, fp in zip(tags, stored, strict=True)
            if (fp.decode() if isinstance(fp, bytes) else fp) != t.fingerprint
        ]

    async def mark_backfilled(self, tags: list[Tag]) -> None:
        """Record that ``tags`` hold their current rule's value on every existing profile."""
        if tags:
            await self._redis.hset(
                f"{self._ns}:tags:print", mapping={t.id: t.fingerprint for t in tags}
            )

    async def after_fold(
        self,
        changed: dict[str, list[str] | None],
        now: datetime,
        seen: dict[str, Observed] | None = None,
        known: Mapping[str, Stored] | None = None,
    ) -> list[TagChange]:
        """Re-evaluate, for each changed profile, the tags its change can affect.

        ``changed`` maps a profile id to the fold's change names (None: merged, so all tags).
        ``seen``: filled with each profile whose tags were stored, as it stood then (by its
        stored id), for a snapshot of it. ``known``: profiles as the fold answered them
        (``profiles.store.latest``), evaluated without reading them back; one changed since
        is read again, as any stale read is.
        """
        todo: dict[str, Selection | None] = {}
        for pid, names in changed.items():
            if names is None:
                todo[pid] = None
                continue
            selection = self.for_change(names)
            if selection.tags:
                todo[pid] = selection
        return await self._evaluate(todo, now, seen=seen, known=known)

    def for_change(self, names: list[str]) -> Selection:
        """The compiled tags a fold's change ``names`` can affect (cached per shape)."""
        key = frozenset(names)
        found = self._by_change.get(key)
        if found is None:
            found = self.catalog.select(changed_facts(key))
            if len(self._by_change) < 10_000:
                self._by_change[key] = found
        return found

    async def run_due(self, now: datetime, limit: int = 1000) -> Due:
        """Re-evaluate the timed tags of the profiles whose due time has passed.

        Pass the result to ``settle_due`` once its changes are published. Changes are told
        from the tags held at the first claim, so a claim repeated after a crash (the lease
        ended before the settle) still tells a change that was stored before it.
        """
        ms = int(now.timestamp() * 1000)
        claimed = await self._claim.run([[self._ns, ms, DUE_LEASE_MS, limit]])
        before = {str(pid): str(tags) for pid, tags in claimed}
        due = Due([], {}, ms + DUE_LEASE_MS)
        if before:
            timed: dict[str, Selection | None] = {p: self.catalog.timed_selection for p in before}
            await self._evaluate(timed, now, dues=due.next_due)
            due.changes.extend(await self.since(before))
            for pid in before:
                due.next_due.setdefault(pid, -1)  # gone or not stored: keep the lease
        return due

    async def settle_due(self, due: Due) -> None:
        """After publishing ``due.changes``: release the held tags, store the next due times."""
        if due.next_due:
            rows = [[pid, ms] for pid, ms in due.next_due.items()]
            await self._settle.run(
                [[self._ns, due.lease_until, orjson.dumps(chunk)] for chunk in chunks(rows)]
            )

    async def evaluate_all(
        self, pids: list[str], tags: list[Tag], now: datetime
    ) -> list[TagChange]:
        """Evaluate ``tags`` on ``pids`` (a backfill step); return the changes."""
        selection = self.catalog.selection(tags)
        return await self._evaluate(dict.fromkeys(pids, selection), now, force=True)

    async def _evaluate(
        self,
        todo: dict[str, Selection | None],
        now: datetime,
        force: bool = False,
        dues: dict[str, int] | None = None,
        seen: dict[str, Observed] | None = None,
        known: Mapping[str, Stored] | None = None,
    ) -> list[TagChange]:
        """Evaluate and store; a profile folded meanwhile is read and evaluated again.

        ``force`` (backfills) writes every evaluated tag's index bit, not only those that
        differ from the profile's stored tags: a new or changed rule's index is not yet in
        step with them. ``dues`` (claims of due profiles): the next due times are collected
        there for ``settle_due`` instead of stored, so the claim's lease stays until then.
        """
        clock = self.catalog.clock(now)
        changes: list[TagChange] = []
        for _ in range(_ATTEMPTS):
            if not todo:
                break
            given = known or {}
            known = None  # a retry reads the profile back
            pids = list(todo)
            missing = [pid for pid in pids if pid not in given]
            read = {}
            if missing:
                read = dict(zip(missing, await self._profiles.read(missing), strict=True))
            rows, asked = [], []
            for pid in pids:
                stored = given[pid] if pid in given else read[pid]
                if stored is not None:
                    row = self._row(stored, todo[pid], clock, force)
                    if dues is not None:
                        dues[row[0]], row[6] = row[6], -1
                    rows.append(row)
                    asked.append((pid, stored))
            answers = await self._apply.run(
                [[self._ns, orjson.dumps(chunk)] for chunk in chunks(rows)]
            )
            retry: dict[str, Selection | None] = {}
            for (pid, stored), row, state in zip(asked, rows, answers, strict=True):
                # "gone": merged away (or erased) since it was read. The merge's own fold
                # already folded it into the survivor and asked for all of that one's tags.
                if state == "stale":
                    retry[pid] = todo[pid]
                elif isinstance(state, list):  # ["ok", Redis clock in microseconds]
                    if seen is not None:
                        seen[row[0]] = Observed(stored, row[3], int(state[1]) * 1000)
                    if row[2] != row[3]:
                        change = self._change(row)
                        if change.added or change.removed:  # not only retired bits dropped
                            changes.append(change)
            todo = retry
        if todo:
            log.warning("tags not stored after %d attempts: %s", _ATTEMPTS, sorted(todo))
        return changes

    def _row(
        self, stored: Stored, chosen: Selection | None, clock: Any, force: bool = False
    ) -> list[Any]:
        facts = facts_of(stored.values, self.catalog.declared)
        # Never evaluated (or merged): every tag. Otherwise only those the change touches.
        if chosen is None or not stored.tags:
            chosen = self.catalog.select(None)
        values = self.catalog.run(facts, clock, chosen)
        old = int(stored.tags, 16) if stored.tags else 0
        # Bits of retired tags are dropped from the profile; their index is already gone.
        new = ((old & ~chosen.mask) | values) & self.catalog.known
        old &= self.catalog.known
        due = self.catalog.due(facts, clock) or 0
        # The stored profile id: a merged id read through its alias lands on the survivor.
        pid = stored.profile_id
        if force:
            sets, clears = _bits(values), _bits(chosen.mask & ~values)
        else:
            sets, clears = _bits(new & ~old), _bits(old & ~new)
        return [pid, stored.version, stored.tags, _hex(new), sets, clears, due]

    def departed(self, left: list[tuple[str, str]]) -> list[TagChange]:
        """Tag changes of merged-away profiles: every tag they had, removed (fold.lua untags
        them in the merge). Live segments publish their exits from these."""
        changes = []
        for pid, hexed in left:
            old = int(hexed, 16) & self.catalog.known
            if old:
                removed = sorted(self.catalog.by_bit[b].id for b in _bits(old))
                changes.append(TagChange(pid, [], removed, old, 0))
        return changes

    async def since(self, before: dict[str, str]) -> list[TagChange]:
        """Tag changes from earlier bitmaps (hex, per profile) to the stored ones.

        For folds told again after a crash: their tags may have been stored before it, so a
        re-evaluation finds nothing to change, yet the change was never published.
        """
        pids = list(before)
        changes = []
        for pid, stored in zip(pids, await self._profiles.read(pids), strict=True):
            # A profile merged away since reads as its survivor; its tags left with the
            # merge (told as a departure), so it has no tag change of its own to tell.
            if stored is not None and stored.profile_id == pid:
                change = self._change([pid, None, before[pid], stored.tags])
                if change.added or change.removed:
                    changes.append(change)
        return changes

    def _change(self, row: list[Any]) -> TagChange:
        """What an applied row changed in the profile's tags (of this catalog)."""
        old = int(row[2], 16) & self.catalog.known if row[2] else 0
        new = int(row[3], 16) if row[3] else 0
        by_bit = self.catalog.by_bit
        added = sorted(by_bit[b].id for b in _bits(new & ~old))
        removed = sorted(by_bit[b].id for b in _bits(old & ~new))
        return TagChange(row[0], added, removed, old, new)

    async def count(self, tag: Tag) -> int:
        """How many profiles have ``tag`` now (one BITCOUNT)."""
        return int(await self._redis.bitcount(f"{self._ns}:tag:{tag.bit}"))

    async def counts(self, tags: list[Tag]) -> dict[str, int]:
        """How many profiles have each of ``tags`` now (one pipelined round trip)."""
        pipe = self._redis.pipeline(transaction=False)
        for tag in tags:
            pipe.bitcount(f"{self._ns}:tag:{tag.bit}")
        found = await pipe.execute()
        return {tag.id: int(n) for tag, n in zip(tags, found, strict=True)}

    async def profiles(self, cursor: int = 0, count: int = 1000) -> tuple[int, list[str]]:
        """One SCAN step over stored profiles: (next cursor, profile ids)."""
        prefix = f"{self._ns}:pf:"
        nxt, keys = await self._redis.scan(cursor, match=f"{prefix}*", count=count)
        ids = []
        for key in keys:
            rest = text(key)[len(prefix) :]
            if ":" not in rest:
                ids.append(rest)
        return int(nxt), ids

    async def backfill(
        self,
        tags: list[Tag],
        now: Callable[[], datetime],
        progress: Callable[[int, int], Awaitable[None] | None] | None = None,
        on_changes: Callable[[list[TagChange]], Awaitable[None]] | None = None,
    ) -> tuple[int, int]:
        """Evaluate ``tags`` over every existing profile; return (profiles seen, changed).

        Progress is reported after each SCAN step and kept in ``tags:backfill`` in Redis.
        Live evaluation goes on meanwhile: both store through the same version check.
        """
        key = f"{self._ns}:tags:backfill"
        total = int(await self._redis.incrby(f"{self._ns}:pord:next", 0))
        await self._redis.hset(
            key, mapping={"tags": ",".join(t.id for t in tags), "seen": 0, "state": "running"}
        )
        cursor, seen, changed = 0, 0, 0
        while True:
            cursor, pids = await self.profiles(cursor)
            if pids:
                found = await self.evaluate_all(pids, tags, now())
                if found and on_changes is not None:
                    await on_changes(found)
                changed += len(found)
                seen += len(pids)
                await self._redis.hset(key, mapping={"seen": seen, "changed": changed})
                if progress is not None:
                    result = progress(seen, max(total, seen))
                    if result is not None:
                        await result
            if cursor == 0:
                break
        await self.mark_backfilled(tags)
        await self._redis.hset(key, mapping={"state": "done", "seen": seen, "changed": changed})
        return seen, changed


def tag_counts(client: redis.Redis, namespace: str) -> dict[str, int]:
    """Profiles holding each bound tag now, by tag id (blocking; one BITCOUNT per tag)."""
    stored = client.hgetall(f"{namespace}:tags:ord")
    ordinals = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in stored.items()}
    pipe = client.pipeline(transaction=False)
    for ordinal in ordinals.values():
        pipe.bitcount(f"{namespace}:tag:{ordinal}")
    return dict(zip(ordinals, map(int, pipe.execute()), strict=True))
