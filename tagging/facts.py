"""Profile facts: the flat, typed view of a unified profile that tag rules read.

Built-in facts come from the profile's computed attributes; traits, account fields and
consent purposes are declared with their kind in the catalog (``fields:``), so a rule on an
undeclared trait fails at load, and a trait value of the wrong shape is simply absent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any

from contracts.events import Channel
from contracts.profiles import Profile
from privacy.crypto import is_sealed
from profiles.fold import PARTS_OF_DAY
from profiles.store import PROFILE_TIMES, epoch_ms
from tagging.rules import Facts, Kind

_N, _S, _T = Kind.NUMBER, Kind.STRING, Kind.TIME

#: Facts every profile has (name -> kind), besides the declared trait/account/consent facts.
BUILTIN: dict[str, Kind] = {
    **dict.fromkeys(
        (
            "events order_count total_spend average_spend refund_total csat_last csat_average"
            " csat_count nps_last complaints open_tickets follow_ups points_earned"
            " points_redeemed points_balance coupons_redeemed store_visits channel_count"
            " category_count identifier_count open_complaints tickets tickets_resolved"
            " order_share_morning order_share_afternoon order_share_evening order_share_night"
            " weekend_order_share purchase_month_count purchase_gap_months net_spend"
            " coupon_rate refund_rate"
        ).split(),
        _N,
    ),
    "nps_class": _S,
    "member_level": _S,
    **dict.fromkeys("first_seen last_seen first_purchase_at last_purchase_at".split(), _T),
    "channels": Kind.SET,
    "categories": Kind.SET,
    "identifier_types": Kind.SET,
    **{f"channel.{c.value}.events": _N for c in Channel},
    **{f"channel.{c.value}.share": _N for c in Channel},
    **{f"channel.{c.value}.first_seen": _T for c in Channel},
    **{f"channel.{c.value}.last_seen": _T for c in Channel},
}


#: Declarable fact families: the prefix a declared field must start with.
DECLARABLE = ("trait.", "account.", "consent.")

#: Facts that change without a fold operation naming them (identity adds identifiers).
ALWAYS = frozenset({"identifier_types", "identifier_count"})

#: Fold change name -> the facts it can change (see profiles/fold.py).
_SHARES = tuple(f"order_share_{d}" for d in PARTS_OF_DAY)
_CHANGED: dict[str, tuple[str, ...]] = {
    "lo:first_seen": ("first_seen",),
    "hi:last_seen": ("last_seen",),
    "n:events": ("events", *(f"channel.{c.value}.share" for c in Channel)),
    "channels": ("channels", "channel_count"),
    "orders": (
        "order_count",
        "total_spend",
        "average_spend",
        "net_spend",
        "coupon_rate",
        "refund_rate",
        "weekend_order_share",
        *_SHARES,
    ),
    "orders_weekend": ("weekend_order_share",),
    **{f"orders_{d}": (f"order_share_{d}",) for d in PARTS_OF_DAY},
    "purchase_months": ("purchase_month_count", "purchase_gap_months"),
    "hi:last_purchase_at": ("last_purchase_at",),
    "lo:first_purchase_at": ("first_purchase_at",),
    "categories": ("categories", "category_count"),
    "tickets_opened": ("open_tickets", "tickets"),
    "tickets_resolved": ("open_tickets", "open_complaints", "tickets_resolved"),
    "complaints": ("complaints", "open_complaints"),
    "follow_ups": ("follow_ups",),
    "csat": ("csat_average", "csat_count"),
    "points_earned": ("points_earned", "points_balance"),
    "points_redeemed": ("points_redeemed", "points_balance"),
    "refunds": ("refund_total", "net_spend", "refund_rate"),
    "n:coupons_redeemed": ("coupons_redeemed", "coupon_rate"),
    "n:store_visits": ("store_visits",),
    "trait:csat_last": ("csat_last",),
    "trait:nps_last": ("nps_last", "nps_class"),
    "trait:member_level": ("member_level",),
}


def changed_facts(names: Iterable[str]) -> set[str] | None:
    """Map a fold's change names to the facts they can change; None means all (a merge)."""
    out = set(ALWAYS)
    for name in names:
        if name == "merged":
            return None
        known = _CHANGED.get(name)
        if known:
            out.update(known)
        elif name.startswith("trait:"):
            trait = name[6:]
            out.add(trait if trait.startswith(("account.", "consent.")) else f"trait.{trait}")
        elif name.startswith("n:events:"):
            out.add(f"channel.{name[9:]}.events")
            out.add(f"channel.{name[9:]}.share")
        elif name.startswith("lo:first_seen:"):
            out.add(f"channel.{name[14:]}.first_seen")
        elif name.startswith("hi:last_seen:"):
            out.add(f"channel.{name[13:]}.last_seen")
    return out


