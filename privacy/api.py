"""Data-subject rights over HTTP: erasure, access export, consent ledger, approvals, audit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from redis.exceptions import RedisError

from contracts.events import Identifier
from contracts.privacy import Approval, Erasure, ErasureState
from identity.store import IdentityStore
from privacy.approvals import ApprovalError, Approvals
from privacy.audit import Audited, origin
from privacy.erasure import Erasures
from privacy.reveal import PII_READ
from privacy.subjects import Subjects, current_consent, jsonl, zipped
from profiles.api import ambiguous, identifier, not_found
from runtime.auth import Token
from runtime.exceptions import KafkaUnavailable

Short = Annotated[str, StringConstraints(min_length=1, max_length=256)]
TypeName = Annotated[str, StringConstraints(min_length=1, max_length=48)]
#: Opens a document's sealed values (masked unless clear) given its identifiers' envelopes.
Reveal = Callable[[Any, bool, dict[str, str] | None], Awaitable[Any]]


class Person(BaseModel):
    """A person: by any identifier, or by profile id."""

    model_config = ConfigDict(extra="forbid")

    type: TypeName | None = None
    value: Short | None = None
    profile_id: Short | None = None

    @model_validator(mode="after")
    def _one_way(self) -> Person:
        by_identifier = self.type is not None and self.value is not None
        if by_identifier == (self.profile_id is not None):
            raise ValueError("give type and value, or profile_id")
        return self


class ErasureBody(Person):
    """``POST /v1/privacy/erasures``: the person, and the requester's reference."""

    #: A reference of the requester's (a ticket number); never personal data.
    reference: Annotated[str, StringConstraints(max_length=500)] | None = None


class BulkErasureBody(BaseModel):
    """``POST /v1/privacy/erasures/bulk``: several people at once."""

    model_config = ConfigDict(extra="forbid")

    subjects: Annotated[list[Person], Field(min_length=1, max_length=10_000)]
    reference: Annotated[str, StringConstraints(max_length=500)] | None = None


class ApprovalBody(BaseModel):
    """``POST /v1/privacy/approvals``: an export in clear of one person, or a master-key
    rotation (bulk erasures ask for theirs themselves)."""

    model_config = ConfigDict(extra="forbid")

    action: Annotated[str, StringConstraints(pattern=r"^(export|rotate-master)$")]
    subject: Person | None = None


class Format(StrEnum):
    """Formats of an access export."""

    JSONL = "jsonl"
    ZIP = "zip"


def error(status: int, code: str, message: str, field: str | None) -> HTTPException:
    """The JSON error of these routes."""
    return HTTPException(status, {"code": code, "message": message, "field": field})


def unavailable() -> HTTPException:
    """The JSON 503 of a request that could not be made durable (nothing was done)."""
    return HTTPException(
        503,
        {"code": "unavailable", "message": "not recorded: retry later", "field": None},
        headers={"Retry-After": "5"},
    )


def approval_failed(exc: ApprovalError) -> HTTPException:
    status = {"not_found": 404, "forbidden": 403, "conflict": 409}.get(exc.code, 400)
    return error(status, exc.code, str(exc), "approval")


