"""What the sealer does to an event, with data keys held in memory (no key store)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, cast

from identity.rules import IdentityRules
from ingest.mapping import MAPPED_FROM, compile_mapping
from ingest.segment import from_segment
from ingest.sources import Source, hash_key
from privacy.classification import Classification
from privacy.crypto import DataKey, MasterKeys, envelope_kid, is_blind, is_sealed, kid_of
from privacy.keystore import KeyStore
from privacy.seal import Sealer
from profiles.store import as_profile, profile_values
from tagging.catalog import load
from tagging.facts import profile_facts
from tagging.rules import Kind

NOW = datetime(2026, 6, 15, 8, tzinfo=UTC)
APP = Source(name="app", channel="member_app", user_id_type="member_id", key_sha256=hash_key("k"))


class Keys:
    """Data keys in a dict: enough to test what is sealed under which key."""

    def __init__(self) -> None:
        self.made: dict[str, DataKey] = {}

    async def for_subjects(self, blinds: Iterable[str]) -> dict[str, DataKey]:
        for b in blinds:
            self.made.setdefault(kid_of(b), DataKey(kid_of(b), (kid_of(b).encode() * 6)[:64]))
        return {b: self.made[kid_of(b)] for b in blinds}


def sealer() -> tuple[Sealer, Keys, MasterKeys]:
    keys, master = Keys(), MasterKeys.generate()
    store = cast(KeyStore, keys)
    return Sealer(store, master, Classification.load(), IdentityRules()), keys, master


def identify(**extra: Any) -> Any:
    msg = {
        "type": "identify",
        "userId": "M0000042",
        "anonymousId": "unknown",
        "traits": {
            "phone": "138 0013 8000",
            "email": "Li.Lei@Example.com",
            "name": "Li Lei",
            "birthday": "1990-06-30",
            "city": "Shanghai",
            "age": 36,
        },
        "context": {"ip": "10.1.2.3", "device": {"id": "dev-1", "model": "iPhone"}},
        "properties": {"phone": "13800138000", "total": 99},
        **extra,
    }
    return from_segment(msg, source=APP, received_at=NOW)


def test_identifiers_become_blind_indexes_with_their_values_sealed_under_their_own_keys() -> None:
    seal, keys, master = sealer()
    (event,) = asyncio.run(seal.seal([identify()]))
    by_type = {i.type: i for i in event.identifiers}
    phone = by_type["phone"]
    assert phone.value == master.blind("phone", "+8613800138000") and phone.sealed is not None
    assert keys.made[kid_of(phone.value)].open(phone.sealed) == "+8613800138000"
    member = by_type["member_id"]
    assert keys.made[kid_of(member.value)].open(member.sealed or "") == "M0000042"
    # Junk on the identity blocklist identifies nobody: kept as it is, so identity refuses it.
    assert by_type["anonymous_id"].value == "unknown" and by_type["anonymous_id"].sealed is None
    assert event.partition_key() == f"member_id:{member.value}".encode()
    assert all(is_blind(i.value) for t, i in by_type.items() if t != "anonymous_id")


def test_sensitive_traits_properties_and_context_are_sealed_under_the_strongest_key() -> None:
    seal, keys, master = sealer()
    (event,) = asyncio.run(seal.seal([identify(previousId="old-7")]))
    person = keys.made[kid_of(master.blind("member_id", "M0000042"))]
    for name in ("phone", "email", "name", "birthday"):
        assert is_sealed(event.traits[name]), name
    assert person.open(event.traits["email"]) == "Li.Lei@Example.com"
    assert event.traits["birthday_md"] == "--06-30"
    assert (event.traits["city"], event.traits["age"]) == ("Shanghai", 36)
    assert person.open(event.properties["phone"]) == "13800138000"
    assert event.properties["total"] == 99
    assert person.open(event.context["ip"]) == "10.1.2.3"
    assert person.open(event.context["device"]["id"]) == "dev-1"
    assert event.context["device"]["model"] == "iPhone"
    assert person.open(event.previous_id or "") == "old-7"
    text = event.model_dump_json()
    for plain in ("13800138000", "Li.Lei", "li.lei", "M0000042", "10.1.2.3", "dev-1", "old-7"):
        assert plain not in text, plain


def test_sealing_twice_gives_the_same_event() -> None:
    seal, _, _ = sealer()
    first, again = asyncio.run(seal.seal([identify(), identify()]))
    assert first.model_dump(exclude={"event_id"}) == again.model_dump(exclude={"event_id"})


def test_a_sealed_birthday_still_reads_its_month_for_birthday_rules() -> None:
    declared = load().declared
    assert declared["trait.birthday"] == Kind.DATE
    stored = as_profile(profile_values("1", {}, {}, [], {}, {}, []), {})
    traits = {"birthday": "v1.abcdefghijkl.AAAA", "birthday_md": "--06-30"}
    profile = stored.model_copy(update={"traits": traits})
    fact = profile_facts(profile, declared)["trait.birthday"]
    assert datetime.fromtimestamp(fact / 1000, UTC).strftime("%m-%d") == "06-30"
    sealed_only = profile.model_copy(update={"traits": {"birthday": "v1.abcdefghijkl.AAAA"}})
    assert "trait.birthday" not in profile_facts(sealed_only, declared)


def test_what_a_mapped_channel_sent_is_sealed_whole_and_its_mapped_traits_by_name() -> None:
    mapping = compile_mapping(
        {"name": "pos", "sources": ["app"], "traits": {"rename": {"shouji": "phone"}}}, "inline"
    )
    msg = {"type": "identify", "userId": "M1", "traits": {"shouji": "13800138000", "age": 3}}
    (mapped,) = mapping.apply(from_segment(msg, source=APP, received_at=NOW), "CN")
    seal, keys, _ = sealer()
    (event,) = asyncio.run(seal.seal([mapped]))
    envelope = event.context[MAPPED_FROM]
    assert is_sealed(envelope) and is_sealed(event.traits["phone"])
    assert event.traits["age"] == 3
    opened = keys.made[envelope_kid(envelope)].open(envelope)
    assert opened["traits"] == {"shouji": "13800138000", "age": 3}
