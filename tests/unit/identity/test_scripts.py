"""Chunking a batch of script calls so that a key's items are never parted."""

from __future__ import annotations

import random
from operator import itemgetter

from identity.scripts import grouped_chunks


def test_each_keys_items_share_one_chunk_in_their_order() -> None:
    rng = random.Random(7)
    items = [(f"p{rng.randrange(40)}", n) for n in range(1_000)]
    out, order = grouped_chunks(items, key=itemgetter(0), size=100)
    home: dict[str, int] = {}
    for c, chunk in enumerate(out):
        for key, _ in chunk:
            assert home.setdefault(key, c) == c, f"{key} split over chunks"
    for chunk in out:
        for key in {k for k, _ in chunk}:
            seq = [n for k, n in chunk if k == key]
            assert seq == sorted(seq)
    # ``order`` maps each chunk item back to where it was
    assert sorted(order) == list(range(1_000))
    assert [items[n] for n in order] == [x for chunk in out for x in chunk]


def test_chunks_stay_near_the_size_and_a_big_key_gets_its_own() -> None:
    items = [("a", n) for n in range(250)] + [(f"b{n}", n) for n in range(150)]
    out, _ = grouped_chunks(items, key=itemgetter(0), size=100)
    assert [len(c) for c in out] == [250, 100, 50]
    singles = [(str(n), n) for n in range(230)]
    assert [len(c) for c in grouped_chunks(singles, key=itemgetter(0), size=100)[0]] == [
        100,
        100,
        30,
    ]
    assert grouped_chunks([], key=itemgetter(0)) == ([], [])
