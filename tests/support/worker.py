"""Run `cdp worker` as its own process, as in production, and wait for it to catch up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from kafka.errors import KafkaError

from deploy.lag import total_lag
from deploy.settings import Settings
from deploy.worker import group_id

#: Every topic a worker of all roles reads: the raw events (the stream processor) and what
#: the history stores. Caught up on all of them, every event's effects are stored.
PIPELINE_TOPICS = {
    "cdp.events.raw",
    "cdp.events.resolved",
    "cdp.identity.merges",
    "cdp.profiles.changes",
    "cdp.profiles.snapshots",
}


class WorkerProcess:
    """One `cdp worker` process with its own embedded ClickHouse directory."""

    def __init__(self, settings: Settings, home: Path, roles: list[str]) -> None:
        self.settings, self.roles = settings, roles
        self.env = {
            **os.environ,
            "CDP_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "CDP_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
            "CDP_KAFKA__PARTITIONS": str(settings.kafka.partitions),
            "CDP_REDIS__URL": settings.redis.url.get_secret_value(),
            "CDP_WORKER__NAMESPACE": settings.worker.namespace,
            "CDP_WORKER__BATCH_SIZE": "200",
            "CDP_CLICKHOUSE__PATH": str(home / "chdb"),
            "CDP_LOG_LEVEL": "warning",
            # A state location that does not exist yet, as on a machine that never ran `cdp up`.
            "XDG_STATE_HOME": str(home / "xdg-state"),
        }
        self.log = home / f"worker-{'_'.join(roles)}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        args = [a for r in self.roles for a in ("--role", r)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "deploy", "worker", *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def cli(self, *args: str) -> str:
        out = self.run_cli(*args)
        if out.returncode:
            raise AssertionError(f"cdp {' '.join(args)} exited {out.returncode}:\n{out.stderr}")
        return out.stdout

    def run_cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a `cdp` command with the worker's settings (and ``env``); its exit code is the
        caller's."""
        return subprocess.run(
            [sys.executable, "-m", "deploy", *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def check(self) -> None:
        """Fail at once, with the exit code and the log's last lines, if the worker died."""
        assert self.proc is not None, "the worker was never started"
        code = self.proc.poll()
        if code is not None:
            raise AssertionError(f"worker exited with {code}; log:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        """The last ``chars`` of the worker's log."""
        return self.log.read_text(errors="replace")[-chars:]

    def wait_for(self, condition: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
        """Wait until ``condition()`` holds while the worker lives; fail naming ``what``."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            self.check()
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not after {timeout_s:.0f} s; log:\n{self.tail()}")
            time.sleep(0.1)

    @property
    def group(self) -> str:
        return group_id(self.settings, self.roles)

    def wait_caught_up(self, topics: set[str], timeout_s: float = 120) -> None:
        """Wait until the group committed everything on ``topics``; fail loudly otherwise."""
        wanted = sorted(self.settings.kafka.topic(t) for t in topics)

        def caught_up() -> bool:
            try:
                return total_lag(self.settings.kafka, self.group, wanted) == 0
            except KafkaError:  # the group coordinator is still being elected
                return False

        self.wait_for(caught_up, f"group {self.group} caught up on {wanted}", timeout_s)
