"""Which refused requests get a dead letter of their own, the count of all the others, and
the letters of both."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from pydantic import JsonValue

from contracts.deadletter import DeadLetter, DeadLetterReason
from ingest.exceptions import Rejected
from ingest.limits import RefusalLetters

#: Client addresses counted one by one in a summary; the busiest of them are named.
ADDRESSES_TRACKED = 1_000
ADDRESSES_NAMED = 10


class Kind(NamedTuple):
    """What a summary letter stands for: refusals alike but for their request."""

    reason: DeadLetterReason
    status: int
    field: str | None
    source: str | None
    endpoint: str


@dataclass
class Tally:
    """Refusals of one kind that were counted but not written one by one."""

    first: datetime
    last: datetime
    count: int = 0
    addresses: Counter[str] = field(default_factory=Counter)
    #: Refusals from addresses beyond ``ADDRESSES_TRACKED``.
    untracked: int = 0

    def add(self, address: str, at: datetime, count: int = 1) -> None:
        """Count ``count`` more refusals from ``address``."""
        self.count += count
        self.first, self.last = min(self.first, at), max(self.last, at)
        if address in self.addresses or len(self.addresses) < ADDRESSES_TRACKED:
            self.addresses[address] += count
        else:
            self.untracked += count

    def merge(self, other: Tally) -> None:
        """Add another tally of the same kind (one that could not be written)."""
        for address, count in other.addresses.items():
            self.add(address, other.first, count)
        self.count += other.untracked
        self.untracked += other.untracked
        self.first, self.last = min(self.first, other.first), max(self.last, other.last)

    def busiest(self) -> dict[str, JsonValue]:
        """The addresses with most refusals, and how many each."""
        return dict(self.addresses.most_common(ADDRESSES_NAMED))


class Refusals:
    """Decide per refusal whether it is written one by one; count the others by kind.

    Within each interval, at most ``per_address`` letters per client address and
    ``per_interval`` in all (this process's share of the deployment's numbers); beyond
    them a refusal is counted into its kind's tally, which ``take`` hands over to become a
    summary letter. A refusal is always either written or counted, so the letters add up.
    """

    def __init__(
        self,
        letters: RefusalLetters,
        processes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        share = max(processes, 1)
        self.interval_s = letters.interval_s
        self.raw_bytes = letters.raw_bytes
        self.per_address = max(letters.per_address // share, 1)
        self.per_interval = max(letters.per_interval // share, 1)
        self._clock = clock
        self._window_end = clock() + self.interval_s
        self._written: Counter[str] = Counter()
        self._written_total = 0
        self._pending: dict[Kind, Tally] = {}

    def sample(self, kind: Kind, address: str, at: datetime) -> bool:
        """True: write this refusal's own letter; False: it was counted for a summary."""
        now = self._clock()
        if now >= self._window_end:
            self._written.clear()
            self._written_total = 0
            self._window_end = now + self.interval_s
        if self._written[address] < self.per_address and self._written_total < self.per_interval:
            self._written[address] += 1
            self._written_total += 1
            return True
        tally = self._pending.get(kind)
        if tally is None:
            tally = self._pending[kind] = Tally(first=at, last=at)
        tally.add(address, at)
        return False

    def pending(self) -> int:
        """Refusals counted and not yet handed over."""
        return sum(t.count for t in self._pending.values())

    def take(self) -> dict[Kind, Tally]:
        """Hand over every tally (to be written as summaries); start counting anew."""
        taken, self._pending = self._pending, {}
        return taken

    def give_back(self, taken: dict[Kind, Tally]) -> None:
        """Count again tallies whose summaries could not be written."""
        for kind, tally in taken.items():
            mine = self._pending.get(kind)
            if mine is None:
                self._pending[kind] = tally
            else:
                mine.merge(tally)


def refusal_letter(
    rejected: Rejected,
    *,
    source: str | None,
    endpoint: str,
    received_at: datetime,
    request_id: str,
    raw: bytes,
    raw_bytes: int,
    key_sha256: str | None = None,
) -> DeadLetter:
    """A refused request's own letter: the first ``raw_bytes`` of its body if unauthenticated
    (a 429's client sends its body again), never the parsed payload."""
    keep = raw_bytes if rejected.status == 401 else 0
    return DeadLetter(
        reason=rejected.reason,
        field=rejected.field,
        message=rejected.message,
        index=None,
        status=rejected.status,
        source=source,
        endpoint=endpoint,
        received_at=received_at,
        request_id=request_id,
        payload=None,
        raw=raw[:keep].decode("utf-8", "replace") if keep and raw else None,
        raw_truncated=len(raw) > keep,
        raw_sha256=hashlib.sha256(raw).hexdigest() if raw else None,
        key_sha256=key_sha256,
    )


def summary_letter(kind: Kind, tally: Tally) -> DeadLetter:
    """The letter standing for ``tally``'s refusals: their count, span and busiest addresses."""
    return DeadLetter(
        reason=kind.reason,
        field=kind.field,
        message=f"{tally.count} more requests refused like this one were counted, "
        "not written one by one",
        index=None,
        status=kind.status,
        source=kind.source,
        endpoint=kind.endpoint,
        received_at=tally.last,
        request_id=uuid.uuid4().hex,
        payload={
            "busiest_addresses": tally.busiest(),
            "distinct_addresses": len(tally.addresses),
            # Refusals from addresses beyond those counted one by one (ADDRESSES_TRACKED).
            "from_other_addresses": tally.untracked,
        },
        count=tally.count,
        since=tally.first,
    )
