import pytest

from ingest.exceptions import Throttled
from ingest.intake import message_count
from ingest.limits import RateLimits
from ingest.ratelimit import Limiter, TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_lets_its_burst_through_then_refills_at_its_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token comes in half a second
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    clock.now += 60  # refilled, but never beyond the burst
    assert [buckets.take("a") == 0.0 for _ in range(4)] == [True, True, True, False]


def test_keys_have_buckets_of_their_own() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, clock=Clock())
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    assert buckets.take("b") == 0.0


def test_a_take_larger_than_the_burst_passes_and_leaves_a_debt() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=100.0, burst=1000, clock=clock)
    assert buckets.take("k", 2500) == 0.0
    # 1,501 tokens short of one: refused until the debt is repaid.
    assert buckets.take("k") == pytest.approx(15.01)
    clock.now += 15.0
    assert buckets.take("k") > 0
    clock.now += 0.02
    assert buckets.take("k") == 0.0


def test_a_refused_take_costs_nothing() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1.0, burst=1, clock=clock)
    buckets.take("a")
    for _ in range(100):
        buckets.take("a")
    clock.now += 1.0
    assert buckets.take("a") == 0.0


def test_the_buckets_kept_are_bounded_and_the_least_recently_used_go_first() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=0.001, burst=1, tracked=100, clock=clock)
    buckets.take("busy")
    for n in range(1000):
        buckets.take(f"c{n}")
        if n % 10 == 0:
            buckets.take("busy")  # used again and again: kept, and still empty
    assert len(buckets) <= 100
    assert buckets.take("busy") > 0


def limiter(processes: int = 1, **limits: float) -> Limiter:
    return Limiter(RateLimits.model_validate(limits), processes, Clock())


def test_over_the_address_limit_is_a_429_naming_the_client_address() -> None:
    lim = limiter(address_requests_per_s=0.5, address_burst=2)
    lim.check_address("203.0.113.7")
    lim.check_address("203.0.113.7")
    with pytest.raises(Throttled) as caught:
        lim.check_address("203.0.113.7")
    assert (caught.value.status, caught.value.field) == (429, "client_address")
    assert caught.value.retry_after_s == 2  # a token in 2 s
    lim.check_address("198.51.100.1")


def test_over_the_key_limit_is_a_429_naming_the_write_key() -> None:
    lim = limiter(key_events_per_s=10, key_burst=100)
    lim.check_key("web", 100)
    with pytest.raises(Throttled) as caught:
        lim.check_key("web", 1)
    assert (caught.value.field, caught.value.retry_after_s) == ("writeKey", 1)
    lim.check_key("pos", 1)


def test_each_process_enforces_its_share() -> None:
    lim = limiter(processes=4, address_requests_per_s=100, address_burst=8)
    lim.check_address("a")
    lim.check_address("a")
    with pytest.raises(Throttled):
        lim.check_address("a")


def test_a_limit_of_zero_is_off() -> None:
    lim = limiter(address_requests_per_s=0, key_events_per_s=0, address_burst=1, key_burst=1)
    for _ in range(1000):
        lim.check_address("a")
        lim.check_key("web", 2500)


@pytest.mark.parametrize(
    ("kind", "body", "count"),
    [
        ("batch", {"batch": [{}, {}, {}]}, 3),
        ("batch", {"batch": []}, 1),
        ("batch", {"batch": "x"}, 1),
        ("batch", [1, 2], 1),
        ("native", {"events": [{}, {}]}, 2),
        ("native", [{}, {}, {}, {}], 4),
        ("native", {"type": "track"}, 1),
        ("single", {"type": "track"}, 1),
    ],
)
def test_a_request_counts_the_messages_it_carries(kind: str, body: object, count: int) -> None:
    assert message_count(kind, body) == count
