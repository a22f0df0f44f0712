"""Segment definitions written as YAML, read as their JSON form would be."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import yaml


def load_yaml(text: str | bytes) -> Any:
    """Parse YAML; dates and times it recognises become ISO-8601 strings.

    YAML reads an unquoted ``2026-06-01`` as a date, and a definition's values are JSON
    values: without this, ``value: 2026-06-01`` was refused as "not a valid string" where
    the JSON ``"2026-06-01"`` works.
    """
    return _iso(yaml.safe_load(text))


def _iso(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _iso(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_iso(v) for v in value]
    return value
