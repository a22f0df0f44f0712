"""Compile a segment definition into ClickHouse SQL.

Every value is a bound parameter (``{p3:String}``), never text in the query; every identifier
(table, column, aggregate) comes from an allow-list here or in ``sinks.history``. Trait,
property, tag and consent names are values too (map keys, array members), so they are bound.

Semantics, which docs/segments.md states for users:

- A profile is a survivor: ids merged into another profile are not members themselves, and
  their events count for the survivor (aliases are followed to the end of the chain).
- A condition on a missing value is false (``nps_last lt 7`` is false without a survey; its
  ``not`` is true). ``count`` and ``sum`` of no events are 0; ``avg``/``min``/``max``/``first``/
  ``last`` of no events are missing.
- Windows: ``last`` is ``now - duration <= timestamp <= now``; ``from``/``to`` is
  ``from <= timestamp < to``; without a window, all history. Event time is the skew-corrected
  ``timestamp``.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from contracts.events import EventType
from contracts.segments import (
    All,
    AnyOf,
    AttributeCondition,
    Comparison,
    ConsentCondition,
    EventCondition,
    Measure,
    Not,
    Op,
    SegmentDefinition,
    TagCondition,
    TraitCondition,
    Where,
    Window,
    in_history_range,
    parse_duration,
    walk,
)
from sinks.history import PROFILE_COLUMNS

#: Attributes a condition may name: the typed snapshot columns that are not maps.
ATTRIBUTES: dict[str, str] = {
    name: kind for name, (_, _, kind) in PROFILE_COLUMNS.items() if kind not in ("map", "internal")
}
#: Columns a preview or export may return besides ``traits.<name>``.
FIELDS: tuple[str, ...] = ("profile_id", *ATTRIBUTES)
_EVENT_TYPES = frozenset(t.value for t in EventType)
_EVENT_FIELD_SQL = {
    "channel": ("channel", "string"),
    "source": ("source", "string"),
    "name": ("name", "string"),
    "order_id": ("order_id", "string"),
    "amount": ("toFloat64(amount)", "number"),
}
_DT = "DateTime64(3, 'UTC')"
#: Trait names a preview or export may return as ``traits.<name>`` (also the column name).
_TRAIT_FIELD = re.compile(r"^traits\.[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_CMP = {Op.EQ: "=", Op.NE: "!=", Op.GT: ">", Op.GTE: ">=", Op.LT: "<", Op.LTE: "<="}


def check_field(name: str) -> str:
    """``"attribute"`` or ``"trait"`` for a preview/export field; SegmentError otherwise."""
    if name in FIELDS:
        return "attribute"
    if _TRAIT_FIELD.match(name):
        return "trait"
    raise SegmentError(
        "fields", f"unknown field {name!r}; one of {', '.join(FIELDS)} or traits.<name>"
    )


class SegmentError(ValueError):
    """A definition that validates as a shape but cannot be compiled; names the node's path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass
class Query:
    """A compiled query and its bound parameters."""

    sql: str
    params: dict[str, Any]


@dataclass
class _Build:
    db: str
    now: datetime
    tags: Collection[str] | None
    purposes: Collection[str] | None
    params: dict[str, Any] = field(default_factory=dict)
    #: Traits stored sealed (field encryption): their values compare with nothing.
    sealed: Collection[str] = ()
    #: Event properties stored sealed, likewise.
    sealed_properties: Collection[str] = ()
    ctes: list[str] = field(default_factory=list)
    joins: list[str] = field(default_factory=list)
    #: Event aggregates read only the events of candidate profiles (and their merged ids).
    candidates: bool = False

    def bind(self, value: Any, ch_type: str) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f"{{{name}:{ch_type}}}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _values(c: Comparison) -> list[Any]:
    return c.value if isinstance(c.value, list) else [c.value]


