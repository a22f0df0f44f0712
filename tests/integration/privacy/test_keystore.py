"""Data keys on real Kafka and Redis: durable first, agreed on, restorable, shreddable."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from contracts.topics import KEYS
from deploy.local.kafka import free_port
from deploy.privacy import key_store
from deploy.settings import Settings
from privacy.crypto import MasterKeys, kid_of
from privacy.keystore import KeyStore
from privacy.master import LocalWrapper
from runtime.exceptions import KafkaUnavailable
from runtime.publisher import Publisher
from runtime.readback import read_records


class Stores:
    """Key stores on the real services, each with its own publisher and process cache."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.client = aioredis.from_url(settings.redis.url.get_secret_value())
        self.publishers: list[Publisher] = []
        self.master = MasterKeys.generate()

    def store(self, master: MasterKeys | None = None, bootstrap: str | None = None) -> KeyStore:
        bootstrap = bootstrap or self.settings.kafka.bootstrap_servers
        publisher = Publisher(bootstrap, publish_timeout_s=3, request_timeout_ms=2000)
        self.publishers.append(publisher)
        wrapper = LocalWrapper.fixed(master or self.master)
        return key_store(self.settings, self.client, publisher, wrapper)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def topic(self) -> dict[str, bytes | None]:
        """The keys topic as compaction will leave it: kid -> last value."""
        name = self.settings.kafka.topic(KEYS.name)
        records = read_records(self.settings.kafka.bootstrap_servers, name, timeout_s=60)
        return {k.decode(): v for k, v in records if k is not None}

    def lose_redis(self) -> int:
        """Delete every key of the deployment's namespace, as a Redis that lost its data."""

        async def drop() -> int:
            keys = [
                k async for k in self.client.scan_iter(match=f"{self.settings.worker.namespace}:*")
            ]
            return int(await self.client.delete(*keys)) if keys else 0

        return int(self.run(drop()))

    def close(self) -> None:
        for publisher in self.publishers:
            self.run(publisher.stop())
        self.run(self.client.aclose())
        self.loop.close()


@pytest.fixture
def stores(settings: Settings) -> Iterator[Stores]:
    made = Stores(settings)
    yield made
    made.close()


def subject(stores: Stores, value: str) -> str:
    return stores.master.blind("phone", value)


def test_a_key_is_durable_in_kafka_before_it_is_used_and_every_process_gets_the_same(
    stores: Stores,
) -> None:
    one, two = stores.store(), stores.store()
    s = subject(stores, "+8613800138000")

    # Two processes asking at once for a subject nobody has a key for agree on one key.
    async def both() -> list[Any]:
        return list(await asyncio.gather(one.for_subjects([s]), two.for_subjects([s])))

    a, b = stores.run(both())
    sealed = a[s].seal("+8613800138000")
    assert b[s].open(sealed) == "+8613800138000"
    durable = stores.topic()
    assert set(durable) == {kid_of(s)} and durable[kid_of(s)] is not None
    # A third process, cold, opens it through Redis.
    assert stores.run(stores.store().keys([kid_of(s)]))[kid_of(s)].open(sealed) == "+8613800138000"


def test_without_kafka_no_key_is_made_and_nothing_can_be_sealed(stores: Stores) -> None:
    down = stores.store(bootstrap=f"127.0.0.1:{free_port()}")
    s = subject(stores, "+8613800138001")
    with pytest.raises(KafkaUnavailable):
        stores.run(down.for_subjects([s]))
    # The claim left in Redis is pending: the next process makes it durable before using it.
    up = stores.store()
    key = stores.run(up.for_subjects([s]))[s]
    assert stores.topic()[kid_of(s)] is not None
    assert key.open(key.seal("x")) == "x"


def test_losing_redis_loses_no_key(stores: Stores) -> None:
    first = stores.store()
    subjects = [subject(stores, f"+86138001380{n:02d}") for n in range(20)]
    keys = stores.run(first.for_subjects(subjects))
    sealed = {s: keys[s].seal(s) for s in subjects}
    assert stores.lose_redis() > 0
    # A process started after the loss restores the cache from the topic before anything else:
    # the same keys, never new ones for the same subjects.
    later = stores.store()
    again = stores.run(later.for_subjects(subjects))
    assert all(again[s].open(sealed[s]) == s for s in subjects)
    stores.lose_redis()
    assert stores.run(stores.store().restore()) == 20


def test_a_shredded_key_is_gone_from_kafka_redis_and_memory_and_others_stay(
    stores: Stores,
) -> None:
    store = stores.store()
    gone, kept = subject(stores, "+8613800138010"), subject(stores, "+8613800138011")
    keys = stores.run(store.for_subjects([gone, kept]))
    sealed_gone, sealed_kept = keys[gone].seal("a"), keys[kept].seal("b")
    assert stores.run(store.shred([kid_of(gone)])) == 1
    durable = stores.topic()
    assert durable[kid_of(gone)] is None and durable[kid_of(kept)] is not None
    for reader in (store, stores.store()):
        found = stores.run(reader.keys([kid_of(gone), kid_of(kept)]))
        assert found[kid_of(gone)] is None
        assert found[kid_of(kept)] is not None and found[kid_of(kept)].open(sealed_kept) == "b"
    # Nor does a restore bring it back.
    stores.lose_redis()
    assert stores.run(stores.store().keys([kid_of(gone)]))[kid_of(gone)] is None
    # A new key for the same identifier later cannot open what was sealed before.
    fresh = stores.run(stores.store().for_subjects([gone]))[gone]
    with pytest.raises(ValueError):
        fresh.open(sealed_gone)


def test_rotating_the_master_key_rewraps_every_key_and_retires_the_old_one(
    stores: Stores,
) -> None:
    old = stores.store()
    subjects = [subject(stores, f"+86138001381{n:02d}") for n in range(5)]
    keys = stores.run(old.for_subjects(subjects))
    sealed = {s: keys[s].seal(s) for s in subjects}
    rotated = stores.master.rotated("k2")
    assert stores.run(stores.store(rotated).rewrap()) == 5
    assert stores.run(stores.store(rotated).rewrap()) == 0  # idempotent
    retired = MasterKeys(rotated.index_key, {"k2": rotated.keks["k2"]}, "k2")
    reader = stores.store(retired)
    found = stores.run(reader.keys([kid_of(s) for s in subjects]))
    assert all(found[kid_of(s)].open(sealed[s]) == s for s in subjects)
    assert {json.loads(v)["kek"] for v in stores.topic().values() if v} == {"k2"}
