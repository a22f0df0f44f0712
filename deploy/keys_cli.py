"""``cdp keys init | rotate-master | shred | restore``: the master keys and the data keys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import click
import redis.asyncio as aioredis

from deploy import privacy
from deploy.settings import Settings
from identity.normalize import BadIdentifier
from identity.store import IdentityStore
from privacy.approvals import ApprovalError, Approvals
from privacy.crypto import MasterKeyError, MasterKeys, is_blind, kid_of
from privacy.keystore import KeyStore
from runtime.publisher import Publisher

T = TypeVar("T")


@asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[tuple[KeyStore, aioredis.Redis]]:
    k = settings.kafka
    publisher = Publisher(k.bootstrap_servers, publish_timeout_s=k.publish_timeout_s)
    client = aioredis.from_url(settings.redis.url.get_secret_value())
    await publisher.start()
    try:
        yield privacy.key_store(settings, client, publisher, privacy.wrapper(settings)), client
    finally:
        await publisher.stop()
        await client.aclose()


def _run(settings: Settings, job: Callable[[KeyStore, aioredis.Redis], Awaitable[T]]) -> T:
    async def main() -> T:
        async with _store(settings) as (store, client):
            return await job(store, client)

    try:
        return asyncio.run(main())
    except MasterKeyError as exc:
        raise click.ClickException(str(exc)) from None


def register(keys: click.Group) -> None:
    """Add the field-encryption commands to the ``cdp keys`` group."""

    @keys.command("init")
    @click.pass_obj
    def keys_init(settings: Settings) -> None:
        """Create the master key file (index key and a key-encryption key), owner-only."""
        path = settings.master_key_path()
        if path.exists():
            raise click.ClickException(f"{path} exists; it is never overwritten")
        MasterKeys.generate().save(path)
        click.echo(f"master keys written to {path} (mode 600); back it up outside the data stores")

    @keys.command("rotate-master")
    @click.option("--id", "kek_id", default=None, help="Name of the new key (default: k<N+1>).")
    @click.option(
        "--approval",
        default=None,
        help="The id of an approved rotate-master request (POST /v1/privacy/approvals, "
        "approved by a second token); needed unless CDP_PRIVACY__ROTATION_NEEDS_APPROVAL=false.",
    )
    @click.option(
        "--retire",
        is_flag=True,
        help="After rewrapping, delete the older key-encryption keys from the file: copies of "
        "data keys wrapped under them (old log segments, backups) become unreadable.",
    )
    @click.pass_obj
    def keys_rotate(
        settings: Settings, kek_id: str | None, approval: str | None, retire: bool
    ) -> None:
        """Add a key-encryption key, make it current, rewrap every data key under it.

        No downtime and no event is re-encrypted: running processes pick up the new key
        from the file; only the wrapped data keys change.
        """
        if settings.privacy.master_keys is not None:
            raise click.ClickException(
                "the master keys come from CDP_PRIVACY__MASTER_KEYS: rotate them in their "
                "source (see docs/privacy.md), not in a file"
            )
        path = settings.master_key_path()
        try:
            current = MasterKeys.load(path)
            rotated = current.rotated(kek_id or f"k{len(current.keks) + 1}")
        except MasterKeyError as exc:
            raise click.ClickException(str(exc)) from None
        _approved_rotation(settings, approval)
        rotated.save(path)

        async def rewrap(store: KeyStore, _: aioredis.Redis) -> int:
            # Again until a pass finds nothing: a key created under the old key-encryption
            # key by a process that had not seen the new file yet is caught by the next pass.
            total = moved = await store.rewrap()
            while moved:
                moved = await store.rewrap()
                total += moved
            return total

        moved = _run(settings, rewrap)
        _audit(settings, "keys.rotated", rotated.current_id, rewrapped=moved, retire=retire)
        click.echo(f"current key-encryption key {rotated.current_id}; {moved} data keys rewrapped")
        if retire:
            kept = MasterKeys(
                rotated.index_key,
                {rotated.current_id: rotated.keks[rotated.current_id]},
                rotated.current_id,
            )
            kept.save(path)
            click.echo(f"retired {len(rotated.keks) - 1} older key-encryption keys")

    @keys.command("shred")
    @click.option("--type", "type_name", default=None, help="Identifier type, e.g. phone.")
    @click.option("--value", default=None, help="Identifier value (normalised like ingest).")
    @click.option("--profile", "profile_id", default=None, help="Every identifier of a profile.")
    @click.pass_obj
    def keys_shred(
        settings: Settings, type_name: str | None, value: str | None, profile_id: str | None
    ) -> None:
        """Destroy the data keys of one identifier or of every identifier of a profile.

        Every value sealed under them, in every topic, table and backup, becomes unreadable.
        """
        if (profile_id is None) == (type_name is None or value is None):
            raise click.UsageError("give --type and --value, or --profile")

        async def shred(store: KeyStore, client: aioredis.Redis) -> tuple[int, int]:
            if profile_id is not None:
                ident = IdentityStore(client, settings.identity, settings.worker.namespace)
                held = await ident.identifiers(profile_id)
                subjects = [i.partition(":")[2] for i in held]
            else:
                assert type_name is not None and value is not None
                try:
                    parsed = privacy.stored_identifier(settings, type_name, value)
                except BadIdentifier as bad:
                    raise click.BadParameter(str(bad), param_hint=f"--{bad.field}") from None
                subjects = [parsed.value]
            kids = [kid_of(s) for s in subjects if is_blind(s)]
            return len(kids), await store.shred(kids)

        asked, destroyed = _run(settings, shred)
        _audit(settings, "keys.shredded", profile_id or "", asked=asked, destroyed=destroyed)
        click.echo(f"{destroyed} data keys destroyed ({asked} identifiers asked)")

    @keys.command("restore")
    @click.pass_obj
    def keys_restore(settings: Settings) -> None:
        """Refill Redis's key cache from cdp.keys (after Redis lost its data)."""

        async def restore(store: KeyStore, _: Any) -> int:
            return await store.restore()

        restored = _run(settings, restore)
        _audit(settings, "keys.restored", "", restored=restored)
        click.echo(f"{restored} data keys restored to Redis")


def _audit(settings: Settings, action: str, target: str, **detail: Any) -> None:
    """Record an operator's key change in the audit log."""
    asyncio.run(privacy.cli_record(settings, action, target, **detail))


def _approved_rotation(settings: Settings, approval: str | None) -> None:
    """Take the approved rotate-master request, or refuse (when rotations need one)."""
    if not settings.privacy.rotation_needs_approval:
        return
    if approval is None:
        raise click.UsageError(
            "a master-key rotation needs a second person: ask with POST /v1/privacy/approvals "
            '{"action": "rotate-master"}, have another token approve it, then pass --approval ID'
        )

    async def use(_: KeyStore, client: aioredis.Redis) -> None:
        k = settings.kafka
        publisher = Publisher(k.bootstrap_servers, publish_timeout_s=k.publish_timeout_s)
        log = privacy.audit(settings, publisher)
        approvals = Approvals(
            client, settings.worker.namespace, settings.privacy.approval_ttl_s, log
        )
        try:
            await approvals.use(approval, "rotate-master", None)
        except ApprovalError as exc:
            raise click.ClickException(f"--approval: {exc}") from None
        finally:
            await publisher.stop()

    _run(settings, use)
