"""The README's commands, run as a user runs them: `cdp up|status|down` and `cdp run --demo`."""

from __future__ import annotations

import base64
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
from deploy.settings import WorkerSettings
from privacy.crypto import MasterKeys
from runtime.auth import hash_token
from runtime.readback import read_to_end
from tests.support.keys import key_of, known_sources, known_tokens
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
        # `cdp status` checks the services where the settings say they are.
        "CDP_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka}",
        "CDP_REDIS__URL": f"redis://127.0.0.1:{redis}/0",
        "CDP_METRICS__PORT": str(free_port()),
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
        # The local stack holds master keys, so field encryption is on by default there.
        keys = tmp_path / "master-keys.json"
        assert re.search(rf"keys\s+created\s+{re.escape(str(keys))}", first.stdout)
        assert re.search(r"keys\s+present", again.stdout)
        assert keys.stat().st_mode & 0o777 == 0o600
        assert MasterKeys.load(keys).current == "k1"
    finally:
        down = cdp(env, "down")
    assert down.returncode == 0
    assert re.search(r"kafka\s+stopped", down.stdout)
    assert not port_open(kafka) and not port_open(redis)
    assert re.search(r"kafka\s+was not running", cdp(env, "down").stdout)


def run_env(services: Services, prefix: str, tmp_path: Path) -> dict[str, str]:
    """Settings of a `cdp run` on the session's services, with a state of its own: a machine
    that never ran `cdp up`, so it holds no master keys unless the test writes them."""
    return {
        "CDP_KAFKA__BOOTSTRAP_SERVERS": services.kafka_bootstrap,
        "CDP_KAFKA__TOPIC_PREFIX": prefix,
        "CDP_REDIS__URL": services.redis_url,
        "CDP_WORKER__NAMESPACE": prefix.rstrip("."),
        "CDP_CLICKHOUSE__PATH": str(tmp_path / "chdb"),
        "CDP_API__PORT": str(free_port()),
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }


