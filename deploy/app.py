"""Assemble the HTTP application from settings: ingest routes, health, OpenAPI."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import redis.asyncio as aioredis
import structlog
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from care.api import care_router
from care.processor import Care
from care.rules import for_catalog as care_rules
from care.store import CareStore
from console.ops import OpsSources
from console.ops import sizes as membership_sizes
from console.router import install as install_console
from contracts.topics import CARE_TASKS, EVENTS_DEADLETTER, EVENTS_RAW, SEGMENTS_MEMBERSHIP
from deploy.forward import Forward
from deploy.lag import consumer_lag, topic_ends
from deploy.lifecycle import STOP, Stop
from deploy.metrics import exposition
from deploy.privacy import Privacy, erasures, stored_identifier
from deploy.privacy import audit as audit_log
from deploy.privacy import build as build_privacy
from deploy.settings import Settings
from deploy.split import Splitter, clickhouse_io
from deploy.split import router as split_router
from identity.store import IdentityStore
from ingest.api import IngestConfig, IngestEndpoints, build_router, json_response
from ingest.client import ClientAddresses
from ingest.cors import IngestCors
from ingest.deadletters import DeadLetters
from ingest.deadletters_api import READ, REDRIVE
from ingest.deadletters_api import build_router as deadletters_router
from ingest.import_api import build_router as imports_router
from ingest.ratelimit import Limiter
from ingest.redrive import Redriver
from ingest.refusals import Refusals
from ingest.sources import SourceRegistry
from privacy.api import build_router as privacy_router
from privacy.approvals import Approvals
from privacy.audit import Audited, query_audit, record_changes
from privacy.reveal import Revealer
from privacy.seal import Sealer
from privacy.subjects import Subjects
from profiles.api import build_router as profiles_router
from profiles.store import ProfileStore
from runtime.auth import require
from runtime.publisher import Publisher
from runtime.readback import Message, read_last, read_messages, read_to_end
from segments.agents import LiveMembership
from segments.api import build_router as segments_router
from segments.live import LiveIndex
from segments.service import Segments
from segments.store import SegmentStore
from sinks.clickhouse import connect as connect_clickhouse
from tagging.api import build_router as tags_router
from tagging.catalog import load as load_catalog
from tagging.store import TagStore

log = structlog.get_logger()


#: The cyclic collector's thresholds for the API, the processors and batch jobs: the youngest
#: generation is collected every 50,000 allocations instead of 700. These processes keep
#: thousands of short-lived objects in flight (a micro-batch of events and its records, a
#: request's) and make almost no cycles, so the default thresholds walked mostly live objects:
#: raised, `cdp run` used ~15% less CPU per event end to end (docs/benchmarks.md).
FEWER_COLLECTIONS = (50_000, 50, 100)


def freeze_startup_heap() -> None:
    """Exclude everything allocated until now from the garbage collector's full passes.

    Modules, the tag catalog, phone metadata and clients live as long as the process; a
    full collection walked them all every second or two, a ~85 ms stall of every request
    in flight (the API's p99). Frozen, a full pass takes a few milliseconds.
    """
    gc.freeze()


def settle_collector() -> None:
    """For a long-running process, once started: freeze the startup heap and keep the
    collector's thresholds raised (``FEWER_COLLECTIONS``) for the rest of its life."""
    freeze_startup_heap()
    gc.set_threshold(*FEWER_COLLECTIONS)


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Run the block with the cyclic collector's thresholds raised (restored after it).

    For batch work in a process that runs other things too (an import holds a few chunks of
    events at a time): ~10% of an import's time after ``freeze_startup_heap``.
    """
    before = gc.get_threshold()
    gc.set_threshold(*FEWER_COLLECTIONS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


Check = Callable[[], Awaitable[None]]
CHECK_TIMEOUT_S = 3.0


def kafka_publisher(settings: Settings) -> Publisher:
    k = settings.kafka
    return Publisher(
        k.bootstrap_servers,
        publish_timeout_s=k.publish_timeout_s,
        request_timeout_ms=k.request_timeout_ms,
        linger_ms=k.linger_ms,
    )


def ingest_config(
    settings: Settings, publisher: Publisher, sealer: Sealer | None, processes: int | None = None
) -> IngestConfig:
    """Ingest as configured (sources, limits, topics, the sealer, mappings): for the API's
    routes, file imports and re-drives alike. Rate limits are shared by ``processes`` (the
    API's processes unless given)."""
    share = settings.api.processes() if processes is None else processes
    return IngestConfig(
        registry=SourceRegistry(settings.ingest.all_sources()),
        publisher=publisher,
        raw_topic=settings.kafka.topic(EVENTS_RAW.name),
        deadletter_topic=settings.kafka.topic(EVENTS_DEADLETTER.name),
        limits=settings.ingest.limits,
        default_region=settings.ingest.default_region,
        clients=ClientAddresses(
            settings.ingest.trusted_proxies, settings.ingest.client_ipv6_prefix
        ),
        limiter=Limiter(settings.ingest.rate_limits, share),
        refusals=Refusals(settings.ingest.refusal_letters, share),
        sealer=sealer,
        mappings=settings.ingest.mapping_registry(),
    )


def dead_letters(
    settings: Settings, config: IngestConfig, client: aioredis.Redis, privacy: Privacy | None
) -> tuple[DeadLetters, Redriver]:
    """The dead-letter topic's reader and the re-drive through ``config``'s intake."""

    def reader(topic: str) -> list[Message]:
        return read_messages(settings.kafka.bootstrap_servers, topic, timeout_s=60.0)

    letters = DeadLetters(
        config.deadletter_topic, reader, config.registry, privacy.keys if privacy else None
    )
    return letters, Redriver(config, letters, client, settings.worker.namespace)


class NotUsedHere(Exception):
    """A check of a service this process does not use: reported, not failed."""


async def _run_checks(checks: dict[str, Check]) -> dict[str, dict[str, Any]]:
    async def one(check: Check) -> dict[str, Any]:
        try:
            await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
        except NotUsedHere as why:
            return {"ok": True, "used": False, "note": str(why)}
        except Exception as exc:  # noqa: BLE001 - a health check reports any failure as data
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"ok": True}

    results = await asyncio.gather(*(one(c) for c in checks.values()))
    return dict(zip(checks, results, strict=True))


def _ops_sources(settings: Settings, checks: dict[str, Check]) -> OpsSources:
    kafka = settings.kafka
    return OpsSources(
        topic=kafka.topic,
        ends=lambda topics: topic_ends(kafka, topics),
        lag=lambda: [row.as_dict() for row in consumer_lag(kafka)],
        last=lambda topic, n: read_last(kafka.bootstrap_servers, topic, n),
        health=lambda: _run_checks(checks),
    )


def _timeline(subjects: Subjects, identity: IdentityStore, revealer: Revealer | None) -> Any:
    """A profile's latest events for the console, sensitive values masked."""

    async def timeline(
        pid: str, types: list[str], channels: list[str], limit: int
    ) -> list[dict[str, Any]]:
        try:
            events = await subjects.timeline(pid, types, channels, limit)
        except RuntimeError as exc:  # the history belongs to another process
            raise HTTPException(
                503, {"code": "history_unavailable", "message": str(exc), "field": None}
            ) from exc
        if revealer is None or not events:
            return events
        opened: list[dict[str, Any]] = await revealer.document(
            events, False, await identity.sealed(pid)
        )
        return opened

    return timeline


async def _sizes(settings: Settings, segment_id: str) -> list[dict[str, Any]]:
    """A saved segment's size after each membership change, from the membership topic."""
    topic = settings.kafka.topic(SEGMENTS_MEMBERSHIP.name)
    changes = await asyncio.to_thread(read_to_end, settings.kafka.bootstrap_servers, topic, 30.0)
    return membership_sizes(changes, segment_id)


def create_app(settings: Settings, owns_history: bool = False, stop: Stop = STOP) -> FastAPI:
    """Build the API; connections open in the lifespan, not at import.

    ``owns_history``: this process writes the embedded ClickHouse (``cdp run``), so segment
    queries may open it; otherwise they need a ClickHouse server (``CDP_CLICKHOUSE__URL``).
    ``stop``: the process's stop; ``/healthz`` answers 503 once it began.
    """
    publisher = kafka_publisher(settings)
    redis_client = aioredis.from_url(settings.redis.url.get_secret_value())
    clickhouse: dict[str, Any] = {}
    url = settings.clickhouse.url.get_secret_value() if settings.clickhouse.url else None

    async def clickhouse_check() -> None:
        if not url and not owns_history:
            # chDB is one process per data directory: opening it here would fail while the
            # history worker holds it, or lock the worker out if this ran first. This
            # process does not use it (history segments answer 503), so it is not a check.
            raise NotUsedHere("embedded ClickHouse belongs to the history worker")
        if "client" not in clickhouse:
            clickhouse["client"] = await asyncio.to_thread(
                connect_clickhouse, url, settings.chdb_path()
            )
        await asyncio.to_thread(clickhouse["client"].command, "SELECT 1")

    async def redis_check() -> None:
        await redis_client.ping()

    checks: dict[str, Check] = {
        "kafka": publisher.ping,
        "redis": redis_check,
        "clickhouse": clickhouse_check,
    }

    async def record_configuration() -> None:
        """Tokens and sources are configuration: a change is audited by the first process
        that starts with it (names and scopes only; tokens and keys are hashes anyway)."""
        tokens_now = {t.name: f"{t.sha256[:16]}:{','.join(sorted(t.scopes))}" for t in tokens}
        sources_now = {
            s.name: f"{s.key_sha256[:16]}:{s.channel}:{s.user_id_type}"
            for s in settings.ingest.all_sources()
        }
        try:
            for kind, items in (("tokens", tokens_now), ("sources", sources_now)):
                await record_changes(redis_client, ns, audited.log, kind, items)
        except Exception as exc:  # noqa: BLE001 - ingest must start; recorded next time
            log.warning("audit.config_not_recorded", error=str(exc))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            await asyncio.to_thread(tag_store.bind, redis_url)
        except Exception as exc:  # noqa: BLE001 - ingest must not depend on Redis
            log.warning("api.tags_unbound", error=str(exc))
        connected = await publisher.start()
        log.info("api.started", kafka_connected=connected, port=settings.api.port)
        stopping = asyncio.Event()
        summaries = asyncio.create_task(ingest.summarising(stopping), name="ingest.summaries")
        # In the background: the API must not wait on the audit log to start serving.
        recording = asyncio.create_task(record_configuration(), name="audit.configuration")
        settle_collector()
        yield
        if not recording.done():
            recording.cancel()
        stopping.set()  # the refusals counted since the last summary, before the producer stops
        await summaries
        await publisher.stop()
        await redis_client.aclose()
        if "client" in clickhouse and url:  # an embedded client is shared: never closed
            clickhouse["client"].close()

    app = FastAPI(
        title="CDP API",
        version="1",
        lifespan=lifespan,
        description="Segment-compatible and native event ingest into Kafka.",
    )
    privacy = build_privacy(settings, redis_client, publisher)
    audited = Audited(audit_log(settings, publisher))
    ingest = IngestEndpoints(
        ingest_config(settings, publisher, privacy.sealer if privacy else None)
    )
    app.include_router(build_router(ingest))
    app.include_router(
        imports_router(
            ingest,
            redis_client,
            settings.worker.namespace,
            settings.ingest.import_dir,
            settings.ingest.import_max_bytes,
        )
    )
    app.add_middleware(IngestCors, origins=settings.ingest.cors_origins)
    if settings.api.history_owner and not owns_history:
        # Routes that read the history (embedded ClickHouse) go to the process that owns it.
        app.add_middleware(
            Forward,
            target=settings.api.history_owner,
            prefixes=(
                "/v1/segments",
                "/v1/privacy/subjects",
                "/v1/audit",
                "/v1/identity/splits",
                "/console/api/history",
            ),
        )
    ns = settings.worker.namespace
    profile_store = ProfileStore(redis_client, settings.profiles, ns)
    # An invalid catalog fails here, loudly; binding to Redis waits for the lifespan.
    tag_store = TagStore(redis_client, load_catalog(settings.tags.catalog), profile_store, ns)
    redis_url = settings.redis.url.get_secret_value()
    app.include_router(
        profiles_router(
            profile_store,
            IdentityStore(redis_client, settings.identity, ns),
            settings.ingest.default_region,
            read_profiles=require(settings.api.tokens, "profiles:read"),
            read_identity=require(settings.api.tokens, "identity:read"),
            revealer=privacy.revealer if privacy else None,
            blind=privacy.sealer.blind if privacy else None,
            audited=audited,
        )
    )

    app.include_router(
        tags_router(tag_store, redis_url, require(settings.api.tokens, "profiles:read"))
    )
    letters, redriver = dead_letters(settings, ingest.config, redis_client, privacy)
    app.include_router(
        deadletters_router(
            letters,
            redriver,
            read=require(settings.api.tokens, READ),
            redrive=require(settings.api.tokens, REDRIVE),
            audited=audited,
            sealed=privacy is not None,
        )
    )

    def history_client() -> Any:
        if not url and not owns_history:
            raise RuntimeError("embedded ClickHouse is owned by the worker process")
        return connect_clickhouse(url, settings.chdb_path())

    segments = Segments(
        history_client,
        settings.clickhouse.database,
        tag_store,
        LiveIndex(redis_client, ns),
        profile_store,
        bind=lambda: tag_store.ensure_bound(redis_url),
        query_timeout_s=settings.segments.query_timeout_s,
        reveal=privacy.revealer.document if privacy else None,
        sealed_traits=privacy.sealer.classes.traits if privacy else (),
        sealed_properties=privacy.sealer.classes.properties if privacy else (),
    )
    tokens = settings.api.tokens
    app.include_router(
        segments_router(
            segments,
            SegmentStore.durable(redis_client, ns, publisher, settings.kafka),
            read=require(tokens, "segments:read"),
            write=require(tokens, "segments:write"),
            audited=audited,
        )
    )

    care = Care(
        care_rules(settings.care.rules, tag_store.catalog),
        CareStore(redis_client, ns),
        profile_store,
        tag_store.catalog.zone,
        publisher.publish,
        settings.kafka.topic(CARE_TASKS.name),
        deliver=settings.care.webhook_url is not None,
    )
    app.include_router(
        care_router(
            care,
            read=require(tokens, "care:read"),
            write=require(tokens, "care:write"),
            webhook=settings.care.webhook_url is not None,
        )
    )

    identity_store = IdentityStore(redis_client, settings.identity, ns)
    db = settings.clickhouse.database

    async def audit_rows(query: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            client = await asyncio.to_thread(history_client)
        except RuntimeError as exc:
            raise HTTPException(
                503,
                {"code": "history_unavailable", "message": str(exc), "field": None},
            ) from exc
        return await asyncio.to_thread(query_audit, client, db, query)

    subjects = Subjects(redis_client, ns, profile_store, identity_store, history_client, db)

    async def reveal_for_export(doc: Any, clear: bool, ids: dict[str, str] | None) -> Any:
        assert privacy is not None
        return await privacy.revealer.document(doc, clear, ids)

    app.include_router(
        privacy_router(
            erasures(settings, redis_client, publisher),
            identity_store,
            settings.ingest.default_region,
            lambda scope: require(tokens, scope),
            Approvals(
                redis_client, ns, settings.privacy.approval_ttl_s, audit_log(settings, publisher)
            ),
            subjects,
            audited,
            audit_rows,
            settings.privacy.approval_threshold,
            reveal=reveal_for_export if privacy else None,
            blind=privacy.sealer.blind if privacy else None,
        )
    )

    segment_store = SegmentStore.durable(redis_client, ns, publisher, settings.kafka)
    membership = LiveMembership(
        segment_store,
        tag_store.catalog,
        settings.kafka.topic(SEGMENTS_MEMBERSHIP.name),
        settings.segments.live_reload_s,
    )

    def splitter() -> Splitter:
        try:
            client = history_client()
        except RuntimeError as exc:
            raise HTTPException(
                503, {"code": "history_unavailable", "message": str(exc), "field": None}
            ) from exc

        query, command, insert = clickhouse_io(client, db)
        return Splitter(
            redis_client,
            ns,
            settings.identity,
            settings.profiles,
            tag_store if settings.tags.enabled else None,
            db,
            query,
            command,
            insert,
            publisher.publish,
            settings.kafka.topic,
            membership.records,
        )

    app.include_router(
        split_router(
            splitter,
            require(tokens, "identity:write"),
            audited,
            lambda kind, value: stored_identifier(settings, kind, value).key(),
        )
    )

    install_console(
        app,
        tokens,
        lambda scope: require(tokens, scope),
        _ops_sources(settings, checks),
        _timeline(subjects, identity_store, privacy.revealer if privacy else None),
        lambda segment_id: _sizes(settings, segment_id),
        tag_store.catalog,
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        detail = (
            exc.detail
            if isinstance(exc.detail, dict)
            else {"code": "http_error", "message": str(exc.detail), "field": None}
        )
        return json_response({"success": False, **detail}, exc.status_code, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"][1:]) or None
        return json_response(
            {
                "success": False,
                "code": "invalid_request",
                "message": f"{field}: {first['msg']}",
                "field": field,
            },
            400,
        )

    @app.get(
        "/healthz", tags=["ops"], summary="Kafka, Redis and ClickHouse reachability; 503 stopping"
    )
    async def healthz() -> Any:
        if stop.stopping:
            # A load balancer stops sending here; the checks would say nothing it needs.
            body = {"ok": False, "pid": os.getpid(), "stopping": True, "checks": {}}
            return json_response(body, 503)
        results = await _run_checks(checks)
        ok = all(r["ok"] for r in results.values())
        # Several processes serve one port: the pid says which one answered.
        return json_response({"ok": ok, "pid": os.getpid(), "checks": results}, 200 if ok else 503)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics of this API's processes")
    async def metrics() -> Response:
        body = await asyncio.to_thread(exposition)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
