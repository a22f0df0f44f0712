"""Source mappings: a channel's own vocabulary, declared in YAML, turned into ours at ingest.

A mapping names the sources it applies to and says, declaratively:

- which of the source's event names become which domain type, with its properties renamed,
  set, converted (text to number, cents to yuan) or dropped; one event may become several
  (a survey answer carrying both an NPS and a CSAT score is two ``survey_answered`` events);
- which traits are renamed to canonical names or dropped;
- which fields (trait, property, context path) carry which identifier type.

A mapping is validated and compiled once, when it is loaded (``compile_mapping``); applying
it to an event (``Mapping.apply``) is dictionary work over what was compiled, never a
re-parse. A source without a mapping is not looked at. The event keeps the name the channel
sent (``name``), and ``context.mapped_from`` keeps the mapping's name and the properties
and traits as they were sent (sealed whole when field encryption is on).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from contracts.deadletter import DeadLetterReason
from contracts.events import IDENTIFIER_TYPE, Event, EventType, Identifier
from identity.normalize import normalize
from ingest.exceptions import IngestError, Rejected
from ingest.segment import TRAIT_IDENTIFIERS

#: Where an event keeps what its channel sent before a mapping changed it.
MAPPED_FROM = "mapped_from"
#: Longest event id (the contract's limit), for ids derived for the extra events of a split.
MAX_EVENT_ID = 128

FieldName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
#: A dotted path into an event: ``traits.x``, ``properties.x.y`` or ``context.app.openid``.
FieldPath = Annotated[str, StringConstraints(pattern=r"^(traits|properties|context)(\.[^.\s]+)+$")]


class MappingError(IngestError):
    """A mapping that cannot be loaded: names the file and the path of the error."""


class Conversion(BaseModel):
    """Convert one property: to a type, then scale (cents -> yuan is ``scale: 0.01``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    to: Literal["number", "integer", "string", "boolean"] = "number"
    scale: float | None = None


class Changes(BaseModel):
    """What happens to a matched event's properties."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Emit only when these properties (as sent) are present and not null.
    when: list[FieldName] = Field(default_factory=list)
    #: Property renames, as sent -> ours (``nps: score``); applied first.
    rename: dict[FieldName, FieldName] = Field(default_factory=dict)
    #: Properties set to a constant (``survey_type: nps``).
    set: dict[FieldName, Any] = Field(default_factory=dict)
    #: Conversions of properties, by their name after the renames.
    convert: dict[FieldName, Conversion] = Field(default_factory=dict)
    #: Properties dropped (by the name as sent).
    drop: list[FieldName] = Field(default_factory=list)


class Emit(Changes):
    """One event a matched event becomes."""

    #: The domain type (``survey_answered``) or a Segment call type it is typed as.
    type: EventType


class EventRule(Changes):
    """What one of the source's event names becomes: one event (``type`` and the changes
    inline) or several (``emit``)."""

    #: The event name as the channel sends it (compared case- and punctuation-blind).
    match: FieldName
    type: EventType | None = None
    emit: list[Emit] = Field(default_factory=list)

    def emits(self) -> list[Emit]:
        """The events this rule produces (the inline one, or the ``emit`` list)."""
        if self.emit:
            if self.type is not None:
                raise ValueError("give either type (one event) or emit (several), not both")
            return self.emit
        if self.type is None:
            raise ValueError("a rule needs a type (one event) or an emit list (several)")
        return [Emit(**self.model_dump(exclude={"match", "emit"}))]


class TraitRules(BaseModel):
    """Trait renames to canonical names, conversions (by the name after renames), drops."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rename: dict[FieldName, FieldName] = Field(default_factory=dict)
    convert: dict[FieldName, Conversion] = Field(default_factory=dict)
    drop: list[FieldName] = Field(default_factory=list)


