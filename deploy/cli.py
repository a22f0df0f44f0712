"""The ``cdp`` command: the one entry point that builds settings and wires the rooms."""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from care.cli import care as care_group
from care.exceptions import CareRulesError
from care.rules import for_catalog as care_rules
from contracts import schema
from contracts.topics import EVENTS_RAW, EVENTS_RESOLVED, REGISTRY
from deploy import lag as lag_mod
from deploy import privacy
from deploy import status as status_mod
from deploy import topics as topics_mod
from deploy.app import freeze_startup_heap
from deploy.deadletters_cli import register as register_deadletter_commands
from deploy.demo import DEMO_CONSOLE_TOKEN, add_demo_task, demo_sources, demo_tokens
from deploy.demo_run import measure, other_feeds, push, render, wait_processed, write_truth
from deploy.generator import CASHIER_EMAIL, generate
from deploy.import_cli import register as register_import_command
from deploy.keys_cli import register as register_key_commands
from deploy.lifecycle import (
    EXIT_CONFIG,
    EXIT_START,
    StartError,
    guard_start,
    wait_for_kafka,
    wait_for_redis,
)
from deploy.local.kafka import KAFKA_VERSION
from deploy.local.process import LocalStackError
from deploy.local.stack import LocalStack
from deploy.logs import configure
from deploy.metrics import serve_worker_metrics
from deploy.privacy_cli import api_base, api_error
from deploy.privacy_cli import register as register_privacy_commands
from deploy.serve import api_processes, attach_api, check_port_free, supervise
from deploy.serve import serve as serve_api
from deploy.settings import ConfigError, Settings
from deploy.worker import (
    ALL_ROLES,
    ROLES,
    STREAM_ROLES,
    WorkerProcesses,
    build_app,
    group_id,
    history_writer,
)
from deploy.worker import run as run_worker
from identity.normalize import BadIdentifier
from identity.store import IdentityStore
from ingest.cli import sources as sources_group
from ingest.sources import Source, hash_key, new_key
from privacy.crypto import MasterKeyError, MasterKeys
from profiles.api import explanation, opened
from profiles.store import ProfileStore
from runtime.auth import Token, hash_token
from runtime.exceptions import KafkaUnavailable
from runtime.publisher import Publisher
from segments.cli import segments as segments_group
from tagging.catalog import load as load_catalog
from tagging.cli import run_guarded
from tagging.cli import tags as tags_group
from tagging.store import TagStore


