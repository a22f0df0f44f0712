"""The erasure executor: the history worker carries out each erasure asked on its topic."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import structlog

from contracts.privacy import Erasure, ErasureState
from contracts.topics import PRIVACY_ERASURES
from privacy.erasure import Erasures, HistoryEraser
from runtime.agents import batch_agent
from runtime.retry import until_done
from runtime.undecodable import split

log = structlog.get_logger()

#: Between the suppression and the deletion of rows: other history writers re-read the
#: erased set every second, and a batch they are writing lands within the sink's interval.
SETTLE_S = 3.0


def register(app: Any, deps: Any, erasures: Erasures) -> None:
    """Add the erasure agent to a worker with the history role (``deps.clickhouse`` set).

    One consumer group: each erasure is carried out by one worker, its offset committed
    only once the receipt is published; a worker that dies mid-way leaves it to the next
    start, which resumes after the last finished step.
    """
    eraser = HistoryEraser(deps.history.client, deps.settings.clickhouse.database)

    async def clickhouse(fn: Callable[[HistoryEraser], Any]) -> Any:
        return await deps.clickhouse.call(fn, eraser)

    async def step(events: list[Any]) -> None:
        for erasure, _ in split(Erasure, events)[0]:
            if erasure.state is not ErasureState.REQUESTED:
                continue
            done = await until_done(
                "privacy.erasure",
                partial(erasures.execute, erasure, clickhouse, deps.erased.add, SETTLE_S),
            )
            log.info("erasure.completed", erasure=erasure.id, profiles=len(done.profile_ids))

    batch_agent(app, deps, PRIVACY_ERASURES.name, "privacy-erasures", step)
