"""Per-subject data keys: durable in a compacted Kafka topic, served from Redis and memory.

Every identifier (a *subject*) has its own data key, created the first time ingest seals one
of its values, so the key exists before identity resolution says whose identifier it is.
Destroying the keys of a person's identifiers (``shred``) makes every copy of their sealed
values unreadable: in Kafka's retained log, in ClickHouse, in backups.

Where keys live:

- ``cdp.keys`` (compacted, kept forever): key = kid, value = the data key wrapped under a
  key-encryption key (``{"kid", "kek", "wrapped"}``); a shredded key is a tombstone. This is
  the durable copy: a key is acknowledged there before any value sealed under it is.
- Redis ``<ns>:dek:<kid[:2]>`` hashes (kid -> state + kek id + wrapped key, ~76 bytes; a
  bucket of ~100 keys is one listpack with ``hash-max-listpack-value 128``): the cache every
  process reads. ``<ns>:dek:restored`` marks a cache that holds the whole topic; a Redis
  that lost it (flushed, replaced) is restored from the topic before any key is created, so
  a lost cache never forks a key.
- each process's memory: unwrapped keys for ``cache_ttl_s``, so a shred reaches every running
  process within that time.

A key is created in two steps so that a crash can never leave a value sealed under a key that
is not durable: claim the kid in Redis (``P``, HSETNX: concurrent creators agree on one key),
publish it to the topic and wait for the acknowledgement, then mark it durable (``D``). A
process that meets a ``P`` publishes the same wrapped key itself before using it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import redis.asyncio as aioredis
import structlog

from contracts.keys import WrappedKey
from privacy.crypto import (
    DATA_KEY_BYTES,
    DataKey,
    KeyWrapper,
    MasterKeyError,
    b64,
    kid_of,
    unb64,
)
from runtime.publisher import Publisher, Record

log = structlog.get_logger()

#: (key, value) of every message of a topic up to its end offsets (blocking).
ReadTopic = Callable[[str], list[tuple[bytes | None, bytes | None]]]

_DURABLE, _PENDING = b"D", b"P"


#: Compare-and-set of one kid, ignoring the durable/pending state byte.
_CAS = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and string.sub(cur, 2) == string.sub(ARGV[2], 2) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"""


# The two scripts below take their kids (and values) packed in one argument: redis-py packs
# every argument in Python, which for a request bringing a thousand new identifiers cost
# more than the work itself.

#: ARGV: namespace, the kids concatenated (12 characters each):
#: {cache restored (0/1), stored value or false per kid}.
_FETCH = """
local ns, kids = ARGV[1], ARGV[2]
local out = {redis.call('EXISTS', ns .. ':dek:restored')}
for at = 1, #kids, 12 do
  local kid = string.sub(kids, at, at + 11)
  out[#out + 1] = redis.call('HGET', ns .. ':dek:' .. string.sub(kid, 1, 2), kid)
end
return out
"""

#: ARGV: namespace, 'nx' (claim: 1/0 per kid) or 'set', then kid (12 bytes) + value length
#: (1 byte) + value, repeated.
_STORE = """
local ns, nx, packed = ARGV[1], ARGV[2] == 'nx', ARGV[3]
local out, at = {}, 1
while at <= #packed do
  local kid = string.sub(packed, at, at + 11)
  local n = string.byte(packed, at + 12)
  local value = string.sub(packed, at + 13, at + 12 + n)
  at = at + 13 + n
  local key = ns .. ':dek:' .. string.sub(kid, 1, 2)
  if nx then
    out[#out + 1] = redis.call('HSETNX', key, kid, value)
  else
    redis.call('HSET', key, kid, value)
  end
end
return out
"""


class _Expiring:
    """kid -> data key for ``ttl_s``, at most ``size`` of them: a dict and a clock read.

    (cachetools' TTLCache keeps a linked list in order: ~16 us per insertion, which ingest
    paid per new identifier.) Expired entries are dropped when read, and all of them when
    the dict is full; if it is still full, it is cleared.
    """

    def __init__(self, size: int, ttl_s: float) -> None:
        self._items: dict[str, tuple[DataKey, float]] = {}
        self._size, self._ttl = size, ttl_s

    def get(self, kid: str) -> DataKey | None:
        item = self._items.get(kid)
        if item is None:
            return None
        if item[1] < time.monotonic():
            del self._items[kid]
            return None
        return item[0]

    def put(self, kid: str, key: DataKey) -> None:
        if len(self._items) >= self._size and kid not in self._items:
            now = time.monotonic()
            self._items = {k: v for k, v in self._items.items() if v[1] >= now}
            if len(self._items) >= self._size:
                self._items.clear()
        self._items[kid] = (key, time.monotonic() + self._ttl)

    def drop(self, kid: str) -> None:
        self._items.pop(kid, None)

    def __contains__(self, kid: str) -> bool:
        return self.get(kid) is not None


def _bucket(kid: str) -> str:
    return kid[:2]


