"""Read a topic from its start to the end offsets of *now*: exact, not "until quiet for a while".

Accepted events are durable in Kafka before the API answers 200, so the end offsets taken after
the answers are a complete, fixed target. Reading until every partition reaches them cannot miss
a slow fetch on a loaded machine the way an idle timeout can, and never waits for nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from kafka import KafkaConsumer, TopicPartition


def read_to_end(bootstrap: str, topic: str, timeout_s: float = 120.0) -> list[Any]:
    """Return every value (JSON-decoded) in ``topic`` up to the current end offsets.

    Raises TimeoutError when the broker does not deliver them within ``timeout_s``, so a short
    read is an error, never a silently smaller count.
    """
    records = read_records(bootstrap, topic, timeout_s)
    return [json.loads(value) for _, value in records if value is not None]


def read_records(
    bootstrap: str, topic: str, timeout_s: float = 120.0
) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of every message in ``topic`` up to the current end offsets, in offset
    order per partition (a tombstone's value is None). TimeoutError like ``read_to_end``."""
    return [(m.key, m.value) for m in read_messages(bootstrap, topic, timeout_s)]


class Message(NamedTuple):
    """One message read back, with where it is."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def read_messages(bootstrap: str, topic: str, timeout_s: float = 120.0) -> list[Message]:
    """Every message in ``topic`` up to the current end offsets, with its partition and
    offset, in offset order per partition. TimeoutError like ``read_to_end``."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
    )
    deadline = time.monotonic() + timeout_s
    try:
        ids = consumer.partitions_for_topic(topic)
        while not ids and time.monotonic() < deadline:
            time.sleep(0.2)
            ids = consumer.partitions_for_topic(topic)
        if not ids:
            raise TimeoutError(f"topic {topic} has no partitions in {timeout_s:.0f} s")
        partitions = [TopicPartition(topic, p) for p in sorted(ids)]
        consumer.assign(partitions)
        ends = consumer.end_offsets(partitions)
        consumer.seek_to_beginning(*partitions)
        values: list[Message] = []
        pending = {tp for tp in partitions if ends[tp] > 0}
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"read {len(values)} messages of {topic} in {timeout_s:.0f} s; "
                    f"{len(pending)} partitions short of their end offsets"
                )
            for tp, records in consumer.poll(timeout_ms=500).items():
                values.extend(
                    Message(tp.partition, r.offset, r.key, r.value)
                    for r in records
                    if r.offset < ends[tp]
                )
            pending = {tp for tp in pending if consumer.position(tp) < ends[tp]}
        return values
    finally:
        consumer.close()


@dataclass(frozen=True)
class Tail:
    """One of a topic's last messages: where it is, when it was written, what it holds."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


def read_last(
    bootstrap: str, topic: str, per_partition: int, timeout_s: float = 10.0
) -> list[Tail]:
    """The last ``per_partition`` messages of every partition of ``topic``, newest first.

    Bounded however long the topic is (an operator's view of recent dead letters or of when a
    stage last wrote); TimeoutError like ``read_to_end`` when the broker does not deliver them.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    deadline = time.monotonic() + timeout_s
    try:
        ids = consumer.partitions_for_topic(topic) or set()
        partitions = [TopicPartition(topic, p) for p in sorted(ids)]
        consumer.assign(partitions)
        ends = consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, max(ends[tp] - per_partition, 0))
        found: list[Tail] = []
        pending = {tp for tp in partitions if ends[tp] > 0}
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the last messages of {topic} not read in {timeout_s:.0f} s")
            for tp, records in consumer.poll(timeout_ms=200).items():
                found += [
                    Tail(tp.partition, r.offset, r.timestamp, r.key, r.value)
                    for r in records
                    if r.offset < ends[tp]
                ]
            pending = {tp for tp in pending if consumer.position(tp) < ends[tp]}
    finally:
        consumer.close()
    return sorted(found, key=lambda t: (t.timestamp_ms, t.partition, t.offset), reverse=True)
