"""Care rules: what makes a task, when, and what closes it. Pure: no I/O but reading files.

A rule has one trigger:

- ``tag_entered: <tag id>``: a profile entered a catalog tag (the occasion is that day);
- ``date: <declared date field>`` with ``days_before``: every year, that many days before
  the date's anniversary (a birthday, the day a cooperation started), from the first
  anniversary on when the year is known;
- ``after_event: <event type>`` with ``days`` (and ``ticket: complaint``): that long after
  such an event (a ticket resolved that was opened as a complaint).

``closes_on`` names the event types (or track names) that close the profile's open tasks of
the rule, and cancel the ones not yet due.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from care.exceptions import CareRulesError
from contracts.events import Event, EventType
from tagging.catalog import Catalog
from tagging.rules import Kind

#: The rules shipped with the product.
DEFAULT_DIR = Path(__file__).with_name("rules")

_ID = r"^[a-z][a-z0-9_]{0,63}$"
_NAME = re.compile(r"[^a-z0-9]+")


class Trigger(BaseModel):
    """What makes a task: exactly one of ``tag_entered``, ``date``, ``after_event``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tag_entered: str | None = None
    date: str | None = None
    days_before: int = Field(default=0, ge=0, le=366)
    after_event: str | None = None
    days: float = Field(default=0, ge=0, le=3660)
    #: With ``after_event``: only when the event's ticket (``properties.ticket_id``) was
    #: opened as a complaint.
    ticket: Literal["complaint"] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Trigger:
        kinds = [k for k in ("tag_entered", "date", "after_event") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError("give exactly one of tag_entered, date, after_event")
        if self.days_before and not self.date:
            raise ValueError("days_before goes with date")
        if (self.days or self.ticket) and not self.after_event:
            raise ValueError("days and ticket go with after_event")
        if self.after_event and self.after_event not in {t.value for t in EventType}:
            raise ValueError(f"after_event: unknown event type {self.after_event!r}")
        return self

    @property
    def label(self) -> str:
        """``tag_entered:<tag>``, ``date:<field>`` or ``after_event:<type>``."""
        for kind in ("tag_entered", "date", "after_event"):
            if value := getattr(self, kind):
                return f"{kind}:{value}"
        raise AssertionError("a trigger has one kind")


class CareRule(BaseModel):
    """One care rule, as written in a rules file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=_ID)
    title: str = Field(min_length=1)
    description: str = ""
    trigger: Trigger
    #: Event types or track names (``Care Followup`` reads as ``care_followup``).
    closes_on: list[str] = Field(default_factory=list)

    def closed_by(self, event: Event) -> bool:
        """Whether ``event`` closes this rule's tasks of its profile."""
        names = {event.type.value, event_name(event.name)} if event.name else {event.type.value}
        return bool(names & {event_name(c) for c in self.closes_on})


def event_name(name: str) -> str:
    """A track name as rules write it: lower case, words joined by ``_``."""
    return _NAME.sub("_", name.strip().lower()).strip("_")


def load(
    directory: Path | str | None, tags: Iterable[str], date_fields: Iterable[str]
) -> list[CareRule]:
    """Load every ``*.yaml`` of ``directory`` (default: the shipped rules), checked against
    the tag catalog's ``tags`` and declared ``date_fields``; ``CareRulesError`` lists every
    problem with its file and place."""
    folder = Path(directory) if directory else DEFAULT_DIR
    files = sorted(folder.glob("*.yaml"))
    if not files:
        raise CareRulesError([f"no *.yaml care rule files in {folder}"])
    known_tags, fields = set(tags), set(date_fields)
    rules: list[CareRule] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for path in files:
        for where, rule in _read(path, problems):
            problems += [f"{where}: {p}" for p in _check(rule, known_tags, fields)]
            if rule.id in seen:
                problems.append(f"{where}: id {rule.id!r} is also used in {seen[rule.id]}")
            seen.setdefault(rule.id, where)
            rules.append(rule)
    if problems:
        raise CareRulesError(problems)
    return rules


def _read(path: Path, problems: list[str]) -> list[tuple[str, CareRule]]:
    try:
        doc: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        problems.append(f"{path}: not valid YAML: {err}")
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
        problems.append(f"{path}: expected a mapping with a 'rules' list")
        return []
    out = []
    for i, raw in enumerate(doc["rules"]):
        rid = raw.get("id") if isinstance(raw, dict) else None
        where = f"{path}: rules[{i}]" + (f" ({rid})" if rid else "")
        try:
            out.append((where, CareRule.model_validate(raw)))
        except ValidationError as err:
            for e in err.errors():
                loc = ".".join(str(p) for p in e["loc"])
                problems.append(f"{where}{'.' + loc if loc else ''}: {e['msg']}")
    return out


def _check(rule: CareRule, tags: set[str], fields: set[str]) -> list[str]:
    t, out = rule.trigger, []
    if t.tag_entered and t.tag_entered not in tags:
        out.append(f"trigger.tag_entered: unknown tag {t.tag_entered!r}")
    if t.date and t.date not in fields:
        out.append(
            f"trigger.date: {t.date!r} is not a declared date field "
            f"(declared: {', '.join(sorted(fields)) or 'none'})"
        )
    return out


# -- time ------------------------------------------------------------------------------


def month_day(value: Any) -> tuple[int | None, int, int] | None:
    """``(year or None, month, day)`` of a date value (``YYYY-MM-DD...`` or ``--MM-DD``, the
    month and day kept in clear beside a sealed date), or None when it is no date."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    year: int | None = None
    try:
        if len(text) == 7 and text.startswith("--"):
            day = date.fromisoformat("2000" + text[1:])
        else:
            day = date.fromisoformat(text[:10])
            year = day.year
    except ValueError:
        return None
    return year, day.month, day.day


def on_year(year: int, month: int, day: int) -> date:
    """The date of (``month``, ``day``) in ``year``: 29 February is the 28th in other years."""
    if month == 2 and day == 29 and not calendar.isleap(year):
        return date(year, 2, 28)
    return date(year, month, day)


def next_occasion(anchor: tuple[int | None, int, int], not_before: date) -> date:
    """The first yearly occasion of ``anchor`` on or after ``not_before`` (and after the
    anchor's own year, when known: the first birthday, the first anniversary)."""
    year, month, day = anchor
    y = max(not_before.year, (year or 0) + 1)
    while on_year(y, month, day) < not_before:
        y += 1
    return on_year(y, month, day)


def day_start(day: date, zone: ZoneInfo) -> datetime:
    """Midnight of ``day`` in ``zone``."""
    return datetime.combine(day, time(0), tzinfo=zone)


def date_due(rule: CareRule, anchor: tuple[int | None, int, int], today: date, zone: ZoneInfo
             ) -> tuple[date, datetime]:  # fmt: skip
    """The next occasion of a date rule not yet past on ``today``, and when it falls due
    (``days_before`` it, at midnight; a profile that arrives inside that window is due at
    once)."""
    occasion = next_occasion(anchor, today)
    return occasion, day_start(occasion - timedelta(days=rule.trigger.days_before), zone)


def event_due(rule: CareRule, at: datetime, zone: ZoneInfo) -> tuple[date, datetime]:
    """The occasion (the event's local day) and due time of an ``after_event`` rule."""
    return at.astimezone(zone).date(), at + timedelta(days=rule.trigger.days)


def for_catalog(directory: Path | str | None, catalog: Catalog) -> list[CareRule]:
    """Load care rules checked against a loaded tag catalog."""
    dates = [name for name, kind in catalog.declared.items() if kind == Kind.DATE]
    return load(directory, catalog.by_id, dates)
