"""Identity resolution in real Redis: merges, refusals, idempotence."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import count
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from contracts.events import Event, Identifier
from identity.normalize import normalize
from identity.rules import IdentityRules
from identity.store import RETRY_BUCKETS, IdentityStore, Located, Outcome, fingerprint
from tests.support.services import Services

NOW = datetime(2026, 11, 23, tzinfo=UTC)
_offsets = count(1_000_000)  # far from the offsets tests give explicitly


class Graph:
    """An identity store on a fresh namespace, driven synchronously for readable tests."""

    def __init__(self, url: str, rules: IdentityRules) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = aioredis.from_url(url)
        self.store = IdentityStore(self.client, rules, namespace=f"t{uuid.uuid4().hex[:8]}")

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def send(
        self, *ids: str | Identifier, event_id: str | None = None, offset: int | None = None
    ) -> Outcome:
        return self.batch([ids], event_ids=[event_id], offsets=[offset])[0]

    def send_from(
        self, source: str, *ids: str, event_id: str | None = None, offset: int | None = None
    ) -> Outcome:
        return self.batch([ids], event_ids=[event_id], offsets=[offset], source=source)[0]

    def batch(
        self,
        events: list[tuple[str | Identifier, ...]],
        event_ids: list[str | None] | None = None,
        offsets: list[int | None] | None = None,
        source: str = "s",
    ) -> list[Outcome]:
        items = []
        for n, ids in enumerate(events):
            event_id = (event_ids or [None] * len(events))[n] or uuid.uuid4().hex
            offset = (offsets or [None] * len(events))[n]
            event = Event(
                event_id=event_id,
                type="track",
                name="x",
                channel="pos",
                source=source,
                identifiers=[
                    i
                    if isinstance(i, Identifier)
                    else Identifier(type=i.split(":")[0], value=i.split(":", 1)[1])
                    for i in ids
                ],
                original_timestamp=NOW,
                received_at=NOW,
                timestamp=NOW,
            )
            items.append(Located(event, 0, next(_offsets) if offset is None else offset))
        return self.run(self.store.resolve(items, NOW))

    def ids(self, pid: str) -> list[str]:
        return self.run(self.store.identifiers(pid))

    def history(self, pid: str) -> list[dict[str, Any]]:
        return [h for h in self.run(self.store.history(pid)) if h["decision"] == "refused"]

    def close(self) -> None:
        self.run(self.client.aclose())
        self.loop.close()


def located(partition: int, offset: int) -> Located:
    """Where an event was read from (all that settling needs)."""
    event = Event(
        event_id="x",
        type="track",
        channel="pos",
        source="s",
        identifiers=[Identifier(type="member_id", value="x")],
        original_timestamp=NOW,
        received_at=NOW,
        timestamp=NOW,
    )
    return Located(event, partition, offset)


@pytest.fixture
def graph(services: Services) -> Iterator[Graph]:
    g = Graph(
        services.redis_url,
        IdentityRules(supernode_limit=2, blocklist={"email": ["cashier@store.cn"]}),
    )
    yield g
    g.close()


def test_new_identifiers_make_a_new_profile_and_known_ones_find_it(graph: Graph) -> None:
    first = graph.send("member_id:M1", "phone:+8613800138000")
    again = graph.send("phone:+8613800138000")
    assert first.created and not again.created
    assert again.resolved.profile_id == first.resolved.profile_id


def test_cross_channel_merge_keeps_the_older_profile(graph: Graph) -> None:
    pos = graph.send("member_id:M1").resolved.profile_id
    web = graph.send("email:a@x.com").resolved.profile_id
    app = graph.send("member_id:M1", "email:a@x.com")
    assert app.resolved.profile_id == pos  # older survives
    assert app.resolved.merged == [web]
    [entry] = app.ledger
    assert (
        entry.decision,
        entry.rule,
        entry.profile_id,
        entry.other_profile_id,
        entry.identifier,
    ) == ("merged", "shared_identifier", pos, web, "email:a@x.com")
    assert graph.ids(web) == graph.ids(pos) == ["email:a@x.com", "member_id:M1"]
    assert graph.send("email:a@x.com").resolved.profile_id == pos


def test_transitive_merge(graph: Graph) -> None:
    a = graph.send("member_id:A", "email:a@x.com").resolved.profile_id
    b = graph.send("customer_id:B", "phone:+8613900000001").resolved.profile_id
    c = graph.send("device_id:dev-c").resolved.profile_id
    graph.send("email:a@x.com", "customer_id:B")  # A ~ B via email + customer id
    graph.send("phone:+8613900000001", "device_id:dev-c")  # B ~ C via phone
    assert {
        graph.send(i).resolved.profile_id
        for i in ("member_id:A", "customer_id:B", "device_id:dev-c")
    } == {a}
    assert len({a, b, c}) == 3


def test_unique_conflict_is_refused_and_recorded(graph: Graph) -> None:
    one = graph.send("member_id:M1", "email:shared@x.com").resolved.profile_id
    other = graph.send("member_id:M2")
    two = other.resolved.profile_id
    outcome = graph.send("member_id:M2", "email:shared@x.com")
    assert outcome.resolved.profile_id == two and outcome.resolved.merged == []
    refusals = [(e.rule, e.profile_id, e.other_profile_id) for e in outcome.ledger]
    assert refusals == [("unique_conflict", two, one)]
    assert graph.ids(one) == ["email:shared@x.com", "member_id:M1"]
    # The shared email is linked to both now; the refusal is not recorded twice.
    assert graph.send("member_id:M2", "email:shared@x.com").ledger == []
    # Both profiles' explain show it, each naming the other.
    told = [(h["rule"], h["other"], h["id"]) for p in (one, two) for h in graph.history(p)]
    assert told == [
        ("unique_conflict", two, "email:shared@x.com"),
        ("unique_conflict", one, "email:shared@x.com"),
    ]


def test_a_shared_identifier_alone_picks_neither_holder(graph: Graph) -> None:
    # A family: two members, one phone. Once both hold it, the phone says nothing about who.
    mum = graph.send("member_id:F1", "phone:+8613900000042").resolved.profile_id
    kid = graph.send("member_id:F2", "phone:+8613900000042").resolved.profile_id
    assert mum != kid
    ticket = graph.send("phone:+8613900000042", "device_id:desk-7")
    assert ticket.created and ticket.resolved.profile_id not in (mum, kid)
    assert ticket.ledger == []
    # With a unique identifier next to it, the event goes to that member.
    assert graph.send("member_id:F2", "phone:+8613900000042").resolved.profile_id == kid
    # The device the ticket brought in joins whoever proves it later.
    later = graph.send("member_id:F1", "device_id:desk-7")
    assert later.resolved.profile_id == mum
    assert [m.other_profile_id for m in later.ledger] == [ticket.resolved.profile_id]
    assert "device_id:desk-7" in graph.ids(mum)


def test_supernode_identifier_never_merges(graph: Graph) -> None:
    # Three members share a device (limit 2): the first two link it, then it is a supernode.
    pids = [
        graph.send(f"member_id:S{n}", "device_id:shop-ipad").resolved.profile_id for n in range(3)
    ]
    assert len(set(pids)) == 3
    lonely = graph.send("email:new@x.com").resolved.profile_id
    out = graph.send("email:new@x.com", "device_id:shop-ipad")
    assert out.resolved.profile_id == lonely and out.resolved.merged == []
    assert [(e.rule, e.identifier) for e in out.ledger] == [("supernode", "device_id:shop-ipad")]
    # With nothing else, the event is nobody's: no new profile that nothing could ever join.
    alone = graph.send("device_id:shop-ipad")
    assert alone.resolved.profile_id == "" and not alone.created


def test_blocklisted_identifiers_never_link(graph: Graph) -> None:
    a = graph.send("member_id:B1", "email:cashier@store.cn", "device_id:000000")
    b = graph.send("member_id:B2", "email:cashier@store.cn", "device_id:000000")
    assert a.resolved.profile_id != b.resolved.profile_id
    assert sorted(e.rule for e in b.ledger) == ["blocklist", "blocklist"]
    assert graph.ids(a.resolved.profile_id) == ["member_id:B1"]
    junk_only = graph.send("device_id:000000")
    assert junk_only.resolved.profile_id == "" and not junk_only.created


def test_identifiers_that_fail_validation_never_link(graph: Graph) -> None:
    # What ingest makes of a CRM's placeholders: kept on the event, flagged not normalised.
    phone, email = normalize("phone", "无"), normalize("email", "n.a@")
    assert not phone.normalized and not email.normalized
    a = graph.send("anonymous_id:web-1", phone, email)
    b = graph.send("anonymous_id:web-2", phone, email)
    assert a.resolved.profile_id != b.resolved.profile_id and b.resolved.merged == []
    assert sorted((e.rule, e.identifier) for e in b.ledger) == [
        ("invalid", "email:n.a@"),
        ("invalid", "phone:无"),
    ]
    assert graph.ids(b.resolved.profile_id) == ["anonymous_id:web-2"]
    again = graph.send("anonymous_id:web-2", phone)  # a refusal is recorded once per profile
    assert again.ledger == [] and again.resolved.profile_id == b.resolved.profile_id
    # The same person's valid phone, spelled two ways, still links.
    c = graph.send("anonymous_id:web-3", normalize("phone", "138-0013-8000"))
    d = graph.send("member_id:V1", normalize("phone", "+86 138 0013 8000"))
    assert d.resolved.profile_id == c.resolved.profile_id


def test_the_same_message_id_from_two_sources_is_two_events(graph: Graph) -> None:
    # Message ids are unique per source (each channel counts its own): another source's
    # event with the same id is a different event, not a client retry.
    pos = graph.send("member_id:P1", event_id="order-1001", offset=901)
    web = graph.send_from("web", "customer_id:W1", event_id="order-1001", offset=902)
    assert not web.duplicate and web.resolved.profile_id not in ("", pos.resolved.profile_id)
    retry = graph.send_from("web", "customer_id:W1", event_id="order-1001", offset=903)
    assert retry.duplicate  # the same source's retry still is one


def test_cap_refuses_extra_values(graph: Graph) -> None:
    pid = graph.send("member_id:C1", "email:1@x.com", "email:2@x.com", "email:3@x.com")
    out = graph.send("member_id:C1", "email:4@x.com")
    assert [(e.rule, e.identifier) for e in out.ledger] == [("cap", "email:4@x.com")]
    assert len(graph.ids(pid.resolved.profile_id)) == 4


def test_redelivery_replays_the_same_outcome_and_retries_are_flagged(graph: Graph) -> None:
    graph.send("member_id:R1")
    first = graph.send("member_id:R1", "email:r@x.com", event_id="ev-1", offset=10)
    graph.send("email:other@x.com", "member_id:R9")
    again = graph.send("member_id:R1", "email:r@x.com", event_id="ev-1", offset=10)
    assert again.resolved == first.resolved and again.ledger == first.ledger
    assert not again.duplicate
    retry = graph.send("member_id:R1", "email:r@x.com", event_id="ev-1", offset=99)
    assert retry.duplicate and retry.ledger == []


def test_outcomes_are_held_until_published_then_only_a_fingerprint_remains(
    graph: Graph,
) -> None:
    ns = graph.store._ns
    new = graph.send("member_id:K1", event_id="k-1", offset=7)
    graph.send("email:k@x.com", event_id="k-2", offset=8)
    merged = graph.send("member_id:K1", "email:k@x.com", event_id="k-3", offset=9)
    assert merged.resolved.merged  # held whole, so a replay re-emits the merge
    assert sorted(graph.run(graph.client.hkeys(f"{ns}:ev:held:0"))) == [b"7", b"8", b"9"]
    both = ("member_id:K1", "email:k@x.com")
    for ids, event_id, offset, first in ((both[:1], "k-1", 7, new), (both, "k-3", 9, merged)):
        again = graph.send(*ids, event_id=event_id, offset=offset)
        assert (again.resolved, again.ledger, again.duplicate) == (
            first.resolved,
            first.ledger,
            False,
        )
    # Once the records are published the outcome is let go: a redelivery of the same offset
    # is then a duplicate with nothing to publish, known by its 8-byte fingerprint alone.
    graph.run(graph.store.settle([located(0, 7), located(0, 8), located(0, 9)]))
    assert graph.run(graph.client.hlen(f"{ns}:ev:held:0")) == 0
    redelivered = graph.send(*both, event_id="k-3", offset=9)
    assert redelivered.duplicate and redelivered.ledger == []
    [window] = graph.run(
        graph.client.keys(f"{ns}:ev:w:*:{fingerprint('s', 'k-3') % RETRY_BUCKETS}")
    )
    assert graph.run(graph.client.object("encoding", window)) == b"intset"
    assert 0 < graph.run(graph.client.ttl(window)) <= 8 * 86_400


def test_a_batch_resolves_in_order_in_one_round_trip(graph: Graph) -> None:
    out = graph.batch([("member_id:Q1",), ("email:q@x.com",), ("member_id:Q1", "email:q@x.com")])
    assert out[2].resolved.merged == [out[1].resolved.profile_id]
    assert out[2].resolved.profile_id == out[0].resolved.profile_id


def _legacy_profile(client: Any, ns: str, pid: str, ids: list[str], unique: dict[str, str]) -> None:
    """A profile as the three-key layout stored it (identifier set, counts, unique values)."""
    counts: dict[str, int] = {}
    for i in ids:
        client.sadd(f"{ns}:i:{i}", pid)
        counts[i.split(":")[0]] = counts.get(i.split(":")[0], 0) + 1
    client.sadd(f"{ns}:p:{pid}:ids", *ids)
    client.hset(f"{ns}:p:{pid}:cnt", mapping=counts)
    if unique:
        client.hset(f"{ns}:p:{pid}:uq", mapping=unique)
    client.set(f"{ns}:seq", max(int(client.get(f"{ns}:seq") or 0), int(pid)))


def test_profiles_of_the_three_key_layout_resolve_and_move_to_one_hash(
    graph: Graph, services: Services
) -> None:
    ns = graph.store._ns
    client = redis.Redis.from_url(services.redis_url, decode_responses=True)
    _legacy_profile(client, ns, "7", ["member_id:M7", "phone:+8613800000007"], {"member_id": "M7"})
    _legacy_profile(client, ns, "8", ["email:b@x.com"], {})
    _legacy_profile(client, ns, "9", ["email:untouched@x.com"], {})
    # Before any sweep: an event bridging two old profiles merges them, with their unique
    # values still enforced; both are moved to the hash as they are touched.
    out = graph.send("phone:+8613800000007", "email:b@x.com", "email:new@x.com")
    assert (out.resolved.profile_id, out.resolved.merged) == ("7", ["8"])
    assert graph.ids("7") == [
        "email:b@x.com",
        "email:new@x.com",
        "member_id:M7",
        "phone:+8613800000007",
    ]
    refused = graph.send("member_id:M8", "phone:+8613800000007")
    assert refused.resolved.profile_id != "7"  # another member id: a different person
    assert client.hgetall(f"{ns}:p:7:g") == {
        "=member_id:M7": "1",
        "=phone:+8613800000007": "1",
        "=email:b@x.com": "1",
        "=email:new@x.com": "1",
        "#member_id": "1",
        "#phone": "1",
        "#email": "2",
        "!member_id": "M7",
    }
    assert not client.exists(f"{ns}:p:7:ids", f"{ns}:p:8:ids", f"{ns}:p:8:g")
    # An untouched old profile is still read, then moved by the sweep, which marks the
    # namespace so the scripts stop looking for the older keys.
    assert graph.ids("9") == ["email:untouched@x.com"]
    assert graph.run(graph.store.upgrade_graphs()) == 1
    assert client.hgetall(f"{ns}:p:9:g") == {"=email:untouched@x.com": "1", "#email": "1"}
    assert not client.exists(f"{ns}:p:9:ids", f"{ns}:p:9:cnt")
    assert client.get(f"{ns}:graph:v2") == "1"
    assert graph.run(graph.store.upgrade_graphs()) == 0
    assert graph.send("email:untouched@x.com").resolved.profile_id == "9"
    client.close()
