"""Unified profiles in Redis: apply folds atomically per event, read them back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from contracts.events import ResolvedEvent
from contracts.profiles import ChannelActivity, Profile, ProfileChange, TraitValue
from identity.aliases import survivor
from identity.scripts import GRAPH, BatchScript, chunks, grouped_chunks
from profiles.fold import PARTS_OF_DAY, FoldRules, fold
from profiles.quality import conflict_report

_BITS = Path(__file__).parent.parent / "tagging" / "bits.lua"
#: The helper that answers one whole profile (read.lua, and fold.lua for what it changed).
_PROFILE = Path(__file__).parent / "profile.lua"
#: Helpers of the scripts that read or write fold watermarks.
WATERMARK = Path(__file__).parent / "watermark.lua"
_WM_READ = "return cjson.encode(wm_all(ARGV[1], ARGV[2]))"
_WM_UPGRADE = """local moved = 0
for n = 2, #ARGV do moved = moved + wm_upgrade(ARGV[1], ARGV[n]) end
return moved"""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def _time(ms: Any) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(int(ms) / 1000, UTC)


def epoch_ms(moment: datetime | None) -> int | None:
    """A profile's time as epoch ms, exactly (no float): the stored times are whole ms."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MS


def _kept_values(main: dict[str, str]) -> dict[str, list[tuple[Any, str, int, datetime]]]:
    """The traits with more than one value kept (``c:<trait>``, see fold.lua): each value
    as (value, source, count, last seen), most reported first, then most recently seen."""
    out: dict[str, list[tuple[Any, str, int, datetime]]] = {}
    for field, raw in main.items():
        if not field.startswith("c:"):
            continue
        kept = orjson.loads(raw)
        kept.pop("~", None)
        if len(kept) < 2:  # one value: no conflict (most traits)
            continue
        values = [
            (orjson.loads(v), e[0], e[1], datetime.fromtimestamp(int(e[2]) / 1000, UTC))
            for v, e in kept.items()
        ]
        values.sort(key=lambda t: (-t[2], -t[3].timestamp()))
        out[field[2:]] = values
    return out


def conflicts(main: dict[str, str]) -> dict[str, list[TraitValue]]:
    """The traits with more than one value kept, each value with its source, count and last
    seen, most reported first."""
    return {
        trait: [TraitValue(value=v, source=s, count=n, last_seen=at) for v, s, n, at in values]
        for trait, values in _kept_values(main).items()
    }


def nps_class(score: int | None) -> str | None:
    """Return promoter (9-10), passive (7-8) or detractor (0-6)."""
    if score is None:
        return None
    return "promoter" if score >= 9 else "passive" if score >= 7 else "detractor"


