"""Tag catalog API: the catalog, one tag, and how many profiles have it now."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query

from tagging.catalog import CATEGORIES, CATEGORY_NAMES, Tag
from tagging.store import TagStore


def build_router(tags: TagStore, redis_url: str, read_tags: Any) -> APIRouter:
    """Return the tag routes; ``read_tags`` enforces the token scope."""
    router = APIRouter(tags=["tags"])

    async def bound() -> TagStore:
        try:
            await tags.ensure_bound(redis_url)
        except Exception as exc:
            raise HTTPException(
                503, {"code": "unavailable", "message": f"tag store: {exc}", "field": None}
            ) from exc
        return tags

    def find(tag_id: str) -> Tag:
        tag = tags.catalog.by_id.get(tag_id)
        if tag is None:
            raise HTTPException(
                404, {"code": "not_found", "message": f"no tag {tag_id}", "field": "tag_id"}
            )
        return tag

    @router.get("/v1/tags", dependencies=[Depends(read_tags)], summary="The tag catalog")
    async def catalog(
        category: Annotated[
            str | None, Query(description=f"one of {', '.join(CATEGORIES)}")
        ] = None,
    ) -> Any:
        if category is not None and category not in CATEGORIES:
            raise HTTPException(
                400,
                {
                    "code": "invalid_request",
                    "message": f"category: unknown {category!r}; one of {', '.join(CATEGORIES)}",
                    "field": "category",
                },
            )
        listed = [t.describe() for t in tags.catalog.tags if category in (None, t.category)]
        categories = [
            {"id": c, "name_en": CATEGORY_NAMES[c][0], "name_zh": CATEGORY_NAMES[c][1]}
            for c in CATEGORIES
        ]
        return {"count": len(listed), "tags": listed, "categories": categories}

    @router.get(
        "/v1/tags/counts",
        dependencies=[Depends(read_tags)],
        summary="How many profiles have each tag now (from the tag index)",
    )
    async def counts() -> Any:
        store = await bound()
        return {"counts": await store.counts(list(tags.catalog.tags))}

    @router.get("/v1/tags/{tag_id}", dependencies=[Depends(read_tags)], summary="One tag")
    async def one(tag_id: str) -> Any:
        tag = find(tag_id)
        store = await bound()
        return {**tag.describe(), "count": await store.count(tag)}

    @router.get(
        "/v1/tags/{tag_id}/count",
        dependencies=[Depends(read_tags)],
        summary="How many profiles have the tag now (from the tag index)",
    )
    async def count(tag_id: str) -> Any:
        tag = find(tag_id)
        store = await bound()
        return {"tag": tag.id, "count": await store.count(tag)}

    return router
