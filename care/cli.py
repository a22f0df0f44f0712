"""``cdp care``: the rules in force, tasks by profile or state, closing a task."""

from __future__ import annotations

import asyncio
import getpass
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import redis.asyncio as aioredis

from care.processor import Care
from care.rules import for_catalog
from care.store import CareStore
from contracts.care import CareState, CareTask
from contracts.topics import CARE_TASKS
from profiles.store import ProfileStore
from runtime.exceptions import KafkaUnavailable
from runtime.publisher import Publisher
from tagging.catalog import load as load_catalog

T = TypeVar("T")


def _run(settings: Any, step: Callable[[Care], Awaitable[T]]) -> T:
    """Run ``step`` with the care logic over the configured Redis and Kafka."""
    catalog = load_catalog(settings.tags.catalog)
    rules = for_catalog(settings.care.rules, catalog)  # CareRulesError: exit 2

    async def main() -> T:
        client = aioredis.from_url(settings.redis.url.get_secret_value())
        k = settings.kafka
        publisher = Publisher(k.bootstrap_servers, publish_timeout_s=k.publish_timeout_s)
        ns = settings.worker.namespace
        care = Care(
            rules,
            CareStore(client, ns),
            ProfileStore(client, settings.profiles, ns),
            catalog.zone,
            publisher.publish,
            k.topic(CARE_TASKS.name),
            deliver=settings.care.webhook_url is not None,
        )
        try:
            return await step(care)
        finally:
            await publisher.stop()
            await client.aclose()

    return asyncio.run(main())


def _line(t: CareTask) -> str:
    return (
        f"{t.task_id}  {t.state:6}  {t.rule:24} {t.profile_id:24} {t.occasion.isoformat()}"
        f"  {t.closed_by or ''}"
    )


@click.group()
def care() -> None:
    """Care and follow-up tasks (docs/care.md)."""


@care.command("rules")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def care_rules(settings: Any, as_json: bool) -> None:
    """List the care rules in force (``CDP_CARE__RULES`` or the shipped ones)."""
    rules = for_catalog(settings.care.rules, load_catalog(settings.tags.catalog))
    if as_json:
        click.echo(json.dumps([r.model_dump(mode="json") for r in rules], indent=2))
        return
    for r in rules:
        closes = ", ".join(r.closes_on) or "-"
        click.echo(f"{r.id:28} {r.trigger.label:32} closes on: {closes}")


@care.command("tasks")
@click.option("--profile", default=None, help="Only this profile's tasks.")
@click.option("--state", type=click.Choice([s.value for s in CareState]), default=None)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def care_tasks(
    settings: Any, profile: str | None, state: str | None, limit: int, as_json: bool
) -> None:
    """List care tasks, newest first."""
    wanted = CareState(state) if state else None
    found = _run(settings, lambda c: c.store.listing(profile, wanted, limit))
    if as_json:
        click.echo(json.dumps([t.model_dump(mode="json") for t in found], indent=2))
        return
    for t in found:
        click.echo(_line(t))
    click.echo(f"{len(found)} task(s)", err=True)


@care.command("schedule")
@click.pass_obj
def care_schedule(settings: Any) -> None:
    """Schedule the date rules over every stored profile (a care worker does it at start
    when the date rules changed; this runs it in the foreground)."""

    def progress(seen: int) -> None:
        click.echo(f"\r{seen:,} profiles", nl=False, err=True)

    seen = _run(settings, lambda c: c.backfill(datetime.now(UTC), progress))
    click.echo("", err=True)
    click.echo(f"date rules scheduled over {seen:,} profiles")


@care.command("redeliver")
@click.argument("task_id")
@click.pass_obj
def care_redeliver(settings: Any, task_id: str) -> None:
    """Deliver an open task to the webhook again, from the first attempt (after a dead
    letter); the care worker sends it."""
    if settings.care.webhook_url is None:
        raise click.ClickException("no webhook is configured (CDP_CARE__WEBHOOK_URL)")

    async def requeue(c: Care) -> None:
        task = await c.store.get(task_id)
        if task is None:
            raise click.ClickException(f"no care task {task_id}")
        if task.state != CareState.OPEN:
            raise click.ClickException(f"care task {task_id} is {task.state}")
        await c.store.requeue(task_id, datetime.now(UTC))

    _run(settings, requeue)
    click.echo(f"{task_id} queued for delivery")


@care.command("close")
@click.argument("task_id")
@click.pass_obj
def care_close(settings: Any, task_id: str) -> None:
    """Close an open care task (its closed record goes to cdp.care.tasks)."""

    async def close(c: Care) -> CareTask | None:
        task = await c.store.get(task_id)
        if task is None:
            raise click.ClickException(f"no care task {task_id}")
        if task.state != CareState.OPEN:
            raise click.ClickException(f"care task {task_id} is {task.state}")
        return await c.close(task, f"cli:{getpass.getuser()}", datetime.now(UTC))

    try:
        done = _run(settings, close)
    except KafkaUnavailable:
        raise click.ClickException("Kafka did not acknowledge; the task stays open") from None
    if done is None:
        raise click.ClickException(f"care task {task_id} was closed meanwhile")
    click.echo(_line(done))