def test_run_demo_feeds_the_api_and_prints_what_arrived(
    services: Services, prefix: str, tmp_path: Path
) -> None:
    result = cdp(run_env(services, prefix, tmp_path), "run", "--demo", "--exit-after-demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    accepted = sum(int(n) for n in re.findall(r"accepted=(\d+)", out))
    rejected = sum(int(n) for n in re.findall(r"rejected=(\d+)", out))
    assert (accepted, rejected) == (8, 1)
    assert f"arrived in {prefix}cdp.events.raw: {accepted} events" in out
    assert f"arrived in {prefix}cdp.events.deadletter: {rejected} dead letters" in out
    assert "phone=+8613800138000" in out  # three spellings of one number, normalised
    assert "field encryption: off" in out


def test_run_demo_with_master_keys_seals_and_shows_masked_values(
    services: Services, prefix: str, tmp_path: Path
) -> None:
    MasterKeys.generate().save(tmp_path / "state" / "cdp" / "master-keys.json")
    env = run_env(services, prefix, tmp_path)
    result = cdp(env, "run", "--demo", "--exit-after-demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "field encryption: on (master keys: " in out
    assert "phone=138****8000" in out and "+8613800138000" not in out
    raw = read_to_end(services.kafka_bootstrap, f"{prefix}cdp.events.raw")
    assert raw and all(
        i["value"].startswith("~") for e in raw for i in e["identifiers"] if i["type"] == "phone"
    )
    assert "8613800138000" not in json.dumps(raw)
    # The operator's CLI masks too, and shows the value with --clear.
    found = cdp(env, "profiles", "get", "--type", "phone", "--value", "138 0013 8000")
    assert found.returncode == 0, found.stderr
    assert "phone:138****8000" in found.stdout and "8613800138000" not in found.stdout
    clear = cdp(env, "profiles", "get", "--type", "phone", "--value", "138 0013 8000", "--clear")
    assert "phone:+8613800138000" in clear.stdout


def test_an_api_with_encryption_on_and_no_master_keys_refuses_to_start(tmp_path: Path) -> None:
    env = {
        "CDP_PRIVACY__ENABLED": "true",
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "CDP_API__PORT": str(free_port()),
    }
    result = cdp(env, "api", "--workers", "1")
    assert result.returncode == 2  # a configuration error
    assert "field encryption is on but no master key file at" in result.stderr
    assert "cdp keys init" in result.stderr


def start_run(
    services: Services,
    prefix: str,
    tmp_path: Path,
    port: int,
    api_workers: int,
    extra: dict[str, str],
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start `cdp run` on the session's services; its output goes to the returned log."""
    env = {
        **os.environ,
        **run_env(services, prefix, tmp_path),
        "CDP_API__PORT": str(port),
        "CDP_LOG_LEVEL": "warning",
        **extra,
    }
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deploy", "run", "--api-workers", str(api_workers)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, log


def test_run_serves_one_port_from_several_processes_and_each_answers_history(
    services: Services, prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    token = {"name": "t", "sha256": hash_token("tk_seg"), "scopes": ["segments:read"]}
    proc, log = start_run(
        services, prefix, tmp_path, port, 2, {"CDP_API__TOKENS": json.dumps([token])}
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


def _descendants_named(pid: int, name: str) -> list[int]:
    """Processes below ``pid`` whose /proc comm is ``name``."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except FileNotFoundError:
                continue
            for kid in kids:
                todo.append(kid)
                try:
                    # A killed child not yet reaped is a zombie that still bears its name.
                    stat = Path(f"/proc/{kid}/stat").read_text()
                    zombie = stat[stat.rindex(")") + 2] == "Z"
                    if not zombie and Path(f"/proc/{kid}/comm").read_text().strip() == name:
                        found.append(kid)
                except FileNotFoundError:
                    continue
    return found


def test_run_restarts_its_stream_processes_after_a_kill_and_loses_nothing(
    services: Services, prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    sources = json.dumps([s.model_dump(mode="json") for s in known_sources()])
    tokens = json.dumps([t.model_dump(mode="json") for t in known_tokens()])
    proc, log = start_run(
        services,
        prefix,
        tmp_path,
        port,
        1,
        # info: the supervisor says when each stream process is ready.
        {"CDP_INGEST__SOURCES": sources, "CDP_API__TOKENS": tokens, "CDP_LOG_LEVEL": "info"},
    )
    base = f"http://127.0.0.1:{port}"
    auth = {
        "Authorization": "Basic " + base64.b64encode(f"{key_of('test-pos')}:".encode()).decode()
    }

    def wait(what: str, cond: object) -> object:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{what}\n{log.read_text()[-3000:]}"
            try:
                found = cond()  # type: ignore[operator]
            except httpx.TransportError:
                found = None
            if found:
                return found
            time.sleep(0.1)

    def order(n: int) -> None:
        r = httpx.post(
            base + "/v1/track",
            json={
                "userId": "M-9",
                "event": "Order Completed",
                "messageId": f"o{n}",
                "properties": {"order_id": f"O-{n}", "total": 10},
            },
            headers=auth,
            timeout=30,
        )
        assert r.status_code == 200, r.text

    def orders() -> int:
        r = httpx.get(
            base + "/v1/profiles/lookup",
            params={"type": "member_id", "value": "M-9"},
            headers={"Authorization": "Bearer tk_reader"},
            timeout=30,
        )
        return int(r.json()["order_count"]) if r.status_code == 200 else 0

    try:
        wait("API up", lambda: httpx.get(base + "/healthz", timeout=5).status_code == 200)
        count = WorkerSettings().processes
        stream = wait(
            f"{count} stream processes",
            lambda: (
                found if len(found := _descendants_named(proc.pid, "cdp-stream")) == count else None
            ),
        )
        # Killed before it is ready, a child stops `cdp run` (its fault would repeat).
        for pid in stream:  # type: ignore[attr-defined]
            said = re.compile(rf"worker\.process_ready\b.*\bpid={pid}\b")
            wait(f"stream process {pid} ready", lambda said=said: said.search(log.read_text()))
        # The care processor is a process of its own, named apart: not killed below.
        wait("a care process", lambda: _descendants_named(proc.pid, "cdp-care"))
        order(1)
        wait("the first order folded", lambda: orders() == 1)
        for pid in stream:  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGKILL)
        order(2)  # accepted while no stream process runs: waits in Kafka
        wait("the second order folded by a new stream process", lambda: orders() == 2)
        wait(
            "the killed stream process gone from cdp run's children",
            lambda: set(_descendants_named(proc.pid, "cdp-stream")).isdisjoint(stream),  # type: ignore[arg-type]
        )
        # Killed without a word, `cdp run` leaves no process behind.
        children = _descendants_named(proc.pid, "cdp-stream") + _descendants_named(
            proc.pid, "cdp-api"
        )
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{c}").exists() for c in children):
            assert time.monotonic() < deadline, "children outlived `cdp run`"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
