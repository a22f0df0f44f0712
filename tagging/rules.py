"""The tag rule language: a small, safe expression language over profile facts.

A rule is parsed by this module's own tokenizer and recursive-descent parser into a typed
tree, checked against the declared fields, and compiled to nested Python closures. Catalog
text never reaches ``eval``/``exec``; a rule can only compare facts with literals.

Grammar (keywords are case-insensitive)::

    expr      := or
    or        := and ("or" and)*
    and       := not ("and" not)*
    not       := "not" not | "(" expr ")" | "tag" TAG_ID | predicate
    predicate := FIELD ("==" | "!=" | "<" | "<=" | ">" | ">=") literal
               | FIELD "between" number "and" number          (inclusive)
               | FIELD ["not"] "in" "[" literal ("," literal)* "]"
               | FIELD "contains" string | FIELD "contains" ("any" | "all") list
               | FIELD "within" DURATION        (a time in the last DURATION: 90d, 12h, 2w, 1y)
               | FIELD "before" DURATION        (a time longer ago than DURATION)
               | FIELD "in" "this" "month"      (a date whose month is the current month)
               | FIELD "is" ["not"] "set"

Strings compare case-insensitively (facts and literals are case-folded). A date is the
UTC midnight of a calendar day; "this month" is the month in the catalog's time zone.
A predicate on a field the profile does not have is false (``not`` makes it true), so
``gender != "male"`` holds only for profiles whose gender is known and not male.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo


class Kind(StrEnum):
    """The type of a profile fact."""

    NUMBER = "number"
    STRING = "string"
    BOOL = "bool"
    TIME = "time"  # epoch milliseconds of an instant (first_seen, last_purchase_at)
    DATE = "date"  # epoch milliseconds of a calendar date (birthday, cooperation start)
    SET = "set"  # a set of strings (channels, categories)


class RuleError(ValueError):
    """A rule that cannot be parsed or checked; names the tag and the position."""

    def __init__(self, tag: str, position: int, message: str, rule: str = "") -> None:
        self.tag, self.position, self.message = tag, position, message
        pointer = f"\n  {rule}\n  {' ' * position}^" if rule else ""
        super().__init__(f"tag {tag!r}, rule position {position}: {message}{pointer}")


@dataclass(frozen=True, slots=True)
class Clock:
    """The time a rule is evaluated at, with the calendar parts calendar predicates need."""

    now_ms: int
    month: int
    year: int
    next_month_ms: int  # start of the next calendar month in the catalog's time zone

    @classmethod
    def at(cls, now: datetime, zone: ZoneInfo) -> Clock:
        """Return the clock for instant ``now`` in time zone ``zone``."""
        local = now.astimezone(zone)
        first = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = (first + timedelta(days=32)).replace(day=1)
        return cls(
            now_ms=int(now.timestamp() * 1000),
            month=local.month,
            year=local.year,
            next_month_ms=int(nxt.timestamp() * 1000),
        )


Facts = dict[str, Any]
Test = Callable[[Facts, Clock], bool]


def month_of(ms: int) -> int:
    """Month of a date value (UTC midnight of the day, so UTC is its calendar)."""
    return datetime.fromtimestamp(ms / 1000, UTC).month


_DURATION_MS = {"h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000, "y": 365 * 86_400_000}
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<number>-?\d+(?:\.\d+)?)(?P<unit>[hdwy])?(?![\w.])
    | (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,)
    | (?P<word>[A-Za-z_][\w.]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {
    "and",
    "or",
    "not",
    "in",
    "between",
    "contains",
    "any",
    "all",
    "within",
    "before",
    "this",
    "month",
    "is",
    "set",
    "tag",
    "true",
    "false",
}
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class Token:
    """One lexical token and where it starts in the rule."""

    kind: str  # number | duration | string | op | word | end
    text: str
    pos: int
    value: Any = None


def tokenize(tag: str, rule: str) -> list[Token]:
    """Split ``rule`` into tokens; an unknown character is an error at its position."""
    tokens, pos = [], 0
    while pos < len(rule):
        if rule[pos:].strip() == "":
            break
        m = _TOKEN.match(rule, pos)
        if not m or m.end() == pos:
            bad = pos + len(rule[pos:]) - len(rule[pos:].lstrip())
            raise RuleError(tag, bad, f"unexpected character {rule[bad]!r}", rule)
        start = m.start(m.lastgroup or 0)
        if m.group("number") is not None:
            text = m.group("number")
            if m.group("unit"):
                unit = m.group("unit")
                if "." in text or text.startswith("-"):
                    raise RuleError(tag, start, "a duration is a positive whole number", rule)
                ms = int(text) * _DURATION_MS[unit]
                tokens.append(Token("duration", text + unit, start, ms))
            else:
                number = float(text) if "." in text else int(text)
                tokens.append(Token("number", text, start, number))
        elif m.group("string") is not None:
            raw = m.group("string")
            value = re.sub(r"\\(.)", r"\1", raw[1:-1])
            tokens.append(Token("string", raw, start, value))
        elif m.group("op") is not None:
            tokens.append(Token("op", m.group("op"), start))
        else:
            word = m.group("word")
            low = word.lower()
            tokens.append(Token("word", low if low in _KEYWORDS else word, start))
        pos = m.end()
    tokens.append(Token("end", "", len(rule)))
    return tokens


# ---------------------------------------------------------------------------- the tree


@dataclass(frozen=True)
class Node:
    """A checked rule (sub)tree."""

    pos: int


@dataclass(frozen=True)
class Bool(Node):
    """``and`` / ``or`` of children."""

    op: str
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Not(Node):
    """Negation."""

    child: Node


@dataclass(frozen=True)
class TagRef(Node):
    """The value of another tag."""

    tag: str


@dataclass(frozen=True)
class Pred(Node):
    """A test of one fact (``kind``: cmp, between, in, notin, contains, any, all, within,
    before, month or set)."""

    field: str
    kind: str
    args: tuple[Any, ...] = ()


@dataclass
class Parsed:
    """A parsed rule: its tree, the facts and tags it reads, and its timed predicates."""

    tree: Node
    fields: set[str] = field(default_factory=set)
    tags: set[str] = field(default_factory=set)
    #: (field, duration ms) of every within/before predicate: the rule may change at field+ms.
    timers: set[tuple[str, int]] = field(default_factory=set)
    #: fields of "in this month" predicates: the rule may change when the month turns.
    monthly: set[str] = field(default_factory=set)


class Parser:
    """Recursive-descent parser with type checking against ``fields`` (name -> kind)."""

    def __init__(self, tag: str, rule: str, fields: dict[str, Kind]) -> None:
        self.tag, self.rule, self.fields = tag, rule, fields
        self.tokens = tokenize(tag, rule)
        self.i = 0
        self.out = Parsed(tree=Node(0))

    def error(self, message: str, token: Token | None = None) -> RuleError:
        """Return an error at ``token`` (default: the current one)."""
        pos = (token or self.peek()).pos
        return RuleError(self.tag, pos, message, self.rule)

    def peek(self) -> Token:
        """The current token."""
        return self.tokens[self.i]

    def take(self) -> Token:
        """Consume and return the current token."""
        token = self.tokens[self.i]
        self.i += 1
        return token

    def accept(self, text: str) -> bool:
        """Consume the current token if it is the keyword or operator ``text``."""
        token = self.peek()
        if token.kind in ("word", "op") and token.text == text:
            self.i += 1
            return True
        return False

    def expect(self, text: str, what: str = "") -> Token:
        """Consume ``text`` or fail."""
        token = self.peek()
        if not self.accept(text):
            raise self.error(f"expected {what or repr(text)}, found {token.text or 'end'!r}")
        return token

    def parse(self) -> Parsed:
        """Parse the whole rule."""
        if self.peek().kind == "end":
            raise self.error("empty rule")
        self.out.tree = self.or_()
        if self.peek().kind != "end":
            raise self.error(f"unexpected {self.peek().text!r} after a complete rule")
        return self.out

    def or_(self) -> Node:
        """Parse ``and ("or" and)*``."""
        start, parts = self.peek().pos, [self.and_()]
        while self.accept("or"):
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else Bool(start, "or", tuple(parts))

    def and_(self) -> Node:
        """Parse ``not ("and" not)*``."""
        start, parts = self.peek().pos, [self.not_()]
        while self.accept("and"):
            parts.append(self.not_())
        return parts[0] if len(parts) == 1 else Bool(start, "and", tuple(parts))

    def not_(self) -> Node:
        """Parse a negation, a group, a tag reference or a predicate."""
        token = self.peek()
        if self.accept("not"):
            return Not(token.pos, self.not_())
        if self.accept("("):
            inner = self.or_()
            self.expect(")", "')'")
            return inner
        if self.accept("tag"):
            name = self.take()
            if name.kind != "word" or name.text in _KEYWORDS:
                raise self.error("expected a tag id after 'tag'", name)
            self.out.tags.add(name.text)
            return TagRef(token.pos, name.text)
        return self.predicate()

    def literal(self, kind: Kind, what: str) -> Any:
        """Parse one literal that must suit a fact of ``kind``."""
        token = self.take()
        if token.kind == "word" and token.text in ("true", "false"):
            value: Any = token.text == "true"
            have = Kind.BOOL
        elif token.kind == "number":
            value, have = token.value, Kind.NUMBER
        elif token.kind == "string":
            value, have = token.value, Kind.STRING
        else:
            raise self.error(f"expected {what}, found {token.text or 'end'!r}", token)
        want = Kind.STRING if kind == Kind.SET else kind
        if have != want:
            raise self.error(f"type mismatch: {want.value} field compared with {have.value}", token)
        # String facts are stored stripped and case-folded, so literals match the same way.
        return value.strip().casefold() if have == Kind.STRING else value

    def literals(self, kind: Kind) -> tuple[Any, ...]:
        """Parse ``[literal, ...]``."""
        self.expect("[", "'['")
        values = [self.literal(kind, "a literal")]
        while self.accept(","):
            values.append(self.literal(kind, "a literal"))
        self.expect("]", "']'")
        return tuple(values)

    def predicate(self) -> Node:
        """Parse ``FIELD test``."""
        token = self.take()
        if token.kind != "word" or token.text in _KEYWORDS:
            raise self.error(f"expected a field, 'tag', 'not' or '(', found {token.text!r}", token)
        name = token.text
        kind = self.fields.get(name)
        if kind is None:
            raise self.error(f"unknown field {name!r}", token)
        self.out.fields.add(name)
        op = self.peek()

        def need(*kinds: Kind) -> None:
            if kind not in kinds:
                allowed = " or ".join(k.value for k in kinds)
                raise self.error(
                    f"type mismatch: {op.text!r} needs a {allowed} field; {name!r} is {kind.value}",
                    op,
                )

        if op.kind == "op" and op.text in _COMPARE:
            self.take()
            if op.text not in ("==", "!="):
                need(Kind.NUMBER)
            else:
                need(Kind.NUMBER, Kind.STRING, Kind.BOOL)
            return Pred(token.pos, name, "cmp", (op.text, self.literal(kind, "a literal")))
        if self.accept("between"):
            need(Kind.NUMBER)
            low = self.literal(kind, "a number")
            self.expect("and", "'and' between the two bounds")
            high = self.literal(kind, "a number")
            if low > high:
                raise self.error("empty range: the lower bound is above the upper bound", op)
            return Pred(token.pos, name, "between", (low, high))
        if self.accept("not"):
            self.expect("in", "'in' after 'not'")
            need(Kind.NUMBER, Kind.STRING)
            return Pred(token.pos, name, "notin", (frozenset(self.literals(kind)),))
        if self.accept("in"):
            if self.accept("this"):
                self.expect("month", "'month' after 'in this'")
                need(Kind.DATE)
                self.out.monthly.add(name)
                return Pred(token.pos, name, "month")
            need(Kind.NUMBER, Kind.STRING)
            return Pred(token.pos, name, "in", (frozenset(self.literals(kind)),))
        if self.accept("contains"):
            need(Kind.SET)
            if self.accept("any"):
                return Pred(token.pos, name, "any", (frozenset(self.literals(kind)),))
            if self.accept("all"):
                return Pred(token.pos, name, "all", (frozenset(self.literals(kind)),))
            return Pred(token.pos, name, "contains", (self.literal(kind, "a string"),))
        if op.kind == "word" and op.text in ("within", "before"):
            self.take()
            need(Kind.TIME, Kind.DATE)
            span = self.take()
            if span.kind != "duration":
                raise self.error("expected a duration such as 30d, 12h, 2w or 1y", span)
            self.out.timers.add((name, span.value))
            return Pred(token.pos, name, op.text, (span.value,))
        if self.accept("is"):
            negate = self.accept("not")
            self.expect("set", "'set'")
            node: Node = Pred(token.pos, name, "set")
            return Not(token.pos, node) if negate else node
        raise self.error(f"expected a comparison or test after field {name!r}", op)


def parse(tag: str, rule: str, fields: dict[str, Kind]) -> Parsed:
    """Parse and type-check ``rule`` of ``tag`` against the declared ``fields``."""
    return Parser(tag, rule, fields).parse()


# ---------------------------------------------------------------------------- compiling


def compile_node(node: Node, resolve_tag: Callable[[str], Test]) -> Test:
    """Compile a checked tree to a closure ``test(facts, clock) -> bool``.

    These closures are the plain, per-tag reading of a rule (``Tag.test``); processors
    evaluate selections of tags with the equivalent function of tagging/compiled.py, which
    the tests check against them.
    """
    if isinstance(node, Bool):
        parts = tuple(compile_node(c, resolve_tag) for c in node.children)
        if node.op == "and":
            return lambda f, c: all(p(f, c) for p in parts)
        return lambda f, c: any(p(f, c) for p in parts)
    if isinstance(node, Not):
        inner = compile_node(node.child, resolve_tag)
        return lambda f, c: not inner(f, c)
    if isinstance(node, TagRef):
        return resolve_tag(node.tag)
    assert isinstance(node, Pred)
    return _predicate(node)


def _compare(name: str, op: str, k: Any) -> Test:
    if op == "==":
        return lambda f, c: (v := f.get(name)) is not None and v == k
    if op == "!=":
        return lambda f, c: (v := f.get(name)) is not None and v != k
    if op == "<":
        return lambda f, c: (v := f.get(name)) is not None and v < k
    if op == "<=":
        return lambda f, c: (v := f.get(name)) is not None and v <= k
    if op == ">":
        return lambda f, c: (v := f.get(name)) is not None and v > k
    return lambda f, c: (v := f.get(name)) is not None and v >= k


def _predicate(node: Pred) -> Test:
    name, kind, args = node.field, node.kind, node.args
    if kind == "cmp":
        return _compare(name, args[0], args[1])
    if kind == "between":
        low, high = args
        return lambda f, c: (v := f.get(name)) is not None and low <= v <= high
    if kind == "in":
        members = args[0]
        return lambda f, c: (v := f.get(name)) is not None and v in members
    if kind == "notin":
        excluded = args[0]
        return lambda f, c: (v := f.get(name)) is not None and v not in excluded
    if kind == "contains":
        item = args[0]
        return lambda f, c: item in f.get(name, ())
    if kind == "any":
        items = args[0]
        return lambda f, c: not items.isdisjoint(f.get(name, ()))
    if kind == "all":
        wanted = args[0]
        return lambda f, c: wanted <= f.get(name, frozenset())
    if kind == "within":
        span = args[0]
        return lambda f, c: (v := f.get(name)) is not None and v >= c.now_ms - span
    if kind == "before":
        span = args[0]
        return lambda f, c: (v := f.get(name)) is not None and v < c.now_ms - span
    if kind == "month":
        return lambda f, c: (v := f.get(name)) is not None and month_of(v) == c.month
    if kind == "set":
        return lambda f, c: f.get(name) is not None
    raise AssertionError(kind)  # the parser produces no other kind