def _compare(b: _Build, expr: str, c: Comparison, kind: str, path: str) -> str:
    """``expr`` (of ``kind``: number, string, time) compared as ``c`` says."""
    op = c.op
    if op == Op.EXISTS:
        return f"isNotNull({expr})"
    if op == Op.NOT_EXISTS:
        return f"isNull({expr})"
    if op in (Op.WITHIN, Op.BEFORE):
        if kind != "time":
            raise SegmentError(path, f"op {op.value} applies to time attributes only")
        amount, unit = parse_duration(str(c.value))
        cutoff = f"{b.bind(b.now, _DT)} - toInterval{unit.title()}({b.bind(amount, 'UInt32')})"
        return f"{expr} >= {cutoff}" if op == Op.WITHIN else f"{expr} < {cutoff}"
    if op == Op.CONTAINS:
        raise SegmentError(path, "op contains applies to list attributes (channels, categories...)")
    values = _values(c)
    bound: list[Any]
    if kind == "number":
        if not all(_is_number(v) for v in values):
            raise SegmentError(path, "compares a number: give numeric values")
        ch_type, bound = "Float64", [float(v) for v in values]
    elif kind == "time":
        try:
            bound = [_instant(v) for v in values]
        except (TypeError, ValueError) as exc:
            raise SegmentError(path, f"compares a time: {exc}") from exc
        ch_type = _DT
    else:
        if not all(isinstance(v, str) for v in values):
            raise SegmentError(path, "compares text: give string values")
        ch_type, bound = "String", values
    if op in _CMP:
        return f"{expr} {_CMP[op]} {b.bind(bound[0], ch_type)}"
    if op == Op.BETWEEN:
        return f"{expr} BETWEEN {b.bind(bound[0], ch_type)} AND {b.bind(bound[1], ch_type)}"
    listed = b.bind(bound, f"Array({ch_type})")
    return f"has({listed}, {expr})" if op == Op.IN else f"NOT has({listed}, {expr})"


def _instant(value: Any) -> datetime:
    if not isinstance(value, str):
        raise TypeError("give an ISO 8601 time or use within/before with a duration")
    parsed = datetime.fromisoformat(value)
    return in_history_range(
        parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    )


def _attribute(b: _Build, c: AttributeCondition, path: str) -> str:
    kind = ATTRIBUTES.get(c.attribute)
    if kind is None:
        raise SegmentError(
            f"{path}.attribute",
            f"unknown attribute {c.attribute!r}; one of {', '.join(ATTRIBUTES)}",
        )
    column = f"p.{c.attribute}"  # allow-listed above
    if kind == "list":
        if c.op == Op.CONTAINS:
            return f"has({column}, {b.bind(str(c.value), 'String')})"
        if c.op in (Op.EXISTS, Op.NOT_EXISTS):
            return f"{'notEmpty' if c.op == Op.EXISTS else 'empty'}({column})"
        if c.op in (Op.GT, Op.GTE, Op.LT, Op.LTE, Op.EQ, Op.NE, Op.BETWEEN) and all(
            _is_number(v) for v in _values(c)
        ):
            return _compare(b, f"length({column})", c, "number", path)
        raise SegmentError(
            path, f"{c.attribute} is a list: use contains, exists, or compare its size"
        )
    if kind == "string" and c.op in (Op.EXISTS, Op.NOT_EXISTS):
        return f"{column} {'!=' if c.op == Op.EXISTS else '='} ''"
    return _compare(b, column, c, kind, path)


def _trait(b: _Build, c: TraitCondition, path: str) -> str:
    key = b.bind(c.trait, "String")
    raw = f"p.traits[{key}]"
    present = f"(mapContains(p.traits, {key}) AND {raw} != 'null')"
    if c.op == Op.EXISTS:
        return present
    if c.op == Op.NOT_EXISTS:
        return f"NOT {present}"
    if c.trait in b.sealed:
        raise SegmentError(
            f"{path}.op",
            f"trait {c.trait} is encrypted, so only exists and not_exists apply to it; "
            "find a person by an identifier with GET /v1/profiles/lookup",
        )
    values = _values(c)
    if all(isinstance(v, bool) for v in values) and c.op in (Op.EQ, Op.NE):
        return f"{raw} {_CMP[c.op]} {b.bind('true' if values[0] else 'false', 'String')}"
    if all(_is_number(v) for v in values):
        return f"({present} AND {_compare(b, f'toFloat64OrNull({raw})', c, 'number', path)})"
    if all(isinstance(v, str) for v in values) and c.op in (Op.EQ, Op.NE, Op.IN, Op.NOT_IN):
        # Equality on the stored JSON text (the snapshot's canonical encoding, which orjson
        # reproduces) instead of decoding every profile's value: same answer, less CPU.
        encoded = Comparison(
            op=c.op,
            value=[orjson.dumps(v).decode() for v in values]
            if isinstance(c.value, list)
            else orjson.dumps(c.value).decode(),
        )
        if c.op in (Op.EQ, Op.IN):  # a missing trait reads as '', which equals no JSON text
            return _compare(b, raw, encoded, "string", path)
        return f"({present} AND {_compare(b, raw, encoded, 'string', path)})"
    if all(isinstance(v, str) for v in values):
        if c.op in (Op.WITHIN, Op.BEFORE):
            parsed = f"parseDateTime64BestEffortOrNull(JSONExtractString({raw}), 3, 'UTC')"
            return f"({present} AND {_compare(b, parsed, c, 'time', path)})"
        return f"({present} AND {_compare(b, f'JSONExtractString({raw})', c, 'string', path)})"
    raise SegmentError(
        f"{path}.value", "give values of one type: all numbers, all strings or a bool"
    )


