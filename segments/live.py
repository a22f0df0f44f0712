"""Live segments: tag-only definitions answered from the Redis tag index.

A tag's index is a bitmap over profile ordinals (tagging/apply.lua), so ``all``/``any``/
``not`` of tags are ``BITOP``s and a count is one ``BITCOUNT``: milliseconds over millions
of profiles, and always as fresh as the tags. Membership changes are found per profile from
its tag bits before and after an evaluation (``predicate``), so they are emitted as profiles
change, with no refresh.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from contracts.segments import All, AnyOf, Not, SegmentDefinition, TagCondition
from segments.sql import SegmentError
from tagging.catalog import Catalog, Tag

_SCRIPT = Path(__file__).parent / "live.lua"
Predicate = Callable[[int], bool]


def program(node: Any, catalog: Catalog, path: str = "definition") -> list[list[Any]]:
    """The postfix program live.lua runs for a tag-only tree."""
    if isinstance(node, TagCondition):
        tag = catalog.by_id.get(node.tag)
        if tag is None:
            raise SegmentError(f"{path}.tag", f"unknown tag {node.tag!r} (see GET /v1/tags)")
        return [["tag", tag.bit]]
    if isinstance(node, All | AnyOf):
        children = node.all if isinstance(node, All) else node.any
        kind = "all" if isinstance(node, All) else "any"
        out: list[list[Any]] = []
        for i, child in enumerate(children):
            out += program(child, catalog, f"{path}.{kind}.{i}")
        if len(children) > 1:
            out.append(["and" if kind == "all" else "or", len(children)])
        return out
    if isinstance(node, Not):
        return [*program(node.not_, catalog, f"{path}.not"), ["not"]]
    raise SegmentError(path, "a live segment has only all/any/not and tag conditions")


def predicate(node: Any, catalog: Catalog) -> Predicate:
    """Membership as a function of a profile's tag bitmap (for before/after comparisons)."""
    if isinstance(node, TagCondition):
        bit = catalog.by_id[node.tag].bit
        return lambda mask: bool(mask >> bit & 1)
    if isinstance(node, All):
        parts = [predicate(c, catalog) for c in node.all]
        return lambda mask: all(p(mask) for p in parts)
    if isinstance(node, AnyOf):
        parts = [predicate(c, catalog) for c in node.any]
        return lambda mask: any(p(mask) for p in parts)
    if isinstance(node, Not):
        inner = predicate(node.not_, catalog)
        return lambda mask: not inner(mask)
    raise SegmentError("definition", "a live segment has only all/any/not and tag conditions")


def purpose_tag(
    seg: SegmentDefinition, catalog: Catalog, enforce_consent: bool = True
) -> Tag | None:
    """The catalog tag that enforces a live segment's purpose (``consent_<purpose>_allowed``)."""
    if seg.purpose is None or not enforce_consent:
        return None
    tag = catalog.by_id.get(f"consent_{seg.purpose}_allowed")
    if tag is None:
        raise SegmentError(
            "purpose",
            f"unknown consent purpose {seg.purpose!r}: no tag consent_{seg.purpose}_allowed "
            "to enforce it live",
        )
    return tag


def segment_program(
    seg: SegmentDefinition, catalog: Catalog, enforce_consent: bool = True
) -> list[list[Any]]:
    """The program of a live segment: its tree, ANDed with its purpose's consent tag."""
    prog = program(seg.definition, catalog)
    tag = purpose_tag(seg, catalog, enforce_consent)
    return [*prog, ["tag", tag.bit], ["and", 2]] if tag else prog


def segment_predicate(seg: SegmentDefinition, catalog: Catalog) -> Predicate:
    """A live segment's membership (purpose enforced) as a function of a tag bitmap."""
    test = predicate(seg.definition, catalog)
    tag = purpose_tag(seg, catalog)
    if tag is None:
        return test
    bit = tag.bit
    return lambda mask: test(mask) and bool(mask >> bit & 1)


def _ordinals(bitmap: bytes) -> list[int]:
    """Set bits of a Redis bitmap (bit 0 is the most significant bit of byte 0)."""
    out = []
    for index, byte in enumerate(bitmap):
        if byte:
            base = index * 8
            out += [base + b for b in range(8) if byte & (0x80 >> b)]
    return out


class LiveIndex:
    """Counts and members of tag-only segments, from the tag bitmaps."""

    def __init__(self, client: aioredis.Redis, namespace: str) -> None:
        self._redis = client
        self._ns = namespace
        self._script = client.register_script(_SCRIPT.read_text())

    async def count(self, prog: list[list[Any]]) -> int:
        """How many profiles the program selects (one script call)."""
        return int(await self._script(args=[self._ns, orjson.dumps(prog), "count"]))

    async def members(
        self, prog: list[list[Any]], limit: int | None = None, chunk: int = 5000
    ) -> AsyncIterator[list[str]]:
        """The selected profile ids, in ordinal order, in chunks (at most ``limit``)."""
        bitmap = await self._script(args=[self._ns, orjson.dumps(prog), "bitmap"])
        ordinals = _ordinals(bitmap or b"")
        if limit is not None:
            ordinals = ordinals[:limit]
        for start in range(0, len(ordinals), chunk):
            part = ordinals[start : start + chunk]
            pipe = self._redis.pipeline(transaction=False)
            for o in part:
                pipe.hget(f"{self._ns}:pord:{o // 128}", str(o))
            found = await pipe.execute()
            yield [p.decode() if isinstance(p, bytes) else p for p in found if p is not None]
