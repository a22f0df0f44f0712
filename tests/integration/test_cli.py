"""The README's commands, run as a user runs them: `cdp up|status|down` and `cdp run --demo`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from deploy.local.kafka import free_port, port_open
from runtime.auth import hash_token
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


def test_run_serves_one_port_from_several_processes_and_each_answers_history(
    services: Services, prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    token = {"name": "t", "sha256": hash_token("tk_seg"), "scopes": ["segments:read"]}
    env = {
        **os.environ,
        "CDP_KAFKA__BOOTSTRAP_SERVERS": services.kafka_bootstrap,
        "CDP_KAFKA__TOPIC_PREFIX": prefix,
        "CDP_REDIS__URL": services.redis_url,
        "CDP_WORKER__NAMESPACE": prefix.rstrip("."),
        "CDP_CLICKHOUSE__PATH": str(tmp_path / "chdb"),
        "CDP_API__PORT": str(port),
        "CDP_API__TOKENS": json.dumps([token]),
        "CDP_LOG_LEVEL": "warning",
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deploy", "run", "--api-workers", "2"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    # Only the worker's own process can open the embedded history; the other forwards to it.
    history = {"definition": {"event": "order_completed", "op": "gte", "value": 1}}
    answered: dict[int, dict[str, object]] = {}
    deadline = time.monotonic() + 120
    try:
        while len(answered) < 2:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"answers: {answered}\n{log.read_text()[-3000:]}"
            try:
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
                    pid = http.get("/healthz").json()["pid"]
                    r = http.post(
                        "/v1/segments/count",
                        json=history,
                        headers={"Authorization": "Bearer tk_seg"},
                    )
            except httpx.TransportError:
                time.sleep(0.2)
                continue
            assert r.status_code == 200, r.text
            answered[pid] = r.json()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert list(answered.values()) == [{"count": 0, "source": "history"}] * 2
    assert code == 0, log.read_text()[-3000:]


def test_api_processes_stop_with_their_supervisor_even_after_sigkill(
    services: Services, prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "CDP_KAFKA__BOOTSTRAP_SERVERS": services.kafka_bootstrap,
        "CDP_KAFKA__TOPIC_PREFIX": prefix,
        "CDP_REDIS__URL": services.redis_url,
        "CDP_API__PORT": str(port),
        "CDP_LOG_LEVEL": "warning",
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy", "api", "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pids: set[int] = set()
    deadline = time.monotonic() + 90
    while len(pids) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, f"answered: {pids}"
        try:
            pids.add(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()["pid"])
        except httpx.TransportError:
            time.sleep(0.2)
    # A second `cdp api` on the same port is refused, not silently added to the group.
    second = cdp({**env, "CDP_API__PORT": str(port)}, "api", "--workers", "2", timeout=60)
    assert second.returncode != 0 and "already in use" in second.stderr
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while port_open(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not port_open(port), "API processes outlived their supervisor"
