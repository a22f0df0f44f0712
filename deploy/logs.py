"""Configure structlog once, at the entry point."""

from __future__ import annotations

import logging

import structlog

#: Client libraries whose INFO lines (every connection, metadata refresh and partition
#: assignment, as tables) would bury what the platform itself says: they speak at WARNING.
#: kafka-python's warnings about its own event loop being slow on a busy machine say nothing
#: an operator can act on: ERROR only.
LIBRARY_LEVELS = {
    "kafka": logging.WARNING,
    "aiokafka": logging.WARNING,
    "kafka.net": logging.ERROR,
    "rdkafka": logging.WARNING,
}


def quiet_libraries() -> None:
    """Hold the Kafka client libraries to ``LIBRARY_LEVELS`` whatever the root level is."""
    for name, level in LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(level)


def configure(level: str = "info", json: bool = False) -> None:
    """Route structlog and stdlib logging to stderr at ``level``."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    quiet_libraries()
    logging.basicConfig(level=max(numeric, logging.WARNING), format="%(name)s %(message)s")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )
