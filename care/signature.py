"""Webhook signatures: HMAC-SHA256 over the timestamp and the body, as receivers verify them.

Headers of every delivery::

    X-CDP-Timestamp: 1764556800                 (Unix seconds when it was sent)
    X-CDP-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>
    Idempotency-Key: <task id>                   (the same on every retry: dedupe on it)
"""

from __future__ import annotations

import hashlib
import hmac

TIMESTAMP = "X-CDP-Timestamp"
SIGNATURE = "X-CDP-Signature"
IDEMPOTENCY_KEY = "Idempotency-Key"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(
    secret: bytes, timestamp: str, body: bytes, signature: str, now: int, tolerance_s: int = 300
) -> bool:
    """Whether ``signature`` signs ``body`` at ``timestamp``, sent within ``tolerance_s`` of
    ``now`` (an old delivery replayed by someone else is refused)."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs(now - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, sent, body), signature)


def headers(secret: bytes, timestamp: int, body: bytes, task_id: str) -> dict[str, str]:
    """Every header a delivery of ``body`` carries."""
    return {
        "Content-Type": "application/json",
        TIMESTAMP: str(timestamp),
        SIGNATURE: sign(secret, timestamp, body),
        IDEMPOTENCY_KEY: task_id,
    }