@click.group()
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Customer data platform: ingest, identity, profiles, history."""
    settings = Settings.load()
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
    keys = settings.master_key_path()
    if settings.privacy.enabled is not False and settings.privacy.master_keys is None:
        verb = "present"
        if not keys.exists():
            MasterKeys.generate().save(keys)
            verb = "created"
        click.echo(f"  {'keys':10} {verb:15} {keys}  (field encryption on: docs/privacy.md)")


@cli.command()
@click.pass_obj
def down(settings: Settings) -> None:
    """Stop the local services this tool started (nothing else)."""
    stopped = LocalStack.from_settings(settings).down()
    for name, was in stopped.items():
        click.echo(f"  {name:10} {'stopped' if was else 'was not running'}")


@cli.command()
@click.option(
    "--metrics",
    "urls",
    multiple=True,
    help="A worker's metrics URL; repeat for several [default: this host's CDP_METRICS__PORT].",
)
@click.option("--interval", default=2.0, show_default=True, help="Seconds between scrapes.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(settings: Settings, urls: tuple[str, ...], interval: float, as_json: bool) -> None:
    """Show Kafka, Redis and ClickHouse health, each stage's rate and freshness, and consumer
    lag, on one screen. Exit 1 if a service does not answer."""
    own = f"http://127.0.0.1:{settings.metrics.port}/metrics"
    found = status_mod.collect(settings, list(urls) or [own], interval)
    if as_json:
        _echo_json(found.as_dict())
    else:
        click.echo(status_mod.render(found))
    sys.exit(0 if all(h.ready for h in found.services) else 1)


@cli.group()
def topics() -> None:
    """Kafka topics of the registry."""


@topics.command("create")
@click.pass_obj
def topics_create(settings: Settings) -> None:
    """Create every registry topic that is missing (idempotent); set the retention of existing
    ones where it differs from the settings (CDP_KAFKA__RETENTION_DAYS)."""
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


def _with_demo(settings: Settings) -> Settings:
    ingest = settings.ingest.model_copy(
        update={"sources": [*settings.ingest.sources, *demo_sources()]}
    )
    # Ops would add a shared cashier email to the blocklist once they spot it; the demo does.
    blocklist = {**settings.identity.blocklist}
    blocklist["email"] = [*blocklist.get("email", []), CASHIER_EMAIL]
    identity = settings.identity.model_copy(update={"blocklist": blocklist})
    api = settings.api.model_copy(update={"tokens": [*settings.api.tokens, *demo_tokens()]})
    return settings.model_copy(update={"ingest": ingest, "identity": identity, "api": api})


@cli.command()
@click.option("--customers", default=1000, show_default=True, help="People to generate.")
@click.option("--seed", default=7, show_default=True)
@click.option(
    "--truth",
    "truth_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write the ground truth (default: state dir).",
)
@click.pass_obj
def demo(settings: Settings, customers: int, seed: int, truth_path: Path | None) -> None:
    """Push generated multi-channel customers to a running `cdp run --demo` and score identity."""
    base = f"http://{settings.api.host}:{settings.api.port}"
    feed = generate(seed, customers)
    path = truth_path or settings.local.state_dir / f"demo-truth-{seed}-{customers}.jsonl"
    write_truth(feed, path)
    click.echo(
        f"{customers} people, {len(feed.truth)} events in {len(feed.calls)} calls "
        f"to {base}; ground truth in {path}"
    )
    others = other_feeds(settings, seed, customers)
    if others:
        click.echo(
            f"warning: this state already holds the demo feed(s) {'; '.join(others)}. Feeds "
            "reuse identifiers (member M0000001 is another person in each), so they merge and "
            "the identity figures below mix them. To score this feed alone: `cdp down`, remove "
            f"{settings.local.state_dir}, and start again.",
            err=True,
        )
    try:
        seconds = push(base, feed)
    except (OSError, RuntimeError) as exc:
        raise click.ClickException(f"{exc} (is `cdp run --demo` running?)") from exc
    raw, resolved = (settings.kafka.topic(t.name) for t in (EVENTS_RAW, EVENTS_RESOLVED))
    layouts = [
        {group_id(settings, STREAM_ROLES): [raw], group_id(settings, ["history"]): [resolved]},
        {group_id(settings, sorted(ROLES)): [raw, resolved]},
    ]
    try:
        groups = wait_processed(settings, layouts)
    except TimeoutError as exc:
        raise click.ClickException(str(exc)) from None
    blinding = privacy.blinding(settings) if settings.privacy_enabled() else None
    stored = blinding.stored_key if blinding else None
    try:
        click.echo(render(measure(settings, feed, groups, seconds, stored)))
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc


@cli.command()
@click.option("--demo", is_flag=True, help="Enable the demo write keys and push a demo feed.")
@click.option("--exit-after-demo", is_flag=True, help="Stop once the demo feed was reported.")
@click.option(
    "--api-workers",
    type=click.IntRange(min=1),
    default=None,
    help="API processes serving the port [default: CDP_API__WORKERS, else one per CPU].",
)
@click.option(
    "--stream-workers",
    type=click.IntRange(min=1),
    default=None,
    help="Stream processor processes [default: CDP_WORKER__PROCESSES, else 2].",
)
@click.pass_obj
def run(
    settings: Settings,
    demo: bool,
    exit_after_demo: bool,
    api_workers: int | None,
    stream_workers: int | None,
) -> None:
    """Run everything on one machine: API, stream processor, history (embedded ClickHouse).

    This process owns the history and serves the API; the API processes beside it share
    the port, and the stream processes (identity, profiles, tags) run in their own
    processes, so neither waits for the other's CPU.
    """
    guard_start()
    if demo:
        settings = _with_demo(settings)
    _check_keys(settings)
    if not settings.ingest.all_sources():
        click.echo("warning: no write keys configured; see `cdp keys new`", err=True)
    check_port_free(settings.api.host, settings.api.port)
    _wait_for_services(settings)
    topics_mod.create_all(settings.kafka)
    _adopt_one_group_offsets(settings)
    app = build_app(settings, ["history"])
    attach_api(app, settings, api_workers or api_processes(settings))
    count = stream_workers or settings.worker.processes
    supervise(app, WorkerProcesses(settings, STREAM_ROLES, count))
    if settings.care.enabled:
        # Care tasks from tag entries, dates and follow-ups: a group of its own (docs/care.md).
        supervise(app, WorkerProcesses(settings, ["care"], 1))
    base = f"http://{settings.api.host}:{settings.api.port}"
    click.echo(f"API on {base}  (OpenAPI: {base}/docs, health: {base}/healthz)")
    sealing = settings.privacy_enabled()
    click.echo(
        "field encryption: "
        + (f"on (master keys: {_key_source(settings)})" if sealing else "off (docs/privacy.md)")
    )
    if demo:
        click.echo(f"console on {base}/console  (demo sign-in token: {DEMO_CONSOLE_TOKEN})")
        add_demo_task(app, settings, base, exit_after_demo)
    serve_worker_metrics(settings)
    run_worker(app, settings)


def _check_keys(settings: Settings) -> None:
    """Refuse to start when field encryption is on and its master keys cannot be read, or
    when a source mapping or the care rules are invalid (before any process or port is
    taken)."""
    settings.ingest.mapping_registry()
    care_rules(settings.care.rules, load_catalog(settings.tags.catalog))  # CareRulesError
    if settings.privacy_enabled():
        try:
            privacy.wrapper(settings)
        except MasterKeyError as exc:
            raise ConfigError(f"field encryption is on but {exc}") from None


def _wait_for_services(settings: Settings) -> None:
    """Wait up to ``CDP_STARTUP_TIMEOUT_S`` for Kafka and Redis; ``StartError`` naming the
    one that did not answer."""
    wait_for_kafka(settings.kafka.bootstrap_servers, settings.startup_timeout_s)
    wait_for_redis(settings.redis.url.get_secret_value(), settings.startup_timeout_s)


def _key_source(settings: Settings) -> str:
    if settings.privacy.master_keys is not None:
        return "CDP_PRIVACY__MASTER_KEYS"
    return str(settings.master_key_path())


def _adopt_one_group_offsets(settings: Settings) -> None:
    """Earlier ``cdp run`` processed everything in one consumer group: its offsets go to the
    stream group (the raw topic) and the history group (the rest), read once, not again."""
    raw = settings.kafka.topic(EVENTS_RAW.name)
    others = [settings.kafka.topic(n) for n in REGISTRY if n != EVENTS_RAW.name]
    lag_mod.adopt_offsets(
        settings.kafka,
        group_id(settings, sorted(ROLES)),
        {group_id(settings, STREAM_ROLES): [raw], group_id(settings, ["history"]): others},
    )


@cli.command()
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(sorted(ALL_ROLES)),
    help="Processor(s) to run; repeat for several. Default: history, identity, profiles "
    "(care runs in a group of its own).",
)
@click.pass_obj
def worker(settings: Settings, roles: tuple[str, ...]) -> None:
    """Run stream processors; workers with the same roles share the partitions."""
    guard_start()
    chosen = sorted(roles or ROLES)
    click.echo(f"worker roles={','.join(chosen)} group={group_id(settings, chosen)}")
    _wait_for_services(settings)
    app = build_app(settings, chosen, instance=settings.worker.instance_id)
    serve_worker_metrics(settings)
    run_worker(app, settings)


@cli.command()
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="API processes serving the port [default: CDP_API__WORKERS, else one per CPU].",
)
@click.pass_obj
def api(settings: Settings, workers: int | None) -> None:
    """Run only the HTTP API (scale-out deployments); it starts without Kafka and Redis
    (ingest answers 503 until Kafka is there)."""
    guard_start()
    _check_keys(settings)
    settings.ingest.all_sources()  # a bad sources file is a configuration error, here
    load_catalog(settings.tags.catalog)  # and so is a bad catalog (each process loads it)
    sys.exit(serve_api(settings, workers or api_processes(settings)))


@cli.command()
@click.pass_obj
def migrate(settings: Settings) -> None:
    """Create the ClickHouse history schema and set its retention (idempotent)."""
    history_writer(settings)
    click.echo(f"schema ready in {settings.clickhouse.database}")


@cli.group()
def keys() -> None:
    """Write keys for sources; master and data keys of field encryption."""


register_key_commands(keys)


@keys.command("new")
@click.option("--name", required=True, help="Source name, e.g. pos-shanghai.")
@click.option("--channel", required=True, help="Channel: pos, member_app, web, ...")
@click.option(
    "--user-id-type",
    default="customer_id",
    show_default=True,
    help="Identifier type of this source's userId.",
)
@click.option(
    "--timezone",
    default=None,
    help="IANA zone of times this source sends without an offset (e.g. Asia/Shanghai); "
    "UTC when omitted.",
)
def keys_new(name: str, channel: str, user_id_type: str, timezone: str | None) -> None:
    """Mint a write key; print it once and the source entry (hash only) to store."""
    key = new_key()
    entry: dict[str, str] = {"name": name, "channel": channel, "user_id_type": user_id_type}
    if timezone is not None:
        entry["timezone"] = timezone
    try:
        source = Source.model_validate({**entry, "key_sha256": hash_key(key)})
    except ValidationError as exc:
        problems = "; ".join(
            f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}" for e in exc.errors()
        )
        raise click.UsageError(problems) from None
    click.echo(f"write key (shown once): {key}", err=True)
    _echo_json(source.model_dump(mode="json"))


@cli.group()
def tokens() -> None:
    """Bearer tokens for the read APIs."""


@tokens.command("new")
@click.option("--name", required=True, help="Who holds it, e.g. recommendations-service.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    help="profiles:read, identity:read, segments:read, segments:write, segments:admin, "
    "pii:read (sensitive values in clear), privacy:erase, privacy:export, privacy:approve, "
    "audit:read (docs/privacy.md; repeat for several).",
)
def tokens_new(name: str, scopes: tuple[str, ...]) -> None:
    """Mint a token; print it once and the entry (hash only) for CDP_API__TOKENS."""
    token = "tk_" + secrets.token_urlsafe(32)
    click.echo(f"token (shown once): {token}", err=True)
    _echo_json(
        Token(name=name, sha256=hash_token(token), scopes=frozenset(scopes)).model_dump(mode="json")
    )


def _stores(settings: Settings) -> tuple[Any, Any, Any]:
    import redis.asyncio as aioredis

    url = settings.redis.url.get_secret_value()
    client = aioredis.from_url(url)
    ns = settings.worker.namespace
    profiles = ProfileStore(client, settings.profiles, ns)
    # Bound to the stored tag ordinals, so profiles print with their tags.
    TagStore(client, load_catalog(settings.tags.catalog), profiles, ns).bind(url)
    return client, profiles, IdentityStore(client, settings.identity, ns)


@cli.group()
def profiles() -> None:
    """Unified profiles."""


@profiles.command("get")
@click.argument("profile_id", required=False)
@click.option("--type", "id_type", help="Look up by identifier type instead of id.")
@click.option("--value", help="Identifier value (normalised like ingest).")
@click.option("--clear", is_flag=True, help="Sensitive values in clear, not masked.")
@click.pass_obj
def profiles_get(
    settings: Settings, profile_id: str | None, id_type: str | None, value: str | None, clear: bool
) -> None:
    """Print a profile as JSON, by id or by identifier; exit 1 when unknown."""

    async def main() -> Any:
        client, store, ids = _stores(settings)
        async with _revealing(settings, client, ids, clear) as reveal:
            pid = profile_id
            if pid is None:
                if not (id_type and value):
                    raise click.UsageError("give PROFILE_ID or --type and --value")
                try:
                    ident = privacy.stored_identifier(settings, id_type, value)
                except BadIdentifier as bad:
                    raise click.UsageError(f"--{bad.field}: {bad}") from None
                holders = await ids.holders(ident.key())
                if len(holders) > 1:
                    raise click.ClickException(f"this {ident.type} is shared by {holders}")
                pid = holders[0] if holders else None
            found = await store.get(pid) if pid else None
            return await reveal(found.model_dump(mode="json")) if found else None

    found = asyncio.run(main())
    if found is None:
        raise click.ClickException("no such profile")
    _audited_read(settings, clear, "profile.read", found["profile_id"])
    _echo_json(found)


@cli.command()
@click.option("--top", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def quality(settings: Settings, top: int, as_json: bool) -> None:
    """Data quality: the traits and source pairs that disagree most, with counts."""

    async def main() -> list[dict[str, Any]]:
        import redis.asyncio as aioredis

        client = aioredis.from_url(settings.redis.url.get_secret_value())
        try:
            store = ProfileStore(client, settings.profiles, settings.worker.namespace)
            return await store.conflict_report(top)
        finally:
            await client.aclose()

    rows = asyncio.run(main())
    if as_json:
        _echo_json(rows)
        return
    for row in rows:
        pair = " vs ".join(row["sources"])
        click.echo(f"{row['trait']:24} {pair:40} {row['disagreements']:>8}")
    click.echo(f"{len(rows)} trait and source pairs disagree", err=True)


def _audited_read(settings: Settings, clear: bool, action: str, profile_id: str) -> None:
    """Record a read that shows personal data in clear; refuse to show it unrecorded."""
    if not (clear or not settings.privacy_enabled()):
        return
    try:
        asyncio.run(privacy.cli_record(settings, action, profile_id, 1))
    except KafkaUnavailable:
        raise click.ClickException(
            "the audit log (Kafka) did not record this read, so it is not shown"
        ) from None


@asynccontextmanager
async def _revealing(
    settings: Settings, client: Any, ids: IdentityStore, clear: bool
) -> AsyncIterator[Callable[[dict[str, Any]], Awaitable[Any]]]:
    """A function opening a profile's (or explanation's) sealed values, masked unless
    ``clear``; closes the Redis client at the end."""
    publisher = Publisher(settings.kafka.bootstrap_servers)
    built = privacy.build(settings, client, publisher)

    async def reveal(doc: dict[str, Any]) -> Any:
        return await opened(built.revealer if built else None, ids, doc, clear)

    try:
        yield reveal
    finally:
        await publisher.stop()
        await client.aclose()


@cli.group()
def identity() -> None:
    """The identity graph."""


@identity.command("explain")
@click.argument("profile_id")
@click.option("--clear", is_flag=True, help="Sensitive values in clear, not masked.")
@click.pass_obj
def identity_explain(settings: Settings, profile_id: str, clear: bool) -> None:
    """Show a profile's identifiers and the merges and refusals that built it."""

    async def main() -> dict[str, Any] | None:
        client, store, ids = _stores(settings)
        async with _revealing(settings, client, ids, clear) as reveal:
            found = await explanation(ids, store, profile_id)
            return await reveal(found) if found else None

    found = asyncio.run(main())
    if found is None:
        raise click.ClickException(f"no profile {profile_id}")
    survivor, identifiers, history = found["profile_id"], found["identifiers"], found["history"]
    _audited_read(settings, clear, "identity.explain", survivor)
    alias = f" (asked {profile_id}, merged into it)" if survivor != profile_id else ""
    click.echo(f"profile {survivor}{alias}")
    click.echo("identifiers:")
    for ident in identifiers:
        click.echo(f"  {ident}")
    click.echo("history:")
    for h in history:
        other = f" profile {h['other']}" if h.get("other") else ""
        click.echo(f"  {h['decision']:8} {h['rule']:18}{other} via {h['id']} (event {h['event']})")


