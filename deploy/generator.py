"""A seeded generator of realistic multi-channel customers with a ground truth of who is who.

Each person shows up in several channels with that channel's identifiers and the noise real
channels have: phone numbers in three spellings, upper-case emails, ages that disagree by 18
years between channels, a cashier's email typed into POS sales, a shared device id "000000",
and family members who share one phone but hold different member ids (two people, never to
be merged). The ground truth maps every event id to the person it is about.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

CASHIER_EMAIL = "cashier.jingan@store.example.cn"
JUNK_DEVICE = "000000"
CITIES = ["Shanghai", "Beijing", "Shenzhen", "Hangzhou", "Chengdu", "Wuhan", "Xi'an", "Suzhou"]
CATEGORIES = ["shoes", "bags", "apparel", "beauty", "electronics", "home", "kids", "sports"]


@dataclass
class Person:
    """One real customer and the identifiers the channels know them by."""

    key: str
    phone: str
    age: int
    city: str
    member_id: str | None = None
    email: str | None = None
    customer_id: str | None = None
    unionid: str | None = None
    openid: str | None = None
    company: str | None = None
    devices: list[str] = field(default_factory=list)


@dataclass
class Feed:
    """HTTP calls to make and the truth behind them."""

    calls: list[tuple[str, str, dict[str, Any]]]
    truth: dict[str, str]
    people: int
    #: Identifiers that must never bridge two profiles.
    junk: set[str]


def _phone_spelling(rng: random.Random, digits: str) -> str:
    return rng.choice(
        [
            digits,
            f"+86 {digits[:3]}-{digits[3:7]}-{digits[7:]}",
            f"{digits[:3]} {digits[3:7]} {digits[7:]}",
            f"+86{digits}",
        ]
    )


def _people(rng: random.Random, n: int, first: int = 0) -> list[Person]:
    people = []
    for i in range(first, first + n):
        p = Person(
            key=f"person-{i}",
            phone=f"13{rng.randint(0, 9)}{i:08d}",
            age=rng.randint(18, 70),
            city=rng.choice(CITIES),
        )
        if rng.random() < 0.75:
            p.member_id = f"M{i:07d}"
        if rng.random() < 0.85:
            p.email = f"user{i}.{rng.choice(['li', 'wang', 'zhang', 'chen'])}@example.com"
        if rng.random() < 0.5:
            p.customer_id = f"C-{i:07d}"
        if rng.random() < 0.4:
            p.unionid, p.openid = (
                f"oU{uuid.UUID(int=rng.getrandbits(128)).hex[:20]}",
                f"oP{uuid.UUID(int=rng.getrandbits(128)).hex[:20]}",
            )
        if rng.random() < 0.1:
            p.company = f"ACC-{rng.randint(1, max(n // 50, 2)):05d}"
        p.devices = [
            f"dev-{uuid.UUID(int=rng.getrandbits(128)).hex[:16]}" for _ in range(rng.randint(1, 2))
        ]
        people.append(p)
    # Families: a second member sharing the first one's phone (two people, one phone).
    for a, b in zip(people[::97], people[1::97], strict=False):
        if a.member_id and b.member_id:
            b.phone = a.phone
    return people


class _Writer:
    """Accumulates calls per source and the ground truth."""

    def __init__(self, rng: random.Random, start: datetime, span_days: int) -> None:
        self.rng, self.start, self.span_minutes = rng, start, 60 * 24 * span_days
        self.batches: dict[str, list[dict[str, Any]]] = {}
        self.native: list[dict[str, Any]] = []
        self.truth: dict[str, str] = {}

    def when(self) -> str:
        moment = self.start + timedelta(minutes=self.rng.randint(0, self.span_minutes))
        return moment.isoformat().replace("+00:00", "Z")

    def segment(self, source: str, person: Person, msg: dict[str, Any]) -> None:
        event_id = str(uuid.UUID(int=self.rng.getrandbits(128)))
        self.truth[event_id] = person.key
        self.batches.setdefault(source, []).append(
            {**msg, "messageId": event_id, "timestamp": self.when()}
        )

    def event(self, person: Person, body: dict[str, Any]) -> None:
        event_id = str(uuid.UUID(int=self.rng.getrandbits(128)))
        self.truth[event_id] = person.key
        self.native.append({**body, "event_id": event_id, "original_timestamp": self.when()})


def _order(rng: random.Random) -> dict[str, Any]:
    return {
        "order_id": f"O-{rng.getrandbits(40):x}",
        "total": round(rng.uniform(20, 2000), 2),
        "currency": "CNY",
        "category": rng.choice(CATEGORIES),
    }


def _pos(w: _Writer, p: Person) -> None:
    rng = w.rng
    ids: dict[str, Any] = (
        {"userId": p.member_id} if p.member_id else {"anonymousId": f"pos-{rng.getrandbits(48):x}"}
    )
    traits: dict[str, Any] = {"phone": _phone_spelling(rng, p.phone), "age": p.age, "city": p.city}
    if rng.random() < 0.05:
        traits["email"] = CASHIER_EMAIL  # the cashier typed their own email
    w.segment("demo-pos", p, {"type": "identify", **ids, "traits": traits})
    for _ in range(rng.randint(1, 3)):
        w.segment(
            "demo-pos",
            p,
            {
                "type": "track",
                **ids,
                "event": "Order Completed",
                "traits": {"phone": _phone_spelling(rng, p.phone)},
                "properties": _order(rng),
            },
        )


def _own(p: Person, what: str) -> random.Random:
    """A person's own generator for attributes that add no event: the feed's draws (and so
    its events and identity figures) stay the same."""
    return random.Random(f"{p.key}:{what}")  # noqa: S311 - seeded demo data, not security


def _profile_traits(p: Person) -> dict[str, Any]:
    rng = _own(p, "traits")
    born = 2026 - p.age
    return {
        "gender": rng.choice(["female", "male"]),
        "birthday": f"{born}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
    }


def _consent(p: Person) -> dict[str, Any]:
    """What the member app asked: SMS and push opt-in, as Segment's consent context."""
    rng = _own(p, "consent")
    return {"categoryPreferences": {"sms": rng.random() < 0.6, "push": rng.random() < 0.4}}


