"""`cdp run --demo` accepts the documented console token, with no personal data in clear."""

from __future__ import annotations

from deploy.cli import _with_demo
from deploy.demo import DEMO_CONSOLE_TOKEN
from deploy.settings import Settings
from runtime.auth import hash_token


def test_the_demo_accepts_its_console_token_without_pii_read() -> None:
    settings = _with_demo(Settings())
    found = [t for t in settings.api.tokens if t.sha256 == hash_token(DEMO_CONSOLE_TOKEN)]
    assert len(found) == 1
    assert found[0].scopes == {
        "profiles:read",
        "identity:read",
        "segments:read",
        "segments:write",
        "ops:read",
    }
    assert "pii:read" not in found[0].scopes
    assert DEMO_CONSOLE_TOKEN not in Settings().api.model_dump_json()
