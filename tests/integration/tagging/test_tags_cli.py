"""`cdp tags ...` and catalog validation at start-up, run as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from deploy.settings import Settings
from tagging.catalog import DEFAULT_DIR
from tests.support.seed import untagged_profiles


def cdp(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deploy", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "CDP_LOG_LEVEL": "warning", **env},
    )


def env_of(settings: Settings) -> dict[str, str]:
    return {
        "CDP_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "CDP_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "CDP_REDIS__URL": settings.redis.url.get_secret_value(),
        "CDP_WORKER__NAMESPACE": settings.worker.namespace,
        # Stored in clear by the test: whatever master keys this machine's state holds.
        "CDP_PRIVACY__ENABLED": "false",
    }


def bad_catalog(tmp_path: Path) -> Path:
    folder = tmp_path / "catalog"
    shutil.copytree(DEFAULT_DIR, folder)
    care = folder / "10-care.yaml"
    care.write_text(
        care.read_text(encoding="utf-8").replace(
            "rule: trait.birthday in this month", "rule: trait.birthday in this mnth"
        ),
        encoding="utf-8",
    )
    return folder


def test_processors_refuse_to_start_on_an_invalid_catalog(
    settings: Settings, tmp_path: Path
) -> None:
    env = {**env_of(settings), "CDP_TAGS__CATALOG": str(bad_catalog(tmp_path))}
    worker = cdp(env, "worker", "--role", "profiles")
    assert worker.returncode == 2, worker.stderr
    assert "tag 'care_birthday_this_month', rule position 23: expected 'month'" in worker.stderr
    assert "Traceback" not in worker.stderr
    check = cdp(env, "tags", "check")
    assert check.returncode == 2 and "care_birthday_this_month" in check.stderr
    ok = cdp({}, "tags", "check", str(DEFAULT_DIR))
    assert ok.returncode == 0 and ok.stdout.startswith("catalog ok: ")


def test_backfill_list_show_and_count_from_the_terminal(settings: Settings) -> None:
    asyncio.run(untagged_profiles(settings))
    env = env_of(settings)
    listed = cdp(env, "tags", "list", "--category", "care")
    assert listed.returncode == 0
    assert listed.stdout.splitlines()[0].startswith("care_birthday_this_month")
    assert "8 tags" in listed.stderr
    before = cdp(env, "tags", "count", "spend_2000_5000", "channel_pos")
    assert before.stdout.splitlines() == ["spend_2000_5000\t0", "channel_pos\t0"]
    filled = cdp(env, "tags", "backfill")
    assert filled.returncode == 0, filled.stderr
    assert filled.stdout.strip().endswith("over 2 profiles; 2 profiles changed")
    after = cdp(env, "tags", "count", "spend_2000_5000", "channel_pos", "spend_under_500")
    assert after.stdout.splitlines() == [
        "spend_2000_5000\t1",
        "channel_pos\t2",
        "spend_under_500\t1",
    ]
    got = cdp(env, "profiles", "get", "--type", "member_id", "--value", "M1")
    assert got.returncode == 0, got.stderr
    profile = json.loads(got.stdout)
    assert "spend_2000_5000" in profile["tags"] and "channel_pos" in profile["tags"]
    again = cdp(env, "tags", "backfill")
    assert again.stdout.strip() == "nothing to backfill: every tag's rule is backfilled"
    status = cdp(env, "tags", "backfill", "--status")
    assert '"state": "done"' in status.stdout and '"seen": "2"' in status.stdout
    shown = cdp(env, "tags", "show", "channel_pos")
    assert '"count": 2' in shown.stdout and '"rule": "channels contains \\"pos\\""' in shown.stdout
    unknown = cdp(env, "tags", "count", "nope")
    assert unknown.returncode == 1 and "no such tags: nope" in unknown.stderr
