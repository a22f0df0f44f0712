"""Read topics back from the real broker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer


def read_topic(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout_s: float = 30.0,
    where: Callable[[dict[str, Any]], bool] = lambda _: True,
    settle_s: float = 1.0,
    alive: Callable[[], None] = lambda: None,
) -> list[tuple[str, dict[str, Any]]]:
    """Read (key, value) pairs from the start until ``expected`` matched, then a little longer.

    Reading on for ``settle_s`` after the count is reached catches duplicates and extras.
    ``alive`` raises when the process that should write them died (checked between polls).
    """
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(settle_s * 1000),
    )
    found: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for message in consumer:
                value = json.loads(message.value)
                if where(value):
                    found.append((message.key.decode() if message.key else "", value))
            if len(found) >= expected:
                break
            alive()
    finally:
        consumer.close()
    return found


def read_until(
    bootstrap: str,
    topic: str,
    enough: Callable[[list[dict[str, Any]]], bool],
    timeout_s: float = 30.0,
    settle_s: float = 1.0,
) -> list[dict[str, Any]]:
    """Read values from the start until ``enough`` holds for what was read, then a little
    longer (to catch extras); return them all, enough or not when the time ran out."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(settle_s * 1000),
    )
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            found.extend(json.loads(message.value) for message in consumer)
            if enough(found):
                break
    finally:
        consumer.close()
    return found
