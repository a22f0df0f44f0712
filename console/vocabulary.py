"""The words a segment can be built from, for the builder's forms (from the code that checks
them, so the form offers nothing the API would refuse)."""

from __future__ import annotations

from typing import Any

from contracts.events import EventType
from contracts.segments import EVENT_FIELDS, Measure, Op
from segments.service import purposes
from segments.sql import ATTRIBUTES
from tagging.catalog import Catalog


def vocabulary(catalog: Catalog) -> dict[str, Any]:
    """Attributes with their kinds, event types and fields, measures, operators, consent
    purposes and declared traits."""
    return {
        "attributes": dict(sorted(ATTRIBUTES.items())),
        "event_types": sorted(t.value for t in EventType),
        "event_fields": list(EVENT_FIELDS),
        "measures": [m.value for m in Measure],
        "ops": [o.value for o in Op],
        "purposes": purposes(catalog),
        "traits": sorted(
            f.removeprefix("trait.") for f in catalog.declared if f.startswith("trait.")
        ),
    }