class IdentifierField(BaseModel):
    """A field that carries an identifier of the event's subject."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: FieldPath
    type: Annotated[str, StringConstraints(pattern=IDENTIFIER_TYPE.pattern)]


class RowRules(BaseModel):
    """How a flat row of a file export (CSV, Parquet, JSON lines) becomes a Segment message:
    named columns become its ids, name and time; the others its properties (a ``track``)
    or traits (an ``identify``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["track", "identify"] = "track"
    #: The event name of every row (a ``track``), or the column that holds it.
    event: FieldName | None = None
    event_column: FieldName | None = None
    #: Columns holding Segment's ``userId`` and ``anonymousId``.
    user_id: FieldName | None = None
    anonymous_id: FieldName | None = None
    #: Column holding the event time (ISO-8601; without an offset, the source's zone).
    timestamp: FieldName | None = None
    #: Columns that make a row's identity (its message id is derived from them, so the same
    #: row imported again is the same event); all columns when empty.
    message_id: list[FieldName] = Field(default_factory=list)
    #: Columns that go to traits of a ``track`` (an ``identify`` takes every column).
    traits: list[FieldName] = Field(default_factory=list)
    #: Columns left out.
    drop: list[FieldName] = Field(default_factory=list)

    @model_validator(mode="after")
    def _named(self) -> RowRules:
        if self.type == "track" and not (self.event or self.event_column):
            raise ValueError("a track row needs event (a name) or event_column")
        if self.event and self.event_column:
            raise ValueError("give event or event_column, not both")
        return self


class MappingSpec(BaseModel):
    """A mapping file as written (see docs/sources.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    #: Source names (write keys) the mapping applies to.
    sources: list[str] = Field(default_factory=list)
    description: str = ""
    events: list[EventRule] = Field(default_factory=list)
    traits: TraitRules = TraitRules()
    identifiers: list[IdentifierField] = Field(default_factory=list)
    #: How rows of a file export become messages (``cdp import``, ``POST /v1/imports``).
    rows: RowRules | None = None


def event_key(name: str) -> str:
    """An event name compared case- and punctuation-blind: ``Survey Submitted`` ->
    ``survey_submitted``."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def _invalid(field: str, message: str) -> Rejected:
    return Rejected(400, DeadLetterReason.INVALID_EVENT, message, field)


def _converter(
    name: str, conversion: Conversion, where: str = "properties"
) -> Callable[[Any], Any]:
    """Compile one conversion into a function of the value (raising ``Rejected``)."""
    scale, to = conversion.scale, conversion.to
    name = f"{where}.{name}"

    def convert(value: Any) -> Any:
        if value is None:
            return None
        if to == "string":
            return str(value)
        if to == "boolean":
            return _boolean(name, value)
        number = _as_number(name, value)
        if scale is not None:
            number = round(number * scale, 9)
        if to == "integer":
            return round(number)
        return int(number) if float(number).is_integer() and scale is None else number

    return convert


def _as_number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise _invalid(name, f"{name}: {value!r} is not a number")
    if isinstance(value, int | float):
        return value
    try:
        number = float(str(value).strip().replace(",", ""))
    except ValueError:
        raise _invalid(name, f"{name}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise _invalid(name, f"{name}: {value!r} is not a number")
    return number


_TRUE = {"true", "yes", "y", "1", "是"}
_FALSE = {"false", "no", "n", "0", "否", ""}


def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise _invalid(name, f"{name}: {value!r} is not a yes/no value")


@dataclass(frozen=True)
class _Plan:
    """One compiled ``Emit``."""

    type: EventType
    when: tuple[str, ...]
    rename: tuple[tuple[str, str], ...]
    drop: frozenset[str]
    set: tuple[tuple[str, Any], ...]
    convert: tuple[tuple[str, Callable[[Any], Any]], ...]

    def properties(self, sent: dict[str, Any]) -> dict[str, Any] | None:
        """The properties of this emitted event, or None when its ``when`` is not met."""
        for name in self.when:
            if sent.get(name) is None:
                return None
        out = {k: v for k, v in sent.items() if k not in self.drop}
        for old, new in self.rename:
            if old in out:
                out[new] = out.pop(old)
        for name, value in self.set:
            out[name] = value
        for name, convert in self.convert:
            if name in out:
                out[name] = convert(out[name])
        return out


def _plan(emit: Emit) -> _Plan:
    # A conversion that fails names the property as the channel sent it.
    sent = {new: old for old, new in emit.rename.items()}
    return _Plan(
        type=emit.type,
        when=tuple(emit.when),
        rename=tuple(emit.rename.items()),
        drop=frozenset(emit.drop),
        set=tuple(emit.set.items()),
        convert=tuple((n, _converter(sent.get(n, n), c)) for n, c in emit.convert.items()),
    )


def _read_path(event: Event, path: tuple[str, ...]) -> Any:
    head, *rest = path
    value: Any = getattr(event, head)
    for part in rest:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


@dataclass(frozen=True)
class Mapping:
    """A compiled mapping: apply it to each event of its sources."""

    name: str
    sources: tuple[str, ...]
    #: A short digest of the file, recorded on each mapped event.
    version: str
    rules: dict[str, tuple[_Plan, ...]] = field(default_factory=dict)
    trait_rename: tuple[tuple[str, str], ...] = ()
    trait_convert: tuple[tuple[str, Callable[[Any], Any]], ...] = ()
    trait_drop: frozenset[str] = frozenset()
    identifiers: tuple[tuple[tuple[str, ...], str], ...] = ()
    rows: RowRules | None = None

    def apply(self, event: Event, region: str) -> list[Event]:
        """The events ``event`` becomes; raises ``Rejected`` naming the field that failed."""
        plans = self.rules.get(event_key(event.name)) if event.name else None
        traits = self._traits(event.traits)
        identifiers = self._identifiers(event, traits, region)
        mapped_from: dict[str, Any] = {"mapping": self.name, "version": self.version}
        if traits is not event.traits:
            mapped_from["traits"] = event.traits
        base: dict[str, Any] = {"traits": traits}
        if identifiers is not None:
            base["identifiers"] = identifiers
        if not plans:
            if len(mapped_from) == 2 and identifiers is None:
                return [event]
            return [self._copy(event, base, mapped_from, event.type, event.properties, 0)]
        mapped_from["properties"] = event.properties
        out: list[Event] = []
        for plan in plans:
            props = plan.properties(event.properties)
            if props is not None:
                out.append(self._copy(event, base, mapped_from, plan.type, props, len(out)))
        return out or [self._copy(event, base, mapped_from, event.type, event.properties, 0)]

    @staticmethod
    def _copy(
        event: Event,
        base: dict[str, Any],
        mapped_from: dict[str, Any],
        kind: EventType,
        props: dict[str, Any],
        nth: int,
    ) -> Event:
        update = {
            **base,
            "type": kind,
            "properties": props,
            "context": {**event.context, MAPPED_FROM: mapped_from},
        }
        if nth:
            update["event_id"] = split_id(event.event_id, nth)
        return event.model_copy(update=update)

    def _traits(self, traits: dict[str, Any]) -> dict[str, Any]:
        if not traits or not (self.trait_rename or self.trait_drop or self.trait_convert):
            return traits
        touched = (
            any(old in traits for old, _ in self.trait_rename)
            or any(name in traits for name, _ in self.trait_convert)
            or not self.trait_drop.isdisjoint(traits)
        )
        if not touched:
            return traits
        out = {k: v for k, v in traits.items() if k not in self.trait_drop}
        for old, new in self.trait_rename:
            if old in out:
                out[new] = out.pop(old)
        for name, convert in self.trait_convert:
            if name in out:
                out[name] = convert(out[name])
        return out

    def _identifiers(
        self, event: Event, traits: dict[str, Any], region: str
    ) -> list[Identifier] | None:
        if not self.identifiers:
            return None
        found: dict[str, Identifier] = {i.key(): i for i in event.identifiers}
        before = len(found)
        for path, id_type in self.identifiers:
            value = traits.get(path[1]) if len(path) == 2 and path[0] == "traits" else None
            if value is None:
                value = _read_path(event, path)
            if isinstance(value, bool) or not isinstance(value, str | int):
                continue
            text = str(value).strip()
            if text:
                ident = normalize(id_type, text[:256], region)
                found.setdefault(ident.key(), ident)
        return list(found.values()) if len(found) != before else None


def split_id(event_id: str, nth: int) -> str:
    """The id of the ``nth`` extra event a split makes of ``event_id`` (deterministic, so a
    retried message repeats its ids and counts once)."""
    derived = f"{event_id}#{nth + 1}"
    if len(derived) <= MAX_EVENT_ID:
        return derived
    return hashlib.sha256(derived.encode()).hexdigest()


def _problem(where: str, exc: ValidationError) -> MappingError:
    first = exc.errors()[0]
    path = "".join(
        f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p))
        for i, p in enumerate(first["loc"])
    )
    more = len(exc.errors()) - 1
    tail = f" (and {more} more)" if more else ""
    return MappingError(f"{where}: {path or 'mapping'}: {first['msg']}{tail}")


