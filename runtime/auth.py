"""Bearer tokens for the read APIs: stored hashed, each with scopes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Header, HTTPException
from pydantic import BaseModel, ConfigDict, StringConstraints

Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class Token(BaseModel):
    """An API token: who holds it, its SHA-256, what it may do."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    sha256: Sha256Hex
    scopes: frozenset[str]


def hash_token(token: str) -> str:
    """Hash a token for storage."""
    return hashlib.sha256(token.encode()).hexdigest()


def _deny(status: int, code: str, message: str) -> HTTPException:
    return HTTPException(
        status,
        {"code": code, "message": message, "field": "Authorization"},
        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None,
    )


def require(tokens: list[Token], scope: str | None) -> Callable[..., Any]:
    """Return a FastAPI dependency admitting bearer tokens that carry ``scope`` (any known
    token when None)."""
    by_hash = {t.sha256: t for t in tokens}

    async def check(authorization: Annotated[str | None, Header()] = None) -> Token:
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise _deny(401, "unauthorized", "a bearer token is required")
        token = by_hash.get(hash_token(value.strip()))
        if token is None:
            raise _deny(401, "unauthorized", "unknown token")
        if scope is not None and scope not in token.scopes:
            raise _deny(403, "forbidden", f"token lacks scope {scope}")
        return token

    return check
