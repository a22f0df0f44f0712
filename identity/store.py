"""The identity graph in Redis: atomic Lua resolution, one script call per chunk of a batch."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from contracts.events import Event, ResolvedEvent
from contracts.identity import Decision, LedgerEntry, Rule
from identity.aliases import survivor
from identity.rules import IdentityRules, ordered
from identity.scripts import CHUNK, GRAPH, BatchScript, chunks, load


@dataclass(frozen=True)
class Located:
    """An event and where it was read from in ``cdp.events.raw``."""

    event: Event
    partition: int
    offset: int


@dataclass
class Outcome:
    """What resolution decided for one event."""

    resolved: ResolvedEvent
    ledger: list[LedgerEntry] = field(default_factory=list)
    #: True when the event id was already resolved at another offset (a client retry).
    duplicate: bool = False
    created: bool = False
    #: True when every identifier of the event belongs to an erased person: nothing is kept.
    suppressed: bool = False

    @property
    def kept(self) -> bool:
        """Whether the event goes on (published, folded, stored): not a retry, not erased."""
        return not (self.duplicate or self.suppressed)


def _list(value: Any) -> list[dict[str, Any]]:
    # cjson encodes an empty Lua table as {}: treat it as an empty list.
    return value if isinstance(value, list) else []


def to_outcome(item: Located, result: dict[str, Any], at: datetime) -> Outcome:
    """Turn the Lua script's answer for one event into contract records."""
    eid = item.event.event_id
    merges = _list(result["merges"])
    ledger = [
        LedgerEntry(
            decision=Decision.MERGED,
            rule=Rule.SHARED_IDENTIFIER,
            profile_id=m["survivor"],
            other_profile_id=m["merged"],
            identifier=m["id"],
            event_id=eid,
            at=at,
        )
        for m in merges
    ]
    ledger += [
        LedgerEntry(
            decision=Decision.REFUSED,
            rule=Rule(r["rule"]),
            profile_id=r["pid"],
            other_profile_id=r["other"],
            identifier=r["id"],
            event_id=eid,
            at=at,
        )
        for r in _list(result["refusals"])
    ]
    event = item.event
    dropped = result.get("stripped")
    stripped = {str(i) for i in dropped} if isinstance(dropped, list) else set()
    if stripped:
        # An erased person's identifiers beside others: the event goes on without them.
        kept = [i for i in event.identifiers if i.key() not in stripped]
        event = event.model_copy(update={"identifiers": kept})
    # Constructed, not validated: every value comes from the event and the script's answer.
    # Every field given: model_construct inspects a default factory's signature on each call.
    resolved = ResolvedEvent.model_construct(
        schema_version=1,
        event=event,
        profile_id=result["pid"],
        raw_partition=item.partition,
        raw_offset=item.offset,
        merged=[m["merged"] for m in merges],
        resolution=int(result.get("seq") or 0),
    )
    return Outcome(
        resolved,
        ledger,
        duplicate=bool(result["dup"]),
        created=bool(result["created"]),
        suppressed=bool(_list(result.get("suppressed"))),
    )


#: Sets per day of the retry window. A day's fingerprints spread over them; at 1,000 events/s
#: (86.4M a day) each holds ~330, under Redis's 512-member limit for the 8-byte intset
#: encoding. Size it at about a day's events / 400 (or raise set-max-intset-entries).
RETRY_BUCKETS = 262_144