@identity.command("split")
@click.argument("profile_id")
@click.option("--merged", default=None, help="Undo the merge of this profile id into it.")
@click.option(
    "--detach",
    "detach",
    multiple=True,
    metavar="TYPE:VALUE",
    help="An identifier to detach into a person of its own (repeatable).",
)
@click.option("--reason", default=None, help="Why (a ticket number); audited.")
@click.option("--api", "api_url", default=None, help="The API (default: the configured one).")
@click.option("--token", envvar="CDP_TOKEN", required=True, help="A token with identity:write.")
@click.pass_obj
def identity_split(
    settings: Settings,
    profile_id: str,
    merged: str | None,
    detach: tuple[str, ...],
    reason: str | None,
    api_url: str | None,
    token: str,
) -> None:
    """Split a profile: undo a merge (--merged) or detach identifiers (--detach), rebuilt
    from history (the API's process must reach ClickHouse)."""
    import httpx

    identifiers = []
    for item in detach:
        kind, sep, value = item.partition(":")
        if not sep:
            raise click.UsageError(f"--detach {item!r}: give TYPE:VALUE")
        identifiers.append({"type": kind, "value": value})
    body = {"profile_id": profile_id, "merged": merged, "identifiers": identifiers}
    if reason:
        body["reason"] = reason
    answer = httpx.post(
        api_base(settings, api_url) + "/v1/identity/splits",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=300,
    )
    if answer.status_code != 200:
        raise click.ClickException(api_error(answer))
    _echo_json(answer.json())