def _whole(value: Any) -> int | None:
    """A score trait (``csat_last``, ``nps_last``) as the contract has it, a whole number;
    None for anything else: a client may send its own trait of that name ("great", 8.5),
    which must not make the profile unreadable nor stop tag evaluation."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    return value


#: The profile's times that ``profile_values`` gives in epoch ms.
PROFILE_TIMES = ("first_seen", "last_seen", "first_purchase_at", "last_purchase_at")


def profile_values(
    pid: str,
    main: dict[str, str],
    traits: dict[str, str],
    ids: list[str] | dict[str, Any],
    sets: dict[str, Any],
    counts: dict[str, int],
    tags: list[str],
) -> dict[str, Any]:
    """A stored profile (read.lua's answer, split by prefix) as ``Profile``'s fields, but
    with times in epoch ms (None when unset) and each channel's activity a dict: tag facts
    are computed from these without the model, which ``as_profile`` builds from them."""
    # The sets a profile can hold (profiles/fold.py), as lists of their members: a set's
    # members are hash fields, so distinct, and only a difference needs a Python set (a
    # set of each one cost ~4% of a stream process). cjson encodes an empty Lua table as
    # {}: an empty set arrives as a dict.
    chans, cats = sets.get("channels") or (), sets.get("categories") or ()
    opened, resolved = sets.get("tickets_opened") or (), sets.get("tickets_resolved") or ()
    complaints = sets.get("complaints") or ()
    open_complaints = len(set(complaints).difference(resolved)) if resolved else len(complaints)
    open_tickets = len(set(opened).difference(resolved)) if resolved else len(opened)
    orders, csat = counts.get("orders", 0), counts.get("csat", 0)
    n = {k: int(v) for k, v in main.items() if not k.startswith(("_", "c:"))}
    t = {k: orjson.loads(v) for k, v in traits.items()}
    spend = n.get("e:orders", 0) / 100
    nps = _whole(t.get("nps_last"))
    return {
        "profile_id": pid,
        "identifiers": sorted(ids or ()),
        "traits": {
            k: v
            for k, v in t.items()
            if not k.startswith(("account.", "consent.")) and k not in ("nps_last", "csat_last")
        },
        "first_seen": n.get("lo:first_seen"),
        "last_seen": n.get("hi:last_seen"),
        "channels": {
            ch: {
                "first_seen": n.get(f"lo:first_seen:{ch}"),
                "last_seen": n.get(f"hi:last_seen:{ch}"),
                "events": n.get(f"n:events:{ch}", 0),
            }
            for ch in sorted(chans)
        },
        "events": n.get("n:events", 0),
        "order_count": orders,
        "total_spend": spend,
        "average_spend": round(spend / orders, 2) if orders else None,
        "first_purchase_at": n.get("lo:first_purchase_at"),
        "last_purchase_at": n.get("hi:last_purchase_at"),
        "refund_total": n.get("e:refunds", 0) / 100,
        "categories": sorted(cats),
        "csat_last": _whole(t.get("csat_last")),
        "csat_average": round(n.get("e:csat", 0) / csat, 2) if csat else None,
        "csat_count": csat,
        "nps_last": nps,
        "nps_class": nps_class(nps),
        "complaints": len(complaints),
        "open_complaints": open_complaints,
        "tickets": len(opened),
        "tickets_resolved": len(resolved),
        "open_tickets": open_tickets,
        "follow_ups": len(sets.get("follow_ups") or ()),
        "orders_by_daypart": {d: counts.get(f"orders_{d}", 0) for d in PARTS_OF_DAY},
        "orders_weekend": counts.get("orders_weekend", 0),
        "purchase_months": sorted(sets.get("purchase_months") or ()),
        "points_earned": n.get("e:points_earned", 0),
        "points_redeemed": n.get("e:points_redeemed", 0),
        "points_balance": n.get("e:points_earned", 0) - n.get("e:points_redeemed", 0),
        "coupons_redeemed": n.get("n:coupons_redeemed", 0),
        "store_visits": n.get("n:store_visits", 0),
        "member_level": t.get("member_level"),
        "account": {
            k.removeprefix("account."): v for k, v in t.items() if k.startswith("account.")
        },
        "consent": {
            k.removeprefix("consent."): bool(v) for k, v in t.items() if k.startswith("consent.")
        },
        "tags": tags,
    }


def _timed(values: dict[str, Any]) -> dict[str, Any]:
    """``profile_values``' fields with its times (the profile's and each channel's) as
    datetimes, as the model holds them; channels stay dicts."""
    out = {**values, **{f: _time(values[f]) for f in PROFILE_TIMES}}
    out["channels"] = {
        ch: {
            "first_seen": _time(a["first_seen"]),
            "last_seen": _time(a["last_seen"]),
            "events": a["events"],
        }
        for ch, a in values["channels"].items()
    }
    return out


def as_profile(values: dict[str, Any], main: dict[str, str]) -> Profile:
    """The ``Profile`` of ``profile_values``' fields and the main fields they were read from
    (for the conflicts)."""
    fields = _timed(values)
    fields["channels"] = {ch: ChannelActivity(**a) for ch, a in fields["channels"].items()}
    return Profile(**fields, conflicts=conflicts(main))


#: ``Profile``'s fields in the order its JSON gives them.
_PROFILE_FIELDS = tuple(Profile.model_fields)


def profile_json(
    values: dict[str, Any], main: dict[str, str], tags: list[str] | None = None
) -> bytes:
    """``as_profile(values, main)``'s JSON (with ``tags`` instead of the stored ones if
    given), the same bytes as the model's ``model_dump_json``, without building the model:
    snapshots serialise every changed profile, and the model took most of that time."""
    timed = _timed(values)
    if tags is not None:
        timed["tags"] = tags
    timed["conflicts"] = {
        trait: [{"value": v, "source": s, "count": n, "last_seen": at} for v, s, n, at in kept]
        for trait, kept in _kept_values(main).items()
    }
    out = {f: timed[f] for f in _PROFILE_FIELDS}
    return orjson.dumps(out, option=orjson.OPT_UTC_Z)


@dataclass(frozen=True)
class Stored:
    """A profile as stored: its fields, its version and its tag bitmap (hex, "" if none).

    ``values`` are what tag evaluation reads (``tagging.facts.facts_of``); the ``Profile``
    model is built from them when first asked for.
    """

    #: The profile's fields as ``profile_values`` gives them (times in epoch ms).
    values: dict[str, Any]
    version: str
    tags: str
    #: Identifier (``type:~blind``) -> its sealed value, for identifiers stored sealed.
    sealed: dict[str, str]
    #: With ``read(with_keys=True)``: kid -> the stored data key (as the key store keeps it)
    #: of the profile's sealed values, for those Redis holds.
    keys: dict[str, bytes]
    #: The profile hash's main fields as read; its conflict fields (``c:<trait>``) give the
    #: model's ``conflicts``.
    main: dict[str, str]

    @property
    def profile_id(self) -> str:
        return str(self.values["profile_id"])

    @cached_property
    def profile(self) -> Profile:
        """The profile as the contract's model."""
        return as_profile(self.values, self.main)

    def json(self, tags: list[str] | None = None) -> bytes:
        """The profile as the model's JSON (``tags`` instead of the stored ones if given)."""
        return profile_json(self.values, self.main, tags)


