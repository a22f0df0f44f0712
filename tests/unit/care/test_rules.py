"""Care rules: loading, validation errors naming the file, and when occasions fall due."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from care.exceptions import CareRulesError
from care.rules import (
    DEFAULT_DIR,
    CareRule,
    date_due,
    event_due,
    for_catalog,
    load,
    month_day,
    next_occasion,
)
from contracts.care import task_id
from tagging.catalog import load as load_catalog

ZONE = ZoneInfo("Asia/Shanghai")


def rule(**trigger: object) -> CareRule:
    return CareRule.model_validate({"id": "r", "title": "R", "trigger": trigger})


def test_shipped_rules_load_against_the_shipped_catalog() -> None:
    rules = {r.id: r for r in for_catalog(None, load_catalog())}
    assert set(rules) == {"birthday_in_7_days", "cooperation_anniversary", "complaint_follow_up"}
    assert rules["birthday_in_7_days"].trigger.label == "date:trait.birthday"
    assert rules["complaint_follow_up"].trigger.ticket == "complaint"


def test_errors_name_the_file_the_rule_and_the_field(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "rules:\n"
        "- id: bad_date\n  title: B\n  trigger: {date: trait.bday}\n"
        "- id: bad_tag\n  title: T\n  trigger: {tag_entered: no_such_tag}\n"
        "- id: two\n  title: X\n  trigger: {tag_entered: tier_vip, date: trait.birthday}\n"
        "- id: bad_event\n  title: E\n  trigger: {after_event: complaint_closed, days: 3}\n"
    )
    (tmp_path / "b.yaml").write_text(
        "rules:\n- id: bad_date\n  title: again\n  trigger: {date: account.since}\n"
    )
    with pytest.raises(CareRulesError) as err:
        load(tmp_path, {"tier_vip"}, {"trait.birthday", "account.since"})
    text = str(err.value)
    assert f"{tmp_path / 'a.yaml'}: rules[0] (bad_date): trigger.date: 'trait.bday'" in text
    assert "rules[1] (bad_tag): trigger.tag_entered: unknown tag 'no_such_tag'" in text
    assert "rules[2] (two).trigger: Value error, give exactly one of" in text
    assert "unknown event type 'complaint_closed'" in text
    assert "id 'bad_date' is also used in" in text
    assert len(err.value.problems) == 5


def test_not_yaml_and_empty_directories_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CareRulesError, match=r"no \*\.yaml care rule files"):
        load(tmp_path, set(), set())
    (tmp_path / "x.yaml").write_text("rules: [\n")
    with pytest.raises(CareRulesError, match=r"x\.yaml: not valid YAML"):
        load(tmp_path, set(), set())
    assert DEFAULT_DIR.is_dir()


def test_date_values_read_with_or_without_the_year() -> None:
    assert month_day("1990-06-30") == (1990, 6, 30)
    assert month_day("--02-29") == (None, 2, 29)
    assert month_day("1990-06-30T10:00:00+08:00") == (1990, 6, 30)
    assert month_day("thirty") is None and month_day(19900630) is None


def test_february_29_falls_on_the_28th_in_common_years() -> None:
    assert next_occasion((2000, 2, 29), date(2027, 1, 1)) == date(2027, 2, 28)
    assert next_occasion((2000, 2, 29), date(2028, 1, 1)) == date(2028, 2, 29)
    assert next_occasion((None, 2, 29), date(2027, 3, 1)) == date(2028, 2, 29)


def test_the_first_occasion_is_after_the_anchor_year() -> None:
    # An account that started this year has its first anniversary next year.
    assert next_occasion((2026, 12, 1), date(2026, 12, 1)) == date(2027, 12, 1)
    assert next_occasion((2020, 12, 1), date(2026, 12, 1)) == date(2026, 12, 1)


def test_birthday_seven_days_ahead_across_the_year_end() -> None:
    r = rule(date="trait.birthday", days_before=7)
    occasion, due = date_due(r, (1990, 1, 3), date(2026, 12, 25), ZONE)
    assert occasion == date(2027, 1, 3)
    assert due == datetime(2026, 12, 27, tzinfo=ZONE)
    # Inside the window (the profile arrived 3 days before): due at once, same occasion.
    occasion, due = date_due(r, (1990, 1, 3), date(2026, 12, 31), ZONE)
    assert occasion == date(2027, 1, 3) and due == datetime(2026, 12, 27, tzinfo=ZONE)
    # The birthday itself passed: next year's.
    occasion, _ = date_due(r, (1990, 1, 3), date(2027, 1, 4), ZONE)
    assert occasion == date(2028, 1, 3)


def test_after_event_is_due_days_later_on_the_local_day() -> None:
    r = rule(after_event="ticket_resolved", days=3, ticket="complaint")
    at = datetime(2026, 6, 30, 17, 0, tzinfo=UTC)  # 1 July 01:00 in Shanghai
    occasion, due = event_due(r, at, ZONE)
    assert occasion == date(2026, 7, 1)
    assert due == datetime(2026, 7, 3, 17, 0, tzinfo=UTC)


def test_task_ids_are_stable_per_rule_profile_and_occasion() -> None:
    a = task_id("birthday_in_7_days", "p1", date(2026, 12, 8))
    assert a == task_id("birthday_in_7_days", "p1", date(2026, 12, 8))
    assert a != task_id("birthday_in_7_days", "p1", date(2027, 12, 8))
    assert a != task_id("birthday_in_7_days", "p2", date(2026, 12, 8))
    assert len(a) == 32


def test_closing_events_match_types_and_track_names() -> None:
    from contracts.events import Event

    r = CareRule.model_validate(
        {"id": "r", "title": "R", "trigger": {"tag_entered": "x"}, "closes_on": ["care_followup"]}
    )
    base = {
        "event_id": "e1",
        "channel": "service_desk",
        "source": "s",
        "identifiers": [{"type": "member_id", "value": "M1"}],
        "original_timestamp": "2026-06-01T00:00:00Z",
        "received_at": "2026-06-01T00:00:00Z",
        "timestamp": "2026-06-01T00:00:00Z",
    }
    assert r.closed_by(Event.model_validate({**base, "type": "track", "name": "Care Followup"}))
    assert not r.closed_by(Event.model_validate({**base, "type": "track", "name": "Order"}))


def test_invalid_rules_stop_the_cli_with_exit_2_and_every_problem(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    (tmp_path / "a.yaml").write_text("rules:\n- id: x\n  title: X\n  trigger: {date: trait.bday}\n")
    for command in (["care", "rules"], ["api"]):
        done = subprocess.run(
            [sys.executable, "-m", "deploy", *command],
            env={**os.environ, "CDP_CARE__RULES": str(tmp_path), "XDG_STATE_HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: invalid care rules:\n- ")
        problem = "rules[0] (x): trigger.date: 'trait.bday' is not a declared date field"
        assert problem in done.stderr
