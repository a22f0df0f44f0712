"""Data-subject rights over HTTP: erasure of a person, with a receipt."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, StringConstraints, model_validator

from contracts.events import Identifier
from contracts.privacy import Erasure, ErasureState
from identity.store import IdentityStore
from privacy.erasure import Erasures
from profiles.api import ambiguous, identifier, not_found
from runtime.auth import Token

Short = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class ErasureBody(BaseModel):
    """``POST /v1/privacy/erasures``: the person, by any identifier or by profile id."""

    model_config = ConfigDict(extra="forbid")

    type: Annotated[str, StringConstraints(min_length=1, max_length=48)] | None = None
    value: Short | None = None
    profile_id: Short | None = None
    #: A reference of the requester's (a ticket number); never personal data.
    reference: Annotated[str, StringConstraints(max_length=500)] | None = None

    @model_validator(mode="after")
    def _one_way(self) -> ErasureBody:
        by_identifier = self.type is not None and self.value is not None
        if by_identifier == (self.profile_id is not None):
            raise ValueError("give type and value, or profile_id")
        return self


def unavailable() -> HTTPException:
    """The JSON 503 of a request that could not be made durable (nothing was done)."""
    return HTTPException(
        503,
        {"code": "unavailable", "message": "not recorded: retry later", "field": None},
        headers={"Retry-After": "5"},
    )


def origin(request: Request) -> str:
    """Where a request came from (the client address), for the audit log."""
    return request.client.host if request.client else ""


def build_router(
    erasures: Erasures,
    identity: IdentityStore,
    region: str,
    erase: Any,
    blind: Callable[[Identifier], Identifier] | None = None,
) -> APIRouter:
    """Return the privacy routes; ``erase`` admits tokens with ``privacy:erase``."""
    router = APIRouter(tags=["privacy"])
    eraser = Depends(erase)

    async def person(body: ErasureBody) -> tuple[str, list[str]]:
        if body.profile_id is not None:
            pid = await erasures.exists(body.profile_id)
            if pid is None:
                raise not_found("profile_id", f"no profile {body.profile_id}")
            return "profile", [pid]
        assert body.type is not None and body.value is not None
        ident = identifier(body.type, body.value, region, blind)
        holders = await identity.holders(ident.key())
        if not holders:
            raise not_found("value", f"no profile holds this {ident.type}")
        if len(holders) > 1:
            # A shared identifier (a family phone) names no one person: erase by profile id.
            raise ambiguous(ident, holders)
        return ident.type, holders

    def answer(erasure: Erasure, response: Response) -> dict[str, Any]:
        if erasure.state is not ErasureState.COMPLETED:
            response.status_code = 202
        response.headers["Location"] = f"/v1/privacy/erasures/{erasure.id}"
        return erasure.model_dump(mode="json")

    @router.post(
        "/v1/privacy/erasures",
        summary="Erase a person from every store (found by any identifier or profile id); "
        "202 with the erasure's id, or 200 with its receipt when it completed within `wait`",
    )
    async def request_erasure(
        body: ErasureBody,
        request: Request,
        response: Response,
        wait: Annotated[float, Query(ge=0, le=60)] = 0,
        token: Token = eraser,
    ) -> Any:
        found_by, pids = await person(body)
        erasure = await erasures.request(
            found_by, pids, token.name, origin(request), body.reference
        )
        if wait:
            erasure = await erasures.wait(erasure.id, wait) or erasure
        return answer(erasure, response)

    @router.get("/v1/privacy/erasures/{erasure_id}", summary="An erasure and its receipt")
    async def get_erasure(erasure_id: str, response: Response, token: Token = eraser) -> Any:
        erasure = await erasures.get(erasure_id)
        if erasure is None:
            raise HTTPException(
                404, {"code": "not_found", "message": "no such erasure", "field": "erasure_id"}
            )
        return answer(erasure, response)

    return router
