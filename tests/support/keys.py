"""Write keys the test API accepts."""

from __future__ import annotations

from ingest.sources import Source, hash_key
from runtime.auth import Token, hash_token

#: Bearer tokens of the read API in tests, by the scopes they carry.
TOKENS = {
    "tk_reader": frozenset({"profiles:read", "identity:read"}),
    "tk_pii": frozenset({"profiles:read", "identity:read", "pii:read"}),
    "tk_profiles_only": frozenset({"profiles:read"}),
    "tk_segments": frozenset({"segments:read"}),
    "tk_segments_pii": frozenset({"segments:read", "pii:read"}),
    "tk_segments_rw": frozenset({"segments:read", "segments:write"}),
    "tk_segments_admin": frozenset({"segments:read", "segments:admin"}),
    "tk_identity_admin": frozenset({"identity:read", "identity:write", "profiles:read"}),
    "tk_console": frozenset(
        {"profiles:read", "identity:read", "segments:read", "segments:write", "ops:read"}
    ),
    "tk_console_readonly": frozenset({"profiles:read", "identity:read", "segments:read"}),
    "tk_dpo": frozenset({"privacy:erase", "privacy:export", "audit:read"}),
    "tk_dpo2": frozenset({"privacy:erase", "privacy:export", "audit:read", "privacy:approve"}),
    "tk_ops": frozenset({"deadletters:read", "deadletters:redrive"}),
    "tk_ops_read": frozenset({"deadletters:read"}),
    "tk_care": frozenset({"care:read", "care:write"}),
    "tk_care_read": frozenset({"care:read"}),
}

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


def known_tokens() -> list[Token]:
    """Return the read-API tokens the test API accepts."""
    return [Token(name=t, sha256=hash_token(t), scopes=s) for t, s in TOKENS.items()]