def build_router(
    erasures: Erasures,
    identity: IdentityStore,
    region: str,
    scopes: Callable[[str], Any],
    approvals: Approvals,
    subjects: Subjects,
    audited: Audited,
    audit_rows: Callable[[dict[str, Any]], Awaitable[list[dict[str, Any]]]],
    threshold: int,
    reveal: Reveal | None = None,
    blind: Callable[[Identifier], Identifier] | None = None,
) -> APIRouter:
    """Return the privacy routes; ``scopes(name)`` is the dependency admitting a scope."""
    router = APIRouter(tags=["privacy"])
    eraser, exporter = Depends(scopes("privacy:erase")), Depends(scopes("privacy:export"))
    approver, auditor = Depends(scopes("privacy:approve")), Depends(scopes("audit:read"))

    async def person(who: Person, field: str = "value") -> tuple[str, str]:
        """(how the person was named, their profile id)."""
        if who.profile_id is not None:
            pid = await erasures.exists(who.profile_id)
            if pid is None:
                raise not_found("profile_id", f"no profile {who.profile_id}")
            return "profile", pid
        assert who.type is not None and who.value is not None
        ident = identifier(who.type, who.value, region, blind)
        holders = await identity.holders(ident.key())
        if not holders:
            raise not_found(field, f"no profile holds this {ident.type}")
        if len(holders) > 1:
            # A shared identifier (a family phone) names no one person: ask by profile id.
            raise ambiguous(ident, holders)
        return ident.type, holders[0]

    def answer(erasure: Erasure, response: Response) -> dict[str, Any]:
        if erasure.state is not ErasureState.COMPLETED:
            response.status_code = 202
        response.headers["Location"] = f"/v1/privacy/erasures/{erasure.id}"
        return erasure.model_dump(mode="json")

    # -- erasure ----------------------------------------------------------------------------

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
        found_by, pid = await person(body)
        try:
            erasure = await erasures.request(
                found_by, [pid], token.name, origin(request), body.reference
            )
        except (KafkaUnavailable, RedisError) as exc:
            raise unavailable() from exc
        if wait:
            erasure = await erasures.wait(erasure.id, wait) or erasure
        return answer(erasure, response)

    @router.post(
        "/v1/privacy/erasures/bulk",
        summary="Erase several people: at most the approval threshold at once, more only "
        "after another token approves (202 with the request for approval)",
    )
    async def bulk_erasure(
        body: BulkErasureBody, request: Request, response: Response, token: Token = eraser
    ) -> Any:
        found = [await person(p, f"subjects[{n}].value") for n, p in enumerate(body.subjects)]
        pids = sorted({pid for _, pid in found}, key=int)
        try:
            if len(pids) > threshold:
                pending = await approvals.request("erasure", pids, token.name, origin(request))
                response.status_code = 202
                return {"approval": pending.model_dump(mode="json"), "erasures": []}
            done = [
                await erasures.request(by, [pid], token.name, origin(request), body.reference)
                for by, pid in found
            ]
        except (KafkaUnavailable, RedisError) as exc:
            raise unavailable() from exc
        response.status_code = 202
        return {"approval": None, "erasures": [e.model_dump(mode="json") for e in done]}

    @router.get("/v1/privacy/erasures/{erasure_id}", summary="An erasure and its receipt")
    async def get_erasure(erasure_id: str, response: Response, token: Token = eraser) -> Any:
        erasure = await erasures.get(erasure_id)
        if erasure is None:
            raise error(404, "not_found", "no such erasure", "erasure_id")
        return answer(erasure, response)

    # -- approvals --------------------------------------------------------------------------

    @router.post(
        "/v1/privacy/approvals",
        status_code=201,
        summary="Ask for a second person's approval: an export in clear, a master-key rotation",
    )
    async def ask(body: ApprovalBody, request: Request, token: Token = exporter) -> Any:
        pids: list[str] = []
        if body.action == "export":
            if PII_READ not in token.scopes:
                raise error(403, "forbidden", f"an export in clear needs {PII_READ}", "action")
            if body.subject is None:
                raise error(400, "invalid_request", "subject: required for an export", "subject")
            pids = [(await person(body.subject, "subject.value"))[1]]
        try:
            asked = await approvals.request(body.action, pids, token.name, origin(request))
        except (KafkaUnavailable, RedisError) as exc:
            raise unavailable() from exc
        return asked.model_dump(mode="json")

    @router.get("/v1/privacy/approvals/{approval_id}", summary="A request for approval")
    async def get_approval(approval_id: str, token: Token = exporter) -> Any:
        found = await approvals.get(approval_id)
        if found is None:
            raise error(404, "not_found", "no such request, or it expired", "approval_id")
        return found.model_dump(mode="json")

    @router.post(
        "/v1/privacy/approvals/{approval_id}/approve",
        summary="Approve another token's request; an erasure starts at once",
    )
    async def approve(approval_id: str, request: Request, token: Token = approver) -> Any:
        try:
            approved = await approvals.approve(approval_id, token.name, origin(request))
            if approved.action == "erasure":
                approved = await approvals.use(approved.id, "erasure", approved.requested_by)
                started = [
                    await erasures.request(
                        "profile",
                        [pid],
                        approved.requested_by,
                        origin(request),
                        approved_by=token.name,
                    )
                    for pid in approved.profile_ids
                ]
                approved = await approvals.record_outcome(approved, [e.id for e in started])
        except ApprovalError as exc:
            raise approval_failed(exc) from exc
        except (KafkaUnavailable, RedisError) as exc:
            raise unavailable() from exc
        return approved.model_dump(mode="json")

    # -- access -----------------------------------------------------------------------------

    async def subject_pid(
        type: str | None, value: str | None, profile_id: str | None
    ) -> tuple[str, str]:
        try:
            who = Person(type=type, value=value, profile_id=profile_id)
        except ValueError as exc:
            raise error(
                400, "invalid_request", "give type and value, or profile_id", "type"
            ) from exc
        return await person(who)

    @router.get(
        "/v1/privacy/subjects/export",
        summary="Everything held about a person, streamed as JSON lines or a ZIP; masked, "
        "or in clear with pii:read and an approved request (`approval`)",
    )
    async def export(
        request: Request,
        type: TypeName | None = None,
        value: Short | None = None,
        profile_id: Short | None = None,
        format: Format = Format.JSONL,
        approval: str | None = None,
        token: Token = exporter,
    ) -> Any:
        _, pid = await subject_pid(type, value, profile_id)
        clear = PII_READ in token.scopes and (reveal is None or approval is not None)
        if PII_READ in token.scopes and reveal is not None and approval is None:
            raise error(
                403,
                "approval_required",
                "an export in clear needs another token's approval: POST /v1/privacy/approvals "
                '{"action": "export", ...}, then pass its id as `approval`',
                "approval",
            )
        if approval is not None:
            try:
                used: Approval = await approvals.use(approval, "export", token.name)
            except ApprovalError as exc:
                raise approval_failed(exc) from exc
            if pid not in used.profile_ids:
                raise error(403, "forbidden", "the approval is for another person", "approval")
        await audited.now(
            token, request, "subject.export", pid, 1, clear=clear, format=format.value
        )

        async def opened(doc: Any, ids: dict[str, str] | None) -> Any:
            return await reveal(doc, clear, ids) if reveal is not None else doc

        lines = subjects.lines(pid, opened)
        body = zipped(lines) if format is Format.ZIP else jsonl(lines)
        media = "application/zip" if format is Format.ZIP else "application/x-ndjson"
        name = f"subject-{pid}.{format.value}"
        return StreamingResponse(
            body,
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @router.get(
        "/v1/privacy/subjects/consents",
        summary="A person's consent ledger (every grant and withdrawal with its evidence) and "
        "the state it ends in",
    )
    async def consents(
        request: Request,
        type: TypeName | None = None,
        value: Short | None = None,
        profile_id: Short | None = None,
        token: Token = exporter,
    ) -> Any:
        _, pid = await subject_pid(type, value, profile_id)
        history = await subjects.consents(pid)
        audited.soon(token, request, "subject.consents", pid, 1)
        return {"profile_id": pid, "current": current_consent(history), "history": history}

    # -- audit ------------------------------------------------------------------------------

    @router.get("/v1/audit", summary="Audit records, newest first (never personal data)")
    async def audit_log(
        actor: str | None = None,
        action: Annotated[str | None, Query(description="a prefix, e.g. erasure.")] = None,
        target: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
        token: Token = auditor,
    ) -> Any:
        query = {
            "actor": actor,
            "action": action,
            "target": target,
            "since": since,
            "until": until,
            "limit": limit,
        }
        rows = await audit_rows(query)
        for row in rows:
            row["detail"] = orjson.loads(row["detail"])
        return {"count": len(rows), "records": rows}

    return router
