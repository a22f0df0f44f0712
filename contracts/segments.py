"""Segment definitions (contract v1): a boolean tree of conditions on tags, profile
attributes, traits, consent and event history.

JSON and YAML carry the same shape. Every node is an object with one distinguishing key::

    {"all": [node, ...]}          every child holds
    {"any": [node, ...]}          at least one child holds
    {"not": node}                 the child does not hold
    {"tag": "vip"}                the profile has the catalog tag now
    {"consent": "sms"}            the profile granted consent for the purpose
    {"attribute": "order_count", "op": "gte", "value": 3}
    {"trait": "city", "op": "eq", "value": "Shanghai"}
    {"event": "order_completed", "measure": "count", "op": "gte", "value": 3,
     "within": {"last": "90d"}, "where": [{"property": "category", "op": "eq", "value": "shoes"}]}

Validation errors carry the path of the bad node, e.g. ``definition.all.1.event.within``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1

#: A relative duration: a whole number and a unit (h hours, d days, w weeks, mo months, y years).
DURATION = re.compile(r"^([1-9][0-9]{0,5})(h|d|w|mo|y)$")
_UNIT_SQL = {"h": "HOUR", "d": "DAY", "w": "WEEK", "mo": "MONTH", "y": "YEAR"}

Name = Annotated[str, StringConstraints(min_length=1, max_length=128)]
Scalar = str | int | float | bool


def parse_duration(text: str) -> tuple[int, str]:
    """Return (amount, ClickHouse interval unit) for ``90d``; ValueError when malformed."""
    found = DURATION.match(text)
    if not found:
        raise ValueError(
            f"{text!r} is not a duration: a whole number and h, d, w, mo or y, e.g. 90d"
        )
    return int(found.group(1)), _UNIT_SQL[found.group(2)]


class Op(StrEnum):
    """Comparison operators of attribute, trait, event and property conditions."""

    EQ = "eq"
    NE = "ne"
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"
    BETWEEN = "between"
    IN = "in"
    NOT_IN = "not_in"
    EXISTS = "exists"
    NOT_EXISTS = "not_exists"
    CONTAINS = "contains"
    #: Time attributes: within the last duration / longer ago than the duration.
    WITHIN = "within"
    BEFORE = "before"


class Comparison(BaseModel):
    """``op`` and its operand, checked for shape (types are checked by the compiler)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    op: Op
    value: Scalar | list[Scalar] | None = None

    @model_validator(mode="after")
    def _operand(self) -> Comparison:
        op, value = self.op, self.value
        if op in (Op.EXISTS, Op.NOT_EXISTS):
            if value is not None:
                raise ValueError(f"op {op.value} takes no value")
        elif op == Op.BETWEEN:
            if not isinstance(value, list) or len(value) != 2:
                raise ValueError("op between takes a value of two items [low, high]")
        elif op in (Op.IN, Op.NOT_IN):
            if not isinstance(value, list) or not value or len(value) > 1000:
                raise ValueError(f"op {op.value} takes a list of 1 to 1000 values")
        elif op in (Op.WITHIN, Op.BEFORE):
            if not isinstance(value, str):
                raise ValueError(f"op {op.value} takes a duration such as 90d")
            parse_duration(value)
        elif value is None or isinstance(value, list):
            raise ValueError(f"op {op.value} takes one value")
        return self


#: The times the history can hold (ClickHouse DateTime64): a bound outside is refused, not
#: sent to the engine to fail there.
HISTORY_RANGE = (datetime(1900, 1, 1, tzinfo=UTC), datetime(2299, 12, 31, tzinfo=UTC))


def in_history_range(value: datetime) -> datetime:
    """``value`` (aware) if the history can hold it; ValueError otherwise."""
    low, high = HISTORY_RANGE
    if not low <= value <= high:
        raise ValueError(f"{value.isoformat()} is outside {low.year}-{high.year}")
    return value


