"""Forward some routes to the process that can answer them (plain ASGI, streaming)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import structlog

log = structlog.get_logger()

Scope = dict[str, Any]
Receive = Any
Send = Any

#: Headers that describe one connection, not the request (RFC 9110 7.6.1), and Host.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)


class Forward:
    """Send requests whose path starts with one of ``prefixes`` to ``target``; serve the rest.

    Used by ``cdp run``'s extra API processes: only the process that owns the embedded
    ClickHouse can answer history-backed segment requests. Bodies stream both ways (exports
    can be large); an unreachable target is a 503 in the API's error shape.
    """

    def __init__(self, app: Any, target: str, prefixes: tuple[str, ...]) -> None:
        self.app, self.prefixes = app, prefixes
        self.client = httpx.AsyncClient(base_url=target, timeout=httpx.Timeout(None, connect=5))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        request = self.client.build_request(
            scope["method"],
            (path + (b"?" + query if query else b"")).decode("latin-1"),
            headers=[(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP],
            content=bytes(body),
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            log.warning("api.forward_failed", path=scope["path"], error=repr(exc))
            await _unavailable(send)
            return
        try:
            headers = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": headers}
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()


async def _unavailable(send: Send) -> None:
    body = orjson.dumps(
        {
            "success": False,
            "code": "history_unavailable",
            "message": "the process that serves segment history did not answer; retry",
            "field": None,
        }
    )
    headers = [(b"content-type", b"application/json"), (b"retry-after", b"5")]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
