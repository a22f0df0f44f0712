"""Write keys the test API accepts."""

from __future__ import annotations

from ingest.sources import Source, hash_key

SOURCES = {
    "test-pos": ("pos", "member_id"),
    "test-web": ("web", "customer_id"),
}


def key_of(source: str) -> str:
    """Return the write key of a test source."""
    return f"wk_{source}_secret"


def known_sources() -> list[Source]:
    """Return the sources the test API accepts."""
    return [
        Source.model_validate(
            {"name": n, "channel": c, "user_id_type": t, "key_sha256": hash_key(key_of(n))}
        )
        for n, (c, t) in SOURCES.items()
    ]
