"""Field encryption, assembled from settings: master keys, key store, sealer, revealer."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from contracts.topics import KEYS
from deploy.settings import Settings
from privacy.classification import Classification
from privacy.crypto import MasterKeys
from privacy.keystore import KeyStore
from privacy.master import LocalWrapper
from privacy.reveal import Revealer
from privacy.seal import Blinding, Sealer
from runtime.publisher import Publisher
from runtime.readback import read_records


@dataclass(frozen=True)
class Privacy:
    """What the API needs to seal at ingest and reveal at reads."""

    keys: KeyStore
    sealer: Sealer
    revealer: Revealer


def wrapper(settings: Settings) -> LocalWrapper:
    """The master keys: ``CDP_PRIVACY__MASTER_KEYS`` if set, else the master key file."""
    given = settings.privacy.master_keys
    if given is not None:
        return LocalWrapper.fixed(MasterKeys.parse(given.get_secret_value()))
    return LocalWrapper.from_file(settings.master_key_path())


def key_store(
    settings: Settings, client: aioredis.Redis, publisher: Publisher, keys: LocalWrapper
) -> KeyStore:
    """The data keys of this deployment."""

    def read(topic: str) -> list[tuple[bytes | None, bytes | None]]:
        return read_records(settings.kafka.bootstrap_servers, topic, timeout_s=60.0)

    return KeyStore(
        client,
        keys,
        publisher,
        settings.kafka.topic(KEYS.name),
        read,
        settings.worker.namespace,
        settings.privacy.cache_ttl_s,
    )


def blinding(settings: Settings) -> Blinding:
    """Blind indexes of this deployment, without any data key (lookups, demo scoring)."""
    classes = Classification.load(settings.privacy.classification)
    return Blinding(wrapper(settings), classes, settings.identity)


def build(settings: Settings, client: aioredis.Redis, publisher: Publisher) -> Privacy | None:
    """Everything field encryption needs, or None when it is off."""
    if not settings.privacy_enabled():
        return None
    keys = wrapper(settings)
    store = key_store(settings, client, publisher, keys)
    classes = Classification.load(settings.privacy.classification)
    return Privacy(store, Sealer(store, keys, classes, settings.identity), Revealer(store))
