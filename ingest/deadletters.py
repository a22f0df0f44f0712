"""The dead letters on their topic: read back, chosen by a filter, opened when sealed.

A letter's id is where it is on ``cdp.events.deadletter``: ``<partition>-<offset>``. Kafka
keeps the letters (the topic's retention); this module only reads them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from contracts.deadletter import DeadLetter
from ingest.sources import SourceRegistry
from privacy.crypto import envelope_kid
from privacy.keystore import KeyStore
from runtime.readback import Message

#: Reads a topic to its end offsets (``runtime.readback.read_messages`` bound to a broker).
Reader = Callable[[str], list[Message]]


def letter_id(partition: int, offset: int) -> str:
    """A letter's id: its place on the dead-letter topic."""
    return f"{partition}-{offset}"


@dataclass(frozen=True)
class Stored:
    """A dead letter and where it is."""

    id: str
    letter: DeadLetter
    #: The source that sent it: the letter's, or for a refused key the source that holds
    #: that key now (None while nobody does).
    source: str | None

    def summary(self) -> dict[str, Any]:
        """What a listing shows of a letter: everything but its payload."""
        letter = self.letter
        return {
            "id": self.id,
            "received_at": letter.received_at.isoformat(),
            "reason": letter.reason.value,
            "status": letter.status,
            "source": self.source,
            "endpoint": letter.endpoint,
            "field": letter.field,
            "index": letter.index,
            "message": letter.message,
            "count": letter.count,
            "request_id": letter.request_id,
            "sealed": letter.sealed is not None,
            "redrive_of": letter.redrive_of,
        }


@dataclass(frozen=True)
class Filter:
    """Which letters to take; an empty filter takes them all."""

    reasons: frozenset[str] = frozenset()
    #: A source's name; ``unknown`` takes the letters whose key no source holds.
    source: str | None = None
    #: A field as the client sent it: ``userId`` takes ``batch[3].userId`` too.
    field: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    ids: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        # A time without an offset (a CLI option, a query string) is UTC, as letters are.
        for name in ("since", "until"):
            when = getattr(self, name)
            if when is not None and when.tzinfo is None:
                object.__setattr__(self, name, when.replace(tzinfo=UTC))

    def admits(self, stored: Stored) -> bool:
        """Whether ``stored`` passes every given criterion."""
        letter = stored.letter
        if self.ids and stored.id not in self.ids:
            return False
        if self.reasons and letter.reason.value not in self.reasons:
            return False
        if self.source is not None and (stored.source or "unknown") != self.source:
            return False
        if self.field is not None and not _field_matches(letter.field, self.field):
            return False
        if self.since is not None and letter.received_at < self.since:
            return False
        return self.until is None or letter.received_at < self.until


def _field_matches(field: str | None, wanted: str) -> bool:
    if field is None:
        return False
    return field == wanted or field.endswith("." + wanted) or field.endswith("]" + wanted)


class SealedLetter(Exception):
    """A sealed letter whose day key is gone (shredded) or cannot be opened here."""


class DeadLetters:
    """Read the dead-letter topic; open sealed payloads with the day's data key."""

    def __init__(
        self,
        topic: str,
        reader: Reader,
        registry: SourceRegistry,
        keys: KeyStore | None = None,
    ) -> None:
        self.topic = topic
        self._reader = reader
        self._registry = registry
        self._keys = keys

    async def read(self, chosen: Filter = Filter()) -> list[Stored]:
        """Every letter on the topic that ``chosen`` admits, in topic order per partition.

        A message that is not a dead letter (it does not decode) is left out.
        """
        messages = await asyncio.to_thread(self._reader, self.topic)
        found = []
        for message in messages:
            if message.value is None:
                continue
            try:
                letter = DeadLetter.model_validate_json(message.value)
            except ValidationError:
                continue
            stored = Stored(
                letter_id(message.partition, message.offset), letter, self.source_of(letter)
            )
            if chosen.admits(stored):
                found.append(stored)
        return found

    async def get(self, wanted: str) -> Stored | None:
        """The letter with id ``wanted``, or None."""
        found = await self.read(Filter(ids=frozenset({wanted})))
        return found[0] if found else None

    def source_of(self, letter: DeadLetter) -> str | None:
        """The source a letter came from, as far as the sources known now tell."""
        if letter.source is not None:
            return letter.source
        if letter.key_sha256 is not None:
            holder = self._registry.by_hash(letter.key_sha256)
            return holder.name if holder is not None else None
        return None

    async def opened(self, letter: DeadLetter) -> DeadLetter:
        """The letter with its payload and raw body in clear (as stored when not sealed)."""
        if letter.sealed is None:
            return letter
        if self._keys is None:
            raise SealedLetter("the letter is sealed and field encryption is off here")
        kid = envelope_kid(letter.sealed)
        key = (await self._keys.keys([kid])).get(kid)
        if key is None:
            raise SealedLetter("the letter's day key was shredded: its payload is erased")
        inner = key.open(letter.sealed)
        return letter.model_copy(
            update={"payload": inner.get("payload"), "raw": inner.get("raw"), "sealed": None}
        )
