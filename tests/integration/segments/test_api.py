"""Segments over HTTP on real Redis and embedded ClickHouse, built by the real processors'
steps: identity -> profiles -> tags in Redis, then the history writer's batches in chDB."""

from __future__ import annotations

import asyncio
import io
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
import redis.asyncio as aioredis

from contracts.events import Event, ResolvedEvent
from contracts.identity import LedgerEntry
from deploy import topics
from deploy.settings import ClickHouseSettings, Settings, WorkerSettings
from identity.rules import IdentityRules
from identity.store import IdentityStore, Located
from profiles.agents import changed_names
from profiles.fold import FoldRules
from profiles.store import ProfileStore
from sinks.clickhouse import connect
from sinks.history import HistoryWriter, event_batches, ledger_batch, migrate
from tagging.catalog import load
from tagging.store import TagStore
from tests.support.events import ev
from tests.support.history_data import snapshot_batch
from tests.support.server import running_api

NOW = datetime.now(UTC).replace(microsecond=0)
CITIES = ["Shanghai", "Beijing", "Chengdu"]


def feed(customers: int, seed: int) -> list[Event]:
    """Customers who browse the web shop by email first, buy at the POS by member id, and
    link both in the member app (a merge); some answer surveys or complain."""
    rng = random.Random(seed)
    out: list[Event] = []
    n = 0
    for c in range(customers):
        member, email = ("member_id", f"M{c:05d}"), ("email", f"c{c}@example.com")
        base = NOW - timedelta(days=rng.randint(5, 300))
        if rng.random() < 0.5:
            out.append(ev(n := n + 1, "page", "web", [email], base - timedelta(days=3)))
        for k in range(rng.randint(0, 5)):
            at = base + timedelta(days=k * rng.randint(1, 20))
            out.append(
                ev(
                    n := n + 1,
                    "order_completed",
                    "pos",
                    [member],
                    min(at, NOW),
                    order_id=f"O{c}-{k}",
                    total=rng.choice([59, 199, 899, 2999]),
                    category=rng.choice(["shoes", "bags", "beauty"]),
                )
            )
        traits = {"city": rng.choice(CITIES), "age": rng.randint(18, 65)}
        consent = {"sms": rng.random() < 0.5} if rng.random() < 0.8 else {}
        out.append(
            ev(
                n := n + 1,
                "identify",
                "member_app",
                [member, email],
                base,
                traits=traits,
                consent=consent,
            )
        )
        if rng.random() < 0.3:
            csat = rng.randint(1, 5)
            out.append(
                ev(
                    n := n + 1,
                    "survey_answered",
                    "survey",
                    [email],
                    base + timedelta(days=1),
                    csat=csat,
                )
            )
    return out


@dataclass
class World:
    base: str
    chdb: Any
    db: str
    ns: str
    redis_url: str
    profiles: list[str]
    merges: int


async def _build(settings: Settings, events: list[Event]) -> tuple[list[str], int]:
    client = aioredis.from_url(settings.redis.url.get_secret_value())
    ns = settings.worker.namespace
    identity = IdentityStore(client, IdentityRules(), namespace=ns)
    profiles = ProfileStore(client, FoldRules(), namespace=ns)
    tags = TagStore(client, load(), profiles, ns)
    await asyncio.to_thread(tags.bind, settings.redis.url.get_secret_value(), True)
    writer = HistoryWriter(connect(None, settings.chdb_path()), settings.clickhouse.database)
    migrate(writer._client, settings.clickhouse.database)
    resolved: list[tuple[ResolvedEvent, int, int]] = []
    ledger: list[LedgerEntry] = []
    for start in range(0, len(events), 200):  # micro-batches, as the processors take them
        batch = [Located(e, 0, start + i) for i, e in enumerate(events[start : start + 200])]
        outcomes = await identity.resolve(batch, NOW)
        done = [o.resolved for o in outcomes]
        ledger += [entry for o in outcomes for entry in o.ledger]
        applied = await profiles.apply(done, NOW)
        await tags.after_fold(changed_names(applied), NOW)
        resolved += [(r, 0, r.raw_offset) for r in done]
    for b in event_batches("resolved", resolved, NOW):
        writer.write(b)
    for b in ledger_batch(ledger, "ledger"):
        writer.write(b)
    ids = sorted({r.profile_id for r, _, _ in resolved if r.profile_id})
    found = [p for p in await profiles.get_many(ids) if p is not None]
    survivors = {p.profile_id: p for p in found}
    writer.write(snapshot_batch(list(survivors.values()), 1, NOW, "snap"))
    await client.aclose()
    merges = sum(1 for e in ledger if e.decision.value == "merged")
    return sorted(survivors), merges


