"""Segment SQL on embedded ClickHouse (chDB) against an independent pandas computation."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pandas as pd
import pytest

from contracts.segments import SegmentDefinition
from segments.sql import Compiler
from sinks.clickhouse import connect
from sinks.history import HistoryWriter, migrate
from tests.support.history_data import NOW, TAGS, History, generate, write
from tests.support.services import Services

#: One embedded ClickHouse per process (the session's), so a database of this module's own.
DB = f"segsql{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def history(services: Services) -> Iterator[tuple[Any, History]]:
    client = connect(None, services.chdb_path)
    migrate(client, DB)
    data = generate(seed=11, profiles=3000, events=40_000)
    write(data, HistoryWriter(client, DB))
    yield client, data


def members(client: Any, definition: dict[str, Any], **kw: Any) -> set[str]:
    seg = SegmentDefinition.model_validate(definition)
    q = Compiler(DB, tags=TAGS, purposes=["sms", "email"]).members(seg, NOW, **kw)
    return {r[0] for r in client.query(q.sql, parameters=q.params).result_rows}


def count(client: Any, definition: dict[str, Any]) -> int:
    seg = SegmentDefinition.model_validate(definition)
    q = Compiler(DB, tags=TAGS, purposes=["sms", "email"]).count(seg, NOW)
    return int(client.query(q.sql, parameters=q.params).result_rows[0][0])


def window(events: pd.DataFrame, days: int) -> pd.DataFrame:
    return events[(events.timestamp >= NOW - timedelta(days=days)) & (events.timestamp <= NOW)]


def survivors(frame: pd.DataFrame) -> set[str]:
    return set(frame.survivor)


# Six realistic segments, each with a hand-written pandas answer over the same raw events.
def lapsed_frequent(p: pd.DataFrame, e: pd.DataFrame) -> set[str]:
    orders = e[e.type == "order_completed"]
    per = window(orders, 90).groupby("survivor").size()
    recent = survivors(window(orders, 30))
    return {pid for pid, n in per.items() if n >= 3} - recent


def vip_recent_complaint(p: pd.DataFrame, e: pd.DataFrame) -> set[str]:
    vips = {r.profile_id for r in p.itertuples() if "vip_customer" in r.tags}
    complained = window(e[(e.type == "ticket_opened") & (e.ticket_type == "complaint")], 30)
    return vips & survivors(complained)


def shanghai_detractors_sms(p: pd.DataFrame, e: pd.DataFrame) -> set[str]:
    hit = p[(p.nps_class == "detractor") & (p.city == "上海") & (p.sms == True)]  # noqa: E712
    return set(hit.profile_id)


def big_spenders(p: pd.DataFrame, e: pd.DataFrame) -> set[str]:
    orders = e[(e.type == "order_completed") & (e.timestamp >= NOW - pd.DateOffset(months=12))]
    orders = orders[orders.timestamp <= NOW]
    per = orders.groupby("survivor").amount.sum()
    return {pid for pid, total in per.items() if total >= 5000}


def unhappy_last_survey(p: pd.DataFrame, e: pd.DataFrame) -> set[str]:
    answered = e[(e.type == "survey_answered") & e.csat.notna()].sort_values("timestamp")
    last = answered.groupby("survivor").csat.last()
    return {pid for pid, csat in last.items() if csat <= 2}


def young_or_mini_program_non_vip(p: pd.DataFrame, e: pd.DataFrame) -> set[str]:
    young = p[p.age.notna() & (p.age >= 18) & (p.age <= 25)]
    mini = p[
        p.channels.map(lambda c: "mini_program" in c) & ~p.tags.map(lambda t: "vip_customer" in t)
    ]
    return set(young.profile_id) | set(mini.profile_id)


def no_visit_but_visitor_big_basket(p: pd.DataFrame, e: pd.DataFrame) -> set[str]:
    visited = survivors(window(e[e.type == "store_visited"], 60))
    orders = window(e[(e.type == "order_completed") & e.category.isin(["shoes", "bags"])], 365)
    avg = orders.groupby("survivor").amount.mean()
    big = {pid for pid, a in avg.items() if a >= 1200}
    visitors = set(p[p.store_visits >= 1].profile_id)
    return (visitors - visited) & big


def quoted_city_regulars(p: pd.DataFrame, e: pd.DataFrame) -> set[str]:
    cities = set(p[p.city.isin(['Xi\'an "West"', "Beijing"])].profile_id)
    visits = window(e[e.type == "store_visited"], 180).groupby("survivor").size()
    return cities & {pid for pid, n in visits.items() if n >= 2}


CASES: list[tuple[dict[str, Any], Callable[[pd.DataFrame, pd.DataFrame], set[str]]]] = [
    (
        {
            "definition": {
                "all": [
                    {
                        "event": "order_completed",
                        "op": "gte",
                        "value": 3,
                        "within": {"last": "90d"},
                    },
                    {"event": "order_completed", "op": "eq", "value": 0, "within": {"last": "30d"}},
                ]
            }
        },
        lapsed_frequent,
    ),
    (
        {
            "definition": {
                "all": [
                    {"tag": "vip_customer"},
                    {
                        "event": "ticket_opened",
                        "op": "gte",
                        "value": 1,
                        "within": {"last": "30d"},
                        "where": [{"property": "type", "op": "eq", "value": "complaint"}],
                    },
                ]
            }
        },
        vip_recent_complaint,
    ),
    (
        {
            "purpose": "sms",
            "definition": {
                "all": [
                    {"attribute": "nps_class", "op": "eq", "value": "detractor"},
                    {"trait": "city", "op": "eq", "value": "上海"},
                ]
            },
        },
        shanghai_detractors_sms,
    ),
    (
        {
            "definition": {
                "event": "order_completed",
                "measure": "sum",
                "property": "amount",
                "op": "gte",
                "value": 5000,
                "within": {"last": "12mo"},
            }
        },
        big_spenders,
    ),
    (
        {
            "definition": {
                "event": "survey_answered",
                "measure": "last",
                "property": "csat",
                "op": "lte",
                "value": 2,
            }
        },
        unhappy_last_survey,
    ),
    (
        {
            "definition": {
                "any": [
                    {"trait": "age", "op": "between", "value": [18, 25]},
                    {
                        "all": [
                            {"attribute": "channels", "op": "contains", "value": "mini_program"},
                            {"not": {"tag": "vip_customer"}},
                        ]
                    },
                ]
            }
        },
        young_or_mini_program_non_vip,
    ),
    (
        {
            "definition": {
                "all": [
                    {
                        "not": {
                            "event": "store_visited",
                            "op": "gte",
                            "value": 1,
                            "within": {"last": "60d"},
                        }
                    },
                    {"attribute": "store_visits", "op": "gte", "value": 1},
                    {
                        "event": "order_completed",
                        "measure": "avg",
                        "property": "amount",
                        "op": "gte",
                        "value": 1200,
                        "within": {"last": "365d"},
                        "where": [{"property": "category", "op": "in", "value": ["shoes", "bags"]}],
                    },
                ]
            }
        },
        no_visit_but_visitor_big_basket,
    ),
    (
        {
            "definition": {
                "all": [
                    {"trait": "city", "op": "in", "value": ['Xi\'an "West"', "Beijing"]},
                    {"event": "store_visited", "op": "gte", "value": 2, "within": {"last": "180d"}},
                ]
            }
        },
        quoted_city_regulars,
    ),
]


@pytest.mark.parametrize("definition, expected", CASES, ids=[c[1].__name__ for c in CASES])
def test_segment_agrees_with_pandas(
    history: tuple[Any, History],
    definition: dict[str, Any],
    expected: Callable[[pd.DataFrame, pd.DataFrame], set[str]],
) -> None:
    client, data = history
    profiles, events = data.frames()
    want = expected(profiles, events)
    got = members(client, definition)
    assert len(want) > 5, "the generated history should give this segment members"
    assert got == want
    assert count(client, definition) == len(want)


def test_merged_ids_have_tombstones_and_migrating_again_adds_none(
    history: tuple[Any, History],
) -> None:
    client, data = history
    tombstones = f"SELECT count() FROM {DB}.profile_snapshots FINAL WHERE merged_into != ''"
    assert client.query(tombstones).result_rows[0][0] == len(data.aliases) > 100
    migrate(client, DB)
    assert client.query(tombstones).result_rows[0][0] == len(data.aliases)
    raw = f"SELECT count() FROM {DB}.profile_snapshots WHERE merged_into != ''"
    assert client.query(raw).result_rows[0][0] == len(data.aliases)  # no second copy


def fresh_history(services: Services, prefix: str) -> tuple[Any, str, HistoryWriter]:
    """A new, migrated database in the session's embedded ClickHouse, and its writer."""
    db = f"{prefix}{uuid.uuid4().hex[:8]}"
    client = connect(None, services.chdb_path)
    migrate(client, db)
    return client, db, HistoryWriter(client, db)