def fingerprint(source: str, event_id: str) -> int:
    """A signed 64-bit hash of an event's identity: message ids are unique per source."""
    digest = hashlib.blake2b(f"{source}\x00{event_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class IdentityStore:
    """Resolve batches of events against the identity graph under ``namespace``."""

    def __init__(
        self,
        client: aioredis.Redis,
        rules: IdentityRules,
        namespace: str = "cdp",
        retry_window_s: int = 7 * 24 * 3600,
        retry_buckets: int = RETRY_BUCKETS,
    ) -> None:
        self._redis = client
        self._rules = rules
        self._ns = namespace
        self._window_days = max(math.ceil(retry_window_s / 86_400), 1)
        self._buckets = retry_buckets
        here = Path(__file__).parent
        self._script = BatchScript(client, here / "resolve.lua", [GRAPH])
        self._upgrade = client.register_script(load(here / "graph_upgrade.lua", [GRAPH]))
        self._remember = client.register_script((here / "remember.lua").read_text())
        self._rules_json = json.dumps({t: [int(r.unique), r.cap] for t, r in rules.types.items()})
        self._custom_json = json.dumps([int(rules.custom.unique), rules.custom.cap])

    @property
    def window_days(self) -> int:
        """Days of the retry window."""
        return self._window_days

    def _args(
        self,
        items: Sequence[Located],
        today: datetime,
        hints: Sequence[str] | None = None,
        ids_from: str = "",
    ) -> list[str | int | bytes]:
        batch = []
        for n, item in enumerate(items):
            ids: list[str] = []
            blocked: list[str] = []
            invalid: list[str] = []
            sealed: dict[str, str] = {}
            for ident in ordered(item.event.identifiers):
                if ident.sealed is not None:
                    sealed[ident.key()] = ident.sealed
                if not ident.normalized:
                    invalid.append(ident.key())
                elif self._rules.blocked(ident):
                    blocked.append(ident.key())
                else:
                    ids.append(ident.key())
            fp = fingerprint(item.event.source, item.event.event_id)
            entry = [item.event.event_id, str(item.partition), str(item.offset), ids, blocked]
            consent_ms = (
                int(item.event.received_at.timestamp() * 1000)
                if any(item.event.consent.values())
                else 0
            )
            batch.append(
                [
                    *entry,
                    invalid,
                    item.event.source,
                    str(fp),
                    fp % self._buckets,
                    sealed,
                    consent_ms,
                    *([hints[n]] if hints is not None else []),
                ]
            )
        return [
            self._ns,
            self._window_days,
            self._rules.supernode_limit,
            self._rules_json,
            self._custom_json,
            orjson.dumps(batch),
            int(today.timestamp()) // 86_400,
            "1" if hints is not None else "0",
            ids_from,
        ]

    async def resolve(self, batch: list[Located], at: datetime) -> list[Outcome]:
        """Resolve a batch: one script call per chunk, all chunks in one pipelined round trip.

        Each event is atomic on its own; a chunk keeps Redis busy for a few milliseconds at
        most, so profile reads from the API interleave between chunks.
        """
        answers = await self._script.run([self._args(chunk, at) for chunk in chunks(batch)])
        return [to_outcome(item, raw, at) for item, raw in zip(batch, answers, strict=True)]

    async def replay(
        self, batch: list[Located], hints: list[str], at: datetime, ids_from: str = ""
    ) -> list[Outcome]:
        """Resolve events of history again (a rebuild): as ``resolve``, without the retry
        window (outcomes are held until ``settle``, so a step replayed after a crash gets
        its merges again), each new profile taking its id from ``hints`` (the profile id
        history recorded for the event) when that id is free, else from the counter of the
        namespace ``ids_from`` (default: this one)."""
        calls = [
            self._args(batch[start : start + CHUNK], at, hints[start : start + CHUNK], ids_from)
            for start in range(0, len(batch), CHUNK)
        ]
        answers = await self._script.run(calls)
        return [to_outcome(item, raw, at) for item, raw in zip(batch, answers, strict=True)]

    async def remember(self, seen: Sequence[tuple[str, str, int]], today: datetime) -> int:
        """Put (source, event id, day resolved) back into the retry window; return how many
        fingerprints were new."""
        now = int(today.timestamp()) // 86_400
        added = 0
        for start in range(0, len(seen), 2_000):
            flat: list[int] = []
            for source, event_id, day in seen[start : start + 2_000]:
                fp = fingerprint(source, event_id)
                flat += [day, fp % self._buckets, fp]
            added += int(await self._remember(args=[self._ns, self._window_days, now, *flat]))
        return added

    async def settle(self, batch: list[Located]) -> None:
        """Forget the held outcomes of ``batch`` once its records are published (acked).

        Until then a redelivered offset replays its outcome; after, the event's fingerprint in
        the retry window makes a redelivery a duplicate, with nothing to publish again.
        """
        if not batch:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            self.forget_held(pipe, batch)
            await pipe.execute()

    def forget_held(self, pipe: Pipeline, batch: list[Located]) -> None:
        """Queue on ``pipe`` the deletion of ``batch``'s held outcomes (``settle`` without
        executing: a caller makes it atomic with a record of its own)."""
        offsets: dict[int, list[str]] = {}
        for item in batch:
            offsets.setdefault(item.partition, []).append(str(item.offset))
        for part, offs in offsets.items():
            pipe.hdel(f"{self._ns}:ev:held:{part}", *offs)

    async def survivor(self, profile_id: str) -> str:
        """Follow aliases from a (possibly merged) profile id to its survivor."""
        return await survivor(self._redis, self._ns, profile_id)

    async def holders(self, identifier: str) -> list[str]:
        """Return the survivor profiles holding an identifier (``type:value``)."""
        members = await self._redis.smembers(f"{self._ns}:i:{identifier}")
        found = {await self.survivor(m.decode() if isinstance(m, bytes) else m) for m in members}
        return sorted(found, key=int)

    async def history(self, profile_id: str) -> list[dict[str, Any]]:
        """Return the merges and refusals that shaped a profile, oldest first."""
        pid = await self.survivor(profile_id)
        lines = await self._redis.lrange(f"{self._ns}:p:{pid}:log", 0, -1)
        return [json.loads(line) for line in lines]

    async def merged(self, profile_id: str) -> list[str]:
        """The profile ids merged into a profile (its explain log names every one, since a
        merged profile's log moves into its survivor's)."""
        return sorted(
            {
                str(e["other"])
                for e in await self.history(profile_id)
                if e.get("decision") == "merged"
            }
        )

    async def identifiers(self, profile_id: str) -> list[str]:
        """Return the identifiers of a profile (after following aliases)."""
        pid = await self.survivor(profile_id)
        fields = await self._redis.hkeys(f"{self._ns}:p:{pid}:g")
        names = [f.decode() if isinstance(f, bytes) else f for f in fields]
        found = [n[1:] for n in names if n.startswith("=")]
        if not found:  # stored before the one-hash layout and not moved yet
            members = await self._redis.smembers(f"{self._ns}:p:{pid}:ids")
            found = [m.decode() if isinstance(m, bytes) else m for m in members]
        return sorted(found)

    async def sealed(self, profile_id: str) -> dict[str, str]:
        """A profile's identifiers (``type:~blind``) -> their sealed values, where sealed."""
        pid = await self.survivor(profile_id)
        flat = await self._redis.hgetall(f"{self._ns}:p:{pid}:g")
        out: dict[str, str] = {}
        for f, v in flat.items():
            name = f.decode() if isinstance(f, bytes) else f
            value = v.decode() if isinstance(v, bytes) else v
            if name.startswith("=") and value != "1":
                out[name[1:]] = value
        return out

    async def upgrade_graphs(self) -> int:
        """Move every profile stored in the older three-key graph layout into its hash.

        Resolving moves a profile the first time it touches it; this sweeps the rest, then
        marks the namespace so the scripts stop looking for the older keys. Idempotent, and
        safe beside running workers of this version. Returns how many profiles moved.
        """
        flag = f"{self._ns}:graph:v2"
        if await self._redis.exists(flag):
            return 0
        moved, pids = 0, []
        async for key in self._redis.scan_iter(match=f"{self._ns}:p:*:ids", count=1000):
            name = key.decode() if isinstance(key, bytes) else key
            pids.append(name[len(self._ns) + 3 : -4])
            if len(pids) >= CHUNK:
                moved += int(await self._upgrade(args=[self._ns, *pids]))
                pids = []
        if pids:
            moved += int(await self._upgrade(args=[self._ns, *pids]))
        await self._redis.set(flag, "1")
        return moved


def profiles_created(client: Any, namespace: str) -> int:
    """Profile ids ever created in ``namespace`` (resolve.lua's ``seq``; blocking client)."""
    return int(client.get(f"{namespace}:seq") or 0)
