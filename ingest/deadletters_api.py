"""``/v1/deadletters``: list, show and re-drive dead letters (operators' tokens)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict

from ingest.deadletters import DeadLetters, Filter, SealedLetter, Stored
from ingest.redrive import Redriver, Report
from privacy.audit import Audited
from privacy.reveal import PII_READ, mask
from runtime.auth import Token
from runtime.exceptions import KafkaUnavailable

#: What the routes need from a token: read letters, re-drive them.
READ, REDRIVE = "deadletters:read", "deadletters:redrive"


class Selection(BaseModel):
    """Which letters to re-drive: ids, or a filter (at least one criterion)."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] = []
    reasons: list[str] = []
    source: str | None = None
    field: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    #: Re-drive letters already re-driven too (their ids are deterministic: no double effect).
    force: bool = False
    #: Report what a re-drive would do; publish nothing.
    dry_run: bool = False

    def filter(self) -> Filter:
        """The selection as a filter."""
        return Filter(
            reasons=frozenset(self.reasons),
            source=self.source,
            field=self.field,
            since=self.since,
            until=self.until,
            ids=frozenset(self.ids),
        )

    def empty(self) -> bool:
        """Whether no criterion was given (which would take the whole topic)."""
        return not (self.ids or self.reasons or self.source or self.field) and (
            self.since is None and self.until is None
        )


def _unavailable(what: str) -> HTTPException:
    return HTTPException(
        503,
        {"code": "unavailable", "message": f"{what}; retry later", "field": None},
        headers={"Retry-After": "5"},
    )


async def _read(letters: DeadLetters, chosen: Filter) -> list[Stored]:
    try:
        return await letters.read(chosen)
    except TimeoutError as exc:
        raise _unavailable("the dead-letter topic could not be read") from exc


def build_router(
    letters: DeadLetters,
    redriver: Redriver,
    read: Any,
    redrive: Any,
    audited: Audited,
    sealed: bool,
) -> APIRouter:
    """Return the dead-letter routes; ``read`` and ``redrive`` admit the scopes' tokens.

    ``sealed``: field encryption is on, so a payload is shown in clear only to a token with
    ``pii:read`` (and the reading audited); masked otherwise.
    """
    router = APIRouter(prefix="/v1/deadletters", tags=["ops"])
    reader, redriver_token = Depends(read), Depends(redrive)

    @router.get("", summary="Dead letters, filtered; newest last, without their payloads")
    async def listing(
        token: Token = reader,
        reason: Annotated[list[str] | None, Query()] = None,
        source: str | None = None,
        field: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> Any:
        chosen = Filter(frozenset(reason or ()), source, field, since, until)
        try:
            return await redriver.listing(chosen, limit)
        except TimeoutError as exc:
            raise _unavailable("the dead-letter topic could not be read") from exc

    @router.get("/{letter_id}", summary="One dead letter with its payload")
    async def show(letter_id: str, request: Request, token: Token = reader) -> Any:
        stored = await _read(letters, Filter(ids=frozenset({letter_id})))
        if not stored:
            raise HTTPException(
                404, {"code": "not_found", "message": "no such letter", "field": "letter_id"}
            )
        letter = stored[0].letter
        clear = not sealed or PII_READ in token.scopes
        erased: str | None = None
        try:
            opened = await letters.opened(letter)
        except SealedLetter as exc:
            opened, erased = letter, str(exc)
        body = opened.model_dump(mode="json")
        if not clear:
            body["payload"], body["raw"] = (
                mask("payload", body["payload"]),
                mask("raw", body["raw"]),
            )
        else:
            await audited.now(token, request, "deadletters.read", letter_id, subjects=1)
        done = await redriver.redriven([letter_id])
        return {
            "id": letter_id,
            "source": stored[0].source,
            "letter": body,
            "erased": erased,
            "redriven": done.get(letter_id),
        }

    @router.post("/redrive", summary="Send dead letters back through ingest once fixed")
    async def redrive_route(
        selection: Selection, request: Request, token: Token = redriver_token
    ) -> Any:
        if selection.empty():
            raise HTTPException(
                400,
                {
                    "code": "invalid_request",
                    "message": "name letters (ids) or a criterion (reasons, source, field, "
                    "since, until)",
                    "field": "ids",
                },
            )
        chosen = await _read(letters, selection.filter())
        action = "deadletters.redrive" + (".dry_run" if selection.dry_run else "")
        await audited.now(
            token, request, action, letters.topic, selected=len(chosen), force=selection.force
        )
        try:
            report: Report = await redriver.redrive(
                chosen, force=selection.force, dry_run=selection.dry_run
            )
        except KafkaUnavailable as exc:
            raise _unavailable("Kafka did not acknowledge the re-driven events") from exc
        outcome = report.as_dict()
        await audited.now(token, request, action + ".done", letters.topic, **report.audit_detail())
        return outcome

    return router