@pytest.fixture(scope="module")
def world(services: Any) -> Iterator[World]:
    from tests.conftest import make_settings

    prefix = f"s{uuid.uuid4().hex[:8]}."
    settings = make_settings(services, prefix)
    # One embedded ClickHouse per process, so the session's, with a database of our own.
    db = f"seg{uuid.uuid4().hex[:8]}"
    settings = settings.model_copy(
        update={
            "clickhouse": ClickHouseSettings(path=services.chdb_path, database=db),
            "worker": WorkerSettings(namespace=prefix.rstrip(".")),
        }
    )
    topics.create_all(settings.kafka)  # saved segments are written to their topic
    survivors, merges = asyncio.run(_build(settings, feed(400, seed=3)))
    with running_api(settings, owns_history=True) as base:
        yield World(
            base,
            connect(None, settings.chdb_path()),
            db,
            settings.worker.namespace,
            settings.redis.url.get_secret_value(),
            survivors,
            merges,
        )


def auth(token: str = "tk_segments") -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post(
    world: World, path: str, body: Any, token: str = "tk_segments", **params: Any
) -> httpx.Response:
    return httpx.post(world.base + path, json=body, headers=auth(token), params=params, timeout=60)


def sql(world: World, query: str) -> list[tuple[Any, ...]]:
    """Run a check query written against ``cdp.`` on this test's database."""
    return list(world.chdb.query(query.replace("cdp.", f"{world.db}.")).result_rows)


def test_world_has_merges_and_tags(world: World) -> None:
    assert world.merges > 50  # web emails merged into POS members
    rows = sql(
        world, "SELECT count() FROM cdp.profile_snapshots FINAL WHERE has(tags, 'repeat_buyer')"
    )
    assert rows[0][0] > 10


def people_with(world: World, event: str) -> set[str]:
    """Survivors of the ids that carried ``event`` (one alias hop: the feed makes no chains)."""
    rows = sql(
        world,
        "SELECT DISTINCT coalesce(a.survivor, e.profile_id) FROM cdp.events AS e "
        "LEFT JOIN cdp.profile_aliases AS a ON a.profile_id = e.profile_id "
        f"WHERE e.type = '{event}' SETTINGS join_use_nulls = 1",
    )
    return {r[0] for r in rows}


def test_merged_people_count_once_and_combine_their_ids_events(world: World) -> None:
    # A customer's web pages are under their email's profile, their POS orders under their
    # member id's; the member app linked both, so one survivor holds both ids.
    both = {
        "definition": {
            "all": [
                {"event": "page", "op": "gte", "value": 1},
                {"event": "order_completed", "op": "gte", "value": 1},
            ]
        }
    }
    r = post(world, "/v1/segments/count", both)
    assert r.status_code == 200, r.text
    expected = people_with(world, "page") & people_with(world, "order_completed")
    assert r.json() == {"count": len(expected), "source": "history"}
    # Without following aliases no one would have both: they were never on one id.
    one_id = sql(
        world,
        "SELECT count() FROM (SELECT profile_id FROM cdp.events GROUP BY profile_id "
        "HAVING countIf(type = 'page') > 0 AND countIf(type = 'order_completed') > 0)",
    )[0][0]
    assert one_id == 0 < len(expected)
    orders = post(world, "/v1/segments/count", {"definition": both["definition"]["all"][1]})
    raw_ids = sql(
        world, "SELECT uniqExact(profile_id) FROM cdp.events WHERE type = 'order_completed'"
    )[0][0]
    assert orders.json()["count"] == len(people_with(world, "order_completed")) == raw_ids


