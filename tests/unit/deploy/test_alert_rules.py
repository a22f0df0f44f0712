"""The alert rules are valid and fire on the series that should fire them (promtool)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

RULES = Path(__file__).parents[3] / "deploy" / "prometheus"


def _promtool(*args: str) -> str:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (scripts/install.sh --test installs prometheus)"
    done = subprocess.run([promtool, *args], cwd=RULES, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_rules_file_is_valid() -> None:
    assert "SUCCESS: 10 rules found" in _promtool("check", "rules", "alerts.yml")


def test_each_alert_fires_on_its_condition_and_not_otherwise() -> None:
    assert "SUCCESS" in _promtool("test", "rules", "alerts_test.yml")


def test_the_compose_prometheus_config_is_valid() -> None:
    assert "SUCCESS" in _promtool("check", "config", "prometheus.yml")
