"""CORS for the ingest routes only: browsers send events straight from shop pages.

Write keys are public in a page's source, so a source's write key, not the page's origin,
is what authorises an event; origins can still be narrowed per deployment
(``CDP_INGEST__CORS_ORIGINS``). Read and admin routes (profiles, segments, tags) answer no
cross-origin request: their bearer tokens belong to services, not to browsers.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.middleware.cors import CORSMiddleware

from contracts.events import SEGMENT_CALL_TYPES

_CALLS = sorted(call.value for call in SEGMENT_CALL_TYPES)

#: Paths that browsers may call: the Segment-compatible routes (long and analytics.js's
#: one-letter forms, as ``ingest.api.build_router`` serves them), native events, and the
#: analytics.js settings document.
INGEST_PATHS = re.compile(
    rf"^/v1/(batch|b|events|{'|'.join(_CALLS)}|[{''.join(c[0] for c in _CALLS)}]"
    r"|projects/[^/]+/settings)$"
)


class IngestCors:
    """ASGI middleware: CORS on ingest paths, everything else passes through untouched."""

    def __init__(self, app: Any, origins: list[str]) -> None:
        self._app = app
        self._cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            # Authorization: RudderStack's and other SDKs send the write key as Basic auth.
            allow_headers=["Authorization", "Content-Type", "Content-Encoding"],
            max_age=86_400,
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and INGEST_PATHS.match(scope["path"]):
            await self._cors(scope, receive, send)
        else:
            await self._app(scope, receive, send)
