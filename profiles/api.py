"""Profile and identity read API: by id, by any identifier, and why a profile is what it is."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, StringConstraints

from contracts.events import Identifier
from identity.normalize import BadIdentifier, parse_identifier
from identity.store import IdentityStore
from privacy.audit import Audited
from privacy.reveal import PII_READ, Revealer
from profiles.store import ProfileStore
from runtime.auth import Token


async def opened(
    revealer: Revealer | None,
    identity: IdentityStore,
    doc: dict[str, Any],
    clear: bool,
    ids: dict[str, str] | None = None,
) -> Any:
    """A profile or an explanation with its sealed values opened: masked unless ``clear``.

    ``ids``: its identifiers' sealed values, when the caller read them already (else they are
    read from the identity graph). Without field encryption (no ``revealer``), ``doc``.
    """
    if revealer is None:
        return doc
    if ids is None:
        pid = doc.get("profile_id")
        ids = await identity.sealed(pid) if isinstance(pid, str) else {}
    return await revealer.document(doc, clear, ids)


def not_found(field: str, message: str) -> HTTPException:
    """Return the JSON 404 of the read API."""
    return HTTPException(404, {"code": "not_found", "message": message, "field": field})


async def explanation(
    identity: IdentityStore, profiles: ProfileStore, profile_id: str
) -> dict[str, Any] | None:
    """A profile's identifiers and the merges and refusals that built it; None if unknown.

    A profile can hold no identifier (its events' only evidence was shared or over the
    supernode limit); it still exists, and its history says why.
    """
    survivor = await identity.survivor(profile_id)
    ids = await identity.identifiers(survivor)
    history = await identity.history(survivor)
    if not ids and not history and await profiles.get(survivor) is None:
        return None
    return {"profile_id": survivor, "asked": profile_id, "identifiers": ids, "history": history}


def identifier(
    type: str, value: str, region: str, blind: Callable[[Identifier], Identifier] | None
) -> Identifier:
    """An identifier asked for, normalised like ingest (and blind-indexed with field
    encryption): what the identity graph stores. A bad one is a JSON 400 naming the field."""
    try:
        ident = parse_identifier(type, value, region)
    except BadIdentifier as bad:
        detail = {"code": "invalid_identifier", "message": str(bad), "field": bad.field}
        raise HTTPException(400, detail) from None
    return blind(ident) if blind is not None else ident


def ambiguous(ident: Identifier, holders: list[str]) -> HTTPException:
    """The JSON 409 of an identifier shared by several profiles."""
    return HTTPException(
        409,
        {
            "code": "ambiguous",
            "field": "value",
            "profile_ids": holders,
            "message": f"this {ident.type} is shared by {len(holders)} profiles",
        },
    )


class LookupBody(BaseModel):
    """``POST /v1/profiles/lookup``: the identifier to find."""

    model_config = ConfigDict(extra="forbid")

    type: Annotated[str, StringConstraints(min_length=1, max_length=48)]
    value: Annotated[str, StringConstraints(min_length=1, max_length=256)]


def build_router(
    profiles: ProfileStore,
    identity: IdentityStore,
    region: str,
    read_profiles: Any,
    read_identity: Any,
    revealer: Revealer | None = None,
    blind: Callable[[Identifier], Identifier] | None = None,
    audited: Audited | None = None,
) -> APIRouter:
    """Return the read routes; the ``read_*`` dependencies enforce token scopes.

    With field encryption (``revealer`` and ``blind``), lookups compare blind indexes and
    answers carry sensitive values masked, or in clear for a token with ``pii:read``.
    Every answer with personal data in clear (all of them without field encryption) is
    recorded in the audit log (``audited``).
    """
    router = APIRouter(tags=["profiles"])
    # Defaults, not annotations: these annotations are strings resolved at module level.
    profile_reader, identity_reader = Depends(read_profiles), Depends(read_identity)

    async def reveal(doc: dict[str, Any], token: Token, ids: dict[str, str] | None = None) -> Any:
        return await opened(revealer, identity, doc, PII_READ in token.scopes, ids)

    def audit(token: Token, request: Request, action: str, pid: str) -> None:
        if audited is not None and (revealer is None or PII_READ in token.scopes):
            audited.soon(token, request, action, pid, subjects=1)

    async def profile(profile_id: str, token: Token) -> Any:
        """The profile as the token may see it; None when unknown. One Redis call, with the
        sealed values of its identifiers, plus one for data keys not in this process's cache."""
        stored = (await profiles.read([profile_id], with_keys=revealer is not None))[0]
        if stored is None:
            return None
        doc = stored.profile.model_dump(mode="json")
        if revealer is None:
            return doc
        await revealer.keys.adopt(stored.keys)
        # Only identifiers and traits can hold sealed values: the rest need no walk.
        sealable = {"identifiers": doc["identifiers"], "traits": doc["traits"]}
        doc.update(await reveal(sealable, token, stored.sealed))
        return doc

    @router.get(
        "/v1/profiles/lookup",
        summary="Find a profile by any identifier (normalised like ingest)",
    )
    async def lookup(
        type: Annotated[str, Query(min_length=1, max_length=48)],
        value: Annotated[str, Query(min_length=1, max_length=256)],
        request: Request,
        token: Token = profile_reader,
    ) -> Any:
        return await find(type, value, token, request)

    @router.post(
        "/v1/profiles/lookup",
        summary="Find a profile by any identifier given in the body (so that the value stays "
        "out of URLs and the access logs of proxies)",
    )
    async def lookup_by_body(
        body: LookupBody, request: Request, token: Token = profile_reader
    ) -> Any:
        return await find(body.type, body.value, token, request)

    async def find(type: str, value: str, token: Token, request: Request) -> Any:
        ident = identifier(type, value, region, blind)
        holders = await identity.holders(ident.key())
        if not holders:
            raise not_found("value", f"no profile holds this {ident.type}")
        if len(holders) > 1:
            raise ambiguous(ident, holders)
        found = await profile(holders[0], token)
        if found is None:
            raise not_found("value", f"profile {holders[0]} has no events yet")
        audit(token, request, "profile.read", found["profile_id"])
        return found

    @router.get(
        "/v1/profiles/{profile_id}",
        summary="A unified profile; a merged id answers with its survivor",
    )
    async def get_profile(
        profile_id: str,
        request: Request,
        token: Token = profile_reader,
    ) -> Any:
        found = await profile(profile_id, token)
        if found is None:
            raise not_found("profile_id", f"no profile {profile_id}")
        audit(token, request, "profile.read", found["profile_id"])
        return found

    @router.get(
        "/v1/identity/explain",
        summary="A profile's identifiers and the merges (and refusals) that built it",
    )
    async def explain(
        profile_id: Annotated[str, Query(min_length=1)],
        request: Request,
        token: Token = identity_reader,
    ) -> Any:
        found = await explanation(identity, profiles, profile_id)
        if found is None:
            raise not_found("profile_id", f"no profile {profile_id}")
        audit(token, request, "identity.explain", found["profile_id"])
        return await reveal(found, token)

    @router.get(
        "/v1/quality/conflicts",
        summary="Data quality: the traits and source pairs that disagree most, with counts",
    )
    async def quality(
        top: Annotated[int, Query(ge=1, le=1000)] = 20, token: Token = profile_reader
    ) -> Any:
        rows = await profiles.conflict_report(top)
        return {"conflicts": rows, "count": len(rows)}

    return router
