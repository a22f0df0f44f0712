"""Errors of care rules and task delivery."""

from __future__ import annotations

from contracts.errors import CDPError


class CareRulesError(CDPError, ValueError):
    """Invalid care rules: every problem, one per line, each naming its file and rule."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid care rules:\n- " + "\n- ".join(problems))


class UnknownTask(CDPError, KeyError):
    """No care task has this id."""