def _window(b: _Build, w: Window | None) -> list[str]:
    if w is None:
        return []
    if w.last is not None:
        now = b.bind(b.now, _DT)
        amount, unit = parse_duration(w.last)
        interval = f"toInterval{unit.title()}({b.bind(amount, 'UInt32')})"
        return [f"timestamp >= {now} - {interval}", f"timestamp <= {now}"]
    out = []
    if w.from_ is not None:
        out.append(f"timestamp >= {b.bind(w.from_, _DT)}")
    if w.to is not None:
        out.append(f"timestamp < {b.bind(w.to, _DT)}")
    return out


def _where(b: _Build, w: Where, path: str) -> str:
    if w.field is not None:
        expr, kind = _EVENT_FIELD_SQL[w.field]
    else:
        if w.property in b.sealed_properties and w.op not in (Op.EXISTS, Op.NOT_EXISTS):
            raise SegmentError(
                f"{path}.op",
                f"property {w.property} is encrypted, so only exists and not_exists apply to it",
            )
        key = b.bind(w.property, "String")
        values = _values(w)
        numeric = w.value is not None and all(_is_number(v) for v in values)
        kind = "number" if numeric else "string"
        if w.op in (Op.EXISTS, Op.NOT_EXISTS):
            has = f"JSONHas(properties, {key})"
            return has if w.op == Op.EXISTS else f"NOT {has}"
        expr = (
            f"JSONExtract(properties, {key}, 'Nullable(Float64)')"
            if numeric
            else f"JSONExtractString(properties, {key})"
        )
    if w.op in (Op.EXISTS, Op.NOT_EXISTS):
        empty = "isNull" if kind == "number" else "empty"
        return f"{'NOT ' if w.op == Op.EXISTS else ''}{empty}({expr})"
    return f"coalesce({_compare(b, expr, w, kind, path)}, 0)"


def _event(b: _Build, c: EventCondition, path: str) -> str:
    n = len(b.ctes) + 1
    column = "type" if c.event in _EVENT_TYPES else "name"
    # Events of no profile (junk identifiers only) have the empty id, whose numeric twin is
    # its hash: comparing it spares reading the string ids.
    filters = [f"{column} = {b.bind(c.event, 'String')}", "pid != cityHash64('')"]
    filters += _window(b, c.within)
    filters += [_where(b, w, f"{path}.where.{i}") for i, w in enumerate(c.where)]
    if b.candidates:
        filters.append("pid IN (SELECT pid FROM ids)")
    numeric = c.measure in (Measure.SUM, Measure.AVG, Measure.MIN, Measure.MAX) or all(
        _is_number(v) for v in _values(c)
    )
    value = ""
    if c.property is not None and c.property in b.sealed_properties:
        raise SegmentError(f"{path}.property", f"property {c.property} is encrypted")
    if c.property == "amount":
        value = "toFloat64(amount)"
    elif c.property is not None:
        key = b.bind(c.property, "String")
        value = (
            f"JSONExtract(properties, {key}, 'Nullable(Float64)')"
            if numeric
            else f"JSONExtractString(properties, {key})"
        )
        if c.measure in (Measure.FIRST, Measure.LAST):
            filters.append(f"JSONHas(properties, {key})")  # of the events that carry it
    inner, outer = {
        Measure.COUNT: ("count() AS a", "sum(x.a)"),
        Measure.SUM: (f"sum({value}) AS a", "sum(x.a)"),
        Measure.AVG: (f"sum({value}) AS a, count({value}) AS b", "sum(x.a) / nullIf(sum(x.b), 0)"),
        Measure.MIN: (f"min({value}) AS a", "min(x.a)"),
        Measure.MAX: (f"max({value}) AS a", "max(x.a)"),
        Measure.FIRST: (
            f"argMin({value}, timestamp) AS a, min(timestamp) AS t",
            "argMin(x.a, x.t)",
        ),
        Measure.LAST: (f"argMax({value}, timestamp) AS a, max(timestamp) AS t", "argMax(x.a, x.t)"),
    }[c.measure]
    name = f"e{n}"
    b.ctes.append(
        f"""{name} AS (
    SELECT coalesce(s.sid, x.pid) AS root, {outer} AS m
    FROM (
        SELECT pid, {inner}
        FROM {b.db}.events
        WHERE {" AND ".join(filters)}
        GROUP BY pid
    ) AS x
    LEFT JOIN survivors AS s ON s.pid = x.pid
    GROUP BY root
)"""  # noqa: S608 - identifiers are allow-listed, values bound
    )
    b.joins.append(f"LEFT JOIN {name} ON {name}.root = p.pid")
    measured = f"{name}.m"
    if c.measure in (Measure.COUNT, Measure.SUM):
        measured = f"coalesce({measured}, 0)"
    return _compare(b, measured, c, "number" if numeric else "string", path)


