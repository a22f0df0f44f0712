"""Configuration changes (tokens, sources, the tag catalog) become audit records once each."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from contracts.privacy import AuditRecord
from deploy.privacy import audit
from deploy.settings import Settings
from privacy.audit import record_changes
from runtime.publisher import Publisher
from runtime.readback import read_records


def test_a_changed_token_set_is_recorded_once_naming_what_changed(settings: Settings) -> None:
    ns = settings.worker.namespace

    async def main() -> list[bool]:
        client = aioredis.from_url(settings.redis.url.get_secret_value())
        publisher = Publisher(settings.kafka.bootstrap_servers)
        log = audit(settings, publisher)
        try:
            first = {"crm": "aa:profiles:read", "bi": "bb:segments:read"}
            second = {"crm": "aa:pii:read,profiles:read", "dpo": "cc:privacy:erase"}
            return [
                await record_changes(client, ns, log, "tokens", first),
                await record_changes(client, ns, log, "tokens", dict(first)),
                await record_changes(client, ns, log, "tokens", second),
            ]
        finally:
            await publisher.stop()
            await client.aclose()

    assert asyncio.run(main()) == [True, False, True]
    records = [
        AuditRecord.model_validate_json(v)
        for _, v in read_records(
            settings.kafka.bootstrap_servers, settings.kafka.topic("cdp.audit"), timeout_s=60
        )
        if v
    ]
    assert [(r.action, r.actor, r.detail) for r in records] == [
        ("tokens.changed", "system", {"added": "bi,crm", "removed": "", "changed": ""}),
        ("tokens.changed", "system", {"added": "dpo", "removed": "bi", "changed": "crm"}),
    ]
