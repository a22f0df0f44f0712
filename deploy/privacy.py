"""Field encryption, assembled from settings: master keys, key store, sealer, revealer."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import redis.asyncio as aioredis

from contracts.events import Identifier
from contracts.topics import (
    AUDIT,
    EVENTS_DEADLETTER,
    EVENTS_RAW,
    EVENTS_RESOLVED,
    IDENTITY_MERGES,
    KEYS,
    PRIVACY_ERASURES,
    PROFILES_CHANGES,
    PROFILES_SNAPSHOTS,
    SEGMENTS_MEMBERSHIP,
)
from deploy.settings import Settings
from identity.normalize import parse_identifier
from identity.store import IdentityStore
from privacy.audit import Audit, cli_actor
from privacy.classification import Classification
from privacy.crypto import KeyWrapper, MasterKeys
from privacy.erasure import Erasures
from privacy.keystore import KeyStore
from privacy.master import Absent, LocalWrapper
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
    settings: Settings, client: aioredis.Redis, publisher: Publisher, keys: KeyWrapper
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


def stored_identifier(settings: Settings, type_name: str, value: str) -> Identifier:
    """An identifier an operator typed, as the identity graph stores it: normalised like
    ingest, blind-indexed with field encryption. ``BadIdentifier`` names the bad field."""
    ident = parse_identifier(type_name, value, settings.ingest.default_region)
    return blinding(settings).blind(ident) if settings.privacy_enabled() else ident


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


#: Topics that hold people's records, and what an erasure can do about each.
PERSONAL_TOPICS = (
    EVENTS_RAW,
    EVENTS_RESOLVED,
    IDENTITY_MERGES,
    PROFILES_CHANGES,
    PROFILES_SNAPSHOTS,
    SEGMENTS_MEMBERSHIP,
    EVENTS_DEADLETTER,
    KEYS,
)


def audit(settings: Settings, publisher: Publisher) -> Audit:
    """The audit log of this deployment."""
    return Audit(publisher, settings.kafka.topic(AUDIT.name))


def erasures(settings: Settings, client: aioredis.Redis, publisher: Publisher) -> Erasures:
    """Erasures of this deployment. Their data keys are shredded whether or not this process
    holds master keys: destroying a key needs none."""
    keys = key_store(
        settings, client, publisher, wrapper(settings) if settings.privacy_enabled() else Absent()
    )
    return Erasures(
        client,
        publisher,
        settings.kafka.topic(PRIVACY_ERASURES.name),
        settings.worker.namespace,
        audit(settings, publisher),
        IdentityStore(client, settings.identity, settings.worker.namespace),
        keys,
        # With this deployment's retention, which the receipt quotes.
        [
            (settings.kafka.topic(t.name), replace(t, configs=settings.kafka.topic_configs(t.name)))
            for t in PERSONAL_TOPICS
        ],
    )


async def cli_record(
    settings: Settings, action: str, target: str = "", subjects: int = 0, **detail: Any
) -> None:
    """Record an operator's command in the audit log (acknowledged before it returns)."""
    k = settings.kafka
    publisher = Publisher(k.bootstrap_servers, publish_timeout_s=k.publish_timeout_s)
    try:
        await audit(settings, publisher).record(
            cli_actor(), action, target, subjects, "cli", **detail
        )
    finally:
        await publisher.stop()
