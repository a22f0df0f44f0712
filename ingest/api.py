"""The ingest HTTP API: Segment-compatible tracking endpoints and native events."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from fastapi import APIRouter, Request
from fastapi.responses import Response
from redis.exceptions import RedisError

from contracts.deadletter import DeadLetter, DeadLetterReason
from contracts.events import SEGMENT_CALL_TYPES, Event, EventType
from ingest import intake as take
from ingest.body import decode, parse_json, read_capped, too_large
from ingest.client import ClientAddresses
from ingest.exceptions import Rejected, Throttled
from ingest.limits import Limits
from ingest.mappings import MappingRegistry
from ingest.ratelimit import Limiter
from ingest.refusals import Kind, Refusals, refusal_letter, summary_letter
from ingest.sources import Source, SourceRegistry, hash_key
from privacy.seal import Sealer
from runtime import metrics
from runtime.exceptions import KafkaUnavailable
from runtime.publisher import Publisher, Record

log = structlog.get_logger()

RETRY_AFTER_S = 5

#: Refusals of a request before its events are looked at: written by sample, the rest counted.
REFUSALS = frozenset({DeadLetterReason.UNAUTHORIZED, DeadLetterReason.RATE_LIMITED})


@dataclass(frozen=True)
class IngestConfig:
    """What the ingest endpoints need, assembled by the composition root."""

    registry: SourceRegistry
    publisher: Publisher
    raw_topic: str
    deadletter_topic: str
    limits: Limits
    default_region: str
    #: Who sent a request (the socket peer, or what trusted proxies say).
    clients: ClientAddresses
    #: Rate limits per client address and per write key (this process's share).
    limiter: Limiter
    #: Which refused requests are dead-lettered one by one; the others are counted.
    refusals: Refusals
    #: With field encryption on: seals accepted events and dead letters before they are
    #: published (creating data keys, durably, first).
    sealer: Sealer | None = None
    #: Each source's mapping into the platform's vocabulary (None: no source has one).
    mappings: MappingRegistry | None = None


async def records(
    config: IngestConfig, source: str | None, events: list[Event], letters: list[DeadLetter]
) -> list[Record]:
    """What ingest publishes for accepted ``events`` and ``letters``: sealed first when field
    encryption is on; events keyed by their strongest identifier, letters by their source."""
    sealer = config.sealer
    if sealer is not None:
        events = await sealer.seal(events) if events else events
        letters = await sealer.seal_letters(letters) if letters else letters
    key = (source or "unknown").encode()
    return [
        Record(config.raw_topic, e.partition_key(), e.model_dump_json().encode()) for e in events
    ] + [
        Record(config.deadletter_topic, key, letter.model_dump_json().encode())
        for letter in letters
    ]


@dataclass
class _Request:
    """Per-request state gathered while reading, for the dead letter."""

    request_id: str
    endpoint: str
    received_at: datetime
    raw: bytes = b""
    body: Any = None
    parsed: bool = False
    source: Source | None = None
    #: SHA-256 of the write key the request presented (kept in a 401's letter for re-drive).
    key_sha256: str | None = None


def json_response(
    body: dict[str, Any], status_code: int, headers: dict[str, str] | None = None
) -> Response:
    """Serialise with orjson (fast, datetime-aware)."""
    return Response(
        orjson.dumps(body),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


def basic_username(header: str | None) -> str | None:
    """Return the username of an HTTP Basic ``Authorization`` header (the write key)."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0] or None


def _unauthorized(field: str) -> Rejected:
    return Rejected(
        401,
        DeadLetterReason.UNAUTHORIZED,
        "write key missing or unknown: send it as the HTTP Basic username",
        field,
    )


def _error_body(rejected: Rejected, request_id: str) -> dict[str, Any]:
    return {
        "success": False,
        "code": rejected.reason.value,
        "message": rejected.message,
        "field": rejected.field,
        "index": rejected.index,
        "request_id": request_id,
    }


