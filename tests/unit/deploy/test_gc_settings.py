"""The collector settings a batch job runs under are scoped to it."""

from __future__ import annotations

import gc

import pytest

from deploy.app import fewer_collections


def test_fewer_collections_raises_the_thresholds_and_restores_them() -> None:
    before = gc.get_threshold()
    with fewer_collections():
        inside = gc.get_threshold()
    assert inside[0] > before[0]
    assert gc.get_threshold() == before


def test_fewer_collections_restores_the_thresholds_when_the_block_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), fewer_collections():
        raise RuntimeError("an import that stopped")
    assert gc.get_threshold() == before
