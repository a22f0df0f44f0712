"""Assemble the faust app: agents of the chosen roles, their dependencies, the API if asked."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from typing import Any

import faust
import mode
import redis.asyncio as aioredis
import structlog

from care import agents as care_agents
from contracts.topics import SEGMENTS_MEMBERSHIP
from deploy.app import settle_collector
from deploy.deps import Deps
from deploy.fastfaust import App as FaustApp
from deploy.lifecycle import STOP
from deploy.logs import quiet_libraries
from deploy.privacy import audit, erasures
from deploy.serve import ChildFailed, Children, child_settings, die_with
from deploy.settings import Settings
from identity import agents as identity_agents
from identity.store import IdentityStore
from privacy import agents as privacy_agents
from privacy.audit import record_changes
from profiles import agents as profile_agents
from profiles.store import ProfileStore
from runtime.publisher import Publisher
from runtime.retry import until_done
from segments.agents import LiveMembership, register_refresh
from segments.store import SegmentStore
from sinks import agents as sink_agents
from sinks import retention
from sinks.clickhouse import connect as connect_clickhouse
from sinks.history import HistoryWriter, migrate
from stream import agents as stream_agents
from tagging.catalog import load as load_catalog
from tagging.store import TagStore


def _care(app: Any, deps: Deps) -> None:
    catalog = deps.tags.catalog if deps.tags else load_catalog(deps.settings.tags.catalog)
    care_agents.register(app, deps, catalog)


#: The roles ``cdp worker`` runs when none is named.
ROLES: dict[str, Callable[[Any, Deps], None]] = {
    "identity": identity_agents.register,
    "profiles": profile_agents.register,
    "history": sink_agents.register,
}

#: Roles run only when named: care runs in a consumer group of its own (``--role care``;
#: ``cdp run`` starts one), so it changes no existing group.
NAMED_ROLES: dict[str, Callable[[Any, Deps], None]] = {"care": _care}

#: Every role a worker can run.
ALL_ROLES = {**ROLES, **NAMED_ROLES}


#: The roles of the one-pass stream processor (``cdp run`` starts it beside its own process).
STREAM_ROLES = ["identity", "profiles"]


def group_id(settings: Settings, roles: list[str]) -> str:
    """Workers with the same roles share one consumer group (and split its partitions)."""
    return f"{settings.kafka.topic_prefix}{settings.worker.app_id}-{'_'.join(sorted(roles))}"


def history_writer(settings: Settings) -> HistoryWriter:
    """Connect ClickHouse (embedded by default), migrate, apply the retention, return the
    writer."""
    url = settings.clickhouse.url.get_secret_value() if settings.clickhouse.url else None
    client = connect_clickhouse(url, settings.chdb_path())
    db, days = settings.clickhouse.database, settings.clickhouse.history_retention_days
    migrate(client, db)
    changed = {t: o for t, o in retention.apply(client, db, days).items() if o != "kept"}
    if changed:
        structlog.get_logger().info("history.retention", days=days, tables=changed)
    return HistoryWriter(client, db)


def tag_store(
    settings: Settings, client: aioredis.Redis, profiles: ProfileStore, evaluates: bool
) -> TagStore:
    """Load and check the catalog, bind it to its stored ordinals, return the tag store.

    An invalid catalog raises ``CatalogError`` here, so processors refuse to start on it.
    Only a process that evaluates tags (``evaluates``: the profiles role) retires the
    indexes of tags its catalog removed, and finds a new namespace's tags nothing to
    backfill.
    """
    store = TagStore(
        client, load_catalog(settings.tags.catalog), profiles, settings.worker.namespace
    )
    store.bind(settings.redis.url.get_secret_value(), evaluator=evaluates)
    return store


def build_deps(settings: Settings, roles: list[str]) -> Deps:
    """Create the shared clients (connections open lazily, inside the worker's loop)."""
    client = aioredis.from_url(settings.redis.url.get_secret_value())
    k, w = settings.kafka, settings.worker
    profiles = ProfileStore(client, settings.profiles, w.namespace)
    enabled = settings.tags.enabled
    tags = tag_store(settings, client, profiles, "profiles" in roles) if enabled else None
    return Deps(
        settings=settings,
        redis=client,
        publisher=Publisher(
            k.bootstrap_servers,
            publish_timeout_s=k.publish_timeout_s,
            request_timeout_ms=k.request_timeout_ms,
            linger_ms=k.linger_ms,
        ),
        identity=IdentityStore(
            client,
            settings.identity,
            w.namespace,
            w.identity_retry_window_s,
            w.identity_retry_buckets,
        ),
        profiles=profiles,
        history=history_writer(settings) if "history" in roles else None,
        tags=tags,
    )


def build_app(
    settings: Settings, roles: list[str], ready: Any = None, instance: str | None = None
) -> faust.App:
    """Return the faust app with the agents of ``roles``.

    ``ready`` (an event of a supervising process) is set once the app's services started;
    ``instance`` makes the app a static member of its consumer group under that id.
    """
    unknown = set(roles) - set(ALL_ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; choose from {sorted(ALL_ROLES)}")
    # faust creates its data directory without parents; the state directory may be new.
    datadir = settings.local.state_dir / "faust"
    datadir.mkdir(parents=True, exist_ok=True)
    app = FaustApp(
        group_id(settings, roles),
        broker=f"kafka://{settings.kafka.bootstrap_servers}",
        store="memory://",
        processing_guarantee="at_least_once",
        web_enabled=False,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.kafka.partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        broker_commit_interval=1.0,
        broker_heartbeat_interval=settings.kafka.heartbeat_interval_s,
        # faust keeps a small data directory per app; not in the current directory.
        datadir=str(datadir),
        consumer_group_instance_id=instance,
    )
    deps = build_deps(settings, roles)
    catalog = deps.tags.catalog if deps.tags else load_catalog(settings.tags.catalog)
    if "profiles" in roles and deps.tags is not None:
        deps.membership = LiveMembership(
            SegmentStore.durable(
                deps.redis, settings.worker.namespace, deps.publisher, settings.kafka
            ),
            catalog,
            deps.topic(SEGMENTS_MEMBERSHIP.name),
            settings.segments.live_reload_s,
        )
    if "profiles" in roles and deps.tags is not None:
        prints = {t.id: t.fingerprint for t in deps.tags.catalog.by_id.values()}

        @app.task
        async def catalog_changes() -> None:
            """Audit a changed tag catalog (the first profiles worker to start with it)."""
            try:
                await record_changes(
                    deps.redis, settings.worker.namespace, audit(settings, deps.publisher),
                    "catalog", prints,
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - tags must run; recorded next time
                structlog.get_logger().warning("audit.catalog_not_recorded", error=str(exc))

    if "profiles" in roles:

        @app.task
        async def fold_watermark_upgrade() -> None:
            """Move fold watermarks stored in the older layout (once per namespace)."""
            moved = await until_done("profiles.upgrade", deps.profiles.upgrade_watermarks)
            if moved:
                structlog.get_logger().info("profiles.watermarks_upgraded", profiles=moved)

    if "identity" in roles:

        @app.task
        async def identity_graph_upgrade() -> None:
            """Move profiles stored in the older graph layout (once per namespace)."""
            moved = await until_done("identity.upgrade", deps.identity.upgrade_graphs)
            if moved:
                structlog.get_logger().info("identity.graphs_upgraded", profiles=moved)

    if set(STREAM_ROLES) <= set(roles):
        # One pass: resolve, fold and tag each raw batch in one agent (stream/agents.py).
        stream_agents.register(app, deps)
        profile_agents.register(app, deps, consume=False)
        others = sorted(set(roles) - {"identity", "profiles"})
    else:
        others = sorted(roles)
    for role in others:
        ALL_ROLES[role](app, deps)
    if "history" in roles:
        deps.refresher = register_refresh(app, deps, catalog)
        privacy_agents.register(app, deps, erasures(settings, deps.redis, deps.publisher))

    @app.service
    class Outputs(mode.Service):
        """Run the processors' stop hooks, then flush the publisher, when the worker stops."""

        async def on_start(self) -> None:
            if not settings.worker.faust_monitor:
                # faust's Monitor sensor records every event in Python: measurable overhead per
                # message; consumer lag comes from `cdp lag` instead.
                app.sensors.remove(app.monitor)
            settle_collector()
            if ready is not None:
                ready.set()

        async def on_stop(self) -> None:
            for hook in deps.on_stop:
                await hook()
            await deps.publisher.stop()
            await deps.redis.aclose()

    return app


class _Worker(faust.Worker):
    """faust's worker whose stop is bounded (deploy/lifecycle.py): a signal begins this
    process's stop, a second one ends it at once; a stop for any other reason (a failed
    start, a crash) is bounded too."""

    def _on_sigint(self) -> None:
        STOP.begin(signal.SIGINT)
        super()._on_sigint()

    def _on_sigterm(self) -> None:
        STOP.begin(signal.SIGTERM)
        super()._on_sigterm()

    def on_worker_shutdown(self) -> None:
        STOP.begin()
        super().on_worker_shutdown()


def run(app: faust.App, settings: Settings) -> None:
    """Run the faust worker until a signal stops it; exit with lifecycle's code."""
    STOP.install(settings.shutdown_timeout_s)
    worker = _Worker(app, loglevel=settings.log_level_faust(), quiet=True, redirect_stdouts=False)
    worker.spinner = None  # its cursor escape codes end up in logs and piped output
    quiet_libraries()
    try:
        worker.execute_from_commandline()
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
        raise SystemExit(STOP.exit_code(code)) from None


class WorkerProcessFailed(ChildFailed):
    """A stream worker process exited before it was consuming."""


def _work_one(settings: Settings, roles: list[str], slot: int, parent: int, ready: Any) -> None:
    """One worker process with ``roles`` (``cdp run``'s stream processor, ``cdp-stream``, or
    its care processor, ``cdp-care``).

    A static member of its group (KIP-345): restarted after a crash under the same instance
    id, it takes its partitions back at once, instead of after the session timeout it would
    take the group to give up on the dead member and rebalance.
    """
    # Named for what it runs, so `ps` and a supervisor's logs tell them apart.
    die_with(parent, "cdp-stream" if set(roles) == set(STREAM_ROLES) else f"cdp-{'-'.join(roles)}")
    instance = f"{settings.worker.instance_id or socket.gethostname()}-{slot}"
    run(build_app(settings, roles, ready, instance), settings)


class WorkerProcesses(Children):
    """Spawned worker processes with the same roles: one consumer group, its partitions
    shared between them."""

    kind = "worker"
    failure = WorkerProcessFailed

    def __init__(self, settings: Settings, roles: list[str], count: int) -> None:
        super().__init__(_work_one, (child_settings(settings), sorted(roles)), count)
