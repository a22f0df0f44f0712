"""Tags in real Redis: evaluated after folds, on merges, when due, and by backfill."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml

from contracts.events import Event, ResolvedEvent
from identity.rules import IdentityRules
from identity.store import IdentityStore, Located
from profiles.agents import changed_names
from profiles.fold import FoldRules
from profiles.store import ProfileStore, latest
from tagging.catalog import DEFAULT_DIR, Catalog, build, load
from tagging.facts import facts_of, profile_facts
from tagging.store import DUE_LEASE_MS, TagChange, TagStore, sync_catalog
from tests.support.events import ev
from tests.support.services import Services

T0 = datetime(2026, 3, 2, 4, tzinfo=UTC)  # a Monday, 12:00 in Shanghai
DAY = timedelta(days=1)


class Tagged:
    """Identity, profiles and tags as the processors chain them, on a fresh namespace."""

    def __init__(self, url: str, catalog: Catalog | None = None) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.client = aioredis.from_url(url)
        self.ns = f"t{uuid.uuid4().hex[:8]}"
        self.identity = IdentityStore(self.client, IdentityRules(), namespace=self.ns)
        self.profiles = ProfileStore(self.client, FoldRules(), namespace=self.ns)
        self.tags = self.with_catalog(catalog or load())
        self.offset = 0
        self.departed: list[TagChange] = []

    def with_catalog(self, catalog: Catalog, evaluator: bool = True) -> TagStore:
        store = TagStore(self.client, catalog, self.profiles, self.ns)
        store.bind(self.url, evaluator)  # as a profiles processor does
        self.tags = store
        return store

    def run(self, events: list[Event], now: datetime, fused: bool = True) -> list[TagChange]:
        """Resolve, fold and tag ``events`` as one micro-batch, like the processors do
        (``fused``: the fold answers the changed profiles, as in the processors; otherwise
        the evaluation reads them back)."""
        items = []
        for e in events:
            items.append(Located(e, 0, self.offset))
            self.offset += 1
        resolved: list[ResolvedEvent] = [
            o.resolved for o in self.loop.run_until_complete(self.identity.resolve(items, now))
        ]
        applied = self.loop.run_until_complete(self.profiles.apply(resolved, now, fused))
        # Merged-away profiles' tags, removed by the fold, as the profiles processor adds them.
        self.departed = self.tags.departed([x for a in applied for x in a.left])
        known = latest(applied) if fused else None
        return self.loop.run_until_complete(
            self.tags.after_fold(changed_names(applied), now, known=known)
        )

    def stored(self, pid: str) -> tuple[str, list[str]]:
        found = self.loop.run_until_complete(self.profiles.read([pid]))[0]
        assert found is not None
        return found.profile.profile_id, found.profile.tags

    def full(self, pid: str, now: datetime) -> list[str]:
        """Every tag evaluated from scratch on the stored profile (the reference)."""
        found = self.loop.run_until_complete(self.profiles.read([pid]))[0]
        assert found is not None
        catalog = self.tags.catalog
        facts = profile_facts(found.profile, catalog.declared)
        return catalog.ids(catalog.evaluate(facts, catalog.clock(now)))

    def count(self, tag_id: str) -> int:
        return self.loop.run_until_complete(self.tags.count(self.tags.catalog.by_id[tag_id]))

    def run_async(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()


@pytest.fixture
def make(services: Services) -> Iterator[Any]:
    made: list[Tagged] = []

    def new(catalog: Catalog | None = None) -> Tagged:
        made.append(Tagged(services.redis_url, catalog))
        return made[-1]

    yield new
    for t in made:
        t.close()


LI_M, LI_P, LI_E = ("member_id", "M1"), ("phone", "+8613800138000"), ("email", "li@x.com")


def test_tags_follow_folds_and_the_index_counts_them(make: Any) -> None:
    t = make()
    now = T0 + DAY
    t.run(
        [
            ev(1, "identify", "pos", [LI_M, LI_P], T0, traits={"age": 34, "city": "Shanghai"}),
            ev(
                2, "order_completed", "pos", [LI_M], T0, order_id="O1", total=2500, category="Shoes"
            ),
        ],
        now,
    )
    pid, tags = t.stored("1")
    assert tags == t.full(pid, now)
    for expected in (
        "age_25_34",
        "city_tier_1",
        "city_shanghai",
        "rfm_r5",
        "lifecycle_new",
        "channel_pos",
        "buys_shoes",
        "spend_2000_5000",
        "offline_only",
        "loyalty_member",
    ):
        assert expected in tags
        assert t.count(expected) == 1
    # A second event changes only what it touches; the result equals a full evaluation.
    # The member app outranks the POS for traits, so its age wins.
    changes = t.run(
        [ev(3, "identify", "member_app", [LI_M], T0, traits={"age": 35}, consent={"sms": True})],
        now,
    )
    added = [
        "age_35_44",
        "channel_member_app",
        "channel_member_app_active_90d",
        "consent_sms_allowed",
        "member_app_active_30d",
        "online_and_offline",
        "reachable_sms",
    ]
    removed = ["age_25_34", "consent_unknown", "offline_only", "single_channel"]
    assert changes == [TagChange(pid, added, removed)]
    assert t.stored(pid)[1] == t.full(pid, now)
    assert (t.count("age_25_34"), t.count("age_35_44")) == (0, 1)


def test_a_merge_re_evaluates_the_survivor_and_clears_the_merged_profile(make: Any) -> None:
    t = make()
    now = T0 + DAY
    t.run([ev(1, "order_completed", "pos", [LI_M], T0, order_id="O1", total=2000)], now)
    t.run([ev(2, "order_completed", "web", [LI_E], T0, order_id="O2", total=1500)], now)
    assert t.count("rfm_m2") == 2 and t.count("channel_web") == 1 and t.count("rfm_m_high") == 0
    t.run([ev(3, "identify", "member_app", [LI_M, LI_E], T0)], now)  # proves M1 ~ li@x.com
    pid, tags = t.stored("2")
    assert pid == "1"
    assert tags == t.full(pid, now)
    assert "rfm_m_high" in tags and "rfm_m3" in tags and "channel_web" in tags
    # The merged profile left every index: each count is of the one survivor.
    assert t.count("rfm_m2") == 0 and t.count("rfm_m3") == 1
    assert t.count("channel_web") == 1 and t.count("channel_pos") == 1


def test_timed_tags_change_when_they_fall_due_without_any_event(make: Any) -> None:
    t = make()
    t.run([ev(1, "order_completed", "pos", [LI_M], T0, order_id="O1", total=100)], T0 + DAY)
    pid, tags = t.stored("1")
    assert {"lifecycle_new", "rfm_r5", "care_first_purchase_thanks"} <= set(tags)
    due = t.run_async(t.client.zscore(f"{t.ns}:tags:due", pid))
    assert due == (T0 + timedelta(days=7)).timestamp() * 1000  # the welcome tag ends first
    # Nothing is due before then.
    assert t.run_async(t.tags.run_due(T0 + 6 * DAY)).changes == []
    claim = t.run_async(t.tags.run_due(T0 + 31 * DAY))
    # 31 days on: no longer new (so active), no longer in the 7-day welcome windows, R 5 -> 4.
    gone = ["care_first_purchase_thanks", "care_welcome", "lifecycle_new", "rfm_r5", "seen_last_7d"]
    told = [TagChange(pid, ["lifecycle_active", "rfm_r4"], gone)]
    assert claim.changes == told
    assert t.stored(pid)[1] == t.full(pid, T0 + 31 * DAY)
    assert (t.count("lifecycle_new"), t.count("rfm_r4")) == (0, 1)

    # The worker dies before publishing: the lease stays the due time, so once it ends the
    # profile is claimed again and the change, already stored, is told again.
    after_lease = T0 + 31 * DAY + timedelta(milliseconds=DUE_LEASE_MS + 1)
    again = t.run_async(t.tags.run_due(after_lease))
    assert again.changes == told
    t.run_async(t.tags.settle_due(again))  # published this time
    # The next due time is the next boundary (rfm_r4 ends at 60 days); nothing is held.
    due = t.run_async(t.client.zscore(f"{t.ns}:tags:due", pid))
    assert due == (T0 + timedelta(days=60)).timestamp() * 1000
    assert t.run_async(t.client.hlen(f"{t.ns}:tags:held")) == 0
    assert t.run_async(t.tags.run_due(T0 + 59 * DAY)).changes == []


def test_settling_a_claim_keeps_a_due_time_a_fold_stored_meanwhile(make: Any) -> None:
    t = make()
    t.run([ev(1, "order_completed", "pos", [LI_M], T0, order_id="O1", total=100)], T0 + DAY)
    pid = t.stored("1")[0]
    claim = t.run_async(t.tags.run_due(T0 + 31 * DAY))
    assert claim.next_due[pid] == (T0 + timedelta(days=60)).timestamp() * 1000
    # Before the claim settles, a new order is folded and re-tagged: its due time is sooner.
    t.run(
        [ev(2, "order_completed", "pos", [LI_M], T0 + 31 * DAY, order_id="O2", total=5)],
        T0 + 31 * DAY,
    )
    key = f"{t.ns}:tags:due"
    by_fold = t.run_async(t.client.zscore(key, pid))
    assert by_fold < claim.next_due[pid]
    t.run_async(t.tags.settle_due(claim))
    assert t.run_async(t.client.zscore(key, pid)) == by_fold
    assert t.run_async(t.client.hlen(f"{t.ns}:tags:held")) == 0


def _random_events(rng: random.Random, n: int) -> list[Event]:
    people = [
        [("member_id", f"M{i}"), ("phone", f"+86138001380{i:02d}"), ("email", f"p{i}@x.com")]
        for i in range(12)
    ]
    kinds = [
        "identify",
        "order_completed",
        "ticket_opened",
        "ticket_resolved",
        "survey_answered",
        "points_earned",
        "coupon_redeemed",
        "store_visited",
        "follow_up_completed",
    ]
    channels = ["pos", "web", "member_app", "mini_program", "service_desk", "survey", "delivery"]
    out = []
    for k in range(n):
        ids = rng.sample(rng.choice(people), rng.randint(1, 2))
        kind = rng.choice(kinds)
        at = T0 - timedelta(days=rng.randint(0, 400), hours=rng.randint(0, 23))
        kw: dict[str, Any] = {}
        if kind == "identify":
            kw["traits"] = {
                "age": rng.randint(15, 80),
                "gender": rng.choice(["female", "male"]),
                "city": rng.choice(["Shanghai", "Chengdu", "Wuhan"]),
                "birthday": f"19{rng.randint(50, 99)}-{rng.randint(1, 12):02d}-10",
            }
            kw["consent"] = {rng.choice(["sms", "email", "wechat"]): rng.random() < 0.7}
        elif kind == "order_completed":
            kw = {
                "order_id": f"O{k}",
                "total": rng.choice([50, 300, 1200, 6000, 25000]),
                "category": rng.choice(["shoes", "bags", "beauty", "home", "kids", "sports"]),
            }
        elif kind in ("ticket_opened", "ticket_resolved", "follow_up_completed"):
            kw = {
                "ticket_id": f"T{rng.randint(0, 5)}",
                "category": rng.choice(["complaint", "repair"]),
            }
        elif kind == "survey_answered":
            kw = {"survey_type": rng.choice(["csat", "nps"]), "score": rng.randint(1, 10)}
        elif kind == "points_earned":
            kw = {"points": rng.randint(10, 3000)}
        out.append(ev(k, kind, rng.choice(channels), ids, at, **kw))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(("size", "fused"), [(7, True), (150, True), (150, False)])
def test_incremental_evaluation_equals_full_evaluation(
    make: Any, seed: int, size: int, fused: bool
) -> None:
    """Only the tags a change can affect are re-evaluated; the result must not differ.
    Batches of 150 span two fold calls, so a profile the first call answered can be merged
    away or changed by the second before its tags are evaluated."""
    t = make()
    rng = random.Random(seed)
    events = _random_events(rng, 300)
    now = T0
    for start in range(0, len(events), size):
        t.run(events[start : start + size], now, fused)
    pids = {t.stored(str(p))[0] for p in range(1, 40) if t.run_async(t.profiles.read([str(p)]))[0]}
    assert len(pids) >= 5
    for pid in pids:
        assert t.stored(pid)[1] == t.full(pid, now), pid
    # And every tag index agrees with the profiles' tags.
    holders: dict[str, int] = {}
    for pid in pids:
        for tag in t.stored(pid)[1]:
            holders[tag] = holders.get(tag, 0) + 1
    for tag in t.tags.catalog.tags:
        assert t.count(tag.id) == holders.get(tag.id, 0), tag.id


def _catalog_with(extra: list[dict[str, Any]], changed: dict[str, str] | None = None) -> Catalog:
    documents = []
    for path in sorted(Path(DEFAULT_DIR).glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for tag in doc.get("tags") or []:
            if changed and tag["id"] in changed:
                tag["rule"] = changed[tag["id"]]
        documents.append((path.name, doc))
    base = {"name_en": "x", "name_zh": "x", "category": "behaviour", "description": "x"}
    documents.append(("99-extra.yaml", {"tags": [{**base, **t} for t in extra]}))
    return build(documents)


def test_backfill_of_a_new_tag_gives_what_live_evaluation_gives(
    make: Any, services: Services
) -> None:
    t = make()
    rng = random.Random(9)
    events = _random_events(rng, 200)
    for start in range(0, len(events), 10):
        t.run(events[start : start + 10], T0)
    t.run_async(t.tags.mark_backfilled(t.tags.catalog.tags))
    assert sync_catalog(services.redis_url, load(), t.ns) == []
    # A new tag, and a changed rule (which also changes the tags that reference it).
    new = {"id": "web_big_basket", "rule": 'average_spend >= 1000 and channels contains "web"'}
    catalog = _catalog_with([new], changed={"rfm_m_high": "total_spend >= 6000"})
    store = t.with_catalog(catalog)
    pending = sorted(tag.id for tag in store.pending)
    assert "web_big_basket" in pending and "rfm_m_high" in pending
    assert "rfm_important_value" in pending and "unhappy_high_value" in pending  # references
    assert "age_25_34" not in pending
    reported: list[tuple[int, int]] = []
    seen, _ = t.run_async(
        store.backfill(store.pending, now=lambda: T0, progress=lambda s, n: reported.append((s, n)))
    )
    assert seen >= 5 and reported[-1][0] == seen
    pids = {t.stored(str(p))[0] for p in range(1, 40) if t.run_async(t.profiles.read([str(p)]))[0]}
    for pid in pids:
        assert t.stored(pid)[1] == t.full(pid, T0), pid
    live = sum("web_big_basket" in t.full(pid, T0) for pid in pids)
    assert live > 0 and t.count("web_big_basket") == live
    # Once backfilled, nothing is pending for this catalog any more.
    assert sync_catalog(services.redis_url, catalog, t.ns) == []


def test_facts_read_from_the_stored_fields_are_the_profile_models_facts(make: Any) -> None:
    # Evaluation reads facts straight from the stored fields; the model (what the API shows
    # and explains) must give the very same facts, times to the millisecond.
    t = make()
    events = _random_events(random.Random(5), 300)
    for start in range(0, len(events), 15):
        t.run(events[start : start + 15], T0)
    found = t.run_async(t.profiles.read([str(p) for p in range(1, 40)]))
    stored = {s.profile_id: s for s in found if s is not None}
    assert len(stored) >= 5
    declared = t.tags.catalog.declared
    for pid, s in stored.items():
        facts = facts_of(s.values, declared)
        assert facts == profile_facts(s.profile, declared), pid
        assert facts["first_seen"] == s.values["first_seen"] > 0


def test_a_profile_written_from_the_stored_fields_is_the_models_json(make: Any) -> None:
    # Snapshots serialise the stored fields without the model; the history, segment queries
    # and readers of cdp.profiles.snapshots get the very bytes the model would give.
    t = make()
    events = _random_events(random.Random(9), 300)
    said = {"name": "王小明 \u2028", "height": 1.75, "vip": True, "note": None, "big": 2**60}
    events.append(ev(301, "identify", "web", [("member_id", "M1")], T0, traits=said))
    for start in range(0, len(events), 15):
        t.run(events[start : start + 15], T0)
    found = t.run_async(t.profiles.read([str(p) for p in range(1, 40)]))
    stored = [s for s in found if s is not None]
    assert len(stored) >= 5
    assert any(s.profile.conflicts for s in stored) and any(s.profile.tags for s in stored)
    for s in stored:
        assert s.json() == s.profile.model_dump_json().encode(), s.profile_id
        renamed = s.profile.model_copy(update={"tags": ["a", "b"]})
        assert s.json(["a", "b"]) == renamed.model_dump_json().encode(), s.profile_id


def test_a_clients_own_score_traits_neither_stop_tagging_nor_hide_the_profile(
    make: Any,
) -> None:
    # csat_last / nps_last are the survey scores the fold keeps as traits; a client's
    # identify may send traits of those names with any value.
    t = make()
    said = {"csat_last": "great", "nps_last": 8.5}
    t.run([ev(1, "identify", "member_app", [LI_M], T0, traits=said)], T0)
    pid, tags = t.stored("1")
    assert "channel_member_app" in tags and tags == t.full(pid, T0)
    profile = t.run_async(t.profiles.get(pid))
    assert profile is not None and (profile.csat_last, profile.nps_last) == (None, None)


def test_a_new_namespace_has_nothing_to_backfill_until_it_holds_profiles(make: Any) -> None:
    t = make()  # bound as a profiles processor binds, before any profile exists
    assert t.tags.pending == []
    prints = t.run_async(t.client.hgetall(f"{t.ns}:tags:print"))
    expected = {tag.id: tag.fingerprint for tag in t.tags.catalog.tags}
    assert {k.decode(): v.decode() for k, v in prints.items()} == expected
    # Its profiles get every tag from live evaluation, what a backfill would have given.
    t.run([ev(1, "order_completed", "pos", [LI_M], T0, order_id="O1", total=100)], T0)
    pid, tags = t.stored("1")
    assert "channel_pos" in tags and tags == t.full(pid, T0)
    # Once a profile exists, a new rule waits for a backfill again.
    new = {"id": "web_big_basket", "rule": 'average_spend >= 1000 and channels contains "web"'}
    store = t.with_catalog(_catalog_with([new]))
    assert [tag.id for tag in store.pending] == ["web_big_basket"]


def _catalog_without(tag_id: str) -> Catalog:
    documents = []
    for path in sorted(Path(DEFAULT_DIR).glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        if doc.get("tags"):
            doc["tags"] = [t for t in doc["tags"] if t["id"] != tag_id]
        documents.append((path.name, doc))
    return build(documents)


def test_a_retired_tag_leaves_the_indexes_and_comes_back_through_a_backfill(make: Any) -> None:
    t = make()
    now = T0 + DAY
    t.run([ev(1, "order_completed", "pos", [LI_M], T0, order_id="O1", total=100)], now)
    t.run([ev(2, "order_completed", "pos", [LI_E], T0, order_id="O2", total=100)], now)
    t.run_async(t.tags.mark_backfilled(t.tags.catalog.tags))
    ordinal = t.tags.catalog.by_id["channel_pos"].bit
    assert t.count("channel_pos") == 2
    # A reader (API, CLI) with an older catalog never drops an index the processors keep.
    t.with_catalog(_catalog_without("channel_pos"), evaluator=False)
    assert t.run_async(t.client.exists(f"{t.ns}:tag:{ordinal}")) == 1
    t.with_catalog(load())
    # A processor deployed without the tag: its index goes; its bit leaves each profile
    # when that profile is evaluated.
    t.with_catalog(_catalog_without("channel_pos"))
    assert t.run_async(t.client.exists(f"{t.ns}:tag:{ordinal}")) == 0
    t.run([ev(3, "store_visited", "pos", [LI_M], T0)], now)
    stored = t.run_async(t.profiles.read(["1"]))[0]
    assert stored is not None and not int(stored.tags, 16) >> ordinal & 1
    assert t.run_async(t.client.exists(f"{t.ns}:tag:{ordinal}")) == 0  # not recreated
    # It comes back with the same ordinal, pending a backfill that restores its index.
    store = t.with_catalog(load())
    assert store.catalog.by_id["channel_pos"].bit == ordinal
    assert [tag.id for tag in store.pending] == ["channel_pos"]
    assert t.count("channel_pos") == 0
    t.run_async(store.backfill(store.pending, now=lambda: now))
    assert t.count("channel_pos") == 2


def test_a_profile_with_no_tag_is_marked_evaluated(make: Any) -> None:
    base = {"name_en": "x", "name_zh": "x", "category": "value", "description": "x"}
    only = build([("t.yaml", {"tags": [{**base, "id": "big", "rule": "total_spend >= 1000"}]})])
    t = make(only)
    t.run([ev(1, "order_completed", "pos", [LI_M], T0, order_id="O1", total=10)], T0)
    stored = t.run_async(t.profiles.read(["1"]))[0]
    assert stored is not None and stored.tags == "0" and stored.profile.tags == []
    # Later changes re-evaluate only what they affect, and the tag still appears when due.
    assert t.run([ev(2, "order_completed", "pos", [LI_M], T0, order_id="O2", total=990)], T0) == [
        TagChange("1", ["big"], [])
    ]


def test_history_snapshots_are_retaken_when_tags_change(make: Any) -> None:
    # The history worker snapshots profiles the fold marked, whenever its timer fires: maybe
    # between a fold and the tag evaluation that follows it, maybe long before a timed tag
    # changes. Storing tags marks the profile again, so the next snapshot has them.
    t = make()
    t.run([ev(1, "identify", "pos", [LI_M], T0)], T0)  # the profile exists; snapshot it
    assert t.run_async(t.profiles.take_changed()) == ["1"]
    t.run_async(t.profiles.done_changed())

    order = ev(2, "order_completed", "pos", [LI_M], T0, order_id="O1", total=100)
    items = [Located(order, 0, t.offset)]
    resolved = [o.resolved for o in t.run_async(t.identity.resolve(items, T0 + DAY))]
    applied = t.run_async(t.profiles.apply(resolved, T0 + DAY))
    assert t.run_async(t.profiles.take_changed()) == ["1"]  # the timer fires right here
    snapshot = t.run_async(t.profiles.get("1"))
    assert snapshot is not None and "lifecycle_new" not in snapshot.tags  # not evaluated yet
    t.run_async(t.profiles.done_changed())
    t.run_async(t.tags.after_fold(changed_names(applied), T0 + DAY))
    assert t.run_async(t.profiles.take_changed()) == ["1"]
    assert "lifecycle_new" in t.stored("1")[1]
    t.run_async(t.profiles.done_changed())

    # A timed tag falls due with no event: the profile is marked for a snapshot too.
    claim = t.run_async(t.tags.run_due(T0 + 31 * DAY))
    assert claim.changes and t.run_async(t.profiles.take_changed()) == ["1"]
    t.run_async(t.profiles.done_changed())
    # Evaluations that change no tag mark nothing.
    t.run_async(t.tags.settle_due(claim))
    assert t.run_async(t.tags.run_due(T0 + 32 * DAY)).changes == []
    assert t.run_async(t.profiles.take_changed()) == []


def test_the_fold_answers_each_changed_profile_as_a_read_gives_it(make: Any) -> None:
    """The tag evaluation after a fold reads nothing back: the fold's call answered the
    profiles it changed, exactly as a read gives them; one changed since is read again."""
    t = make()
    now = T0 + DAY
    first = [
        ev(1, "identify", "pos", [LI_M, LI_P], T0, traits={"age": 34, "city": "Shanghai"}),
        ev(2, "order_completed", "pos", [LI_M], T0, order_id="O1", total=2500, category="Shoes"),
        ev(3, "order_completed", "web", [LI_E], T0, order_id="O2", total=900),
    ]
    items = [Located(e, 0, n) for n, e in enumerate(first)]
    resolved = [o.resolved for o in t.run_async(t.identity.resolve(items, now))]
    applied = t.run_async(t.profiles.apply(resolved, now, True))
    known = latest(applied)
    li, other = applied[0].profile_id, applied[2].profile_id
    assert sorted(known) == sorted([li, other]) and li != other
    for pid, answered in known.items():
        assert answered == t.run_async(t.profiles.read([pid]))[0]
    # Only the call's last event of each profile carries it.
    assert [a.now is not None for a in applied] == [False, True, True]

    reads: list[list[str]] = []
    read = t.profiles.read

    async def counted(pids: list[str], with_keys: bool = False) -> Any:
        reads.append(list(pids))
        return await read(pids, with_keys)

    t.profiles.read = counted  # type: ignore[method-assign]
    # The web profile changes after the fold answered it: stale, so it is read again.
    later = ev(4, "order_completed", "web", [LI_E], T0, order_id="O3", total=8000)
    again = [o.resolved for o in t.run_async(t.identity.resolve([Located(later, 0, 3)], now))]
    t.run_async(t.profiles.apply(again, now))
    t.run_async(t.tags.after_fold(changed_names(applied), now, known=known))
    assert reads == [[other]]
    for pid in (li, other):
        assert t.stored(pid)[1] == t.full(pid, now)


def test_a_profile_answered_by_two_fold_calls_of_a_batch_is_evaluated_as_the_newest(
    make: Any,
) -> None:
    """One batch, three fold calls: the first and the third change the same survivor (the
    third merges into it a profile the batch created). Both answer it; the newer is kept."""
    t = make()
    now = T0 + DAY
    t.run([ev(1, "order_completed", "web", [LI_E], T0, order_id="O1", total=1500)], now)
    other = ("phone", "+8613900139000")
    batch = [ev(2, "order_completed", "pos", [LI_M], T0, order_id="O2", total=2000)]
    batch += [ev(3 + n, "store_visited", "pos", [other], T0) for n in range(120)]
    batch.append(ev(200, "identify", "member_app", [LI_M, LI_E], T0))
    items = [Located(e, 0, 10 + n) for n, e in enumerate(batch)]
    resolved = [o.resolved for o in t.run_async(t.identity.resolve(items, now))]
    applied = t.run_async(t.profiles.apply(resolved, now, True))
    pid = applied[-1].profile_id
    answers = [a.now for a in applied if a.now is not None and a.profile_id == pid]
    assert len(answers) == 2 and answers[0] != answers[1]
    assert latest(applied)[pid] == t.run_async(t.profiles.read([pid]))[0]
    t.run_async(t.tags.after_fold(changed_names(applied), now, known=latest(applied)))
    survivor, tags = t.stored(pid)
    assert survivor == pid and t.stored("2")[0] == pid  # merged
    assert tags == t.full(pid, now) and "channel_web" in tags and "channel_pos" in tags
    assert t.count("channel_web") == 1 and t.count("rfm_m3") == 1
