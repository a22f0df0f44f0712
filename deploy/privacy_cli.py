"""``cdp privacy erase | erasure`` and ``cdp audit``: data-subject rights for the operator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx
import redis.asyncio as aioredis

from contracts.privacy import AuditRecord, Erasure, ErasureState
from contracts.topics import AUDIT
from deploy import privacy
from deploy.settings import Settings
from identity.normalize import BadIdentifier
from identity.store import IdentityStore
from privacy.audit import cli_actor
from privacy.erasure import Erasures
from runtime.publisher import Publisher
from runtime.readback import read_records

T = TypeVar("T")


def _with_erasures(settings: Settings, job: Callable[[Erasures, IdentityStore], Awaitable[T]]) -> T:
    async def main() -> T:
        k = settings.kafka
        publisher = Publisher(k.bootstrap_servers, publish_timeout_s=k.publish_timeout_s)
        client = aioredis.from_url(settings.redis.url.get_secret_value())
        await publisher.start()
        try:
            ns = settings.worker.namespace
            erasures = privacy.erasures(settings, client, publisher)
            return await job(erasures, IdentityStore(client, settings.identity, ns))
        finally:
            await publisher.stop()
            await client.aclose()

    return asyncio.run(main())


def _show(erasure: Erasure) -> None:
    click.echo(json.dumps(erasure.model_dump(mode="json"), indent=2, ensure_ascii=False))


def register(cli: click.Group) -> None:
    """Add ``cdp privacy`` and ``cdp audit`` to the CLI."""

    @cli.group("privacy")
    def privacy_group() -> None:
        """Data-subject rights: erasure (docs/privacy.md)."""

    @privacy_group.command("erase")
    @click.option("--type", "type_name", default=None, help="Identifier type, e.g. phone.")
    @click.option("--value", default=None, help="Identifier value (normalised like ingest).")
    @click.option("--profile", "profile_id", default=None, help="A profile id instead.")
    @click.option("--reference", default=None, help="Your reference, e.g. a ticket number.")
    @click.option(
        "--wait",
        "wait_s",
        default=120.0,
        show_default=True,
        help="Seconds to wait for the history worker to complete it (0: do not wait).",
    )
    @click.pass_obj
    def erase(
        settings: Settings,
        type_name: str | None,
        value: str | None,
        profile_id: str | None,
        reference: str | None,
        wait_s: float,
    ) -> None:
        """Erase a person from every store; print the erasure, with its receipt once done.

        Exits 1 if it did not complete within --wait (it goes on: `cdp privacy erasure ID`).
        """
        if (profile_id is None) == (type_name is None or value is None):
            raise click.UsageError("give --type and --value, or --profile")

        async def job(erasures: Erasures, identity: IdentityStore) -> Erasure:
            if profile_id is not None:
                pid = await erasures.exists(profile_id)
                if pid is None:
                    raise click.ClickException(f"no profile {profile_id}")
                found_by, pids = "profile", [pid]
            else:
                assert type_name is not None and value is not None
                try:
                    ident = privacy.stored_identifier(settings, type_name, value)
                except BadIdentifier as bad:
                    raise click.BadParameter(str(bad), param_hint=f"--{bad.field}") from None
                pids = await identity.holders(ident.key())
                if not pids:
                    raise click.ClickException(f"no profile holds this {ident.type}")
                if len(pids) > 1:
                    raise click.ClickException(
                        f"this {ident.type} is shared by profiles {pids}: erase by --profile"
                    )
                found_by = ident.type
            erasure = await erasures.request(found_by, pids, cli_actor(), "cli", reference)
            if wait_s > 0:
                erasure = await erasures.wait(erasure.id, wait_s) or erasure
            return erasure

        erasure = _with_erasures(settings, job)
        _show(erasure)
        if wait_s > 0 and erasure.state is not ErasureState.COMPLETED:
            raise click.ClickException(
                f"erasure {erasure.id} not completed within {wait_s:.0f} s: is a history "
                "worker running? It completes when one runs."
            )

    @privacy_group.command("erasure")
    @click.argument("erasure_id")
    @click.pass_obj
    def erasure_show(settings: Settings, erasure_id: str) -> None:
        """Print an erasure and, once completed, its receipt."""

        async def job(erasures: Erasures, _: IdentityStore) -> Erasure | None:
            return await erasures.get(erasure_id)

        found = _with_erasures(settings, job)
        if found is None:
            raise click.ClickException(f"no erasure {erasure_id}")
        _show(found)

    api_option = click.option(
        "--api",
        "api_url",
        default=None,
        help="The API's base URL (default: http://<CDP_API__HOST>:<CDP_API__PORT>).",
    )
    token_option = click.option(
        "--token",
        envvar="CDP_TOKEN",
        required=True,
        help="Your bearer token (or CDP_TOKEN): the API records who asked.",
    )
    person_options = [
        click.option("--type", "type_name", default=None, help="Identifier type, e.g. phone."),
        click.option("--value", default=None, help="Identifier value."),
        click.option("--profile", "profile_id", default=None, help="A profile id instead."),
    ]

    def person(f: Any) -> Any:
        for option in reversed(person_options):
            f = option(f)
        return f

    @privacy_group.command("export")
    @person
    @click.option("--format", "fmt", type=click.Choice(["jsonl", "zip"]), default="jsonl")
    @click.option("--approval", default=None, help="An approved export request (in clear).")
    @click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
    @api_option
    @token_option
    @click.pass_obj
    def export(
        settings: Settings,
        type_name: str | None,
        value: str | None,
        profile_id: str | None,
        fmt: str,
        approval: str | None,
        out: Path,
        api_url: str | None,
        token: str,
    ) -> None:
        """Write everything held about a person to --out (through the API, which owns the
        history and audits the export)."""
        params = _person_params(type_name, value, profile_id) | {"format": fmt}
        if approval:
            params["approval"] = approval
        url = api_base(settings, api_url) + "/v1/privacy/subjects/export"
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.stream("GET", url, params=params, headers=headers, timeout=300) as answer:
            if answer.status_code != 200:
                answer.read()
                raise click.ClickException(api_error(answer))
            with out.open("wb") as f:
                for chunk in answer.iter_bytes():
                    f.write(chunk)
        click.echo(f"wrote {out} ({out.stat().st_size} bytes)")

    @privacy_group.command("consents")
    @person
    @api_option
    @token_option
    @click.pass_obj
    def consents(
        settings: Settings,
        type_name: str | None,
        value: str | None,
        profile_id: str | None,
        api_url: str | None,
        token: str,
    ) -> None:
        """Print a person's consent ledger and its current state."""
        answer = httpx.get(
            api_base(settings, api_url) + "/v1/privacy/subjects/consents",
            params=_person_params(type_name, value, profile_id),
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        if answer.status_code != 200:
            raise click.ClickException(api_error(answer))
        click.echo(json.dumps(answer.json(), indent=2, ensure_ascii=False))

    @privacy_group.command("request")
    @click.argument("action", type=click.Choice(["export", "rotate-master"]))
    @person
    @api_option
    @token_option
    @click.pass_obj
    def request(
        settings: Settings,
        action: str,
        type_name: str | None,
        value: str | None,
        profile_id: str | None,
        api_url: str | None,
        token: str,
    ) -> None:
        """Ask for a second person's approval (an export in clear, a master-key rotation)."""
        body: dict[str, Any] = {"action": action}
        if action == "export":
            body["subject"] = _person_params(type_name, value, profile_id)
        answer = httpx.post(
            api_base(settings, api_url) + "/v1/privacy/approvals",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        if answer.status_code != 201:
            raise click.ClickException(api_error(answer))
        click.echo(json.dumps(answer.json(), indent=2))

    @privacy_group.command("approve")
    @click.argument("approval_id")
    @api_option
    @token_option
    @click.pass_obj
    def approve(settings: Settings, approval_id: str, api_url: str | None, token: str) -> None:
        """Approve another token's request (yours cannot be approved by you)."""
        answer = httpx.post(
            api_base(settings, api_url) + f"/v1/privacy/approvals/{approval_id}/approve",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        if answer.status_code != 200:
            raise click.ClickException(api_error(answer))
        click.echo(json.dumps(answer.json(), indent=2))

    @cli.command("audit")
    @click.option("--actor", default=None, help="Only this token name (or cli:<user>).")
    @click.option("--action", default=None, help="Only actions starting with this.")
    @click.option("--target", default=None, help="Only this target (profile, segment...).")
    @click.option("--limit", default=100, show_default=True, help="The newest N records.")
    @click.pass_obj
    def audit(
        settings: Settings,
        actor: str | None,
        action: str | None,
        target: str | None,
        limit: int,
    ) -> None:
        """Print audit records as JSON lines, oldest first (read from the audit topic)."""
        topic = settings.kafka.topic(AUDIT.name)
        records = [
            AuditRecord.model_validate_json(value)
            for _, value in read_records(settings.kafka.bootstrap_servers, topic, timeout_s=60)
            if value
        ]
        chosen = [r for r in records if _matches(r, actor, action, target)]
        chosen.sort(key=lambda r: r.at)
        for r in chosen[-limit:] if limit > 0 else chosen:
            click.echo(r.model_dump_json())


def _matches(r: AuditRecord, actor: str | None, action: str | None, target: str | None) -> bool:
    return (
        (actor is None or r.actor == actor)
        and (action is None or r.action.startswith(action))
        and (target is None or r.target == target)
    )


def _person_params(
    type_name: str | None, value: str | None, profile_id: str | None
) -> dict[str, str]:
    if profile_id is not None and type_name is None and value is None:
        return {"profile_id": profile_id}
    if profile_id is None and type_name is not None and value is not None:
        return {"type": type_name, "value": value}
    raise click.UsageError("give --type and --value, or --profile")


def api_base(settings: Settings, api_url: str | None) -> str:
    return (api_url or f"http://{settings.api.host}:{settings.api.port}").rstrip("/")


def api_error(answer: httpx.Response) -> str:
    try:
        body = answer.json()
        return f"{answer.status_code} {body.get('code')}: {body.get('message')}"
    except ValueError:
        return f"{answer.status_code}: {answer.text[:200]}"