def _app(w: _Writer, p: Person) -> None:
    rng = w.rng
    if not p.member_id:
        return
    age = p.age + 18 if rng.random() < 0.1 else p.age  # the age conflict the brief mentions
    device = JUNK_DEVICE if rng.random() < 0.03 else p.devices[0]
    traits: dict[str, Any] = {"age": age, "phone": p.phone, **_profile_traits(p)}
    if p.email:
        traits["email"] = p.email.upper()
    w.segment(
        "demo-app",
        p,
        {
            "type": "identify",
            "userId": p.member_id,
            "anonymousId": device,
            "traits": traits,
            "context": {"device": {"id": device}, "consent": _consent(p)},
        },
    )
    w.segment(
        "demo-app",
        p,
        {
            "type": "track",
            "userId": p.member_id,
            "event": "Points Earned",
            "properties": {"points": rng.randint(10, 500)},
        },
    )


def _web(w: _Writer, p: Person) -> None:
    rng = w.rng
    if not (p.customer_id and p.email):
        return
    cookie = f"ajs-{rng.getrandbits(64):x}"
    w.segment("demo-web", p, {"type": "page", "anonymousId": cookie, "name": "Home"})
    w.segment(
        "demo-web",
        p,
        {
            "type": "identify",
            "userId": p.customer_id,
            "anonymousId": cookie,
            # Web shops here take a mobile number for delivery at checkout.
            "traits": {"email": f"  {p.email} ", "phone": p.phone, "city": p.city},
        },
    )
    w.segment(
        "demo-web",
        p,
        {
            "type": "track",
            "userId": p.customer_id,
            "event": "Order Completed",
            "properties": _order(rng),
        },
    )


def _mini(w: _Writer, p: Person) -> None:
    if not p.unionid:
        return
    w.segment(
        "demo-miniprogram",
        p,
        {
            "type": "identify",
            "userId": p.unionid,
            "traits": {"phone": p.phone},
            "context": {"externalIds": [{"id": p.openid, "type": "wechat_openid"}]},
        },
    )
    w.segment(
        "demo-miniprogram",
        p,
        {"type": "track", "userId": p.unionid, "event": "Coupon Redeemed", "properties": {}},
    )


def _desk(w: _Writer, p: Person) -> None:
    rng = w.rng
    ident = (
        {"type": "email", "value": p.email}
        if p.email and rng.random() < 0.5
        else {"type": "phone", "value": _phone_spelling(rng, p.phone)}
    )
    ticket = f"T-{rng.getrandbits(32):x}"
    w.event(
        p,
        {
            "type": "ticket_opened",
            "identifiers": [ident],
            "properties": {
                "ticket_id": ticket,
                "category": rng.choice(["complaint", "consultation", "repair", "suggestion"]),
            },
        },
    )
    if rng.random() < 0.7:
        w.event(
            p,
            {
                "type": "ticket_resolved",
                "identifiers": [ident],
                "properties": {"ticket_id": ticket},
            },
        )
        w.event(
            p,
            {
                "type": "survey_answered",
                "identifiers": [ident],
                "properties": {"survey_type": "csat", "score": rng.randint(1, 5)},
            },
        )


def _delivery(w: _Writer, p: Person) -> None:
    """A delivery platform's order push: its own user id, the phone the rider calls."""
    rng = w.rng
    user = f"dl-{_own(p, 'delivery').getrandbits(40):x}"
    for _ in range(rng.randint(1, 3)):
        order = _order(rng)
        w.segment(
            "demo-delivery",
            p,
            {
                "type": "track",
                "userId": user,
                "event": "Order Completed",
                "traits": {"phone": _phone_spelling(rng, p.phone)},
                "properties": {**order, "total": order["total"] / 2, "platform": "meituan"},
            },
        )