@cli.group()
def history() -> None:
    """The history in ClickHouse."""


@history.command("count")
@click.option("--table", default="events", show_default=True)
@click.pass_obj
def history_count(settings: Settings, table: str) -> None:
    """Print the deduplicated row count of a history table."""
    click.echo(history_writer(settings).count(table))


@history.command("sql")
@click.argument("query")
@click.pass_obj
def history_sql(settings: Settings, query: str) -> None:
    """Run a SQL query on the history (embedded: only while no worker holds it); JSON rows."""
    result = history_writer(settings).query(query)
    for row in result:
        click.echo(json.dumps(row, default=str))


@cli.group(invoke_without_command=True)
@click.option(
    "--into",
    "namespace",
    default=None,
    help="Rebuild into this Redis namespace (default: the configured one, which must be empty).",
)
@click.option("--force", is_flag=True, help="Replay into a namespace that already holds state.")
@click.option(
    "--step-rows",
    default=20_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Events read from history per step (memory; progress is recorded per step).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def rebuild(
    ctx: click.Context, namespace: str | None, force: bool, step_rows: int, as_json: bool
) -> None:
    """Rebuild identity graph, profiles and tags in Redis from the history in ClickHouse.

    With embedded ClickHouse, run it while no history worker holds the data directory (stop
    `cdp run`/`cdp worker`; the API may keep accepting events into Kafka). An interrupted
    rebuild continues where it stopped when started again.
    """
    if ctx.invoked_subcommand is not None:
        return
    settings: Settings = ctx.obj
    target = namespace or settings.worker.namespace
    report = asyncio.run(_rebuild(settings, target, force, step_rows))
    if as_json:
        _echo_json(report.__dict__)
        return
    click.echo(
        f"rebuilt {target}: {report.events:,} events -> {report.profiles:,} profiles "
        f"({report.merged:,} merged ids), {report.tagged:,} tagged, "
        f"{report.fingerprints:,} retry fingerprints, in {report.seconds:.1f} s "
        f"({report.rate():,.0f} events/s){' (resumed)' if report.resumed else ''}"
    )


async def _rebuild(settings: Settings, namespace: str, force: bool, step_rows: int) -> Any:
    import redis.asyncio as aioredis

    from deploy.rebuild import Rebuild, RebuildError

    url = settings.redis.url.get_secret_value()
    client = aioredis.from_url(url)
    writer = history_writer(settings)
    profiles = ProfileStore(client, settings.profiles, namespace)
    tags = None
    if settings.tags.enabled:
        tags = TagStore(client, load_catalog(settings.tags.catalog), profiles, namespace)
        tags.bind(url)
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        rate = done / max(time.monotonic() - started, 1e-3)
        click.echo(f"\rreplayed {done:,} / {total:,} events ({rate:,.0f}/s)", err=True, nl=False)

    async def query(sql: str, params: dict[str, Any]) -> list[Any]:
        return await asyncio.to_thread(writer.rows, sql, params)

    job = Rebuild(
        client,
        namespace,
        IdentityStore(
            client,
            settings.identity,
            namespace,
            settings.worker.identity_retry_window_s,
            settings.worker.identity_retry_buckets,
        ),
        profiles,
        tags,
        query,
        settings.clickhouse.database,
        step_rows=step_rows,
        progress=progress,
    )
    freeze_startup_heap()  # the catalog, clients, modules: not walked by every full collection
    try:
        return await job.run(force=force)
    except RebuildError as err:
        click.echo(f"error: {err}", err=True)
        raise SystemExit(2) from None
    finally:
        click.echo("", err=True)
        await client.aclose()


@rebuild.command("compare")
@click.option("--with", "other", required=True, help="The namespace to compare with.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def rebuild_compare(settings: Settings, other: str, as_json: bool) -> None:
    """Compare the configured namespace's profiles, identifiers, tags and aliases with
    another's (a rebuild's); exit 1 when they differ."""
    diff = asyncio.run(_compare(settings, other))
    if as_json:
        _echo_json({**diff.__dict__, "same": diff.same})
    else:
        click.echo(
            f"{diff.profiles:,} profiles: {diff.equal:,} equal, {len(diff.different):,} differ, "
            f"{len(diff.only_left):,} only in {settings.worker.namespace}, "
            f"{len(diff.only_right):,} only in {other}; "
            f"{len(diff.aliases):,} merged ids with another survivor"
        )
        for pid, fields in list(diff.different.items())[:20]:
            click.echo(f"  {pid}: {', '.join(fields)}")
    if not diff.same:
        raise SystemExit(1)


async def _compare(settings: Settings, other: str) -> Any:
    import redis.asyncio as aioredis

    from deploy.rebuild import compare

    url = settings.redis.url.get_secret_value()
    client = aioredis.from_url(url)
    catalog = load_catalog(settings.tags.catalog)
    stores = []
    for ns in (settings.worker.namespace, other):
        store = ProfileStore(client, settings.profiles, ns)
        TagStore(client, catalog, store, ns).bind(url)
        stores.append((ns, store))
    try:
        return await compare(client, stores[0], stores[1])
    finally:
        await client.aclose()


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


cli.add_command(tags_group)
cli.add_command(care_group)
register_privacy_commands(cli)
register_deadletter_commands(cli)
cli.add_command(segments_group)
cli.add_command(sources_group)
register_import_command(cli)


def main() -> None:
    """Entry point of the ``cdp`` script: a configuration error (settings, tag catalog,
    keys) exits 2, a failure to start (port, services) exits 3, each with one line."""
    try:
        run_guarded(lambda: cli(auto_envvar_prefix=None))
    except (ConfigError, CareRulesError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    except StartError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_START)
