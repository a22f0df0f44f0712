"""Which identifier types and traits are personal data, declared in contracts/sensitive.yaml."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

DEFAULT_FILE = Path(__file__).resolve().parent.parent / "contracts" / "sensitive.yaml"


class IdentifierClasses(BaseModel):
    """Identifier types are sensitive unless listed as clear."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    clear: frozenset[str] = frozenset({"company_id"})


class Classification(BaseModel):
    """The sensitive identifier types and trait names of a deployment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    identifiers: IdentifierClasses = IdentifierClasses()
    traits: frozenset[str] = frozenset()
    properties: frozenset[str] = frozenset()
    #: Dotted paths into an event's context.
    context: frozenset[str] = frozenset()
    keep_month_day: frozenset[str] = frozenset()

    @classmethod
    def load(cls, path: Path | None = None) -> Classification:
        """Read a classification file (the shipped one by default)."""
        raw = yaml.safe_load((path or DEFAULT_FILE).read_text(encoding="utf-8")) or {}
        return cls.model_validate(raw)

    def identifier(self, type_name: str) -> bool:
        """Whether values of an identifier type are sensitive."""
        return type_name not in self.identifiers.clear
