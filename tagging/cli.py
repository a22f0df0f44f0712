"""``cdp tags``: the catalog, counts, and backfills, from the terminal."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import click
import redis.asyncio as aioredis

from contracts.topics import PROFILES_CHANGES
from profiles.store import ProfileStore
from runtime.publisher import Publisher
from tagging.catalog import CATEGORIES, CatalogError, load
from tagging.changes import change_records, tag_only
from tagging.store import TagChange, TagStore, text


def _store(settings: Any) -> tuple[aioredis.Redis, TagStore]:
    client = aioredis.from_url(settings.redis.url.get_secret_value())
    ns = settings.worker.namespace
    store = TagStore(
        client, load(settings.tags.catalog), ProfileStore(client, settings.profiles, ns), ns
    )
    store.bind(settings.redis.url.get_secret_value())
    return client, store


@click.group()
def tags() -> None:
    """The tag catalog: list, show, count, check, backfill."""


@tags.command("list")
@click.option("--category", type=click.Choice(CATEGORIES), help="Only this category.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@click.pass_obj
def tags_list(settings: Any, category: str | None, as_json: bool) -> None:
    """List the catalog's tags (no services needed)."""
    catalog = load(settings.tags.catalog)
    chosen = [t for t in catalog.tags if category in (None, t.category)]
    for t in chosen:
        if as_json:
            click.echo(json.dumps(t.describe(), ensure_ascii=False))
        else:
            click.echo(f"{t.id:34} {t.category:13} {t.name_en}  {t.name_zh}")
    if not as_json:
        click.echo(f"{len(chosen)} tags", err=True)


@tags.command("check")
@click.argument("directory", required=False, type=click.Path(exists=True, file_okay=False))
@click.pass_obj
def tags_check(settings: Any, directory: str | None) -> None:
    """Validate a catalog directory (default: the configured one); exit 1 on any problem."""
    catalog = load(directory or settings.tags.catalog)
    click.echo(f"catalog ok: {len(catalog.tags)} tags, {len(catalog.timed)} timed")


@tags.command("show")
@click.argument("tag_id")
@click.pass_obj
def tags_show(settings: Any, tag_id: str) -> None:
    """Print one tag with its rule, examples and current count."""

    async def main() -> dict[str, Any]:
        client, store = _store(settings)
        try:
            tag = store.catalog.by_id.get(tag_id)
            if tag is None:
                raise click.ClickException(f"no tag {tag_id}")
            return {**tag.describe(), "count": await store.count(tag), "examples": tag.examples}
        finally:
            await client.aclose()

    click.echo(json.dumps(asyncio.run(main()), ensure_ascii=False, indent=2))


@tags.command("count")
@click.argument("tag_ids", nargs=-1, required=True)
@click.pass_obj
def tags_count(settings: Any, tag_ids: tuple[str, ...]) -> None:
    """Print how many profiles have each tag now (from the tag index)."""

    async def main() -> list[tuple[str, int]]:
        client, store = _store(settings)
        try:
            unknown = [t for t in tag_ids if t not in store.catalog.by_id]
            if unknown:
                raise click.ClickException(f"no such tags: {', '.join(unknown)}")
            return [(t, await store.count(store.catalog.by_id[t])) for t in tag_ids]
        finally:
            await client.aclose()

    for tag_id, n in asyncio.run(main()):
        click.echo(f"{tag_id}\t{n}")


@tags.command("backfill")
@click.option("--tag", "tag_ids", multiple=True, help="Backfill these tags (default: pending).")
@click.option("--status", is_flag=True, help="Show the last backfill's progress and exit.")
@click.pass_obj
def tags_backfill(settings: Any, tag_ids: tuple[str, ...], status: bool) -> None:
    """Evaluate new or changed tags over every existing profile, with progress.

    Tag changes are published to cdp.profiles.changes like live ones, so the tag history in
    ClickHouse sees them too.
    """
    ns = settings.worker.namespace

    async def main() -> None:
        client, store = _store(settings)
        try:
            if status:
                raw = await client.hgetall(f"{ns}:tags:backfill")
                click.echo(json.dumps({text(k): text(v) for k, v in raw.items()}))
                return
            unknown = [t for t in tag_ids if t not in store.catalog.by_id]
            if unknown:
                raise click.ClickException(f"no such tags: {', '.join(unknown)}")
            chosen = [store.catalog.by_id[t] for t in tag_ids] or store.pending
            if not chosen:
                click.echo("nothing to backfill: every tag's rule is backfilled")
                return
            await _backfill(settings, store, chosen)
        finally:
            await client.aclose()

    asyncio.run(main())


async def _backfill(settings: Any, store: TagStore, chosen: list[Any]) -> None:
    k = settings.kafka
    publisher = Publisher(k.bootstrap_servers, publish_timeout_s=k.publish_timeout_s)
    topic = k.topic(PROFILES_CHANGES.name)

    async def publish(found: list[TagChange]) -> None:
        at = datetime.now(UTC)
        await publisher.publish(change_records(topic, [tag_only(t, "backfill", at) for t in found]))

    click.echo(f"backfilling {len(chosen)} tags: {', '.join(t.id for t in chosen)}", err=True)
    await publisher.start()
    try:
        with click.progressbar(
            length=1, label="profiles", file=click.get_text_stream("stderr")
        ) as bar:

            def progress(seen: int, total: int) -> None:
                bar.length = total
                bar.update(seen - bar.pos)

            seen, changed = await store.backfill(
                chosen, now=lambda: datetime.now(UTC), progress=progress, on_changes=publish
            )
    finally:
        await publisher.stop()
    click.echo(f"backfilled {len(chosen)} tags over {seen} profiles; {changed} profiles changed")


def run_guarded(command: Any) -> None:
    """Run ``command``; an invalid catalog prints its problems and exits 2, no traceback."""
    try:
        command()
    except CatalogError as err:
        click.echo(f"error: {err}", err=True)
        raise SystemExit(2) from None
