"""The dashboard and the alert rules ask only for series the platform exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import Counter, Histogram

from runtime import metrics

ROOT = Path(__file__).parents[3]
#: Read at scrape time by the worker port (deploy/metrics.py: State).
STATE = {
    "cdp_consumer_lag_messages",
    "cdp_profiles_created",
    "cdp_tag_profiles",
    "cdp_dependency_up",
}
SUFFIXES = {Counter: ("_total",), Histogram: ("_bucket", "_count", "_sum")}


def _exposed() -> set[str]:
    names = set(STATE)
    for value in vars(metrics).values():
        for kind, suffixes in SUFFIXES.items():
            if isinstance(value, kind):
                names |= {value._name + s for s in suffixes}
    return names


def _series(expr: str) -> set[str]:
    return set(re.findall(r"\bcdp_[a-z_]+\b", expr))


def test_every_dashboard_panel_queries_exposed_series() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "cdp-pipeline.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    asked = set().union(*map(_series, exprs))
    assert asked <= _exposed(), asked - _exposed()
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for subject in ("throughput", "freshness", "lag", "dead letters", "merges"):
        assert subject in titles


def test_every_alert_rule_uses_exposed_series() -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    asked = set().union(*map(_series, exprs))
    assert asked <= _exposed(), asked - _exposed()
