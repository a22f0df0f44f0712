"""The collector settings: a batch job's are scoped to it, a long-running process keeps its."""

from __future__ import annotations

import gc

import pytest

from deploy.app import FEWER_COLLECTIONS, fewer_collections, settle_collector


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


def test_a_started_process_keeps_the_raised_thresholds() -> None:
    before = gc.get_threshold()
    try:
        settle_collector()
        assert gc.get_threshold() == FEWER_COLLECTIONS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
