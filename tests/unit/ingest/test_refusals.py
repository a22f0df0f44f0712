from datetime import UTC, datetime, timedelta

from contracts.deadletter import DeadLetterReason
from ingest.exceptions import Rejected, Throttled
from ingest.limits import RefusalLetters
from ingest.refusals import (
    ADDRESSES_TRACKED,
    Kind,
    Refusals,
    Tally,
    refusal_letter,
    summary_letter,
)

T0 = datetime(2026, 12, 1, tzinfo=UTC)
KIND = Kind(DeadLetterReason.UNAUTHORIZED, 401, "writeKey", None, "/v1/batch")
OTHER = Kind(DeadLetterReason.UNAUTHORIZED, 401, "Authorization", None, "/v1/track")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def refusals(clock: Clock, processes: int = 1, **letters: float) -> Refusals:
    settings = RefusalLetters.model_validate({"interval_s": 60, **letters})
    return Refusals(settings, processes, clock)


def test_each_address_gets_a_few_letters_and_the_rest_are_counted() -> None:
    r = refusals(Clock(), per_address=2, per_interval=100)
    written = [r.sample(KIND, "a", T0 + timedelta(seconds=n)) for n in range(5)]
    assert written == [True, True, False, False, False]
    assert r.sample(KIND, "b", T0) is True
    assert r.pending() == 3
    tally = r.take()[KIND]
    assert (tally.count, tally.first, tally.last) == (
        3,
        T0 + timedelta(seconds=2),
        T0 + timedelta(seconds=4),
    )
    assert tally.busiest() == {"a": 3}
    assert r.take() == {} and r.pending() == 0


def test_all_addresses_together_get_at_most_per_interval_letters() -> None:
    r = refusals(Clock(), per_address=5, per_interval=3)
    written = [r.sample(KIND, f"10.0.0.{n}", T0) for n in range(10)]
    assert written.count(True) == 3
    assert r.pending() == 7


def test_every_refusal_is_written_or_counted_by_its_kind() -> None:
    r = refusals(Clock(), per_address=1, per_interval=2)
    kinds = [KIND, OTHER] * 50
    written = sum(r.sample(kind, f"a{n % 7}", T0) for n, kind in enumerate(kinds))
    taken = r.take()
    assert written + sum(t.count for t in taken.values()) == 100
    assert set(taken) == {KIND, OTHER}


def test_a_new_interval_writes_letters_again() -> None:
    clock = Clock()
    r = refusals(clock, per_address=1)
    assert [r.sample(KIND, "a", T0) for _ in range(2)] == [True, False]
    clock.now += 59.9
    assert r.sample(KIND, "a", T0) is False
    clock.now += 0.2
    assert r.sample(KIND, "a", T0) is True


def test_each_process_writes_its_share() -> None:
    r = refusals(Clock(), processes=2, per_address=5, per_interval=100)
    assert [r.sample(KIND, "a", T0) for _ in range(4)] == [True, True, False, False]
    # A share never drops to nothing.
    r = refusals(Clock(), processes=4, per_address=1, per_interval=100)
    assert r.sample(KIND, "a", T0) is True


def test_tallies_that_could_not_be_written_are_counted_again() -> None:
    r = refusals(Clock(), per_address=1)
    for n in range(4):
        r.sample(KIND, "a", T0 + timedelta(seconds=n))
    taken = r.take()
    r.sample(KIND, "b", T0 + timedelta(seconds=9))  # b's first: written
    r.sample(KIND, "b", T0 + timedelta(seconds=10))
    r.give_back(taken)
    tally = r.take()[KIND]
    assert tally.count == 4
    assert tally.busiest() == {"a": 3, "b": 1}
    assert (tally.first, tally.last) == (T0 + timedelta(seconds=1), T0 + timedelta(seconds=10))


def test_a_tally_counts_addresses_beyond_those_it_names() -> None:
    tally = Tally(first=T0, last=T0)
    for n in range(ADDRESSES_TRACKED + 5):
        tally.add(f"a{n}", T0)
    assert tally.count == ADDRESSES_TRACKED + 5
    assert tally.untracked == 5
    assert len(tally.busiest()) == 10


def test_a_summary_letter_stands_for_its_tally() -> None:
    tally = Tally(first=T0, last=T0)
    for n in range(12):
        tally.add("203.0.113.7" if n < 3 else f"10.0.0.{n}", T0 + timedelta(seconds=n))
    letter = summary_letter(KIND, tally)
    assert (letter.reason, letter.status, letter.field, letter.endpoint) == (
        DeadLetterReason.UNAUTHORIZED,
        401,
        "writeKey",
        "/v1/batch",
    )
    assert (letter.count, letter.since, letter.received_at) == (12, T0, T0 + timedelta(seconds=11))
    assert letter.payload["busiest_addresses"]["203.0.113.7"] == 3
    assert letter.payload["distinct_addresses"] == 10


def test_a_refused_request_letter_keeps_the_start_of_an_unauthenticated_body_only() -> None:
    body = b'{"batch": [' + b"x" * 5000 + b"]}"
    unauthorized = Rejected(401, DeadLetterReason.UNAUTHORIZED, "no key", "writeKey")
    throttled = Throttled("over", "writeKey", 3)
    common = {"endpoint": "/v1/batch", "received_at": T0, "request_id": "r", "raw_bytes": 10}
    letter = refusal_letter(unauthorized, source=None, raw=body, **common)
    assert (letter.raw, letter.raw_truncated, letter.payload) == ('{"batch": ', True, None)
    assert letter.count == 1 and letter.since is None
    letter = refusal_letter(throttled, source="web", raw=body, **common)
    assert (letter.raw, letter.source, letter.status) == (None, "web", 429)
    assert letter.raw_sha256