def test_live_tag_segment_agrees_with_history(world: World) -> None:
    seg = {"definition": {"all": [{"tag": "repeat_buyer"}, {"not": {"tag": "rfm_m_high"}}]}}
    live = post(world, "/v1/segments/count", seg).json()
    assert live["source"] == "tags"
    expected = sql(
        world,
        "SELECT count() FROM cdp.profile_snapshots FINAL WHERE has(tags, 'repeat_buyer') "
        "AND NOT has(tags, 'rfm_m_high') "
        "AND profile_id NOT IN (SELECT profile_id FROM cdp.profile_aliases)",
    )[0][0]
    assert live["count"] == expected > 0
    preview = post(world, "/v1/segments/preview", seg, limit=5, fields=["tags", "order_count"])
    rows = preview.json()["profiles"]
    assert len(rows) == 5
    assert all("repeat_buyer" in r["tags"] and "rfm_m_high" not in r["tags"] for r in rows)


def test_consent_is_enforced_for_a_purpose(world: World) -> None:
    base = {"definition": {"trait": "city", "op": "eq", "value": "Shanghai"}}
    everyone = post(world, "/v1/segments/count", base).json()["count"]
    sms = post(world, "/v1/segments/count", {**base, "purpose": "sms"}).json()["count"]
    granted = sql(
        world,
        "SELECT count() FROM cdp.profile_snapshots FINAL WHERE traits['city'] = '\"Shanghai\"' "
        "AND consent['sms'] = 1 AND profile_id NOT IN (SELECT profile_id FROM cdp.profile_aliases)",
    )[0][0]
    assert 0 < sms == granted < everyone
    refused = post(
        world, "/v1/segments/count", {**base, "purpose": "sms"}, include_unconsented=True
    )
    assert refused.status_code == 403
    assert refused.json()["field"] == "include_unconsented"
    admin = post(
        world,
        "/v1/segments/count",
        {**base, "purpose": "sms"},
        "tk_segments_admin",
        include_unconsented=True,
    )
    assert admin.json()["count"] == everyone
    live = {"purpose": "sms", "definition": {"tag": "repeat_buyer"}}
    live_count = post(world, "/v1/segments/count", live).json()["count"]
    expected = sql(
        world,
        "SELECT count() FROM cdp.profile_snapshots FINAL WHERE has(tags, 'repeat_buyer') "
        "AND consent['sms'] = 1 AND profile_id NOT IN (SELECT profile_id FROM cdp.profile_aliases)",
    )[0][0]
    assert live_count == expected


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize(
    "seg",
    [
        {
            "definition": {
                "event": "order_completed",
                "op": "gte",
                "value": 2,
                "within": {"last": "365d"},
            }
        },
        {"definition": {"tag": "repeat_buyer"}},
    ],
    ids=["history", "live"],
)
def test_export_rows_equal_count(world: World, fmt: str, seg: dict[str, Any]) -> None:
    count = post(world, "/v1/segments/count", seg).json()["count"]
    fields = ["order_count", "traits.city"]
    r = post(world, "/v1/segments/export", seg, format=fmt, fields=fields)
    assert r.status_code == 200, r.text
    assert int(r.headers["X-Segment-Count"]) == count > 0
    if fmt == "csv":
        lines = r.text.splitlines()
        assert lines[0] == "profile_id,order_count,traits.city"
        rows = lines[1:]
        assert {line.split(",")[2] for line in rows} <= set(CITIES)
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in r.text.splitlines()]
        assert all(row["order_count"] >= 0 and row["traits.city"] in CITIES for row in rows)
    else:
        table = pq.read_table(io.BytesIO(r.content))
        assert table.column_names == ["profile_id", *fields]
        rows = table.to_pylist()
    assert len(rows) == count
    assert len({json.dumps(row) if not isinstance(row, str) else row for row in rows}) == count


