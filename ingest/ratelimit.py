"""Token buckets per client address and per write key, each API process holding its share."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from itertools import islice

from ingest.exceptions import Throttled
from ingest.limits import RateLimits

Clock = Callable[[], float]

#: Buckets kept per limit; the least recently used are forgotten beyond it (a forgotten
#: bucket starts full again, so a flood from more clients than this within one refill is
#: limited a little less). ~100 bytes each.
TRACKED = 65_536


class TokenBuckets:
    """Buckets by key, refilled at ``rate`` tokens a second up to ``burst``.

    A take is let through while its bucket holds at least one token and takes its whole
    cost, which may leave the bucket in debt: a cost above the burst still passes, and the
    debt holds the key back until it is repaid, so the long-run rate stays ``rate``.
    """

    def __init__(
        self, rate: float, burst: float, tracked: int = TRACKED, clock: Clock = time.monotonic
    ) -> None:
        self.rate, self.burst = rate, max(burst, 1.0)
        self._tracked = tracked
        self._clock = clock
        #: key -> (tokens, when counted); insertion order is least recently used first.
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens from ``key``'s bucket: 0.0, or the seconds until it may."""
        now = self._clock()
        state = self._buckets.pop(key, None)
        if state is None:
            tokens = self.burst
            if len(self._buckets) >= self._tracked:
                self._forget()
        else:
            tokens = min(self.burst, state[0] + (now - state[1]) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= cost
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)

    def _forget(self) -> None:
        """Drop the least recently used quarter (amortised: not on every new key)."""
        excess = len(self._buckets) - self._tracked * 3 // 4
        for key in list(islice(self._buckets, excess)):
            del self._buckets[key]


def _buckets(rate: float, burst: int, share: int, clock: Clock) -> TokenBuckets | None:
    if rate <= 0:
        return None
    return TokenBuckets(rate / share, burst / share, clock=clock)


def _retry_after(wait_s: float) -> int:
    return max(1, math.ceil(wait_s))


class Limiter:
    """The deployment's rate limits, as one of ``processes`` API processes enforces them.

    The kernel spreads connections over the processes (``SO_REUSEPORT``), so each takes
    1/N of every rate and burst: N processes together let at most the limit through, and a
    client whose requests all arrive over one connection gets 1/N of it.
    """

    def __init__(self, limits: RateLimits, processes: int, clock: Clock = time.monotonic) -> None:
        share = max(processes, 1)
        self.limits = limits
        self._address = _buckets(limits.address_requests_per_s, limits.address_burst, share, clock)
        self._key = _buckets(limits.key_events_per_s, limits.key_burst, share, clock)

    def check_address(self, address: str) -> None:
        """Count one request from ``address``; raise ``Throttled`` when it is over the limit."""
        if self._address is None:
            return
        wait = self._address.take(address)
        if wait:
            raise Throttled(
                f"over {self.limits.address_requests_per_s:g} requests/s from this client "
                f"address (burst {self.limits.address_burst}); retry later",
                "client_address",
                _retry_after(wait),
            )

    def check_key(self, source: str, events: int) -> None:
        """Count a request's ``events`` under ``source``'s write key; raise when over."""
        if self._key is None:
            return
        wait = self._key.take(source, float(max(events, 1)))
        if wait:
            raise Throttled(
                f"over {self.limits.key_events_per_s:g} events/s under this write key "
                f"(burst {self.limits.key_burst}); retry later",
                "writeKey",
                _retry_after(wait),
            )