@dataclass(frozen=True)
class Observed:
    """A profile as it stood at one moment: read for a tag evaluation whose store found it
    unchanged (tagging/apply.lua), so ``stored`` with ``tags`` is exactly its state then."""

    stored: Stored
    #: The tag bitmap (hex) stored with it.
    tags: str
    #: The Redis clock at that moment, in nanoseconds: the snapshot's version.
    clock_ns: int


def clock_time(clock_ns: int) -> datetime:
    """The time of a Redis clock reading in nanoseconds (``ProfileStore.clock_ns``, a
    snapshot's version), to the microsecond."""
    return _EPOCH + timedelta(microseconds=clock_ns // 1000)


def snapshot_value(observed: Observed, tags: list[str]) -> bytes:
    """The ``cdp.profiles.snapshots`` record (a ``ProfileSnapshot``) of ``observed``, whose
    tags are named ``tags``."""
    at = clock_time(observed.clock_ns)
    return b'{"profile_id":%s,"version":%d,"at":"%s","profile":%s}' % (
        orjson.dumps(observed.stored.profile_id),
        observed.clock_ns,
        at.strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode(),
        observed.stored.json(tags),
    )


@dataclass(frozen=True)
class Applied:
    """The outcome of folding one event."""

    profile_id: str
    applied: bool
    change: ProfileChange | None
    #: Merged-away profiles that had tags, with their tag bitmap (hex) before leaving.
    left: tuple[tuple[str, str], ...] = ()
    #: Folded before, but its change may not have been published (a crash in between):
    #: ``change`` is told again, and ``tags_before`` is the profile's tags (hex) before it.
    replayed: bool = False
    tags_before: str = ""
    #: With ``apply(read=True)``: the profile as it stood after the script call that folded
    #: this event (given with the call's last event of each profile it changed).
    now: Stored | None = None


def latest(applied: Sequence[Applied]) -> dict[str, Stored]:
    """Per profile, the newest state a fold answered (``Applied.now``): the highest version,
    as a profile's events may span calls when other events merge into it."""
    out: dict[str, Stored] = {}
    for a in applied:
        now = a.now
        if now is not None:
            seen = out.get(now.profile_id)
            if seen is None or int(now.version) > int(seen.version):
                out[now.profile_id] = now
    return out


class ProfileStore:
    """Profiles under ``namespace`` (shared with identity, whose aliases it follows)."""

    def __init__(self, client: aioredis.Redis, rules: FoldRules, namespace: str = "cdp") -> None:
        self._redis = client
        self._rules = rules
        self._ns = namespace
        here = Path(__file__).parent
        self._fold = BatchScript(client, here / "fold.lua", [_BITS, WATERMARK, GRAPH, _PROFILE])
        helpers = WATERMARK.read_text()
        self._wm_read = client.register_script(helpers + _WM_READ)
        self._wm_upgrade = client.register_script(helpers + _WM_UPGRADE)
        self._read = BatchScript(client, here / "read.lua", [GRAPH, _PROFILE])
        self._snapped = BatchScript(client, here / "snapped.lua")
        self._take = client.register_script((here / "take_changed.lua").read_text())
        #: Tag bitmap (hex) -> tag ids; set when a tag catalog is loaded.
        self.tag_names: Callable[[str], list[str]] | None = None

    async def apply(
        self, batch: list[ResolvedEvent], at: datetime, read: bool = False
    ) -> list[Applied]:
        """Fold a batch: one script call per chunk, each event atomic and applied once.

        A profile's events of the batch go in one call (``grouped_chunks``): the fold skips
        an offset at or below the profile's watermark, so an earlier event refused in one
        call while a later one was applied in the next would be skipped on the retry.
        ``read``: the same call also answers each profile it changed as it then stands
        (``Applied.now``, ``latest``), for the tag evaluation that follows.
        """
        todo = [r for r in batch if r.profile_id]
        rows = [
            [
                r.profile_id,
                str(r.raw_partition),
                str(r.raw_offset),
                fold(r, self._rules).ops,
                r.merged,
            ]
            for r in todo
        ]
        grouped, order = grouped_chunks(rows, key=itemgetter(0))
        flag = "r" if read else "-"
        calls = [[self._ns, orjson.dumps(chunk), flag] for chunk in grouped]
        by_index = dict(zip(order, await self._fold.run(calls), strict=True))
        out = []
        for n, r in enumerate(todo):
            answer = by_index[n]
            now = answer.get("now")
            out.append(self._applied(r, answer, at, self._stored(now) if now else None))
        return out

    @staticmethod
    def _applied(
        r: ResolvedEvent, answer: dict[str, Any], at: datetime, now: Stored | None = None
    ) -> Applied:
        changed = answer["changed"] if isinstance(answer["changed"], list) else []
        change = None
        replayed = bool(answer.get("replay"))
        if (answer["applied"] or replayed) and (changed or r.merged):
            # Every field given: pydantic's model_construct inspects a default factory's
            # signature on each call (~100 us for ``list``), 50x a validated construction.
            change = ProfileChange.model_construct(
                schema_version=1,
                profile_id=answer["pid"],
                event_id=r.event.event_id,
                changed=changed,
                merged=r.merged,
                tags_added=[],
                tags_removed=[],
                at=at,
            )
        left = tuple((str(g), str(t)) for g, t in answer.get("left", ()))
        tags_before = answer.get("tg", "")
        return Applied(
            answer["pid"], bool(answer["applied"]), change, left, replayed, tags_before, now
        )

    async def settle(self, batch: list[ResolvedEvent], snapshots: Sequence[Observed] = ()) -> None:
        """Forget the held changes of ``batch``: their change records are published. With
        ``snapshots`` (published too): unmark those still the profile's state as changed
        since their last snapshot, so the history does not read them back."""
        held: dict[int, list[int]] = {}
        for r in batch:
            if r.profile_id:
                held.setdefault(r.raw_partition, []).append(r.raw_offset)
        if held:
            pipe = self._redis.pipeline(transaction=False)
            for part, offsets in held.items():
                pipe.hdel(f"{self._ns}:fold:held:{part}", *offsets)
            await pipe.execute()
        if snapshots:
            rows = [[o.stored.profile_id, o.stored.version, o.tags] for o in snapshots]
            await self._snapped.run([[self._ns, orjson.dumps(chunk)] for chunk in chunks(rows)])

    async def clock_ns(self) -> int:
        """The Redis server's clock, in nanoseconds: versions snapshots across processes."""
        seconds, micros = await self._redis.time()
        return (int(seconds) * 1_000_000 + int(micros)) * 1000

    async def watermarks(self, profile_id: str) -> dict[str, int]:
        """The fold watermarks of events resolved to ``profile_id``: raw partition -> the
        highest raw offset folded."""
        marks = orjson.loads(await self._wm_read(args=[self._ns, profile_id]))
        # cjson encodes an empty Lua table as {}; a table keyed by partition as an object.
        return {str(p): int(o) for p, o in (marks or {}).items()}

    async def upgrade_watermarks(self) -> int:
        """Move every fold watermark stored in the older layout (a hash per profile id) into
        the shared hashes, then mark the namespace so the fold stops reading the older keys.
        Idempotent, and safe beside running folds of this version. Returns how many moved."""
        flag = f"{self._ns}:fold:wm:v2"
        if await self._redis.exists(flag):
            return 0
        moved, pids = 0, []
        prefix = f"{self._ns}:wm:"
        async for key in self._redis.scan_iter(match=f"{prefix}*", count=1000):
            pids.append((key.decode() if isinstance(key, bytes) else key)[len(prefix) :])
            if len(pids) >= 100:
                moved += int(await self._wm_upgrade(args=[self._ns, *pids]))
                pids = []
        if pids:
            moved += int(await self._wm_upgrade(args=[self._ns, *pids]))
        await self._redis.set(flag, "1")
        return moved

    async def take_changed(self, age: bool = False) -> list[str]:
        """Return the profiles changed since the last call that finished with ``done_changed``.

        The fold marks every profile it changes in a ``dirty`` set, in the same atomic step.
        This moves the set aside (fresh changes start a new one) and returns it; a set moved
        aside before a crash is returned again, so a snapshot is never lost, only repeated.
        ``age`` (the stream publishes snapshots): marks wait one call more before they are
        returned, and those the stream publishes meanwhile are dropped (``settle``).
        """
        taken = await self._take(args=[self._ns, "age" if age else "all"])
        return sorted(m.decode() if isinstance(m, bytes) else m for m in taken)

    async def done_changed(self) -> None:
        """Forget the profiles ``take_changed`` returned: their snapshots are stored."""
        await self._redis.delete(f"{self._ns}:dirty:taking")

    async def conflict_report(self, top: int = 20) -> list[dict[str, Any]]:
        """The (trait, source pair) disagreements counted by the fold, most first."""
        return await conflict_report(self._redis, self._ns, top)

    async def survivor(self, profile_id: str) -> str:
        """Follow aliases from a (possibly merged) profile id to its survivor."""
        return await survivor(self._redis, self._ns, profile_id)

    async def scan_ids(self, cursor: int = 0, count: int = 1000) -> tuple[int, list[str]]:
        """One SCAN step over stored profiles: (next cursor, profile ids; 0 when done)."""
        prefix = f"{self._ns}:pf:"
        nxt, keys = await self._redis.scan(cursor, match=f"{prefix}*", count=count)
        ids = []
        for key in keys:
            rest = (key.decode() if isinstance(key, bytes) else key)[len(prefix) :]
            if ":" not in rest:
                ids.append(rest)
        return int(nxt), ids

    async def has_entry(self, profile_id: str, name: str, member: str) -> bool:
        """Whether the profile's keyed set ``name`` (``complaints``, ``follow_ups``...) holds
        ``member``."""
        field = f"s:{name}:{member}"
        return bool(await self._redis.hexists(f"{self._ns}:pf:{profile_id}", field))

    async def get(self, profile_id: str) -> Profile | None:
        """Read a profile (a merged id answers with its survivor); None when unknown."""
        return (await self.get_many([profile_id]))[0]

    async def get_many(self, profile_ids: list[str]) -> list[Profile | None]:
        """Read several profiles (after resolving aliases), one script call per chunk.

        Each profile is read atomically, so a reader never sees half of a fold or a merge.
        """
        return [s.profile if s else None for s in await self.read(profile_ids)]

    async def read(self, profile_ids: list[str], with_keys: bool = False) -> list[Stored | None]:
        """Like ``get_many``, with each profile's version and stored tag bitmap (and the
        data keys of its sealed values, for a reader that opens them)."""
        flag = "k" if with_keys else "-"
        calls = [[self._ns, flag, *chunk] for chunk in chunks(profile_ids)]
        return [self._stored(a) if a else None for a in await self._read.run(calls)]

    def _stored(self, answer: list[Any]) -> Stored:
        """A profile as profile.lua answers it."""
        pid, main, traits, ids, sets, counts, sealed, keys = answer
        tags = main.get("_tg", "")
        names = self.tag_names(tags) if self.tag_names and tags else []
        values = profile_values(pid, main, traits, ids, sets, counts, names)
        # cjson encodes an empty Lua table as {}; a list only if it had array items.
        stored = {kid: bytes.fromhex(raw) for kid, raw in (keys or {}).items()}
        return Stored(values, main.get("_v", "0"), tags, sealed or {}, stored, main)