def test_validation_errors_name_the_node(world: World) -> None:
    bad = {
        "definition": {
            "all": [
                {"tag": "repeat_buyer"},
                {
                    "event": "order_completed",
                    "op": "gte",
                    "value": 3,
                    "within": {"last": "90 days"},
                },
            ]
        }
    }
    r = post(world, "/v1/segments/count", bad)
    assert r.status_code == 400
    assert r.json()["field"] == "definition.all.1.event.within.last"
    r = post(world, "/v1/segments/count", {"definition": {"any": [{"tag": "no_such_tag"}]}})
    assert (r.status_code, r.json()["field"]) == (400, "definition.any.0.tag")
    r = post(
        world,
        "/v1/segments/count",
        {"definition": {"attribute": "password", "op": "eq", "value": "x"}},
    )
    assert (r.status_code, r.json()["field"]) == (400, "definition.attribute")
    r = httpx.post(
        world.base + "/v1/segments/count", content=b"{not json", headers=auth(), timeout=30
    )
    assert r.status_code == 400 and r.json()["code"] == "invalid_json"
    order = {"event": "order_completed", "op": "gte", "value": 1}
    huge = {"definition": {"all": [{"any": [order] * 30}] * 30}}  # 900: a runaway query
    r = post(world, "/v1/segments/count", huge)
    assert (r.status_code, r.json()["field"]) == (400, "definition")


INJECTIONS = [
    "x' OR '1'='1",
    "x\\' OR 1=1 --",
    "'); DROP TABLE cdp.events; --",
    "Shanghai' UNION SELECT profile_id FROM cdp.profile_snapshots --",
    "{p0:String}",
]


@pytest.mark.parametrize("attack", INJECTIONS)
def test_injection_is_bound_or_refused(world: World, attack: str) -> None:
    events_before = sql(world, "SELECT count() FROM cdp.events")[0][0]
    bound = [
        {"trait": "city", "op": "eq", "value": attack},
        {"trait": attack, "op": "exists"},
        {"event": attack, "op": "gte", "value": 1},
        {
            "event": "order_completed",
            "op": "gte",
            "value": 1,
            "where": [{"property": attack, "op": "eq", "value": attack}],
        },
        {
            "event": "survey_answered",
            "measure": "last",
            "property": attack,
            "op": "eq",
            "value": attack,
        },
        {"attribute": "nps_class", "op": "in", "value": [attack, "detractor"]},
    ]
    for node in bound:
        r = post(world, "/v1/segments/count", {"definition": node})
        assert r.status_code == 200, (node, r.text)
        # Bound as a value, the attack matches nothing (no trait, event or class has it)...
        expected = (
            0
            if node.get("attribute") is None
            else post(
                world,
                "/v1/segments/count",
                {"definition": {"attribute": "nps_class", "op": "eq", "value": "detractor"}},
            ).json()["count"]
        )
        assert r.json()["count"] == expected, node
    refused = [
        ({"definition": {"tag": attack}}, "definition.tag"),
        ({"definition": {"consent": attack}}, "definition.consent"),
        ({"definition": {"attribute": attack, "op": "exists"}}, "definition.attribute"),
        ({"purpose": attack, "definition": {"trait": "city", "op": "exists"}}, "purpose"),
    ]
    for body, field in refused:
        r = post(world, "/v1/segments/count", body)
        assert (r.status_code, r.json()["field"]) == (400, field), body
    r = post(
        world,
        "/v1/segments/preview",
        {"definition": {"trait": "city", "op": "exists"}},
        fields=[attack],
    )
    assert (r.status_code, r.json()["field"]) == (400, "fields")
    r = post(
        world,
        "/v1/segments",
        {"id": attack, "definition": {"tag": "repeat_buyer"}},
        "tk_segments_rw",
    )
    assert (r.status_code, r.json()["field"]) == (400, "id")
    # ...and nothing was changed.
    assert sql(world, "SELECT count() FROM cdp.events")[0][0] == events_before


