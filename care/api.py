"""Care over HTTP: the rules, the tasks of a profile or a state, and closing a task."""

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from care.processor import Care
from contracts.care import CareState
from runtime.auth import Token
from runtime.exceptions import KafkaUnavailable


def _error(status: int, code: str, message: str, field: str | None) -> HTTPException:
    return HTTPException(status, {"code": code, "message": message, "field": field})


def care_router(care: Care, read: Any, write: Any, webhook: bool) -> APIRouter:
    """Routes under ``/v1/care``: ``read`` and ``write`` admit ``care:read``/``care:write``."""
    router = APIRouter(tags=["care"])
    Reader = Annotated[Token, Depends(read)]
    Writer = Annotated[Token, Depends(write)]

    @router.get("/v1/care/rules", summary="The care rules in force")
    async def rules(_: Reader) -> Any:
        return {"rules": [r.model_dump(mode="json") for r in care.rules.values()]}

    @router.get("/v1/care/tasks", summary="Care tasks, newest first")
    async def tasks(
        _: Reader,
        profile: str | None = None,
        state: CareState | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> Any:
        found = await care.store.listing(profile, state, limit)
        return {"tasks": [t.model_dump(mode="json") for t in found]}

    @router.get("/v1/care/tasks/{task_id}", summary="One care task and its delivery")
    async def task(task_id: str, _: Reader) -> Any:
        found = await care.store.get(task_id)
        if found is None:
            raise _error(404, "not_found", f"no care task {task_id}", "task_id")
        delivered = await care.store.delivered_at(task_id)
        told_closed = await care.store.close_delivered_at(task_id)
        return {
            **found.model_dump(mode="json"),
            "delivered_at": _iso(delivered),
            "close_delivered_at": _iso(told_closed),
        }

    @router.post("/v1/care/tasks/{task_id}/close", summary="Close an open care task")
    async def close(task_id: str, token: Writer) -> Any:
        found = await care.store.get(task_id)
        if found is None:
            raise _error(404, "not_found", f"no care task {task_id}", "task_id")
        try:
            done = await care.close(found, f"api:{token.name}", datetime.now(UTC))
        except KafkaUnavailable as exc:
            raise _error(
                503, "kafka_unavailable", "Kafka did not acknowledge; the task stays open", None
            ) from exc
        if done is None:
            raise _error(409, "not_open", f"care task {task_id} is {found.state}", "task_id")
        return done.model_dump(mode="json")

    @router.post(
        "/v1/care/tasks/{task_id}/redeliver",
        status_code=202,
        summary="Deliver an open task to the webhook again (after a dead letter)",
    )
    async def redeliver(task_id: str, _: Writer) -> Any:
        found = await care.store.get(task_id)
        if found is None:
            raise _error(404, "not_found", f"no care task {task_id}", "task_id")
        if found.state != CareState.OPEN:
            raise _error(409, "not_open", f"care task {task_id} is {found.state}", "task_id")
        if not webhook:
            raise _error(409, "no_webhook", "no webhook is configured", None)
        await care.store.requeue(task_id, datetime.now(UTC))
        return {"task_id": task_id, "queued": True}

    return router


def _iso(ms: int | None) -> str | None:
    """An epoch-ms time as ISO 8601 (UTC), or None."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat() if ms else None