class Window(BaseModel):
    """A time window: the last duration before the query, or an absolute [from, to) range."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    last: str | None = None
    from_: datetime | None = Field(default=None, alias="from")
    to: datetime | None = None

    @field_validator("last")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("from_", "to")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return in_history_range(
            value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        )

    @model_validator(mode="after")
    def _one_kind(self) -> Window:
        if self.last is not None and (self.from_ is not None or self.to is not None):
            raise ValueError("give either last, or from/to, not both")
        if self.last is None and self.from_ is None and self.to is None:
            raise ValueError("give last (e.g. 90d) or from and/or to")
        if self.from_ and self.to and self.from_ >= self.to:
            raise ValueError("from must be before to")
        return self


#: Event columns a ``where`` filter may name directly (anything else is a property).
EVENT_FIELDS = ("channel", "source", "name", "order_id", "amount")


class Where(Comparison):
    """A filter on the events counted: a typed event field or a property of the event."""

    field: Literal["channel", "source", "name", "order_id", "amount"] | None = None
    property: Name | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Where:
        if (self.field is None) == (self.property is None):
            raise ValueError("give exactly one of field or property")
        if self.op in (Op.WITHIN, Op.BEFORE, Op.CONTAINS):
            raise ValueError(f"op {self.op.value} does not apply to event filters")
        return self


class Measure(StrEnum):
    """What an event condition compares: how many, or an aggregate of a property."""

    COUNT = "count"
    SUM = "sum"
    AVG = "avg"
    MIN = "min"
    MAX = "max"
    FIRST = "first"
    LAST = "last"


class EventCondition(Comparison):
    """An aggregate of a profile's events of one type in a window, compared to a value.

    ``event`` names a domain event type (``order_completed``...) or, for other tracked
    events, the name the channel sent. Events of every merged id count for the survivor.
    """

    event: Name
    measure: Measure = Measure.COUNT
    #: The property aggregated (not for count): ``amount`` or a property name.
    property: Name | None = None
    within: Window | None = None
    where: list[Where] = Field(default_factory=list, max_length=20)

    @model_validator(mode="after")
    def _measure(self) -> EventCondition:
        if self.measure == Measure.COUNT and self.property is not None:
            raise ValueError("measure count takes no property")
        if self.measure != Measure.COUNT and self.property is None:
            raise ValueError(f"measure {self.measure.value} needs a property, e.g. amount")
        if self.op in (Op.WITHIN, Op.BEFORE, Op.CONTAINS, Op.EXISTS, Op.NOT_EXISTS):
            raise ValueError(f"op {self.op.value} does not apply to event aggregates")
        if self.measure in (Measure.COUNT, Measure.SUM, Measure.AVG, Measure.MIN, Measure.MAX):
            values = self.value if isinstance(self.value, list) else [self.value]
            if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
                raise ValueError(f"measure {self.measure.value} compares to numbers")
        return self


class AttributeCondition(Comparison):
    """A computed profile attribute (order_count, last_purchase_at, channels...)."""

    attribute: Name


class TraitCondition(Comparison):
    """A trait as the profile resolved it (e.g. ``city``, ``age``)."""

    trait: Name


class TagCondition(BaseModel):
    """The profile has a catalog tag now."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tag: Name


class ConsentCondition(BaseModel):
    """The profile granted consent for a purpose (``sms``, ``email``...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    consent: Name


class All(BaseModel):
    """Every child holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    all: list[Node] = Field(min_length=1, max_length=100)


class AnyOf(BaseModel):
    """At least one child holds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    any: list[Node] = Field(min_length=1, max_length=100)


class Not(BaseModel):
    """The child does not hold."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    not_: Node = Field(alias="not")


_KINDS = ("all", "any", "not", "tag", "consent", "attribute", "trait", "event")


def _kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return {
            All: "all",
            AnyOf: "any",
            Not: "not",
            TagCondition: "tag",
            ConsentCondition: "consent",
            AttributeCondition: "attribute",
            TraitCondition: "trait",
            EventCondition: "event",
        }.get(type(value))
    if isinstance(value, dict):
        found = [k for k in _KINDS if k in value]
        return found[0] if len(found) == 1 else None
    return None


