"""Field encryption primitives: blind indexes, key wrapping, AES-SIV envelopes.

Nothing here is home-made cryptography: HMAC-SHA256 (blind indexes), AES key wrap
(RFC 3394, wrapping data keys under a key-encryption key) and AES-256-SIV (RFC 5297, values)
all come from the ``cryptography`` library. SIV is an AEAD like AES-GCM, but deterministic
and safe with it: the same value under the same key is the same envelope, so a trait re-sent
by every event is no change to the profile, and no nonce can repeat. This module only fixes
the formats:

- a **blind index** is ``~`` + the first 16 bytes of HMAC-SHA256(index key, ``type:value``),
  base64url: equal normalised values give equal indexes, and nothing else can be learnt from
  one without the index key;
- a **key id** (kid) names the data key of one subject (an identifier): the first 12
  characters of the subject's blind index after the ``~``, so an identifier's key is found
  without a lookup table;
- an **envelope** is ``v1.<kid>.<base64url(siv | ciphertext)>``, the value (as JSON)
  encrypted under the kid's data key with the kid as associated data: 59 characters for a
  phone number.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

BLIND = "~"
ENVELOPE = "v1."
KID_LENGTH = 12
#: AES-256-SIV takes two 256-bit keys.
DATA_KEY_BYTES = 64


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def b64(data: bytes) -> str:
    """base64url without padding."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    """Inverse of ``b64``."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def is_blind(value: str) -> bool:
    """Whether an identifier value is a blind index rather than the value itself."""
    return value.startswith(BLIND)


def is_sealed(value: Any) -> bool:
    """Whether a stored value is an envelope."""
    return isinstance(value, str) and value.startswith(ENVELOPE) and value.count(".") == 2


def kid_of(blind: str) -> str:
    """The key id of a subject, from its blind index."""
    return blind[len(BLIND) : len(BLIND) + KID_LENGTH]


def envelope_kid(envelope: str) -> str:
    """The key id an envelope was sealed under."""
    return envelope.split(".", 2)[1]


class KeyWrapper(Protocol):
    """Wraps and unwraps data keys under a key-encryption key held outside the data stores.

    The local implementation reads its keys from a file or the environment; a KMS or HSM
    (a Vault transit engine, AWS KMS) implements the same three members, see docs/privacy.md.
    """

    @property
    def current(self) -> str:
        """The id of the key-encryption key new data keys are wrapped under."""

    def wrap(self, kek_id: str, dek: bytes) -> bytes:
        """Wrap a data key under the named key-encryption key."""

    def unwrap(self, kek_id: str, wrapped: bytes) -> bytes:
        """Unwrap a data key; raises ``KeyError`` for an unknown key-encryption key."""


class Blinder(Protocol):
    """Computes blind indexes (the master keys, or a wrapper holding them)."""

    def blind(self, type_name: str, value: str) -> str:
        """The blind index of a normalised value of a type."""


class MasterKeyError(ValueError):
    """The master key material is missing or malformed."""


@dataclass(frozen=True)
class MasterKeys:
    """The blind-index key and the key-encryption keys, from outside the data stores.

    The file (or ``CDP_PRIVACY__MASTER_KEYS``) is JSON: ``{"index_key": <base64 32 bytes>,
    "keks": {<id>: <base64 32 bytes>, ...}, "current": <id>}``. Rotation adds a key-encryption
    key and makes it current; older ones stay until every data key was rewrapped.
    """

    index_key: bytes
    keks: Mapping[str, bytes]
    current_id: str

    @classmethod
    def generate(cls, kek_id: str = "k1") -> MasterKeys:
        """Fresh random keys (``cdp keys init``)."""
        return cls(secrets.token_bytes(32), {kek_id: secrets.token_bytes(32)}, kek_id)

    @classmethod
    def parse(cls, text: str) -> MasterKeys:
        """Read the JSON form."""
        try:
            raw = json.loads(text)
            index_key = base64.b64decode(raw["index_key"])
            keks = {str(k): base64.b64decode(v) for k, v in raw["keks"].items()}
            current = str(raw["current"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MasterKeyError(f"master keys are not valid: {type(exc).__name__}") from None
        if len(index_key) != 32 or any(len(k) != 32 for k in keks.values()):
            raise MasterKeyError("master keys must be 32 bytes each")
        if current not in keks:
            raise MasterKeyError(f"current key-encryption key {current!r} is not in keks")
        if not all(k and k.isascii() and "|" not in k and len(k) <= 32 for k in keks):
            raise MasterKeyError("key-encryption key ids are ASCII, at most 32 characters, no |")
        return cls(index_key, keks, current)

    @classmethod
    def load(cls, path: Path) -> MasterKeys:
        """Read a master key file."""
        try:
            return cls.parse(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MasterKeyError(f"no master key file at {path} (cdp keys init)") from None

    def dumps(self) -> str:
        """The JSON form."""
        return json.dumps(
            {
                "index_key": base64.b64encode(self.index_key).decode(),
                "keks": {k: base64.b64encode(v).decode() for k, v in self.keks.items()},
                "current": self.current_id,
            },
            indent=2,
        )

    def save(self, path: Path) -> None:
        """Write the file readable by its owner only (atomically)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(self.dumps())
        os.replace(tmp, path)

    def rotated(self, kek_id: str) -> MasterKeys:
        """These keys plus a new current key-encryption key."""
        if kek_id in self.keks:
            raise MasterKeyError(f"key-encryption key {kek_id!r} exists already")
        keks = {**self.keks, kek_id: secrets.token_bytes(32)}
        return MasterKeys(self.index_key, keks, kek_id)

    # -- KeyWrapper ----------------------------------------------------------------------

    @property
    def current(self) -> str:
        """The id of the key-encryption key new data keys are wrapped under."""
        return self.current_id

    def wrap(self, kek_id: str, dek: bytes) -> bytes:
        """AES key wrap (RFC 3394): 72 bytes for a 64-byte data key."""
        return aes_key_wrap(self.keks[kek_id], dek)

    def unwrap(self, kek_id: str, wrapped: bytes) -> bytes:
        """Inverse of ``wrap``; ``KeyError`` when the key-encryption key is unknown."""
        try:
            return aes_key_unwrap(self.keks[kek_id], wrapped)
        except InvalidUnwrap:
            raise KeyError(kek_id) from None

    # -- blind indexes -------------------------------------------------------------------

    def blind(self, type_name: str, value: str) -> str:
        """The blind index of a normalised value of a type."""
        digest = hmac.digest(self.index_key, f"{type_name}:{value}".encode(), hashlib.sha256)
        return BLIND + b64(digest[:16])


class DataKey:
    """One subject's data key: seals and opens values (AES-256-SIV, the kid as associated data)."""

    __slots__ = ("_aad", "_aead", "kid")

    def __init__(self, kid: str, key: bytes) -> None:
        self.kid = kid
        self._aead = AESSIV(key)
        self._aad = [kid.encode()]

    def seal(self, value: Any) -> str:
        """Encrypt any JSON value into an envelope (the same envelope for the same value)."""
        sealed = self._aead.encrypt(orjson.dumps(value), self._aad)
        return f"{ENVELOPE}{self.kid}.{b64(sealed)}"

    def open(self, envelope: str) -> Any:
        """Decrypt an envelope sealed under this key; ``ValueError`` if it was not."""
        try:
            plain = self._aead.decrypt(unb64(envelope.split(".", 2)[2]), self._aad)
        except (InvalidTag, ValueError):
            raise ValueError("the envelope was not sealed under this key") from None
        return orjson.loads(plain)
