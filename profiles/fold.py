"""Fold an event into a profile as commutative operations (pure; Redis applies them).

Every operation is order-insensitive: counters add, first/last times take min/max, sets
union, keyed entries (orders, tickets, survey answers) count once per key, and traits keep
the value of highest rank (source priority, then event time, then value). So events applied
in any order, and profiles merged at any time, give the same profile.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

from contracts.events import Event, EventType, ResolvedEvent

Op = list[Any]
#: How a trait's competing values resolve (docs/sources.md, "Trait conflicts").
TraitPolicy = Literal["source_priority", "most_recent", "most_frequent", "first_seen"]

#: The parts of the day orders are counted by (morning 6-12, afternoon 12-18, evening
#: 18-24, night 0-6, local time).
PARTS_OF_DAY = ("morning", "afternoon", "evening", "night")
#: Local hour -> part of the day an order falls in.
DAYPARTS = ("night",) * 6 + ("morning",) * 6 + ("afternoon",) * 6 + ("evening",) * 6


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


class FoldRules(BaseModel):
    """Trait conflict resolution: higher source priority wins, then the later event."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Priority per channel (``crm``) or source name (``erp-sap``); the source name wins.
    source_priority: dict[str, int] = Field(
        default_factory=lambda: {
            "crm": 90,
            "erp": 85,
            "member_app": 80,
            "pos": 70,
            "service_desk": 60,
            "mini_program": 55,
            "web": 50,
            "delivery": 40,
            "survey": 30,
        }
    )

    #: Time zone of the calendar facts (time of day, weekend, purchase month).
    timezone: str = "Asia/Shanghai"

    #: How a trait's competing values resolve, per trait; ``source_priority`` (above, then
    #: the later event) for any trait not named (docs/sources.md, "Trait conflicts").
    trait_policies: dict[str, TraitPolicy] = Field(default_factory=dict)
    #: Traits whose competing values the profile keeps (value, source, count, last seen),
    #: besides every trait with a policy.
    conflict_traits: frozenset[str] = frozenset({"age", "gender", "birthday", "city"})
    #: Competing values kept per trait (the least reported leaves first).
    conflict_values: int = Field(default=4, ge=2, le=16)

    def tracks(self, name: str) -> bool:
        """Whether the competing values of trait ``name`` are kept."""
        return name in self.conflict_traits or name in self.trait_policies

    @property
    def zone(self) -> ZoneInfo:
        """The calendar time zone."""
        return _zone(self.timezone)

    def priority(self, event: Event) -> int:
        """Return the trait priority of the event's source."""
        rules = self.source_priority
        return rules.get(event.source, rules.get(event.channel, 0))


@dataclass
class Delta:
    """The operations one event contributes to its profile."""

    ops: list[Op] = field(default_factory=list)

    def add(self, *op: Any) -> None:
        """Append one operation."""
        self.ops.append(list(op))


def _ms(event: Event) -> int:
    return int(event.timestamp.timestamp() * 1000)


#: No order amount, refund, score or points value is this large; beyond it a number is a
#: client bug (1e308 is valid JSON), and in cents it would overflow Redis's 64-bit integers.
MAX_MAGNITUDE = 1e12


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    # "NaN" / "Infinity" parse as floats but are no amount or score, and neither is 1e308:
    # ignore them, never crash (an exception here would stop the processor on this event
    # after every restart).
    return number if math.isfinite(number) and abs(number) <= MAX_MAGNITUDE else None


def _cents(props: dict[str, Any]) -> int:
    """The amount of an order or a refund in cents; a negative one is no amount (a refund is
    its own event with a positive amount), so it cannot make spend negative."""
    for key in ("total", "revenue", "value", "amount"):
        amount = _number(props.get(key))
        if amount is not None:
            return max(0, round(amount * 100))
    return 0


def rank(priority: int, ms: int) -> int:
    """Order trait candidates: priority first, then event time (fits a double exactly)."""
    return priority * 10_000_000_000_000 + ms


#: Past any event time in ms (the year 2286): ``first_seen`` ranks by ``EPOCH_END - ms``.
EPOCH_END = 10_000_000_000_000


def policy_rank(policy: str | None, priority: int, ms: int) -> int:
    """A trait value's rank under ``policy`` (higher wins; most_frequent ranks in Redis)."""
    if policy == "most_recent":
        return ms
    if policy == "first_seen":
        return EPOCH_END - ms
    return rank(priority, ms)


def _trait(delta: Delta, name: str, value: Any, prio: int, ms: int) -> None:
    delta.add("trait", name, json.dumps(value, sort_keys=True), rank(prio, ms))


def _presence(delta: Delta, event: Event, ms: int) -> None:
    ch = event.channel.value
    delta.add("min", "lo:first_seen", ms)
    delta.add("max", "hi:last_seen", ms)
    delta.add("min", f"lo:first_seen:{ch}", ms)
    delta.add("max", f"hi:last_seen:{ch}", ms)
    delta.add("sadd", "channels", ch)
    delta.add("incr", "n:events", 1)
    delta.add("incr", f"n:events:{ch}", 1)


