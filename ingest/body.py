"""Read a request body within the limits: size caps before and after gzip."""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Any

import orjson

from contracts.deadletter import DeadLetterReason
from ingest.exceptions import Rejected


def too_large(limit: int) -> Rejected:
    """Return the 413 for a body over ``limit`` bytes."""
    return Rejected(
        413,
        DeadLetterReason.BATCH_TOO_LARGE,
        f"request body exceeds {limit} bytes (uncompressed)",
        "body",
    )


async def read_capped(chunks: AsyncIterator[bytes], limit: int) -> tuple[bytes, bool]:
    """Read at most ``limit`` bytes; return them and whether more was sent."""
    buf = bytearray()
    async for chunk in chunks:
        buf.extend(chunk)
        if len(buf) > limit:
            return bytes(buf[:limit]), True
    return bytes(buf), False


def decode(raw: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo Content-Encoding (gzip or deflate), refusing to inflate past ``limit``."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return raw
    if encoding not in ("gzip", "deflate"):
        raise Rejected(
            415,
            DeadLetterReason.BAD_ENCODING,
            f"unsupported Content-Encoding {encoding!r}; use gzip or none",
            "Content-Encoding",
        )
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise Rejected(
            400,
            DeadLetterReason.BAD_ENCODING,
            f"body is not valid {encoding}: {exc}",
            "Content-Encoding",
        ) from exc
    if len(out) > limit:
        raise too_large(limit)
    if not inflater.eof:
        raise Rejected(
            400, DeadLetterReason.BAD_ENCODING, f"truncated {encoding} body", "Content-Encoding"
        )
    return out


def parse_json(body: bytes) -> Any:
    """Parse JSON, reporting where it broke."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Rejected(
            400, DeadLetterReason.MALFORMED_JSON, f"body is not valid JSON: {exc}", "body"
        ) from exc
