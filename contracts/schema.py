"""Export the contracts as JSON Schema files checked into the repository."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from contracts.care import CareTask
from contracts.deadletter import DeadLetter
from contracts.events import Event, EventIn, ResolvedEvent
from contracts.identity import LedgerEntry
from contracts.privacy import AuditRecord, Erasure
from contracts.profiles import ProfileSnapshots
from contracts.segments import MembershipChange, SavedSegment, SegmentDefinition

SCHEMA_DIR = Path(__file__).parent / "schemas"

MODELS: dict[str, type[BaseModel]] = {
    "event.v1.json": Event,
    "event-in.v1.json": EventIn,
    "deadletter.v1.json": DeadLetter,
    "resolved-event.v1.json": ResolvedEvent,
    "identity-ledger.v1.json": LedgerEntry,
    "segment.v1.json": SegmentDefinition,
    "segment-membership.v1.json": MembershipChange,
    "saved-segment.v1.json": SavedSegment,
    "erasure.v1.json": Erasure,
    "audit.v1.json": AuditRecord,
    "care-task.v1.json": CareTask,
    "profile-snapshots.v1.json": ProfileSnapshots,
}


def render(model: type[BaseModel]) -> str:
    """Render one model's JSON Schema deterministically."""
    return json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"


def export(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema file; return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, model in MODELS.items():
        path = directory / filename
        path.write_text(render(model), encoding="utf-8")
        written.append(path)
    return written


def drifted(directory: Path = SCHEMA_DIR) -> list[str]:
    """Return the schema files whose checked-in text differs from the models."""
    stale = []
    for filename, model in MODELS.items():
        path = directory / filename
        if not path.exists() or path.read_text(encoding="utf-8") != render(model):
            stale.append(filename)
    return stale
