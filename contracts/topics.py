"""The topic registry: every topic, its key and value contracts."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from contracts.care import CareTask
from contracts.deadletter import DeadLetter
from contracts.events import Event, ResolvedEvent
from contracts.identity import LedgerEntry
from contracts.keys import WrappedKey
from contracts.privacy import AuditRecord, Erasure
from contracts.profiles import ProfileSnapshots
from contracts.segments import MembershipChange, SavedSegment


@dataclass(frozen=True)
class Topic:
    """A Kafka topic and the contracts of what travels on it."""

    name: str
    #: Human description of the key (keys are UTF-8 strings, not JSON).
    key: str
    value_model: type[BaseModel] | None
    description: str
    #: Topic-level configs applied at creation, e.g. compaction.
    configs: dict[str, str] = field(default_factory=dict)
    #: Days a record is kept unless the deployment says otherwise (``CDP_KAFKA__RETENTION_DAYS``,
    #: applied at creation and to existing topics). None: the contract fixes the retention in
    #: ``configs`` (compacted topics, kept forever), and no setting changes it.
    retention_days: float | None = None

    def qualified(self, prefix: str) -> str:
        """Return the topic name under a deployment prefix (tests use fresh prefixes)."""
        return f"{prefix}{self.name}"


EVENTS_RAW = Topic(
    "cdp.events.raw",
    key="strongest identifier as type:value (value: its blind index with field encryption)",
    value_model=Event,
    description="Every accepted event, as ingest validated and normalised it.",
    configs={"min.insync.replicas": "1"},
    retention_days=30,
)
EVENTS_DEADLETTER = Topic(
    "cdp.events.deadletter",
    key="source name, or 'unknown' when the write key was not recognised",
    value_model=DeadLetter,
    description="Every rejected input with a typed reason and the original payload.",
    retention_days=90,
)
EVENTS_RESOLVED = Topic(
    "cdp.events.resolved",
    key="profile id",
    value_model=ResolvedEvent,
    description="Events with the profile id identity resolved them to.",
    retention_days=7,
)
IDENTITY_MERGES = Topic(
    "cdp.identity.merges",
    key="profile id (survivor of a merge, or the event's profile for a refusal)",
    value_model=LedgerEntry,
    description="The merge ledger: every merge and refused merge, its rule and event.",
    retention_days=7,
)
PROFILES_CHANGES = Topic(
    "cdp.profiles.changes",
    key="profile id",
    value_model=None,
    description="Traits changed, tags added/removed, merges, per profile.",
    retention_days=7,
)
PROFILES_SNAPSHOTS = Topic(
    "cdp.profiles.snapshots",
    key="profile id of the record's first snapshot (a record carries many)",
    value_model=ProfileSnapshots,
    description="Whole profiles, with their tags, after the changes of a micro-batch (the "
    "stream processor's read for tagging), many per record, each versioned by the Redis "
    "clock so the newest state wins. Feeds the history's profile_snapshots table; for "
    "services that keep a copy of profiles.",
    retention_days=7,
)

SEGMENTS_MEMBERSHIP = Topic(
    "cdp.segments.membership",
    key="profile id",
    value_model=MembershipChange,
    description="A profile entered or left a saved segment: live as tags change, or when a "
    "scheduled refresh recomputes the segment. For activation tools.",
    retention_days=7,
)

SEGMENTS_DEFINITIONS = Topic(
    "cdp.segments.definitions",
    key="segment id/version, e.g. lapsed-vips/3",
    value_model=SavedSegment,
    description="Every version of every saved segment; a deleted segment's versions are "
    "tombstones. Compacted: the durable copy that Redis serves (and is restored from).",
    configs={"cleanup.policy": "compact", "retention.ms": "-1"},
)

KEYS = Topic(
    "cdp.keys",
    key="key id (kid) of one subject's data key",
    value_model=WrappedKey,
    description="Every subject's data key, wrapped under a key-encryption key; a shredded "
    "key is a tombstone. Compacted and kept forever: the durable copy that Redis caches (and "
    "is restored from). Destroying a key makes every value sealed under it unreadable.",
    # Segments roll hourly and the cleaner runs at 1% dirt, so a shredded key's older record
    # is compacted away within hours, not whenever a 1 GiB segment fills.
    configs={
        "cleanup.policy": "compact",
        "retention.ms": "-1",
        "segment.ms": str(3600 * 1000),
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": str(24 * 3600 * 1000),
    },
)

PRIVACY_ERASURES = Topic(
    "cdp.privacy.erasures",
    key="erasure id",
    value_model=Erasure,
    description="Every erasure of a person: requested, then completed with its receipt (profile "
    "ids, never values). Downstream consumers erase the same profile ids. Compacted and kept "
    "forever: the last record of an erasure is its receipt.",
    configs={"cleanup.policy": "compact", "retention.ms": "-1"},
)

AUDIT = Topic(
    "cdp.audit",
    key="actor (token name, cli:<user> or system)",
    value_model=AuditRecord,
    description="Append-only audit log: reads of unmasked personal data, exports, erasures, "
    "changes of keys and segments. Never carries personal data. Kept forever.",
    configs={"retention.ms": "-1"},
)

CARE_TASKS = Topic(
    "cdp.care.tasks",
    key="task id (rule, profile and occasion hashed: one task per occasion)",
    value_model=CareTask,
    description="Care and follow-up tasks: a record when a rule makes one (open) and one when "
    "a follow-up event or someone closes it (closed). Compacted and kept forever: the last "
    "record of a task is its state. For service desks and marketing tools.",
    configs={"cleanup.policy": "compact", "retention.ms": "-1"},
)

REGISTRY: dict[str, Topic] = {
    t.name: t
    for t in (
        EVENTS_RAW,
        EVENTS_DEADLETTER,
        EVENTS_RESOLVED,
        IDENTITY_MERGES,
        PROFILES_CHANGES,
        PROFILES_SNAPSHOTS,
        SEGMENTS_MEMBERSHIP,
        SEGMENTS_DEFINITIONS,
        KEYS,
        PRIVACY_ERASURES,
        AUDIT,
        CARE_TASKS,
    )
}