def _two_valued(condition: str, nullable: bool) -> str:
    """A condition on a missing value is false (so its ``not`` is true): NULL becomes 0.

    Only nullable conditions are wrapped: ``coalesce`` around a plain column test keeps
    ClickHouse from moving it to PREWHERE (~25 ms of a 200 ms count at 1M profiles).
    """
    return f"coalesce({condition}, 0)" if nullable else condition


def _node(b: _Build, node: Any, path: str) -> str:
    if isinstance(node, All):
        parts = [_node(b, child, f"{path}.all.{i}") for i, child in enumerate(node.all)]
        return "(" + " AND ".join(parts) + ")"
    if isinstance(node, AnyOf):
        parts = [_node(b, child, f"{path}.any.{i}") for i, child in enumerate(node.any)]
        return "(" + " OR ".join(parts) + ")"
    if isinstance(node, Not):
        return f"NOT {_node(b, node.not_, f'{path}.not')}"
    if isinstance(node, TagCondition):
        if b.tags is not None and node.tag not in b.tags:
            raise SegmentError(f"{path}.tag", f"unknown tag {node.tag!r} (see GET /v1/tags)")
        return f"has(p.tags, {b.bind(node.tag, 'String')})"
    if isinstance(node, ConsentCondition):
        _purpose(b, node.consent, f"{path}.consent")
        return f"p.consent[{b.bind(node.consent, 'String')}] = 1"
    if isinstance(node, AttributeCondition):
        nullable = (
            PROFILE_COLUMNS[node.attribute][0].startswith("Nullable")
            if (node.attribute in ATTRIBUTES)
            else False
        )
        return _two_valued(_attribute(b, node, path), nullable)
    if isinstance(node, TraitCondition):
        numeric = all(_is_number(v) for v in _values(node)) and node.value is not None
        return _two_valued(_trait(b, node, path), numeric or node.op in (Op.WITHIN, Op.BEFORE))
    if isinstance(node, EventCondition):
        return _two_valued(_event(b, node, path), node.measure not in (Measure.COUNT, Measure.SUM))
    raise SegmentError(path, f"unknown node {type(node).__name__}")


def _purpose(b: _Build, purpose: str, path: str) -> None:
    if b.purposes is not None and purpose not in b.purposes:
        raise SegmentError(
            path, f"unknown consent purpose {purpose!r}; one of {', '.join(sorted(b.purposes))}"
        )


#: Every merged id -> the profile it ended in (merges chain: a survivor may merge later), by
#: the numeric ids (``pid`` merged, ``sid`` survivor; sinks/history.py NUMERIC_IDS).
_SURVIVORS = """survivors AS {materialized}(
    WITH RECURSIVE chain AS (
        SELECT pid, sid, 1 AS depth FROM {db}.profile_aliases
        UNION ALL
        SELECT c.pid, a.sid, c.depth + 1
        FROM chain AS c INNER JOIN {db}.profile_aliases AS a ON a.pid = c.sid
        WHERE c.depth < 64
    )
    SELECT pid, argMax(sid, depth) AS sid FROM chain GROUP BY pid
)"""


def _has_events(node: Any) -> bool:
    return any(isinstance(n, EventCondition) for n in walk(node))


def _split(node: Any) -> tuple[list[Any], list[Any]]:
    """(conditions on the profile alone, conditions that need event history) of an AND."""
    children = node.all if isinstance(node, All) else [node]
    plain = [c for c in children if not _has_events(c)]
    return plain, [c for c in children if _has_events(c)]


