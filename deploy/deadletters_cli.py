"""``cdp deadletters list | show | redrive``: see rejected inputs, send them again once fixed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import click
import redis.asyncio as aioredis

from deploy import privacy
from deploy.app import dead_letters, ingest_config
from deploy.settings import Settings
from ingest.deadletters import DeadLetters, Filter, SealedLetter
from ingest.redrive import Redriver
from runtime.exceptions import KafkaUnavailable
from runtime.publisher import Publisher

T = TypeVar("T")


def _run(settings: Settings, job: Callable[[DeadLetters, Redriver], Awaitable[T]]) -> T:
    async def main() -> T:
        k = settings.kafka
        publisher = Publisher(k.bootstrap_servers, publish_timeout_s=k.publish_timeout_s)
        client = aioredis.from_url(settings.redis.url.get_secret_value())
        await publisher.start()
        try:
            sealing = privacy.build(settings, client, publisher)
            config = ingest_config(
                settings, publisher, sealing.sealer if sealing else None, processes=1
            )
            return await job(*dead_letters(settings, config, client, sealing))
        finally:
            await publisher.stop()
            await client.aclose()

    try:
        return asyncio.run(main())
    except TimeoutError as exc:
        raise click.ClickException(f"the dead-letter topic could not be read: {exc}") from None
    except KafkaUnavailable as exc:
        raise click.ClickException(f"{exc}; nothing was marked re-driven: run it again") from None


def _filters(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--reason", "reasons", multiple=True, help="A reason (repeatable)."),
        click.option("--source", default=None, help="A source; `unknown`: keys nobody holds."),
        click.option("--field", default=None, help="A field as sent, e.g. userId."),
        click.option("--since", type=click.DateTime(), default=None, help="Received at/after."),
        click.option("--until", type=click.DateTime(), default=None, help="Received before."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _filter(
    reasons: tuple[str, ...],
    source: str | None,
    field: str | None,
    since: datetime | None,
    until: datetime | None,
    ids: tuple[str, ...] = (),
) -> Filter:
    return Filter(frozenset(reasons), source, field, since, until, frozenset(ids))


def register(cli: click.Group) -> None:
    """Add ``cdp deadletters`` to the CLI."""

    @cli.group("deadletters")
    def group() -> None:
        """Dead letters: list, show, re-drive (docs/operations.md)."""

    @group.command("list")
    @_filters
    @click.option("--limit", default=50, show_default=True, help="Show the last N.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON.")
    @click.pass_obj
    def list_letters(settings: Settings, /, limit: int, as_json: bool, **criteria: Any) -> None:
        """List dead letters (without payloads), oldest first per partition."""

        async def job(_: DeadLetters, redriver: Redriver) -> dict[str, Any]:
            return await redriver.listing(_filter(**criteria), limit)

        result = _run(settings, job)
        if as_json:
            click.echo(json.dumps(result, indent=2))
            return
        click.echo(f"{result['count']} letters, {result['rejections']} rejections")
        for row in result["letters"]:
            mark = " redriven" if row["redriven"] else ""
            click.echo(
                f"{row['id']:>10}  {row['received_at'][:19]}  {row['reason']:18} "
                f"{row['source'] or 'unknown':14} {row['endpoint']:12} {row['field'] or '-'}"
                f"{mark}"
            )

    @group.command("show")
    @click.argument("letter_id")
    @click.pass_obj
    def show(settings: Settings, letter_id: str) -> None:
        """Print one letter with its payload in clear (the reading is audited)."""

        async def job(letters: DeadLetters, redriver: Redriver) -> dict[str, Any] | None:
            stored = await letters.get(letter_id)
            if stored is None:
                return None
            await privacy.cli_record(settings, "deadletters.read", letter_id, subjects=1)
            try:
                letter, erased = await letters.opened(stored.letter), None
            except SealedLetter as exc:
                letter, erased = stored.letter, str(exc)
            done = await redriver.redriven([letter_id])
            return {
                "id": letter_id,
                "source": stored.source,
                "letter": letter.model_dump(mode="json"),
                "erased": erased,
                "redriven": done.get(letter_id),
            }

        found = _run(settings, job)
        if found is None:
            raise click.ClickException(f"no dead letter {letter_id}")
        click.echo(json.dumps(found, indent=2, ensure_ascii=False))

    @group.command("redrive")
    @click.option("--id", "ids", multiple=True, help="A letter's id (repeatable).")
    @_filters
    @click.option("--force", is_flag=True, help="Also letters re-driven before.")
    @click.option("--dry-run", is_flag=True, help="Report what would happen; publish nothing.")
    @click.pass_obj
    def redrive(
        settings: Settings, /, ids: tuple[str, ...], force: bool, dry_run: bool, **criteria: Any
    ) -> None:
        """Send the chosen letters back through ingest; print the report."""
        chosen = _filter(ids=ids, **criteria)
        if chosen == Filter():
            raise click.UsageError("name letters (--id) or a criterion (--reason, --source, ...)")

        async def job(letters: DeadLetters, redriver: Redriver) -> dict[str, Any]:
            found = await letters.read(chosen)
            action = "deadletters.redrive" + (".dry_run" if dry_run else "")
            await privacy.cli_record(settings, action, letters.topic, selected=len(found))
            report = await redriver.redrive(found, force=force, dry_run=dry_run)
            await privacy.cli_record(
                settings, action + ".done", letters.topic, **report.audit_detail()
            )
            return report.as_dict()

        click.echo(json.dumps(_run(settings, job), indent=2))