def _encode(state: bytes, kek: str, wrapped: bytes) -> bytes:
    return state + kek.encode() + b"|" + wrapped


def _decode(raw: bytes) -> tuple[bytes, str, bytes]:
    state, rest = raw[:1], raw[1:]
    kek, _, wrapped = rest.partition(b"|")
    return state, kek.decode(), wrapped


class KeyStore:
    """Get, create, shred and restore data keys (one per subject; see the module doc)."""

    def __init__(
        self,
        client: aioredis.Redis,
        wrapper: KeyWrapper,
        publisher: Publisher,
        topic: str,
        read_topic: ReadTopic,
        namespace: str = "cdp",
        cache_ttl_s: float = 60.0,
        cache_size: int = 500_000,
    ) -> None:
        self._redis = client
        self._wrapper = wrapper
        self._publisher = publisher
        self._topic = topic
        self._read_topic = read_topic
        self._ns = namespace
        self._restored = f"{namespace}:dek:restored"
        self._cache = _Expiring(cache_size, cache_ttl_s)
        self._restore_lock = asyncio.Lock()
        self._cas = client.register_script(_CAS)
        self._fetch_script = client.register_script(_FETCH)
        self._store_script = client.register_script(_STORE)

    def _key(self, kid: str) -> str:
        return f"{self._ns}:dek:{_bucket(kid)}"

    # -- reading -------------------------------------------------------------------------

    async def _fetch(self, kids: list[str]) -> tuple[bool, dict[str, bytes | None]]:
        """(cache restored?, kid -> stored value) in one script call (a pipeline of HGETs
        costs redis-py ~20 us per command, which ingest pays for every new identifier)."""
        answers = await self._fetch_script(args=[self._ns, "".join(kids)])
        return bool(answers[0]), dict(zip(kids, answers[1:], strict=True))

    async def _store(self, claim: bool, items: list[tuple[str, bytes]]) -> list[int]:
        packed = b"".join(kid.encode() + bytes([len(value)]) + value for kid, value in items)
        answer = await self._store_script(args=[self._ns, "nx" if claim else "set", packed])
        return [int(n) for n in answer]

    async def keys(self, kids: Iterable[str]) -> dict[str, DataKey | None]:
        """The data keys of these kids; None for a key that does not exist (or was shredded)."""
        found: dict[str, DataKey | None] = {}
        missing: list[str] = []
        for kid in dict.fromkeys(kids):
            cached = self._cache.get(kid)
            if cached is None:
                missing.append(kid)
            else:
                found[kid] = cached
        if missing:
            restored, stored = await self._fetch(missing)
            if not restored:
                await self.ensure_restored()
                restored, stored = await self._fetch(missing)
            for kid, raw in stored.items():
                key = await self._usable(kid, raw) if raw is not None else None
                found[kid] = key
                if key is not None:  # an absent key may be created any moment: not cached
                    self._cache.put(kid, key)
        return found

    async def held(self, kids: Iterable[str]) -> set[str]:
        """Which of these data keys exist, without opening them (no master key needed)."""
        wanted = sorted(set(kids))
        if not wanted:
            return set()
        restored, stored = await self._fetch(wanted)
        if not restored:
            await self.ensure_restored()
            _, stored = await self._fetch(wanted)
        return {kid for kid, raw in stored.items() if raw is not None}

    async def adopt(self, stored: dict[str, bytes]) -> None:
        """Take data keys read from Redis by another script (a profile read fetches the keys
        of its sealed values with it): cached like keys this store fetched itself."""
        for kid, raw in stored.items():
            if kid not in self._cache:
                self._cache.put(kid, await self._usable(kid, raw))

    async def _usable(self, kid: str, raw: bytes) -> DataKey:
        state, kek, wrapped = _decode(raw)
        if state == _PENDING:
            # Claimed by a creator that may have died before the topic acknowledged it.
            await self._publish([(kid, kek, wrapped)])
            await self._redis.hset(self._key(kid), kid, _encode(_DURABLE, kek, wrapped))
        try:
            return DataKey(kid, self._wrapper.unwrap(kek, wrapped))
        except KeyError:
            raise MasterKeyError(
                f"data key {kid} is wrapped under key-encryption key {kek!r}, which the master "
                "keys do not hold (retired before every data key was rewrapped?)"
            ) from None

    # -- creating ------------------------------------------------------------------------

    async def for_subjects(self, blinds: Iterable[str]) -> dict[str, DataKey]:
        """The data key of each subject (blind index), created durably where there is none."""
        wanted = {b: kid_of(b) for b in blinds}
        have = await self.keys(wanted.values())
        absent = sorted({kid for kid, key in have.items() if key is None})
        if absent:
            have.update(await self._create(absent))
        return {b: have[kid] for b, kid in wanted.items()}  # type: ignore[misc]

    async def _create(self, kids: list[str]) -> dict[str, DataKey]:
        kek = self._wrapper.current
        fresh = {kid: secrets.token_bytes(DATA_KEY_BYTES) for kid in kids}
        wrapped = {kid: self._wrapper.wrap(kek, dek) for kid, dek in fresh.items()}
        claimed = await self._store(
            True, [(kid, _encode(_PENDING, kek, wrapped[kid])) for kid in kids]
        )
        won = [kid for kid, ok in zip(kids, claimed, strict=True) if ok]
        lost = [kid for kid, ok in zip(kids, claimed, strict=True) if not ok]
        if won:
            await self._publish([(kid, kek, wrapped[kid]) for kid in won])
            await self._store(False, [(kid, _encode(_DURABLE, kek, wrapped[kid])) for kid in won])
        out = {kid: DataKey(kid, fresh[kid]) for kid in won}
        if lost:
            # Another process claimed these first: use its keys (made durable if need be).
            _, stored = await self._fetch(lost)
            for kid, raw in stored.items():
                if raw is None:  # claimed and shredded meanwhile: very unlikely; try again
                    out.update(await self._create([kid]))
                else:
                    out[kid] = await self._usable(kid, raw)
        for kid, key in out.items():
            self._cache.put(kid, key)
        return out

    async def _publish(self, keys: list[tuple[str, str, bytes]]) -> None:
        at = datetime.now(UTC)
        records = [
            Record(
                self._topic,
                kid.encode(),
                WrappedKey(kid=kid, kek=kek, wrapped=b64(w), at=at).model_dump_json().encode(),
            )
            for kid, kek, w in keys
        ]
        await self._publisher.publish(records)

    # -- shredding -----------------------------------------------------------------------

    async def shred(self, kids: Iterable[str]) -> int:
        """Destroy these data keys everywhere: Redis and memory, then tombstones in the topic.

        Returns how many existed. Redis goes first so that a concurrent ``rewrap`` cannot put
        a key back (it re-checks Redis after publishing); if the tombstones are not
        acknowledged this raises, and the shred must be run again (it is idempotent).
        Other processes drop their copies within ``cache_ttl_s``.
        """
        kids = sorted(set(kids))
        if not kids:
            return 0
        have = await self.held(kids)
        async with self._redis.pipeline(transaction=False) as pipe:
            for kid in kids:
                pipe.hdel(self._key(kid), kid)
            await pipe.execute()
        for kid in kids:
            self._cache.drop(kid)
        await self._publisher.publish([Record(self._topic, k.encode(), None) for k in kids])
        return len(have)

    # -- restoring and rewrapping -------------------------------------------------------

    async def durable(self) -> dict[str, WrappedKey]:
        """Every live key as the topic has it."""
        latest: dict[str, bytes | None] = {}
        for key, value in await asyncio.to_thread(self._read_topic, self._topic):
            if key is not None:
                latest[key.decode()] = value
        return {kid: WrappedKey.model_validate_json(v) for kid, v in latest.items() if v}

    async def ensure_restored(self) -> int:
        """Fill an empty (or lost) Redis cache from the topic; returns the keys written."""
        async with self._restore_lock:
            if await self._redis.exists(self._restored):
                return 0
            started = time.monotonic()
            keys = await self.durable()
            written = 0
            items = [(kid, _encode(_DURABLE, k.kek, unb64(k.wrapped))) for kid, k in keys.items()]
            for start in range(0, len(items), 1000):
                written += sum(await self._store(True, items[start : start + 1000]))
            await self._redis.set(self._restored, datetime.now(UTC).isoformat())
            log.info("keys.restored", keys=len(keys), written=written, s=time.monotonic() - started)
            return written

    async def restore(self) -> int:
        """Fill Redis from the topic now, whether or not it is marked restored."""
        await self._redis.delete(self._restored)
        return await self.ensure_restored()

    async def rewrap(self) -> int:
        """Rewrap every data key under the current key-encryption key (after a rotation).

        Values stay as they are: only the wrapped keys change. Per key: swap it in Redis only
        if Redis still holds the old wrapping (a shredded key is skipped), publish it, then
        check Redis again and tombstone it if a shred came in between. Safe while the stream
        runs, and to run again after an interruption.
        """
        await self.ensure_restored()
        kek = self._wrapper.current
        moved = 0
        for kid, rec in (await self.durable()).items():
            if rec.kek == kek:
                continue
            before = unb64(rec.wrapped)
            old = _encode(_DURABLE, rec.kek, before)
            wrapped = self._wrapper.wrap(kek, self._wrapper.unwrap(rec.kek, before))
            new = _encode(_DURABLE, kek, wrapped)
            if not await self._swap(kid, old, new):
                continue
            await self._publish([(kid, kek, wrapped)])
            if await self._redis.hget(self._key(kid), kid) is None:
                await self._publisher.publish([Record(self._topic, kid.encode(), None)])
                continue
            moved += 1
        return moved

    async def _swap(self, kid: str, old: bytes, new: bytes) -> bool:
        """Set kid to ``new`` only if Redis holds ``old`` (or a pending claim of it)."""
        return bool(await self._cas(keys=[self._key(kid)], args=[kid, old, new]))