@dataclass(frozen=True)
class Compiler:
    """Compiles definitions against a database, the tag catalog and the consent purposes."""

    db: str
    #: Known tag ids (None: not checked).
    tags: Collection[str] | None = None
    #: Known consent purposes (None: not checked).
    purposes: Collection[str] | None = None
    #: Traits stored sealed (field encryption on): conditions may only test their presence.
    sealed: Collection[str] = ()
    #: Event properties stored sealed, likewise.
    sealed_properties: Collection[str] = ()

    def members(
        self,
        segment: SegmentDefinition,
        now: datetime,
        fields: list[str] | None = None,
        enforce_consent: bool = True,
        limit: int | None = None,
        _counting: bool = False,
    ) -> Query:
        """SELECT the members' ``fields`` (default: profile_id), ordered by profile id.

        Plan: the conditions on the profile alone (tags, traits, attributes, consent) of the
        top-level ``all`` select candidates first; event aggregates then read only the events
        of candidates and of the ids merged into them, instead of grouping all history.
        """
        b = _Build(
            self.db,
            now.astimezone(UTC),
            self.tags,
            self.purposes,
            sealed=self.sealed,
            sealed_properties=self.sealed_properties,
        )
        plain, historic = _split(segment.definition)
        base = ["p.merged_into = ''"]  # merged-away ids have a tombstone (sinks/history.py)
        base += [_node(b, c, self._path(segment.definition, c)) for c in plain] if historic else []
        if not historic:
            base.append(_node(b, segment.definition, "definition"))
        if segment.purpose is not None and enforce_consent:
            _purpose(b, segment.purpose, "purpose")
            base.append(f"p.consent[{b.bind(segment.purpose, 'String')}] = 1")
        b.candidates = bool(historic) and len(base) > 1
        rest = [_node(b, c, self._path(segment.definition, c)) for c in historic]
        columns = (
            ["p.pid"] if _counting else [self._column(b, f) for f in (fields or ["profile_id"])]
        )
        ctes: list[str] = []
        if historic:
            shared = b.candidates or len(b.ctes) > 1
            ctes.append(
                _SURVIVORS.format(db=self.db, materialized="MATERIALIZED " if shared else "")
            )
        if b.candidates:
            # The candidates carry the columns the result needs: the history is joined to
            # them alone, and the snapshots are scanned once.
            needed = ["pid"] if _counting else ["pid", "profile_id"]
            needed += [f for f in fields or [] if f in FIELDS and f != "profile_id"]
            if any(f.startswith("traits.") for f in fields or []):
                needed.append("traits")
            ctes.append(
                f"cand AS MATERIALIZED (\n    SELECT {', '.join(f'p.{n} AS {n}' for n in needed)} "  # noqa: S608
                f"FROM {self.db}.profile_snapshots AS p\n    WHERE "
                + "\n      AND ".join(base)
                + "\n)"
            )
            ctes.append(
                "ids AS MATERIALIZED (\n    SELECT pid FROM cand\n    UNION ALL\n"
                "    SELECT pid FROM survivors WHERE sid IN (SELECT pid FROM cand)\n)"
            )
            source, where = "cand AS p", rest
        else:
            source = f"{self.db}.profile_snapshots AS p"
            where = [*base, *rest]
        ctes += b.ctes
        sql = (
            ("WITH " + ",\n".join(ctes) + "\n" if ctes else "")
            + f"SELECT {', '.join(columns)}\nFROM {source}\n"
            + "".join(j + "\n" for j in b.joins)
            + "WHERE "
            + "\n  AND ".join(where)
            + "\nORDER BY p.profile_id"
            + (f"\nLIMIT {b.bind(limit, 'UInt64')}" if limit is not None else "")
            + "\nSETTINGS join_use_nulls = 1, enable_materialized_cte = 1"
        )
        return Query(sql, b.params)

    @staticmethod
    def _path(root: Any, child: Any) -> str:
        """The error path of a top-level condition."""
        if isinstance(root, All):
            return f"definition.all.{next(i for i, c in enumerate(root.all) if c is child)}"
        return "definition"

    def count(
        self, segment: SegmentDefinition, now: datetime, enforce_consent: bool = True
    ) -> Query:
        """SELECT count() of the members."""
        inner = self.members(segment, now, enforce_consent=enforce_consent, _counting=True)
        body, _, settings = inner.sql.rpartition("\nSETTINGS ")
        body = body.replace("\nORDER BY p.profile_id", "")
        sql = f"SELECT count() FROM (\n{body}\n)\nSETTINGS {settings}"  # noqa: S608 - compiled
        return Query(sql, inner.params)

    @staticmethod
    def _column(b: _Build, name: str) -> str:
        if check_field(name) == "trait":  # the pattern keeps the quoted alias inert
            return f"p.traits[{b.bind(name.removeprefix('traits.'), 'String')}] AS `{name}`"
        return f"p.{name} AS `{name}`"  # allow-listed
