"""Segment API: ad-hoc and saved segments; count, preview, export, explain.

Scopes: ``segments:read`` (query and read saved), ``segments:write`` (save, update, delete),
``segments:admin`` (``include_unconsented``: skip the purpose's consent filter).
Bodies are a segment definition as JSON, or YAML with ``Content-Type: application/yaml``.
"""

import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import orjson
import yaml
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from contracts.segments import SegmentDefinition, error_path
from privacy.audit import Audited
from privacy.reveal import PII_READ
from runtime.auth import Token
from runtime.exceptions import KafkaUnavailable
from segments.service import (
    MEDIA_TYPES,
    Format,
    HistoryError,
    HistoryUnavailable,
    QueryTimeout,
    Segments,
)
from segments.sql import SegmentError
from segments.store import SegmentConflict, SegmentNotFound, SegmentStore
from segments.yamlio import load_yaml

ADMIN = "segments:admin"


def _not_durable() -> HTTPException:
    return _error(
        503,
        "kafka_unavailable",
        "Kafka did not acknowledge the change, so nothing was changed; retry",
        None,
    )


def _error(status: int, code: str, message: str, field: str | None) -> HTTPException:
    return HTTPException(status, {"code": code, "message": message, "field": field})


async def parse(request: Request) -> SegmentDefinition:
    """The request body as a segment definition; 400 naming the bad node's path."""
    body = await request.body()
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
    is_yaml = kind in ("application/yaml", "application/x-yaml", "text/yaml")
    try:
        data = load_yaml(body) if is_yaml else orjson.loads(body)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        code = "invalid_yaml" if is_yaml else "invalid_json"
        raise _error(400, code, f"the body is not valid: {exc}", None) from exc
    try:
        return SegmentDefinition.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = error_path(first["loc"]) or None
        message = f"{path}: {first['msg']}" if path else f"the body: {first['msg']}"
        raise _error(400, "invalid_segment", message, path) from exc