def coerce(kind: Kind, value: Any) -> Any:
    """Return ``value`` as a fact of ``kind``, or None when it has another shape."""
    if value is None:
        return None
    if kind == Kind.NUMBER:
        if isinstance(value, bool):
            return None
        number: int | float
        if isinstance(value, int | float):
            number = value
        elif isinstance(value, str):
            try:
                number = float(value) if "." in value else int(value)
            except ValueError:
                try:
                    number = float(value)  # "1e3"; also "NaN" / "inf", refused below
                except ValueError:
                    return None
        else:
            return None
        return number if math.isfinite(number) else None
    if kind == Kind.STRING:
        return str(value).strip().casefold() if isinstance(value, str | int) else None
    if kind == Kind.BOOL:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        return {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(
            text
        )
    if kind in (Kind.DATE, Kind.TIME):
        return _moment(kind, value)
    if kind == Kind.SET:
        if isinstance(value, list | set | frozenset | tuple):
            return frozenset(str(v).strip().casefold() for v in value)
        return None
    return None


#: Epoch milliseconds of 0001-01-01 and 9999-12-31: a time outside them (a trait sent as
#: 1e308) is no time, and the calendar rules could not read it.
_MIN_MS, _MAX_MS = -62_135_596_800_000, 253_402_300_799_999


def _moment(kind: Kind, value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if not math.isfinite(value) or not _MIN_MS <= value <= _MAX_MS:
            return None
        return int(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if kind == Kind.DATE and len(text) == 7 and text.startswith("--"):
        # A month and day without the year ("--06-30", ISO 8601): what is kept in clear of a
        # sealed birthday. Year 2000 is a leap year, so "--02-29" reads too.
        text = "2000" + text[1:]
    try:
        if kind == Kind.DATE:
            day = date.fromisoformat(text[:10])
            return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _ratio(part: float, whole: float) -> float | None:
    # Not rounded: 3/5 is the same double as the literal 0.6, so boundaries compare exactly.
    return part / whole if whole else None


def _gap_months(months: list[str]) -> int | None:
    """Whole months between the last purchase month and the one before it."""
    if len(months) < 2:
        return None
    (y1, m1), (y2, m2) = (map(int, m.split("-")) for m in sorted(months)[-2:])
    return (y2 - y1) * 12 + m2 - m1


def profile_facts(profile: Profile, declared: dict[str, Kind]) -> Facts:
    """Return the facts of ``profile``; declared facts appear only when well-formed."""
    values = profile.model_dump(exclude={"conflicts"})
    for name in PROFILE_TIMES:
        values[name] = epoch_ms(values[name])
    for act in values["channels"].values():
        for name in ("first_seen", "last_seen"):
            act[name] = epoch_ms(act[name])
    return facts_of(values, declared)


def facts_of(v: Mapping[str, Any], declared: dict[str, Kind]) -> Facts:
    """The facts of a profile's fields (``profiles.store.profile_values``: ``Profile``'s
    fields with times in epoch ms, channels' activity as dicts), without the model: tag
    evaluation reads stored profiles this way. Declared facts appear only when well-formed."""
    orders, spend, events = v["order_count"], v["total_spend"], v["events"]
    parts = v["orders_by_daypart"]
    months = v["purchase_months"]
    channels = v["channels"]
    categories = v["categories"]
    identifiers = v["identifiers"]
    f: Facts = {
        "open_complaints": v["open_complaints"],
        "tickets": v["tickets"],
        "tickets_resolved": v["tickets_resolved"],
        **{f"order_share_{d}": _ratio(parts.get(d, 0), orders) for d in PARTS_OF_DAY},
        "weekend_order_share": _ratio(v["orders_weekend"], orders),
        "purchase_month_count": len(months),
        "purchase_gap_months": _gap_months(months),
        "net_spend": round(spend - v["refund_total"], 2),
        "coupon_rate": _ratio(v["coupons_redeemed"], orders),
        "refund_rate": _ratio(v["refund_total"], spend),
        "events": events,
        "order_count": orders,
        "total_spend": spend,
        "average_spend": v["average_spend"],
        "refund_total": v["refund_total"],
        "csat_last": v["csat_last"],
        "csat_average": v["csat_average"],
        "csat_count": v["csat_count"],
        "nps_last": v["nps_last"],
        "nps_class": v["nps_class"],
        "complaints": v["complaints"],
        "open_tickets": v["open_tickets"],
        "follow_ups": v["follow_ups"],
        "points_earned": v["points_earned"],
        "points_redeemed": v["points_redeemed"],
        "points_balance": v["points_balance"],
        "coupons_redeemed": v["coupons_redeemed"],
        "store_visits": v["store_visits"],
        "member_level": coerce(Kind.STRING, v["member_level"]),
        "first_seen": v["first_seen"],
        "last_seen": v["last_seen"],
        "first_purchase_at": v["first_purchase_at"],
        "last_purchase_at": v["last_purchase_at"],
        "channels": frozenset(channels),
        "channel_count": len(channels),
        "categories": frozenset(categories),
        "category_count": len(categories),
        "identifier_types": frozenset(i.split(":", 1)[0] for i in identifiers),
        "identifier_count": len(identifiers),
    }
    for ch, act in channels.items():
        f[f"channel.{ch}.events"] = act["events"]
        f[f"channel.{ch}.share"] = _ratio(act["events"], events)
        f[f"channel.{ch}.first_seen"] = act["first_seen"]
        f[f"channel.{ch}.last_seen"] = act["last_seen"]
    sources = (("trait.", v["traits"]), ("account.", v["account"]), ("consent.", v["consent"]))
    for prefix, values in sources:
        for key, value in values.items():
            name = prefix + key
            kind = declared.get(name)
            if kind is not None and is_sealed(value):
                # A sealed date reads as the month and day kept beside it, if any.
                value = values.get(f"{key}_md") if kind == Kind.DATE else None
            if kind is not None and (fact := coerce(kind, value)) is not None:
                f[name] = fact
    # A None value reads like a missing fact in every rule (sets are never None).
    return f
