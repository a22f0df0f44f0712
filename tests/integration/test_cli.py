"""The README's commands, run as a user runs them: `cdp up|status|down` and `cdp run --demo`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from deploy.local.kafka import free_port, port_open
from tests.support.services import Services


def cdp(env: dict[str, str], *args: str, timeout: int = 180) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-m", "deploy", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "CDP_LOG_LEVEL": "warning", **env},
        )
    except subprocess.TimeoutExpired as hung:
        said = [_text(hung.stdout)[-2000:], _text(hung.stderr)[-3000:]]
        raise AssertionError(
            f"cdp {' '.join(args)} still running after {timeout} s; stdout:\n{said[0]}\n"
            f"stderr:\n{said[1]}"
        ) from None


def _text(out: str | bytes | None) -> str:
    return out.decode(errors="replace") if isinstance(out, bytes) else out or ""


def test_up_status_down_manage_only_our_services(tmp_path: Path) -> None:
    kafka, controller, redis = free_port(), free_port(), free_port()
    env = {
        "CDP_LOCAL__STATE_DIR": str(tmp_path),
        "CDP_LOCAL__KAFKA_PORT": str(kafka),
        "CDP_LOCAL__KAFKA_CONTROLLER_PORT": str(controller),
        "CDP_LOCAL__REDIS_PORT": str(redis),
        "CDP_LOCAL__KAFKA_HEAP": "256m",
    }
    try:
        assert cdp(env, "status").returncode == 1
        first = cdp(env, "up")
        assert first.returncode == 0, first.stderr
        assert re.search(r"kafka\s+started", first.stdout)
        assert str(tmp_path / "kafka" / "kafka.log") in first.stdout
        again = cdp(env, "up")
        assert re.search(r"kafka\s+already running", again.stdout)
        assert re.search(r"redis\s+already running", again.stdout)
        status = cdp(env, "status")
        assert status.returncode == 0 and status.stdout.count("ready") == 3
        assert (tmp_path / "redis" / "appendonlydir").is_dir()  # AOF on
    finally:
        down = cdp(env, "down")
    assert down.returncode == 0
    assert re.search(r"kafka\s+stopped", down.stdout)
    assert not port_open(kafka) and not port_open(redis)
    assert re.search(r"kafka\s+was not running", cdp(env, "down").stdout)


def test_run_demo_feeds_the_api_and_prints_what_arrived(
    services: Services, prefix: str, tmp_path: Path
) -> None:
    env = {
        "CDP_KAFKA__BOOTSTRAP_SERVERS": services.kafka_bootstrap,
        "CDP_KAFKA__TOPIC_PREFIX": prefix,
        "CDP_REDIS__URL": services.redis_url,
        "CDP_CLICKHOUSE__PATH": str(tmp_path / "chdb"),
        "CDP_API__PORT": str(free_port()),
        "XDG_STATE_HOME": str(tmp_path / "never-used"),  # a machine that never ran `cdp up`
    }
    result = cdp(env, "run", "--demo", "--exit-after-demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    accepted = sum(int(n) for n in re.findall(r"accepted=(\d+)", out))
    rejected = sum(int(n) for n in re.findall(r"rejected=(\d+)", out))
    assert (accepted, rejected) == (8, 1)
    assert f"arrived in {prefix}cdp.events.raw: {accepted} events" in out
    assert f"arrived in {prefix}cdp.events.deadletter: {rejected} dead letters" in out
    assert "phone=+8613800138000" in out  # three spellings of one number, normalised