def test_auth_scopes(world: World) -> None:
    seg = {"definition": {"tag": "repeat_buyer"}}
    r = httpx.post(world.base + "/v1/segments/count", json=seg, timeout=30)
    assert r.status_code == 401 and r.json()["field"] == "Authorization"
    r = post(world, "/v1/segments/count", seg, "tk_reader")
    assert r.status_code == 403
    r = post(world, "/v1/segments", {"id": "x", **seg}, "tk_segments")
    assert r.status_code == 403


def test_saved_segments_are_versioned(world: World) -> None:
    sid = f"vip-{uuid.uuid4().hex[:6]}"
    seg = {"id": sid, "name": "Repeat buyers", "definition": {"tag": "repeat_buyer"}}
    r = post(world, "/v1/segments", seg, "tk_segments_rw")
    assert r.status_code == 201, r.text
    assert (r.json()["version"], r.json()["live"]) == (1, True)
    assert post(world, "/v1/segments", seg, "tk_segments_rw").status_code == 409
    update = {
        "name": "Repeat buyers in Shanghai",
        "definition": {
            "all": [{"tag": "repeat_buyer"}, {"trait": "city", "op": "eq", "value": "Shanghai"}]
        },
    }
    r = httpx.put(
        f"{world.base}/v1/segments/{sid}",
        json=update,
        headers={**auth("tk_segments_rw"), "If-Match": "1"},
        timeout=30,
    )
    assert (r.status_code, r.json()["version"], r.json()["live"]) == (200, 2, False)
    stale = httpx.put(
        f"{world.base}/v1/segments/{sid}",
        json=update,
        headers={**auth("tk_segments_rw"), "If-Match": "1"},
        timeout=30,
    )
    assert stale.status_code == 409
    first = httpx.get(
        f"{world.base}/v1/segments/{sid}", params={"version": 1}, headers=auth(), timeout=30
    )
    assert first.json()["name"] == "Repeat buyers"
    listed = httpx.get(f"{world.base}/v1/segments", headers=auth(), timeout=30).json()
    assert sid in [s["id"] for s in listed["segments"]]
    saved_count = httpx.get(
        f"{world.base}/v1/segments/{sid}/count", headers=auth(), timeout=30
    ).json()
    adhoc = post(world, "/v1/segments/count", update).json()
    assert saved_count == adhoc
    r = httpx.delete(f"{world.base}/v1/segments/{sid}", headers=auth("tk_segments_rw"), timeout=30)
    assert r.status_code == 204
    gone = httpx.get(f"{world.base}/v1/segments/{sid}", headers=auth(), timeout=30)
    assert gone.status_code == 404 and gone.json()["field"] == "segment_id"


def test_explain_shows_bound_sql(world: World) -> None:
    seg = {"definition": {"trait": "city", "op": "eq", "value": "Shanghai' --"}}
    r = post(world, "/v1/segments/explain", seg).json()
    assert r["source"] == "history"
    assert "Shanghai" not in r["sql"]
    assert any("Shanghai' --" in str(v) for v in r["params"].values())


