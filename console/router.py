"""The console's routes: sign-in, the four pages, their assets and the data the API lacks.

Pages are static HTML and scripts (no build step); their data comes from the API itself through
the gateway (``/console/api/v1/...``), plus the few reads below that only the console needs.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from starlette.staticfiles import StaticFiles

from console.gateway import COOKIE, PREFIX, ConsoleGateway
from console.ops import OpsSources, snapshot
from console.vocabulary import vocabulary
from runtime.auth import Token, hash_token
from tagging.catalog import Catalog

STATIC = Path(__file__).parent / "static"
#: Chart and YAML libraries, installed from npm by scripts/install.sh (never a CDN).
VENDOR = Path(__file__).parent / "vendor" / "node_modules"
VENDORED = {
    "echarts.min.js": VENDOR / "echarts" / "dist" / "echarts.min.js",
    "js-yaml.min.js": VENDOR / "js-yaml" / "dist" / "js-yaml.min.js",
}
PAGES = ("customers", "segments", "tags", "ops")
OPS_READ = "ops:read"
#: A signed-in console session lasts a working day.
SESSION_S = 12 * 3600

#: A profile's latest events (types, channels: all when empty), sensitive values masked.
Timeline = Callable[[str, list[str], list[str], int], Awaitable[list[dict[str, Any]]]]
Sizes = Callable[[str], Awaitable[list[dict[str, Any]]]]


def _known(tokens: list[Token], value: str | None) -> Token | None:
    if not value:
        return None
    digest = hash_token(value)
    for token in tokens:
        if hmac.compare_digest(token.sha256, digest):
            return token
    return None


def _local(target: str | None) -> str:
    """Where to go after signing in: a console page, never another site."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//"):
        return target
    return f"{PREFIX}/customers"


def _signin_redirect(request: Request, error: str | None = None) -> RedirectResponse:
    query = f"next={quote(request.url.path)}" + (f"&error={error}" if error else "")
    return RedirectResponse(f"{PREFIX}/signin?{query}", status_code=303)


def build_router(
    tokens: list[Token],
    require: Callable[[str | None], Any],
    ops: OpsSources,
    timeline: Timeline,
    sizes: Sizes,
    words: dict[str, Any],
) -> APIRouter:
    """Return the console's routes; ``require(scope)`` is the API's bearer-token check."""
    router = APIRouter(include_in_schema=False)

    @router.get(PREFIX)
    async def home() -> Response:
        return RedirectResponse(f"{PREFIX}/customers", status_code=303)

    @router.get(f"{PREFIX}/signin")
    async def signin_page() -> Response:
        return FileResponse(STATIC / "signin.html", headers={"Cache-Control": "no-store"})

    @router.post(f"{PREFIX}/signin")
    async def signin(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        value = (form.get("token") or [""])[0].strip()
        target = _local((form.get("next") or [""])[0])
        if _known(tokens, value) is None:
            return RedirectResponse(
                f"{PREFIX}/signin?error=unknown&next={quote(target)}", status_code=303
            )
        answer = RedirectResponse(target, status_code=303)
        answer.set_cookie(
            COOKIE,
            value,
            max_age=SESSION_S,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return answer

    @router.post(f"{PREFIX}/signout")
    async def signout() -> Response:
        answer = RedirectResponse(f"{PREFIX}/signin", status_code=303)
        answer.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="strict")
        return answer

    @router.get(PREFIX + "/vendor/{name}")
    async def vendored(name: str) -> Response:
        path = VENDORED.get(name)
        if path is None or not path.is_file():
            raise HTTPException(
                404,
                {
                    "code": "not_installed",
                    "message": f"{name} is not installed: run scripts/install.sh",
                    "field": None,
                },
            )
        return FileResponse(path, headers={"Cache-Control": "max-age=86400"})

    def page(name: str) -> Callable[[Request], Awaitable[Response]]:
        async def serve(request: Request) -> Response:
            if _known(tokens, request.cookies.get(COOKIE)) is None:
                return _signin_redirect(request)
            return FileResponse(STATIC / f"{name}.html", headers={"Cache-Control": "no-store"})

        return serve

    for name in PAGES:
        router.add_api_route(f"{PREFIX}/{name}", page(name), methods=["GET"])

    # A default, not an annotation: annotations are strings resolved at module level.
    signed_in = Depends(require(None))

    @router.get(f"{PREFIX}/api/me")
    async def me(token: Token = signed_in) -> Any:
        return {"name": token.name, "scopes": sorted(token.scopes)}

    @router.get(f"{PREFIX}/api/vocabulary", dependencies=[signed_in])
    async def vocabulary() -> Any:
        return words

    @router.get(f"{PREFIX}/api/ops", dependencies=[Depends(require(OPS_READ))])
    async def ops_now() -> Any:
        return await snapshot(ops)

    @router.get(f"{PREFIX}/api/history/timeline", dependencies=[Depends(require("profiles:read"))])
    async def events(
        profile_id: Annotated[str, Query(min_length=1, max_length=32)],
        type: Annotated[list[str] | None, Query()] = None,
        channel: Annotated[list[str] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> Any:
        found = await timeline(profile_id, type or [], channel or [], limit)
        return {"count": len(found), "events": found}

    @router.get(
        f"{PREFIX}/api/history/segments/{{segment_id}}/sizes",
        dependencies=[Depends(require("segments:read"))],
    )
    async def segment_sizes(segment_id: str) -> Any:
        return {"segment_id": segment_id, "points": await sizes(segment_id)}

    return router


def install(
    app: FastAPI,
    tokens: list[Token],
    require: Callable[[str | None], Any],
    ops: OpsSources,
    timeline: Timeline,
    sizes: Sizes,
    catalog: Catalog,
) -> None:
    """Serve the console on ``app``: its routes, its static files, and its gateway."""
    app.include_router(build_router(tokens, require, ops, timeline, sizes, vocabulary(catalog)))
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="console-static")
    app.add_middleware(ConsoleGateway)