def compile_mapping(raw: Any, where: str, digest: str = "") -> Mapping:
    """Validate a parsed mapping file and compile it; ``MappingError`` names ``where`` and
    the path of the first error (``events[1].convert.total.scale``)."""
    try:
        spec = MappingSpec.model_validate(raw)
    except ValidationError as exc:
        raise _problem(where, exc) from None
    rules: dict[str, tuple[_Plan, ...]] = {}
    for i, rule in enumerate(spec.events):
        key = event_key(rule.match)
        if key in rules:
            raise MappingError(f"{where}: events[{i}].match: {rule.match!r} is matched twice")
        try:
            rules[key] = tuple(_plan(e) for e in rule.emits())
        except ValueError as exc:
            raise MappingError(f"{where}: events[{i}]: {exc}") from None
    sent_traits = {new: old for old, new in spec.traits.rename.items()}
    identifiers = [(tuple(f.path.split(".")), f.type) for f in spec.identifiers]
    # A trait renamed to a well-known identifier name (``shouji: phone``) is that identifier,
    # as it would have been had the channel sent it under our name.
    identifiers += [
        (("traits", new), TRAIT_IDENTIFIERS[new])
        for new in spec.traits.rename.values()
        if new in TRAIT_IDENTIFIERS
    ]
    return Mapping(
        name=spec.name,
        sources=tuple(spec.sources),
        version=digest,
        rules=rules,
        trait_rename=tuple(spec.traits.rename.items()),
        trait_convert=tuple(
            (n, _converter(sent_traits.get(n, n), c, "traits"))
            for n, c in spec.traits.convert.items()
        ),
        trait_drop=frozenset(spec.traits.drop),
        identifiers=tuple(identifiers),
        rows=spec.rows,
    )


def load_mapping(path: Path) -> Mapping:
    """Read, validate and compile one mapping file."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise MappingError(f"{path}: cannot be read: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MappingError(f"{path}: not valid YAML: {exc}") from None
    return compile_mapping(raw, str(path), hashlib.sha256(text).hexdigest()[:12])