class IngestEndpoints:
    """Request handling shared by every ingest route."""

    def __init__(self, config: IngestConfig) -> None:
        self.config = config

    async def _read(self, request: Request, ctx: _Request) -> None:
        limits = self.config.limits
        header_key = basic_username(request.headers.get("authorization"))
        ctx.raw, more = await read_capped(request.stream(), limits.max_batch_bytes)
        if header_key is not None:
            # Hashed once: the lookup, and a refusal's letter (a re-drive finds the key by it).
            ctx.key_sha256 = hash_key(header_key)
            ctx.source = self.config.registry.by_hash(ctx.key_sha256)
            if ctx.source is None:
                raise _unauthorized("Authorization")
        if more:
            raise too_large(limits.max_batch_bytes)
        decoded = decode(ctx.raw, request.headers.get("content-encoding"), limits.max_batch_bytes)
        ctx.body, ctx.parsed = parse_json(decoded), True
        if ctx.source is None:
            body_key = ctx.body.get("writeKey") if isinstance(ctx.body, dict) else None
            body_key = body_key if isinstance(body_key, str) and body_key else None
            ctx.key_sha256 = hash_key(body_key) if body_key else None
            ctx.source = self.config.registry.by_hash(ctx.key_sha256) if ctx.key_sha256 else None
            if ctx.source is None:
                raise _unauthorized("writeKey")

    def stamp(self, source: Source, received_at: datetime) -> take.Stamp:
        """What ingest knows of a message besides itself: source, time, limits, mapping."""
        mappings = self.config.mappings
        return take.Stamp(
            source,
            received_at,
            self.config.limits,
            self.config.default_region,
            mappings.for_source(source.name) if mappings is not None else None,
        )

    async def publish_intake(
        self, result: take.Intake, source: Source, endpoint: str, request_id: str
    ) -> None:
        """Publish what was taken outside a request (a file import): the events and a dead
        letter per rejection, sealed, acknowledged by Kafka before it returns
        (``KafkaUnavailable``, or ``RedisError`` when data keys are unreachable)."""
        ctx = _Request(
            request_id=request_id,
            endpoint=endpoint,
            received_at=datetime.now(UTC),
            parsed=True,
            source=source,
        )
        letters = [self._dead_letter(ctx, r, p, r.status) for r, p in result.rejections]
        await self.config.publisher.publish(await self._records(ctx, result.events, letters))

    def _intake(self, kind: str, ctx: _Request, call: EventType | None) -> take.Intake:
        assert ctx.source is not None
        stamp = self.stamp(ctx.source, ctx.received_at)
        if kind == "batch":
            return take.segment_batch(ctx.body, stamp)
        if kind == "native":
            return take.native(ctx.body, stamp)
        assert call is not None
        return take.segment_single(ctx.body, stamp, call)

    def _dead_letter(
        self, ctx: _Request, rejected: Rejected, payload: Any, status: int
    ) -> DeadLetter:
        limit = self.config.limits.deadletter_raw_bytes
        unparsed = not ctx.parsed
        letter = DeadLetter(
            reason=rejected.reason,
            field=rejected.field,
            message=rejected.message,
            index=rejected.index,
            status=status,
            source=ctx.source.name if ctx.source else None,
            endpoint=ctx.endpoint,
            received_at=ctx.received_at,
            request_id=ctx.request_id,
            payload=payload,
            raw=ctx.raw[:limit].decode("utf-8", "replace") if unparsed else None,
            raw_truncated=unparsed and len(ctx.raw) > limit,
            raw_sha256=hashlib.sha256(ctx.raw).hexdigest() if unparsed else None,
        )
        return letter

    async def _records(
        self, ctx: _Request, events: list[Event], letters: list[DeadLetter]
    ) -> list[Record]:
        source = ctx.source.name if ctx.source else None
        return await records(self.config, source, events, letters)

    async def handle(self, request: Request, kind: str, call: EventType | None = None) -> Any:
        """Authenticate, read, validate, publish; answer only after Kafka acknowledged."""
        ctx = _Request(
            request_id=uuid.uuid4().hex, endpoint=request.url.path, received_at=datetime.now(UTC)
        )
        began = time.perf_counter()
        response = await self._handle(request, kind, call, ctx)
        # The route is one of the fixed ingest paths; the source a configured name.
        source = ctx.source.name if ctx.source else "unknown"
        metrics.INGEST_REQUESTS.labels(ctx.endpoint, response.status_code, source).inc()
        metrics.INGEST_SECONDS.labels(ctx.endpoint).observe(time.perf_counter() - began)
        return response

    async def _handle(
        self, request: Request, kind: str, call: EventType | None, ctx: _Request
    ) -> Any:
        address = self.config.clients.of(
            request.client.host if request.client else None,
            request.headers.getlist("x-forwarded-for"),
        )
        bound = log.bind(request_id=ctx.request_id, endpoint=ctx.endpoint)
        try:
            # Before the body is read: a flood from one address costs as little as it can.
            self.config.limiter.check_address(address)
            await self._read(request, ctx)
            assert ctx.source is not None
            # Before the events are mapped, the costly part, but counting them.
            self.config.limiter.check_key(ctx.source.name, take.message_count(kind, ctx.body))
            result = self._intake(kind, ctx, call)
        except Rejected as rejected:
            if rejected.reason in REFUSALS:
                return await self._refuse(ctx, rejected, address, bound)
            payload = ctx.body if ctx.parsed else None
            letter = self._dead_letter(ctx, rejected, payload, rejected.status)
            if not await self._publish(ctx, [], [letter]):
                return self._unavailable(ctx)
            bound.info("ingest.rejected", status=rejected.status, code=rejected.reason.value)
            body = _error_body(rejected, ctx.request_id)
            return json_response(body, status_code=rejected.status)
        return await self._answer(result, ctx, bound)

    async def _refuse(
        self, ctx: _Request, rejected: Rejected, address: str, bound: Any
    ) -> Response:
        """Answer a refusal; dead-letter it by sample (``Refusals``), else count it."""
        source = ctx.source.name if ctx.source else None
        kind = Kind(rejected.reason, rejected.status, rejected.field, source, ctx.endpoint)
        if self.config.refusals.sample(kind, address, ctx.received_at):
            letter = refusal_letter(
                rejected,
                source=source,
                endpoint=ctx.endpoint,
                received_at=ctx.received_at,
                request_id=ctx.request_id,
                raw=ctx.raw,
                raw_bytes=self.config.refusals.raw_bytes,
                key_sha256=ctx.key_sha256 if rejected.status == 401 else None,
            )
            if not await self._publish(ctx, [], [letter]):
                return self._unavailable(ctx)
            bound.info("ingest.rejected", status=rejected.status, code=rejected.reason.value)
        else:  # counted into a summary letter
            metrics.EVENTS_REJECTED.labels(rejected.reason.value).inc()
        headers = (
            {"Retry-After": str(rejected.retry_after_s)}
            if isinstance(rejected, Throttled)
            else None
        )
        body = _error_body(rejected, ctx.request_id)
        return json_response(body, status_code=rejected.status, headers=headers)

    async def summarising(self, stop: asyncio.Event) -> None:
        """Write the summaries every interval, and once more when ``stop`` is set (a task of
        the API process's lifespan; never cancelled in a publish, whose counts it would lose)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.refusals.interval_s)
            await self.summarise()

    async def summarise(self) -> int:
        """Write a summary letter per kind of refusal counted since the last; return how many
        refusals they stand for. What cannot be written is counted again for the next."""
        taken = self.config.refusals.take()
        if not taken:
            return 0
        letters = [summary_letter(kind, tally) for kind, tally in taken.items()]
        if not await self._publish_letters(letters):
            self.config.refusals.give_back(taken)
            log.warning("ingest.refusals_unwritten", count=sum(t.count for t in taken.values()))
            return 0
        count = sum(letter.count for letter in letters)
        log.info("ingest.refusals_summarised", count=count, letters=len(letters))
        return count

    async def _publish_letters(self, letters: list[DeadLetter]) -> bool:
        try:
            sealer = self.config.sealer
            sealed = await sealer.seal_letters(letters) if sealer is not None else letters
            await self.config.publisher.publish(
                [
                    Record(
                        self.config.deadletter_topic,
                        (letter.source or "unknown").encode(),
                        letter.model_dump_json().encode(),
                    )
                    for letter in sealed
                ]
            )
        except (KafkaUnavailable, RedisError):
            return False
        metrics.count_dead_letters("ingest", [letter.reason.value for letter in letters])
        return True

    async def _answer(self, result: take.Intake, ctx: _Request, bound: Any) -> Any:
        status = result.status
        letters = [self._dead_letter(ctx, r, p, status) for r, p in result.rejections]
        if not await self._publish(ctx, result.events, letters):
            return self._unavailable(ctx)
        errors = [_error_body(r, ctx.request_id) for r, _ in result.rejections]
        body: dict[str, Any] = {
            "success": status == 200,
            "request_id": ctx.request_id,
            "received": result.received,
            "accepted": result.accepted,
            "rejected": len(result.rejections),
            "errors": [{k: v for k, v in e.items() if k != "request_id"} for e in errors],
        }
        if status != 200:
            first = errors[0]
            body.update(
                code=first["code"],
                message=first["message"],
                field=first["field"],
                index=first["index"],
            )
        bound.info(
            "ingest.accepted",
            status=status,
            accepted=result.accepted,
            rejected=len(result.rejections),
        )
        return json_response(body, status_code=status)

    async def _publish(self, ctx: _Request, events: list[Event], letters: list[DeadLetter]) -> bool:
        try:
            records = await self._records(ctx, events, letters)
            await self.config.publisher.publish(records)
            if events:
                source = ctx.source.name if ctx.source else "unknown"
                metrics.EVENTS_ACCEPTED.labels(source).inc(len(events))
            if letters:
                reasons = [letter.reason.value for letter in letters]
                metrics.count_dead_letters("ingest", reasons)
                for reason, n in Counter(reasons).items():
                    metrics.EVENTS_REJECTED.labels(reason).inc(n)
        except KafkaUnavailable:
            return False
        except RedisError as exc:  # data keys unreachable: nothing can be sealed
            log.warning("ingest.keys_unavailable", error=type(exc).__name__)
            return False
        return True

    @staticmethod
    def _unavailable(ctx: _Request) -> Response:
        body = {
            "success": False,
            "code": "kafka_unavailable",
            "message": "events were not persisted; retry later",
            "field": None,
            "index": None,
            "request_id": ctx.request_id,
        }
        return json_response(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


def build_router(endpoints: IngestEndpoints) -> APIRouter:
    """Return the ingest routes served by ``endpoints``."""
    config = endpoints.config
    router = APIRouter(tags=["ingest"])

    @router.post("/v1/batch", summary="Segment-compatible batch of identify/track/... calls")
    async def batch(request: Request) -> Any:
        return await endpoints.handle(request, "batch")

    @router.post("/v1/events", summary="Native contract events: one, an array or {events: [...]}")
    async def events(request: Request) -> Any:
        return await endpoints.handle(request, "native")

    for call in sorted(SEGMENT_CALL_TYPES):
        router.add_api_route(
            f"/v1/{call.value}",
            _single(endpoints, call),
            methods=["POST"],
            summary=f"Segment-compatible {call.value} call",
        )
        # analytics.js (@segment/analytics-next) posts each call to its type's initial.
        router.add_api_route(
            f"/v1/{call.value[0]}",
            _single(endpoints, call),
            methods=["POST"],
            include_in_schema=False,
        )
    router.add_api_route("/v1/b", batch, methods=["POST"], include_in_schema=False)

    @router.get(
        "/v1/projects/{write_key}/settings",
        summary="Source settings for analytics.js: point its cdnURL here to send events to us",
    )
    async def browser_settings(write_key: str, request: Request) -> Any:
        if config.registry.authenticate(write_key) is None:
            body = {
                "success": False,
                "code": "unauthorized",
                "message": "unknown write key",
                "field": "writeKey",
                "index": None,
            }
            return json_response(body, status_code=404)
        return json_response(browser_source_settings(write_key, request), status_code=200)

    return router


def browser_source_settings(write_key: str, request: Request) -> dict[str, Any]:
    """What analytics.js reads from its CDN at load: deliver to this API, and nothing else.

    Only the Segment.io destination, aimed at the host the page asked (so a proxy in front
    keeps working when it forwards ``Host`` and ``X-Forwarded-Proto``); its own metrics off.
    """
    proto = request.headers.get("x-forwarded-proto", request.url.scheme).split(",")[0].strip()
    host = request.headers.get("x-forwarded-host") or request.headers.get("host") or ""
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": f"{host}/v1",
                "protocol": "https" if proto == "https" else "http",
                "unbundledIntegrations": [],
                "addBundledMetadata": False,
            }
        },
        "plan": {"track": {"__default": {"enabled": True}}},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "remotePlugins": [],
    }


def _single(endpoints: IngestEndpoints, call: EventType) -> Any:
    async def route(request: Request) -> Any:
        return await endpoints.handle(request, "single", call)

    route.__name__ = f"segment_{call.value}"
    return route