def _survey(w: _Writer, p: Person) -> None:
    """A survey tool: NPS and CSAT answers, found by email or phone."""
    rng = w.rng
    traits = {"email": p.email} if p.email and rng.random() < 0.6 else {"phone": p.phone}
    w.segment(
        "demo-survey",
        p,
        {
            "type": "track",
            "anonymousId": f"sv-{rng.getrandbits(48):x}",
            "event": "Survey Answered",
            "context": {"traits": traits},
            "properties": {
                "survey_type": rng.choice(["nps", "csat"]),
                "score": rng.randint(0, 10),
                "age": p.age + rng.choice([0, 0, 0, 18]),  # channels disagree about age
            },
        },
    )


def _b2b(w: _Writer, p: Person) -> None:
    if not (p.company and p.email):
        return
    w.event(
        p,
        {
            "type": "group",
            "identifiers": [{"type": "email", "value": p.email}],
            "group_id": p.company,
            "traits": {"industry": "manufacturing", "employees": w.rng.randint(20, 5000)},
        },
    )


#: The latest event time the generator writes.
LAST_EVENT = datetime(2026, 10, 28, tzinfo=UTC)


def generate(
    seed: int = 7,
    customers: int = 1000,
    batch: int = 500,
    *,
    first: int = 0,
    span_days: int = 180,
    all_channels: bool = False,
) -> Feed:
    """Build the calls (source, path, body) and the ground truth for ``customers`` people.

    ``first`` numbers the people from there (feeds with distinct people), ``span_days`` is how
    far back event times go, ``all_channels`` adds the delivery platform and the survey tool.
    """
    rng = random.Random(seed)  # noqa: S311 - seeded demo data, not security
    w = _Writer(rng, LAST_EVENT - timedelta(days=span_days), span_days)
    people = _people(rng, customers, first)
    channels = [_pos, _app, _web, _mini, _desk, _b2b]
    if all_channels:
        channels += [_delivery, _survey]
    for p in people:
        for channel in channels:
            if channel in (_pos, _desk) or rng.random() < 0.8:
                channel(w, p)
    calls: list[tuple[str, str, dict[str, Any]]] = []
    for source, msgs in sorted(w.batches.items()):
        rng.shuffle(msgs)  # channels do not deliver in event-time order
        calls += [
            (source, "/v1/batch", {"batch": msgs[i : i + batch]})
            for i in range(0, len(msgs), batch)
        ]
    calls += [
        ("demo-servicedesk", "/v1/events", {"events": w.native[i : i + batch]})
        for i in range(0, len(w.native), batch)
    ]
    return Feed(
        calls,
        w.truth,
        len(people),
        junk={f"email:{CASHIER_EMAIL}", f"device_id:{JUNK_DEVICE}", f"anonymous_id:{JUNK_DEVICE}"},
    )


def pairs(clusters: Iterable[int]) -> int:
    """Number of unordered pairs inside clusters of the given sizes."""
    return sum(n * (n - 1) // 2 for n in clusters)


def pairwise(predicted: dict[str, str], truth: dict[str, str]) -> tuple[float, float]:
    """Pairwise precision and recall of a clustering of event ids against the truth."""
    from collections import Counter

    both = Counter((predicted[e], truth[e]) for e in truth if e in predicted)
    pred = Counter(predicted[e] for e in truth if e in predicted)
    true = Counter(truth[e] for e in truth if e in predicted)
    tp = pairs(both.values())
    predicted_pairs, true_pairs = pairs(pred.values()), pairs(true.values())
    precision = tp / predicted_pairs if predicted_pairs else 1.0
    recall = tp / true_pairs if true_pairs else 1.0
    return precision, recall


def linkable(
    feed: Feed, identifiers: dict[str, list[str]], junk: set[str] | None = None
) -> dict[str, str]:
    """Ground truth restricted to what the data can prove.

    Two events of one person are in the same cluster only if a chain of shared identifiers
    connects them (ignoring junk identifiers and identifiers that several people share).
    Recall against this is the resolver's own recall; against ``feed.truth`` it also counts
    fragments no resolver could join.
    """
    owners: dict[str, set[str]] = {}
    for event_id, keys in identifiers.items():
        for key in keys:
            owners.setdefault(key, set()).add(feed.truth[event_id])
    parent = {e: e for e in identifiers}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first: dict[str, str] = {}
    for event_id, keys in identifiers.items():
        for key in keys:
            if key in (feed.junk if junk is None else junk) or len(owners[key]) > 1:
                continue
            if key in first:
                parent[find(event_id)] = find(first[key])
            else:
                first[key] = event_id
    return {e: find(e) for e in identifiers}
