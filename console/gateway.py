"""The console's door: same origin only, and the signed-in token from its cookie.

The console's pages call the API as ``/console/api/v1/...``: this middleware checks the request
came from the console's own origin, takes the token from the HttpOnly cookie (a script never
sees it) and hands the request on as ``/v1/...`` with ``Authorization: Bearer``, so every
scope check is the API's own. Plain ASGI, so streaming exports pass through untouched.
"""

from __future__ import annotations

from http.cookies import SimpleCookie
from typing import Any

import orjson

Scope = dict[str, Any]

#: The cookie holding the signed-in token: HttpOnly, SameSite=Strict, path /console.
COOKIE = "cdp_console"
PREFIX = "/console"
API = "/console/api"
#: ``Sec-Fetch-Site`` values of a request the console itself made (or typed in the address bar).
SAME_SITE = frozenset({b"same-origin", b"none"})
#: Headers a request carries to the rest of the app from here: the origin was checked once.
DROPPED = frozenset({b"authorization", b"origin", b"sec-fetch-site"})
#: What a console page may load and who may frame it: its own origin only (ECharts styles
#: inline, and draws on canvases), never framed by another site.
SECURITY_HEADERS = (
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
        b"base-uri 'none'; form-action 'self'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value)
    return None


def own_origin(scope: Scope) -> str:
    """The origin this request was addressed to (scheme and Host header)."""
    host = (_header(scope, b"host") or b"").decode("latin-1")
    return f"{scope.get('scheme', 'http')}://{host}"


def cross_origin(scope: Scope) -> str | None:
    """Why the request comes from another origin; None when it is the console's own."""
    origin = _header(scope, b"origin")
    if origin is not None and origin.decode("latin-1") != own_origin(scope):
        return f"origin {origin.decode('latin-1')} is not {own_origin(scope)}"
    site = _header(scope, b"sec-fetch-site")
    if site is not None and site not in SAME_SITE:
        return f"Sec-Fetch-Site is {site.decode('latin-1')}"
    return None


def cookie_token(scope: Scope) -> str | None:
    """The signed-in token from the console's cookie, if any."""
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    jar.load(raw.decode("latin-1"))
    morsel = jar.get(COOKIE)
    return morsel.value if morsel is not None and morsel.value else None


class ConsoleGateway:
    """Refuse cross-origin requests to the console; turn its cookie into a bearer token."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        why = cross_origin(scope)
        if why is not None:
            await _forbidden(send, why)
            return
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in DROPPED]
        if path.startswith(API + "/"):
            token = cookie_token(scope)
            if token is not None:
                headers.append((b"authorization", f"Bearer {token}".encode("latin-1")))
        scope = {**scope, "headers": headers}
        if path.startswith(API + "/v1/"):
            inner = path[len(API) :]
            scope.update(path=inner, raw_path=inner.encode())

        async def secured(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {bytes(k).lower() for k, _ in headers}
                # A response forwarded from the history owner carries them already.
                headers += [h for h in SECURITY_HEADERS if h[0] not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, secured)


async def _forbidden(send: Any, why: str) -> None:
    body = orjson.dumps(
        {
            "success": False,
            "code": "cross_origin",
            "message": f"the console answers its own origin only: {why}",
            "field": "Origin",
        }
    )
    headers = [(b"content-type", b"application/json"), (b"vary", b"Origin")]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": body})