def test_cli_through_the_api(world: World, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from deploy.cli import cli

    sid = f"cli-{uuid.uuid4().hex[:6]}"
    definition = tmp_path / "seg.yaml"
    definition.write_text(
        f"id: {sid}\n"
        "name: Two orders this year\n"
        "definition:\n"
        "  event: order_completed\n"
        "  op: gte\n"
        "  value: 2\n"
        "  within: {last: 365d}\n",
        encoding="utf-8",
    )
    runner = CliRunner()
    env = {"CDP_TOKEN": "tk_segments_rw"}

    def cdp(*args: str) -> str:
        result = runner.invoke(cli, [*args, "--api", world.base], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    expected = post(world, "/v1/segments/count", yaml_body(definition)).json()["count"]
    assert cdp("segments", "count", str(definition)).split()[0] == str(expected)
    rows = cdp("segments", "preview", str(definition), "--limit", "3", "--field", "order_count")
    assert [json.loads(line)["order_count"] >= 2 for line in rows.splitlines()] == [True] * 3
    out = tmp_path / "members.csv"
    cdp("segments", "export", str(definition), "--out", str(out), "--field", "traits.city")
    assert len(out.read_text().splitlines()) == expected + 1
    assert "saved" in cdp("segments", "save", str(definition))
    assert sid in cdp("segments", "list")
    assert cdp("segments", "count", sid).split()[0] == str(expected)
    assert json.loads(cdp("segments", "get", sid))["version"] == 1
    assert "deleted" in cdp("segments", "delete", sid)
    failed = runner.invoke(cli, ["segments", "count", sid, "--api", world.base], env=env)
    assert failed.exit_code == 1 and "HTTP 404" in failed.output


def yaml_body(path: Path) -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load(path.read_text(encoding="utf-8")))


def test_an_api_without_the_history_answers_503_for_history_but_serves_live(
    world: World, settings: Any
) -> None:
    """`cdp api` beside a worker that owns embedded ClickHouse: live segments only."""
    live = {"definition": {"tag": "repeat_buyer"}}
    history = {"definition": {"event": "page", "op": "gte", "value": 1}}
    with running_api(
        settings.model_copy(
            update={"worker": settings.worker.model_copy(update={"namespace": world.ns})}
        )
    ) as base:
        r = httpx.post(base + "/v1/segments/count", json=history, headers=auth(), timeout=30)
        assert r.status_code == 503 and r.json()["code"] == "history_unavailable"
        r = httpx.post(base + "/v1/segments/count", json=live, headers=auth(), timeout=30)
        assert r.status_code == 200
        assert r.json() == post(world, "/v1/segments/count", live).json()


@pytest.mark.parametrize(
    "seg",
    [
        {"definition": {"event": "order_completed", "op": "gte", "value": 1}},
        {"definition": {"tag": "repeat_buyer"}},
    ],
    ids=["history", "live"],
)
def test_parquet_exports_keep_attribute_types(world: World, seg: dict[str, Any]) -> None:
    fields = ["order_count", "total_spend", "last_seen", "tags", "traits.city"]
    r = post(world, "/v1/segments/export", seg, format="parquet", fields=fields)
    assert r.status_code == 200, r.text
    table = pq.read_table(io.BytesIO(r.content))
    types = {f.name: str(f.type) for f in table.schema}
    assert types == {
        "profile_id": "string",
        "order_count": "int64",
        "total_spend": "double",
        "last_seen": "timestamp[ms, tz=UTC]",
        "tags": "list<element: string>",
        "traits.city": "string",
    }
    # The same values as the JSON export, only typed.
    jsonl = post(world, "/v1/segments/export", seg, format="jsonl", fields=fields)
    expected = {row["profile_id"]: row for row in map(json.loads, jsonl.text.splitlines())}
    got = table.to_pylist()
    assert len(got) == len(expected) == int(r.headers["X-Segment-Count"]) > 0
    for row in got:
        want = expected[row["profile_id"]]
        assert row["order_count"] == want["order_count"] >= 1
        assert row["total_spend"] == pytest.approx(want["total_spend"])
        assert row["last_seen"].isoformat().replace("+00:00", "Z") == want["last_seen"]
        assert row["tags"] == want["tags"]
        assert row["traits.city"] == want["traits.city"]