def build_router(
    segments: Segments,
    store: SegmentStore,
    read: Any,
    write: Any,
    audited: Audited | None = None,
) -> APIRouter:
    """Return the segment routes; ``read``/``write`` enforce the token scopes.

    Previews and exports (members' data) are recorded in the audit log before they are
    answered, saved-segment changes once made (``audited``).
    """
    router = APIRouter(tags=["segments"])
    Writer = Annotated[Token, Depends(write)]

    async def audit_now(token: Token, request: Request, action: str, *args: Any, **kw: Any) -> None:
        if audited is not None:
            await audited.now(token, request, action, *args, **kw)

    def audit_soon(token: Token, request: Request, action: str, target: str) -> None:
        if audited is not None:
            audited.soon(token, request, action, target)

    async def run(fn: Any, *args: Any) -> Any:
        """Call ``fn`` (sync or async) mapping segment errors to JSON responses."""
        try:
            result = fn(*args)
            return await result if inspect.isawaitable(result) else result
        except SegmentError as exc:
            raise _error(400, "invalid_segment", str(exc), exc.path) from exc
        except HistoryUnavailable as exc:
            raise _error(503, "history_unavailable", str(exc), None) from exc
        except QueryTimeout as exc:
            raise _error(504, "query_timeout", str(exc), "definition") from exc
        except HistoryError as exc:
            raise _error(500, "history_error", str(exc), None) from exc

    def consent(token: Token, include_unconsented: bool) -> bool:
        """Whether to enforce the purpose's consent (admins may ask not to)."""
        if include_unconsented and ADMIN not in token.scopes:
            raise HTTPException(
                403,
                {
                    "code": "forbidden",
                    "message": f"include_unconsented needs scope {ADMIN}",
                    "field": "include_unconsented",
                },
            )
        return not include_unconsented

    async def saved(segment_id: str, version: int | None = None) -> SegmentDefinition:
        try:
            return await store.get(segment_id, version)
        except SegmentNotFound as exc:
            raise _error(404, "not_found", f"no segment {segment_id}", "segment_id") from exc

    Unconsented = Annotated[
        bool, Query(description=f"include members without consent for the purpose ({ADMIN})")
    ]
    Fields = Annotated[
        list[str] | None, Query(description="fields to return: attributes or traits.<name>")
    ]

    # -- operations, on a definition in the body or on a saved segment ----------------------

    async def adhoc(request: Request) -> SegmentDefinition:
        return await parse(request)

    async def stored(segment_id: str) -> SegmentDefinition:
        return await saved(segment_id)

    def operations(method: str, prefix: str, source: Any, what: str) -> None:
        add = router.post if method == "post" else router.get
        Seg = Annotated[SegmentDefinition, Depends(source)]
        Reader = Annotated[Token, Depends(read)]

        @add(f"{prefix}/count", summary=f"Count the members of {what}")
        async def count(seg: Seg, token: Reader, include_unconsented: Unconsented = False) -> Any:
            return await run(segments.count, seg, consent(token, include_unconsented))

        @add(f"{prefix}/preview", summary=f"Some members of {what}, with fields")
        async def preview(
            seg: Seg,
            token: Reader,
            request: Request,
            fields: Fields = None,
            limit: Annotated[int, Query(ge=1, le=1000)] = 20,
            include_unconsented: Unconsented = False,
        ) -> Any:
            enforce = consent(token, include_unconsented)
            clear = PII_READ in token.scopes
            rows = await run(segments.preview, seg, fields or [], limit, enforce, clear)
            await audit_now(token, request, "segment.preview", seg.id or "", len(rows), clear=clear)
            return {"count": len(rows), "profiles": rows}

        @add(f"{prefix}/export", summary=f"All members of {what}: CSV, JSONL or Parquet")
        async def export(
            seg: Seg,
            token: Reader,
            request: Request,
            format: Format = Format.CSV,
            fields: Fields = None,
            include_unconsented: Unconsented = False,
        ) -> Any:
            enforce = consent(token, include_unconsented)
            clear = PII_READ in token.scopes
            found = await run(segments.export, seg, fields or [], format, enforce, clear)
            await audit_now(
                token,
                request,
                "segment.export",
                seg.id or "",
                found.count,
                clear=clear,
                format=format.value,
            )
            return _export(seg, format, found)

        @add(f"{prefix}/explain", summary=f"The SQL or tag-index program of {what}")
        async def explain(seg: Seg, token: Reader, include_unconsented: Unconsented = False) -> Any:
            return await run(segments.explain, seg, consent(token, include_unconsented))

    def _export(seg: SegmentDefinition, fmt: Format, found: Any) -> Response:
        chunks: Iterator[bytes] | AsyncIterator[bytes] = found.chunks
        suffix = {"csv": "csv", "jsonl": "jsonl", "parquet": "parquet"}[fmt.value]
        name = f"{seg.id or 'segment'}.{suffix}"
        return StreamingResponse(
            chunks,
            media_type=MEDIA_TYPES[fmt],
            headers={
                "X-Segment-Count": str(found.count),
                "Content-Disposition": f'attachment; filename="{name}"',
            },
        )

    # -- saved ------------------------------------------------------------------------------

    @router.get("/v1/segments", dependencies=[Depends(read)], summary="Saved segments")
    async def list_saved() -> Any:
        found = await store.list()
        return {"count": len(found), "segments": [s.model_dump(by_alias=True) for s in found]}

    @router.post("/v1/segments", status_code=201, summary="Save a segment")
    async def create(request: Request, token: Writer) -> Any:
        seg = await parse(request)
        if seg.id is None:
            raise _error(400, "invalid_segment", "id: required to save a segment", "id")
        await run(segments.validate, seg)
        try:
            saved_ = await store.put(seg, seg.id, create=True)
        except SegmentConflict as exc:
            raise _error(409, "conflict", str(exc), "id") from exc
        except KafkaUnavailable as exc:
            raise _not_durable() from exc
        audit_soon(token, request, "segment.saved", seg.id)
        return saved_.model_dump(by_alias=True)

    @router.get("/v1/segments/{segment_id}", dependencies=[Depends(read)], summary="A segment")
    async def get(segment_id: str, version: Annotated[int | None, Query(ge=1)] = None) -> Any:
        return (await saved(segment_id, version)).model_dump(by_alias=True)

    @router.put(
        "/v1/segments/{segment_id}",
        summary="Update a segment (a new version); If-Match: <version> guards lost updates",
    )
    async def update(
        segment_id: str,
        request: Request,
        token: Writer,
        if_match: Annotated[str | None, Header()] = None,
    ) -> Any:
        seg = await parse(request)
        if seg.id is not None and seg.id != segment_id:
            raise _error(400, "invalid_segment", "id: differs from the URL", "id")
        await run(segments.validate, seg)
        expected = None
        if if_match is not None:
            try:
                expected = int(if_match.strip('"'))
            except ValueError as exc:
                raise _error(400, "invalid_request", "If-Match: a version", "If-Match") from exc
        try:
            saved_ = await store.put(seg, segment_id, create=False, expected_version=expected)
        except SegmentNotFound as exc:
            raise _error(404, "not_found", f"no segment {segment_id}", "segment_id") from exc
        except SegmentConflict as exc:
            raise _error(409, "conflict", str(exc), "If-Match") from exc
        except KafkaUnavailable as exc:
            raise _not_durable() from exc
        audit_soon(token, request, "segment.saved", segment_id)
        return saved_.model_dump(by_alias=True)

    @router.delete("/v1/segments/{segment_id}", status_code=204, summary="Delete a segment")
    async def delete(segment_id: str, request: Request, token: Writer) -> Response:
        try:
            await store.delete(segment_id)
        except SegmentNotFound as exc:
            raise _error(404, "not_found", f"no segment {segment_id}", "segment_id") from exc
        except KafkaUnavailable as exc:
            raise _not_durable() from exc
        audit_soon(token, request, "segment.deleted", segment_id)
        return Response(status_code=204)

    operations("post", "/v1/segments", adhoc, "a definition (the body)")
    operations("get", "/v1/segments/{segment_id}", stored, "a saved segment")
    return router
