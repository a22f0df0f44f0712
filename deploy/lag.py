"""Consumer lag per group / topic / partition: end offsets minus committed offsets."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import structlog
from kafka import TopicPartition
from kafka.admin import KafkaAdminClient, OffsetSpec
from kafka.structs import OffsetAndMetadata

from deploy.settings import KafkaSettings
from deploy.topics import admin


@dataclass(frozen=True)
class PartitionLag:
    """How far one group is behind on one partition."""

    group: str
    topic: str
    partition: int
    committed: int
    end: int

    @property
    def lag(self) -> int:
        """Messages written but not yet committed by the group."""
        return max(self.end - self.committed, 0)

    def as_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict including the lag."""
        return {**asdict(self), "lag": self.lag}


def _committed(client: KafkaAdminClient, groups: list[str]) -> dict[str, dict[TopicPartition, int]]:
    if not groups:
        return {}
    raw = client.list_group_offsets(dict.fromkeys(groups))
    return {
        group: {tp: om.offset for tp, om in offsets.items() if om.offset >= 0}
        for group, offsets in raw.items()
    }


def consumer_lag(
    kafka: KafkaSettings, group: str | None = None, prefix: str = ""
) -> list[PartitionLag]:
    """Return lag rows for ``group`` (or every consumer group whose id starts with
    ``prefix``), sorted."""
    client = admin(kafka)
    try:
        found = [g["group_id"] for g in client.list_groups()] if group is None else [group]
        groups = [g for g in found if g.startswith(prefix)]
        committed = _committed(client, groups)
        partitions = {tp for offsets in committed.values() for tp in offsets}
        ends = client.list_partition_offsets(dict.fromkeys(partitions, OffsetSpec.LATEST))
        rows = [
            PartitionLag(g, tp.topic, tp.partition, off, _offset(ends[tp]))
            for g, offsets in committed.items()
            for tp, off in offsets.items()
        ]
    finally:
        client.close()
    return sorted(rows, key=lambda r: (r.group, r.topic, r.partition))


def total_lag(kafka: KafkaSettings, group: str, topics: list[str]) -> int:
    """Messages on ``topics`` not yet committed by ``group``, counting never-read partitions."""
    client = admin(kafka)
    try:
        described = client.describe_topics(topics)
        partitions = [
            TopicPartition(t["name"], p["partition_index"])
            for t in described
            for p in t["partitions"]
        ]
        ends = client.list_partition_offsets(dict.fromkeys(partitions, OffsetSpec.LATEST))
        committed = _committed(client, [group]).get(group, {})
    finally:
        client.close()
    return sum(max(_offset(ends[tp]) - committed.get(tp, 0), 0) for tp in partitions)


def _offset(info: object) -> int:
    """Read the offset out of kafka-python's OffsetAndTimestamp."""
    return int(getattr(info, "offset"))  # noqa: B009 - the admin client's result is untyped


def adopt_offsets(kafka: KafkaSettings, legacy: str, heirs: dict[str, list[str]]) -> int:
    """Hand the committed offsets of group ``legacy`` to ``heirs`` (group -> its topics).

    When processors that shared one consumer group move into groups of their own, the new
    groups would otherwise start at the beginning of every retained topic. Each heir with no
    offsets of its own takes the legacy group's offsets on its topics; then the legacy group
    is deleted, so ``cdp lag`` does not show it falling behind forever. Returns how many
    partition offsets were handed over (0 when there was nothing to adopt).
    """
    client = admin(kafka)
    try:
        state = {g["group_id"]: g.get("group_state") for g in client.list_groups()}
        if legacy not in state:
            return 0
        if state[legacy] not in ("Empty", "Dead", None):
            # Something still consumes as the legacy group (a `cdp worker` with every role):
            # its offsets are its own, and the new groups start as new groups do.
            structlog.get_logger().warning("groups.legacy_active", legacy=legacy)
            return 0
        old = _committed(client, [legacy]).get(legacy, {})
        if not old:
            return 0
        mine = _committed(client, list(heirs))
        moved = 0
        for group, topics in heirs.items():
            if mine.get(group):
                continue
            offsets = {
                tp: OffsetAndMetadata(off, "", -1) for tp, off in old.items() if tp.topic in topics
            }
            if offsets:
                client.alter_group_offsets(group, offsets)
                moved += len(offsets)
        client.delete_groups([legacy])
    finally:
        client.close()
    structlog.get_logger().info("groups.adopted", legacy=legacy, heirs=sorted(heirs), moved=moved)
    return moved


def render_table(rows: list[PartitionLag]) -> str:
    """Render rows as an aligned text table with a total per group."""
    if not rows:
        return "no committed offsets (no consumer group has consumed yet)"
    header = ("GROUP", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG")
    body = [
        (r.group, r.topic, str(r.partition), str(r.committed), str(r.end), str(r.lag)) for r in rows
    ]
    widths = [max(len(c) for c in col) for col in zip(header, *body, strict=False)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in (header, *body)
    ]
    totals: dict[str, int] = {}
    for r in rows:
        totals[r.group] = totals.get(r.group, 0) + r.lag
    lines += [f"total lag {g}: {t}" for g, t in totals.items()]
    return "\n".join(lines)


def topic_ends(kafka: KafkaSettings, topics: list[str]) -> dict[str, int]:
    """Messages ever written to each of ``topics`` (the sum of its partitions' end offsets)."""
    client = admin(kafka)
    try:
        described = client.describe_topics(topics)
        partitions = [
            TopicPartition(t["name"], p["partition_index"])
            for t in described
            for p in t["partitions"]
        ]
        ends = client.list_partition_offsets(dict.fromkeys(partitions, OffsetSpec.LATEST))
    finally:
        client.close()
    totals = dict.fromkeys(topics, 0)
    for tp, info in ends.items():
        totals[tp.topic] += _offset(info)
    return totals
