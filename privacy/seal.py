"""Seal the sensitive values of accepted events before they reach Kafka (ingest's last step).

Per event:

- each sensitive identifier becomes its blind index (``value``) plus its value sealed under
  its own data key (``sealed``): identity resolution, partition keys and lookups compare
  blind indexes, and a person's identifiers can be shredded one by one. Junk values on the
  identity blocklist (``unknown``, ``test@test.com``) identify nobody and stay as they are, so
  that identity still refuses them;
- sensitive traits, properties, context entries and ``previous_id`` are sealed under the key
  of the event's strongest sealed identifier (the person the event is about). Dates listed as
  ``keep_month_day`` also keep ``<name>_md`` = ``--MM-DD`` in clear, for birthday rules.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from contracts.deadletter import DeadLetter
from contracts.events import Event, Identifier, identifier_rank
from identity.rules import IdentityRules
from privacy.classification import Classification
from privacy.crypto import Blinder, DataKey
from privacy.keystore import KeyStore

#: The subject whose key seals one day's dead letters.
DEADLETTER = "deadletter"


def month_day(value: Any) -> str | None:
    """``--MM-DD`` of an ISO date (or date-time) string, None if it is not one."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        day = date.fromisoformat(value[:10])
    except ValueError:
        return None
    return f"--{day.month:02d}-{day.day:02d}"


class Blinding:
    """Which identifiers are sealed, and the form they are stored and looked up in."""

    def __init__(self, master: Blinder, classes: Classification, rules: IdentityRules) -> None:
        self.master = master
        self.classes = classes
        self.rules = rules
        #: type:value -> whether it is junk (the blocklist check is ~4 us; values recur).
        self._junk: dict[str, bool] = {}

    def sealable(self, ident: Identifier) -> bool:
        """Whether an identifier's value is personal data to seal (not junk, not clear type)."""
        if not self.classes.identifier(ident.type) or ident.sealed is not None:
            return False
        if not ident.normalized:
            return True
        key = f"{ident.type}:{ident.value}"
        junk = self._junk.get(key)
        if junk is None:
            if len(self._junk) >= 200_000:
                self._junk.clear()
            junk = self._junk[key] = self.rules.blocked(ident)
        return not junk

    def blind_value(self, ident: Identifier) -> str | None:
        """The blind index an identifier is stored under; None when it stays as it is."""
        return self.master.blind(ident.type, ident.value) if self.sealable(ident) else None

    def blind(self, ident: Identifier) -> Identifier:
        """The identifier as stored and looked up (unsealed when it is not sensitive)."""
        value = self.blind_value(ident)
        return ident if value is None else ident.model_copy(update={"value": value})

    def stored_key(self, key: str) -> str:
        """``type:value`` as stored (``type:~blind`` for a sensitive value)."""
        type_name, _, value = key.partition(":")
        return self.blind(Identifier(type=type_name, value=value)).key()


class Sealer(Blinding):
    """Turns accepted events (and dead letters) into their sealed form."""

    def __init__(
        self,
        keys: KeyStore,
        master: Blinder,
        classes: Classification,
        rules: IdentityRules,
    ) -> None:
        super().__init__(master, classes, rules)
        self.keys = keys

    async def seal(self, events: list[Event]) -> list[Event]:
        """Every event with its sensitive values sealed (keys created durably first)."""
        plans: list[tuple[Event, list[tuple[Identifier, str | None]], str]] = []
        subjects: set[str] = set()
        for event in events:
            ids = [(i, self.blind_value(i)) for i in event.identifiers]
            blinds = [(identifier_rank(i.type), b) for i, b in ids if b is not None]
            # No sealed identifier (junk or company ids only): the event is its own subject.
            subject = min(blinds)[1] if blinds else self.master.blind("event", event.event_id)
            subjects.update(b for _, b in blinds)
            subjects.add(subject)
            plans.append((event, ids, subject))
        keys = await self.keys.for_subjects(subjects)
        return [self._sealed(e, ids, keys, keys[subject]) for e, ids, subject in plans]

    def _sealed(
        self,
        event: Event,
        ids: list[tuple[Identifier, str | None]],
        keys: dict[str, DataKey],
        key: DataKey,
    ) -> Event:
        # model_construct: a validated identifier's fields, with its value replaced by its
        # blind index (the same constraints hold) and the sealed value added.
        identifiers = [
            i
            if b is None
            else Identifier.model_construct(
                type=i.type, value=b, normalized=i.normalized, sealed=keys[b].seal(i.value)
            )
            for i, b in ids
        ]
        update: dict[str, Any] = {"identifiers": identifiers}
        traits = self._fields(event.traits, self.classes.traits, key, month_days=True)
        if traits is not event.traits:
            update["traits"] = traits
        props = self._fields(event.properties, self.classes.properties, key)
        if props is not event.properties:
            update["properties"] = props
        context = self._context(event.context, key)
        if context is not event.context:
            update["context"] = context
        if event.previous_id is not None:
            update["previous_id"] = key.seal(event.previous_id)
        return event.model_copy(update=update)

    def _fields(
        self, values: dict[str, Any], names: frozenset[str], key: DataKey, month_days: bool = False
    ) -> dict[str, Any]:
        if not values or names.isdisjoint(values):
            return values
        out = dict(values)
        for name in names.intersection(values):
            value = values[name]
            if value is None:
                continue
            out[name] = key.seal(value)
            if month_days and name in self.classes.keep_month_day:
                md = month_day(value)
                if md is not None:
                    out[f"{name}_md"] = md
        return out

    def _context(self, context: dict[str, Any], key: DataKey) -> dict[str, Any]:
        out = context
        for path in self.classes.context:
            head, _, rest = path.partition(".")
            if head not in out:
                continue
            if out is context:
                out = dict(context)
            if not rest:
                if out[head] is not None:
                    out[head] = key.seal(out[head])
            elif isinstance(out[head], dict) and rest in out[head]:
                inner = dict(out[head])
                if inner[rest] is not None:
                    inner[rest] = key.seal(inner[rest])
                out[head] = inner
        return out

    async def seal_letters(self, letters: list[DeadLetter]) -> list[DeadLetter]:
        """Dead letters whose payload and raw body are sealed under their day's key."""
        days = {letter.received_at.date().isoformat() for letter in letters}
        subjects = {day: self.master.blind(DEADLETTER, day) for day in days}
        keys = await self.keys.for_subjects(subjects.values())
        out = []
        for letter in letters:
            if letter.payload is None and letter.raw is None:
                out.append(letter)
                continue
            key = keys[subjects[letter.received_at.date().isoformat()]]
            sealed = key.seal({"payload": letter.payload, "raw": letter.raw})
            out.append(letter.model_copy(update={"payload": None, "raw": None, "sealed": sealed}))
        return out
