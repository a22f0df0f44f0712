"""The durable copy of a data key on ``cdp.keys`` (see docs/privacy.md)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class WrappedKey(BaseModel):
    """One subject's data key, wrapped (AES key wrap) under a key-encryption key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Key id: the first 12 characters of the subject's blind index after the ``~``.
    kid: str
    #: Which key-encryption key wrapped it (the master keys name them).
    kek: str
    #: base64url of the 40-byte wrapped key.
    wrapped: str
    at: datetime
