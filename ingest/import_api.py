"""``POST /v1/imports``: a source posts a file export; it is imported as ``cdp import`` does."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import structlog
from fastapi import APIRouter, Request
from redis.exceptions import RedisError

from ingest.api import IngestEndpoints, basic_username, json_response
from ingest.imports import Importer
from ingest.rowfile import file_format
from runtime.exceptions import KafkaUnavailable

log = structlog.get_logger()

#: Content types that name a format.
_TYPES = {
    "text/csv": "csv",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/vnd.apache.parquet": "parquet",
}


def _error(status: int, code: str, message: str, field: str | None) -> Any:
    body = {"success": False, "code": code, "message": message, "field": field}
    return json_response(body, status_code=status)


async def _spool(request: Request, into: Path, cap: int) -> int:
    """Write the body to ``into`` as it arrives (never whole in memory); its size, or -1
    when it passed ``cap``."""
    size = 0
    with into.open("wb") as f:
        async for block in request.stream():
            size += len(block)
            if size > cap:
                return -1
            f.write(block)
    return size


def build_router(
    endpoints: IngestEndpoints,
    client: aioredis.Redis,
    namespace: str,
    spool_dir: Path | None,
    max_bytes: int,
) -> APIRouter:
    """The file import route, authorised by the source's write key."""
    router = APIRouter(tags=["ingest"])

    @router.post(
        "/v1/imports",
        summary="Import a CSV, JSON lines or Parquet export of a source (its write key)",
    )
    async def imports(request: Request, format: str | None = None, name: str = "upload") -> Any:
        source = endpoints.config.registry.authenticate(
            basic_username(request.headers.get("authorization"))
        )
        if source is None:
            return _error(401, "unauthorized", "write key missing or unknown", "Authorization")
        kind = format or _TYPES.get(request.headers.get("content-type", "").split(";")[0])
        try:
            fmt = file_format(Path(name), kind)
        except ValueError as exc:
            return _error(400, "invalid_format", str(exc), "format")
        handle, spooled = tempfile.mkstemp(prefix="cdp-import-", dir=spool_dir)
        os.close(handle)
        path = Path(spooled)
        try:
            if await _spool(request, path, max_bytes) < 0:
                return _error(413, "too_large", f"file exceeds {max_bytes} bytes", "body")
            importer = Importer(endpoints, client, namespace, source)
            report = await importer.run(path, fmt, label=name)
        except (KafkaUnavailable, RedisError) as exc:
            log.warning("ingest.import_interrupted", source=source.name, error=str(exc))
            body = {
                "success": False,
                "code": "kafka_unavailable",
                "message": "the import stopped; post the same file again to resume",
                "field": None,
            }
            return json_response(body, status_code=503, headers={"Retry-After": "5"})
        except ValueError as exc:  # a file that is not what its format says (Parquet)
            return _error(400, "invalid_file", str(exc), "body")
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
        log.info("ingest.imported", source=source.name, rows=report.rows_read)
        return json_response({"success": True, **report.as_dict()}, status_code=200)

    return router
