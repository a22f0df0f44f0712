"""The collector settings: a batch job's are scoped to it, a long-running process keeps its."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from deploy.app import FEWER_COLLECTIONS, fewer_collections, settle_collector

DEFAULT = (700, 10, 10)


@pytest.fixture(autouse=True)
def default_thresholds() -> Iterator[None]:
    """Each test starts from CPython's defaults: a test that started an app in this process
    leaves its raised thresholds behind."""
    saved = gc.get_threshold()
    gc.set_threshold(*DEFAULT)
    yield
    gc.set_threshold(*saved)


def test_fewer_collections_raises_the_thresholds_and_restores_them() -> None:
    with fewer_collections():
        assert gc.get_threshold() == FEWER_COLLECTIONS
    assert gc.get_threshold() == DEFAULT


def test_fewer_collections_restores_the_thresholds_when_the_block_fails() -> None:
    with pytest.raises(RuntimeError), fewer_collections():
        raise RuntimeError("an import that stopped")
    assert gc.get_threshold() == DEFAULT


def test_a_started_process_keeps_the_raised_thresholds() -> None:
    try:
        settle_collector()
        assert gc.get_threshold() == FEWER_COLLECTIONS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
