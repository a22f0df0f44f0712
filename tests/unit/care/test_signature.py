"""Webhook signatures and the retry schedule."""

from __future__ import annotations

import hashlib
import hmac

from care.delivery import backoff, retryable
from care.signature import IDEMPOTENCY_KEY, SIGNATURE, TIMESTAMP, headers, sign, verify

SECRET = b"s3cret"


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"task_id": "x"}'
    expected = hmac.new(SECRET, b"1764556800." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1764556800, body) == "v1=" + expected


def test_verify_refuses_other_bodies_secrets_and_old_timestamps() -> None:
    body = b"{}"
    sig = sign(SECRET, 1000, body)
    assert verify(SECRET, "1000", body, sig, now=1100)
    assert not verify(SECRET, "1000", b"{ }", sig, now=1100)
    assert not verify(b"other", "1000", body, sig, now=1100)
    assert not verify(SECRET, "1000", body, sig, now=1000 + 301)
    assert not verify(SECRET, "soon", body, sig, now=1000)


def test_headers_carry_the_idempotency_key() -> None:
    h = headers(SECRET, 5, b"{}", "abc")
    assert h[IDEMPOTENCY_KEY] == "abc" and h[TIMESTAMP] == "5"
    assert h[SIGNATURE] == sign(SECRET, 5, b"{}")


def test_backoff_doubles_up_to_its_cap_and_only_some_answers_are_retried() -> None:
    assert [backoff(n, 2, 10) for n in (1, 2, 3, 4, 5)] == [2, 4, 8, 10, 10]
    assert retryable(500) and retryable(503) and retryable(429) and retryable(408)
    assert not retryable(400) and not retryable(404) and not retryable(410)


def test_the_verification_example_in_the_docs_accepts_a_delivery() -> None:
    import re
    import time
    from pathlib import Path

    text = (Path(__file__).parents[3] / "docs" / "care.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code is not None
    scope: dict[str, object] = {}
    exec(compile(code.group(1), "docs/care.md", "exec"), scope)  # noqa: S102 - our own docs
    verified = scope["verified"]
    assert callable(verified)
    body = b'{"task_id": "abc"}'
    sent = headers(SECRET, int(time.time()), body, "abc")
    assert verified(SECRET, sent, body)
    assert not verified(SECRET, sent, body + b" ")