def _order(delta: Delta, event: Event, ms: int, zone: ZoneInfo) -> None:
    props = event.properties
    order_id = str(props.get("order_id") or event.event_id)
    delta.add("entry", "orders", order_id, _cents(props))
    local = event.timestamp.astimezone(zone)
    # Keyed by order id like the order itself, so a repeated order counts once.
    delta.add("entry", f"orders_{DAYPARTS[local.hour]}", order_id, 1)
    if local.weekday() >= 5:
        delta.add("entry", "orders_weekend", order_id, 1)
    delta.add("sadd", "purchase_months", local.strftime("%Y-%m"))
    delta.add("max", "hi:last_purchase_at", ms)
    delta.add("min", "lo:first_purchase_at", ms)
    products = props.get("products")
    categories = [props.get("category")]
    if isinstance(products, list):
        categories += [p.get("category") for p in products if isinstance(p, dict)]
    for category in categories:
        if isinstance(category, str) and category.strip():
            delta.add("sadd", "categories", category.strip().lower())


def _ticket(delta: Delta, event: Event) -> None:
    props = event.properties
    ticket = str(props.get("ticket_id") or event.event_id)
    if event.type == EventType.TICKET_OPENED:
        delta.add("sadd", "tickets_opened", ticket)
        if str(props.get("category", "")).lower() == "complaint":
            delta.add("sadd", "complaints", ticket)
    elif event.type == EventType.TICKET_RESOLVED:
        delta.add("sadd", "tickets_resolved", ticket)
    else:
        delta.add("sadd", "follow_ups", ticket)


def _survey(delta: Delta, event: Event, ms: int) -> None:
    props = event.properties
    kind = str(props.get("survey_type") or props.get("kind") or "csat").lower()
    score = _number(props.get("score"))
    if score is None or kind not in ("csat", "nps"):
        return
    answer = str(props.get("response_id") or event.event_id)
    delta.add("entry", kind, answer, round(score))
    _trait(delta, f"{kind}_last", round(score), 0, ms)


def _points(delta: Delta, event: Event) -> None:
    points = _number(event.properties.get("points"))
    if points is not None:
        kind = "earned" if event.type == EventType.POINTS_EARNED else "redeemed"
        delta.add("entry", f"points_{kind}", event.event_id, round(points))


def _person_trait(delta: Delta, event: Event, name: str, value: Any, rules: FoldRules) -> None:
    """A trait of the person, resolved by its policy, its competing values kept if tracked."""
    ms, policy = _ms(event), rules.trait_policies.get(name)
    if rules.tracks(name):
        frequent = 1 if policy == "most_frequent" else 0
        encoded = json.dumps(value, sort_keys=True)
        delta.add("cand", name, encoded, event.source, ms, rules.conflict_values, frequent)
        if frequent:
            return
    delta.add(
        "trait",
        name,
        json.dumps(value, sort_keys=True),
        policy_rank(policy, rules.priority(event), ms),
    )


def _traits(delta: Delta, event: Event, rules: FoldRules, prio: int, ms: int) -> None:
    if event.type != EventType.GROUP and (rules.conflict_traits or rules.trait_policies):
        for name, value in event.traits.items():
            _person_trait(delta, event, name, value, rules)
    else:
        prefix = "account." if event.type == EventType.GROUP else ""
        for name, value in event.traits.items():
            _trait(delta, prefix + name, value, prio, ms)
    if event.type == EventType.GROUP and event.group_id:
        _trait(delta, "account.id", event.group_id, prio, ms)
    for purpose, granted in event.consent.items():
        _trait(delta, f"consent.{purpose}", granted, 0, ms)


def _domain(delta: Delta, event: Event, rules: FoldRules, ms: int) -> None:
    props, kind, prio = event.properties, event.type, rules.priority(event)
    if kind == EventType.ORDER_COMPLETED:
        _order(delta, event, ms, rules.zone)
    elif kind == EventType.ORDER_REFUNDED:
        # One order may be refunded in parts: each refund counts (a retry repeats its event
        # id, so it does not count twice).
        refund_id = str(props.get("refund_id") or event.event_id)
        delta.add("entry", "refunds", refund_id, _cents(props))
    elif kind in (
        EventType.TICKET_OPENED,
        EventType.TICKET_RESOLVED,
        EventType.FOLLOW_UP_COMPLETED,
    ):
        _ticket(delta, event)
    elif kind == EventType.SURVEY_ANSWERED:
        _survey(delta, event, ms)
    elif kind in (EventType.POINTS_EARNED, EventType.POINTS_REDEEMED):
        _points(delta, event)
    elif kind == EventType.COUPON_REDEEMED:
        delta.add("incr", "n:coupons_redeemed", 1)
    elif kind == EventType.MEMBER_LEVEL_CHANGED and props.get("level") is not None:
        _trait(delta, "member_level", props["level"], prio, ms)
    elif kind == EventType.OPPORTUNITY_STAGE_CHANGED and props.get("stage") is not None:
        _trait(delta, "account.opportunity_stage", props["stage"], prio, ms)
    elif kind == EventType.STORE_VISITED:
        delta.add("incr", "n:store_visits", 1)


def fold(resolved: ResolvedEvent, rules: FoldRules) -> Delta:
    """Return the operations that apply ``resolved`` to its profile."""
    event = resolved.event
    ms, delta, prio = _ms(event), Delta(), rules.priority(event)
    _presence(delta, event, ms)
    _traits(delta, event, rules, prio, ms)
    _domain(delta, event, rules, ms)
    return delta