Node = Annotated[
    Annotated[All, Tag("all")]
    | Annotated[AnyOf, Tag("any")]
    | Annotated[Not, Tag("not")]
    | Annotated[TagCondition, Tag("tag")]
    | Annotated[ConsentCondition, Tag("consent")]
    | Annotated[AttributeCondition, Tag("attribute")]
    | Annotated[TraitCondition, Tag("trait")]
    | Annotated[EventCondition, Tag("event")],
    Discriminator(
        _kind,
        custom_error_type="invalid_node",
        custom_error_message=f"a node has exactly one of the keys {', '.join(_KINDS)}",
    ),
]

All.model_rebuild()
AnyOf.model_rebuild()
Not.model_rebuild()

SegmentId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]

#: Conditions (leaves of the tree) one segment may hold. Marketing segments hold a handful;
#: hundreds of event conditions compile to a query that runs for minutes on one ClickHouse
#: (400 took 20 s in an exploratory run) and holds up every other history query meanwhile.
MAX_CONDITIONS = 200


def conditions(node: Any) -> int:
    """How many conditions (leaves) a definition tree holds."""
    if isinstance(node, All):
        return sum(conditions(n) for n in node.all)
    if isinstance(node, AnyOf):
        return sum(conditions(n) for n in node.any)
    if isinstance(node, Not):
        return conditions(node.not_)
    return 1


class SegmentDefinition(BaseModel):
    """A segment: who, and for what purpose (consent is enforced for a purpose)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    #: Lower-case id, e.g. ``vip-recent-complaint``; required to save, optional to query.
    id: SegmentId | None = None
    name: Annotated[str, StringConstraints(max_length=200)] = ""
    description: Annotated[str, StringConstraints(max_length=2000)] = ""
    #: A marketing purpose (``sms``, ``email``, ``wechat``, ``phone``, ``push``): members
    #: without consent for it are excluded unless an admin asks otherwise.
    purpose: Name | None = None
    definition: Node

    @field_validator("definition")
    @classmethod
    def _not_too_many(cls, node: Node) -> Node:
        n = conditions(node)
        if n > MAX_CONDITIONS:
            raise ValueError(f"a segment holds at most {MAX_CONDITIONS} conditions; this has {n}")
        return node


class SavedSegment(SegmentDefinition):
    """A stored segment with its version (1, 2, ... per update)."""

    id: SegmentId
    version: int = Field(ge=1)
    created_at: datetime
    updated_at: datetime
    #: True when the segment is made of tag conditions only: answered from the Redis tag index
    #: and its membership changes are emitted as profiles change.
    live: bool = False


class MembershipChange(BaseModel):
    """A profile entered or left a saved segment (``cdp.segments.membership``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = SCHEMA_VERSION
    segment_id: str
    segment_version: int
    profile_id: str
    change: Literal["enter", "exit"]
    #: ``live`` (a tag change) or ``refresh`` (a scheduled recomputation).
    cause: Literal["live", "refresh"]
    at: datetime


def error_path(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """A validation error's location as a dotted path, without pydantic's repeated node tags.

    pydantic reports ``("definition", "all", "all", 1, "event", "within")`` for the ``within``
    of the second child of an ``all`` node; this returns ``definition.all.1.event.within``.
    """
    parts: list[str] = []
    for item in loc:
        text = str(item)
        if parts and text == parts[-1] and text in _KINDS:
            continue  # the node's tag, then its field of the same name
        if text in _TYPE_LABELS or "[" in text:
            continue  # which member of a union pydantic tried: ``value.str``, ``list[str]``
        parts.append(text)
    return ".".join(parts)


#: Union member labels pydantic puts in error locations; no definition field is named so.
_TYPE_LABELS = frozenset({"str", "int", "float", "bool", "none", "dict", "list", "datetime"})


def walk(node: Any) -> list[Any]:
    """Every node of a tree, parents before children."""
    out = [node]
    if isinstance(node, All):
        for child in node.all:
            out += walk(child)
    elif isinstance(node, AnyOf):
        for child in node.any:
            out += walk(child)
    elif isinstance(node, Not):
        out += walk(node.not_)
    return out


def is_live(node: Any) -> bool:
    """True when the tree has only boolean nodes and tag conditions."""
    return all(isinstance(n, All | AnyOf | Not | TagCondition) for n in walk(node))
