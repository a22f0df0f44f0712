"""The ``cdp`` command: the one entry point that builds settings and wires the rooms."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click
import uvicorn

from contracts import schema
from deploy import lag as lag_mod
from deploy import topics as topics_mod
from deploy.app import create_app
from deploy.demo import demo_sources, report, run_feed
from deploy.local.kafka import KAFKA_VERSION
from deploy.local.process import LocalStackError
from deploy.local.stack import LocalStack
from deploy.logs import configure
from deploy.settings import Settings
from ingest.sources import Source, hash_key, new_key


@click.group()
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Customer data platform: ingest, identity, profiles, history."""
    settings = Settings()
    configure(settings.log_level, settings.log_json)
    ctx.obj = settings


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@cli.command()
@click.pass_obj
def up(settings: Settings) -> None:
    """Start the local real services (Kafka KRaft, Redis); ClickHouse is embedded."""
    stack = LocalStack.from_settings(settings)
    click.echo(f"starting local stack in {settings.local.state_dir} (Kafka {KAFKA_VERSION})")
    try:
        started = stack.up(settings.local.startup_timeout_s)
    except LocalStackError as exc:
        raise click.ClickException(str(exc)) from exc
    for name, info in stack.status().items():
        verb = "started" if started.get(name) else "already running"
        verb = "embedded" if name == "clickhouse" else verb
        click.echo(f"  {name:10} {verb:15} {info['address']}  log: {info['log']}")


@cli.command()
@click.pass_obj
def down(settings: Settings) -> None:
    """Stop the local services this tool started (nothing else)."""
    stopped = LocalStack.from_settings(settings).down()
    for name, was in stopped.items():
        click.echo(f"  {name:10} {'stopped' if was else 'was not running'}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(settings: Settings, as_json: bool) -> None:
    """Show the local services: address, health, log file. Exit 1 if any is not ready."""
    info = LocalStack.from_settings(settings).status()
    if as_json:
        _echo_json(info)
    else:
        for name, item in info.items():
            state = "ready" if item["ready"] else ("starting" if item["running"] else "down")
            click.echo(f"  {name:10} {state:9} {item['address']}  log: {item['log']}")
    sys.exit(0 if all(i["ready"] for i in info.values()) else 1)


@cli.group()
def topics() -> None:
    """Kafka topics of the registry."""


@topics.command("create")
@click.pass_obj
def topics_create(settings: Settings) -> None:
    """Create every registry topic that is missing (idempotent)."""
    for name, outcome in topics_mod.create_all(settings.kafka).items():
        click.echo(f"  {name:40} {outcome}")


@cli.command()
@click.option("--group", default=None, help="Only this consumer group.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows.")
@click.pass_obj
def lag(settings: Settings, group: str | None, as_json: bool) -> None:
    """Print consumer lag per group / topic / partition (committed vs end offsets)."""
    rows = lag_mod.consumer_lag(settings.kafka, group)
    if as_json:
        _echo_json([r.as_dict() for r in rows])
    else:
        click.echo(lag_mod.render_table(rows))


def _serve(settings: Settings, demo: bool, exit_after_demo: bool) -> None:
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if serving.done():
            await serving
            raise click.ClickException(f"API did not start on port {settings.api.port}")
        base = f"http://{settings.api.host}:{settings.api.port}"
        click.echo(f"API on {base}  (OpenAPI: {base}/docs, health: {base}/healthz)")
        if demo:
            results, sent = await asyncio.to_thread(run_feed, base)
            click.echo(await asyncio.to_thread(report, settings, results, sent))
            if exit_after_demo:
                server.should_exit = True
            else:
                click.echo("serving; Ctrl-C to stop")
        await serving

    asyncio.run(main())


@cli.command()
@click.option("--demo", is_flag=True, help="Enable the demo write keys and push a demo feed.")
@click.option("--exit-after-demo", is_flag=True, help="Stop once the demo feed was reported.")
@click.pass_obj
def run(settings: Settings, demo: bool, exit_after_demo: bool) -> None:
    """Run the platform in one process: API (+ processors as they land), embedded ClickHouse."""
    if demo:
        ingest = settings.ingest.model_copy(
            update={"sources": [*settings.ingest.sources, *demo_sources()]}
        )
        settings = settings.model_copy(update={"ingest": ingest})
    topics_mod.create_all(settings.kafka)
    if not settings.ingest.all_sources():
        click.echo("warning: no write keys configured; see `cdp keys new`", err=True)
    _serve(settings, demo, exit_after_demo)


@cli.command()
@click.pass_obj
def api(settings: Settings) -> None:
    """Run only the HTTP API (scale-out deployments)."""
    _serve(settings, demo=False, exit_after_demo=False)


@cli.group()
def keys() -> None:
    """Write keys for sources."""


@keys.command("new")
@click.option("--name", required=True, help="Source name, e.g. pos-shanghai.")
@click.option("--channel", required=True, help="Channel: pos, member_app, web, ...")
@click.option(
    "--user-id-type",
    default="customer_id",
    show_default=True,
    help="Identifier type of this source's userId.",
)
def keys_new(name: str, channel: str, user_id_type: str) -> None:
    """Mint a write key; print it once and the source entry (hash only) to store."""
    key = new_key()
    entry = {"name": name, "channel": channel, "user_id_type": user_id_type}
    source = Source.model_validate({**entry, "key_sha256": hash_key(key)})
    click.echo(f"write key (shown once): {key}", err=True)
    _echo_json(source.model_dump(mode="json"))


@cli.group()
def contracts() -> None:
    """Contract schemas."""


@contracts.command("export")
@click.option("--check", is_flag=True, help="Fail if the checked-in schemas drifted.")
def contracts_export(check: bool) -> None:
    """Write contracts/schemas/*.json from the models (or check them)."""
    if check:
        stale = schema.drifted()
        if stale:
            raise click.ClickException(f"schemas drifted: {stale}; run `cdp contracts export`")
        click.echo("schemas up to date")
        return
    for path in schema.export():
        click.echo(f"wrote {path}")


def main() -> None:
    """Entry point of the ``cdp`` script."""
    cli(auto_envvar_prefix=None)