def test_window_edges_and_missing_values(services: Services) -> None:
    """``last`` includes both ends; ``from`` is inclusive and ``to`` exclusive; aggregates of
    no events are 0 (count, sum) or missing (last), and missing values satisfy no comparison."""
    from datetime import timedelta

    from contracts.events import Channel, Event, EventType, Identifier, ResolvedEvent
    from sinks.history import event_batches
    from tests.support.history_data import _profile, snapshot_batch

    client, db, writer = fresh_history(services, "segedge")
    import random

    rng = random.Random(1)
    profiles = [_profile(f"q{n}", rng) for n in range(4)]
    writer.write(snapshot_batch(profiles, 1, NOW, "s"))
    ms = timedelta(milliseconds=1)
    at = {
        "q0": NOW - timedelta(days=30),  # exactly on the edge of last: 30d
        "q1": NOW - timedelta(days=30) - ms,  # just outside
        "q2": NOW,  # now itself
        # q3 has no events at all
    }
    events = [
        ResolvedEvent(
            event=Event(
                event_id=f"edge-{pid}",
                type=EventType.SURVEY_ANSWERED,
                channel=Channel.SURVEY,
                source="survey",
                identifiers=[Identifier(type="member_id", value=pid)],
                properties={"csat": 2},
                original_timestamp=ts,
                received_at=ts,
                timestamp=ts,
            ),
            profile_id=pid,
            raw_partition=0,
            raw_offset=n,
        )
        for n, (pid, ts) in enumerate(at.items())
    ]
    for batch in event_batches("r", [(e, 0, n) for n, e in enumerate(events)], NOW):
        writer.write(batch)
    compiler = Compiler(db)

    def ids(definition: dict[str, Any]) -> set[str]:
        seg = SegmentDefinition.model_validate({"definition": definition})
        q = compiler.members(seg, NOW)
        return {r[0] for r in client.query(q.sql, parameters=q.params).result_rows}

    answered = {"event": "survey_answered", "op": "gte", "value": 1}
    assert ids({**answered, "within": {"last": "30d"}}) == {"q0", "q2"}
    assert ids(
        {**answered, "within": {"from": at["q0"].isoformat(), "to": at["q2"].isoformat()}}
    ) == {"q0"}
    assert ids({**answered, "within": {"from": at["q1"].isoformat()}}) == {"q0", "q1", "q2"}
    assert ids({"event": "survey_answered", "op": "eq", "value": 0}) == {"q3"}
    assert ids(
        {"event": "survey_answered", "measure": "sum", "property": "csat", "op": "lt", "value": 1}
    ) == {"q3"}
    last_low = {
        "event": "survey_answered",
        "measure": "last",
        "property": "csat",
        "op": "lte",
        "value": 2,
    }
    assert ids(last_low) == {"q0", "q1", "q2"}  # q3 has no last CSAT: no comparison holds
    assert ids({"not": last_low}) == {"q3"}  # ...so its negation does


def test_snapshots_keep_one_row_per_profile_whatever_the_order(services: Services) -> None:
    """Segment queries read snapshots without FINAL: the writer keeps only the newest."""
    import random

    from tests.support.history_data import _profile, snapshot_batch

    client, db, writer = fresh_history(services, "segsnap")
    rng = random.Random(2)
    first = [_profile(f"r{n}", rng) for n in range(50)]
    writer.write(snapshot_batch(first, 5, NOW, "v5"))
    newer = [p.model_copy(update={"order_count": 99}) for p in first[:20]]
    writer.write(snapshot_batch(newer, 6, NOW, "v6"))
    older = [p.model_copy(update={"order_count": -1}) for p in first[20:30]]
    writer.write(snapshot_batch(older, 4, NOW, "v4"))  # a replay of an older state
    rows = client.query(
        f"SELECT profile_id, version, order_count FROM {db}.profile_snapshots"
    ).result_rows
    assert len(rows) == 50 == len({r[0] for r in rows})
    by_id = {r[0]: (r[1], r[2]) for r in rows}
    assert all(by_id[p.profile_id] == (6, 99) for p in newer)
    assert all(by_id[p.profile_id][0] == 5 and by_id[p.profile_id][1] >= 0 for p in first[20:])
