"""A local Redis-protocol server, AOF everysec, on loopback: Valkey (Debian's
``valkey-server``, from bookworm-backports on Debian 12) when installed, else ``redis-server``.

Valkey first because, like Redis 7.2 and later, it never refuses a script's write once the
script has written: Redis 7.0 (Debian 12's ``redis-server``) can refuse one in the middle of
a script when its disk fills up, and a Lua script is not rolled back.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import redis

from deploy.local.kafka import port_open
from deploy.local.process import LocalStackError, Owned, wait_until

#: Server binaries, in order of preference.
SERVERS = ("valkey-server", "redis-server")


@dataclass(frozen=True)
class RedisServer:
    """One local server (``SERVERS``) whose data, AOF and log live under ``home``."""

    home: Path
    port: int

    @property
    def url(self) -> str:
        """Return the client URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        """Return the server's log file."""
        return self.home / "redis.log"

    @property
    def _owned(self) -> Owned:
        return Owned(self.home / "redis.pid", f"127.0.0.1:{self.port}")

    def running(self) -> bool:
        """Return whether our server process is alive."""
        return self._owned.pid() is not None

    def start(self, timeout_s: float = 30.0) -> bool:
        """Start unless ours already runs; wait for PING. Return whether it was started."""
        if self.running():
            return False
        binary = next(filter(None, map(shutil.which, SERVERS)), None)
        if binary is None:
            raise LocalStackError(
                "neither valkey-server nor redis-server found: run scripts/install.sh"
            )
        if port_open(self.port):
            raise LocalStackError(f"port {self.port} is taken by another process, not our Redis")
        self.home.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.home),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--hash-max-listpack-value",
            "128",
            "--protected-mode",
            "yes",
            "--logfile",
            "",
        ]
        self._owned.spawn(argv, self.log_path, self.home)
        wait_until(self.ready, timeout_s, f"Redis on {self.url}", self.log_path)
        return True

    def ready(self) -> bool:
        """Return whether the server answers PING."""
        if not self.running():
            return False
        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> bool:
        """Stop our server (it rewrites nothing: AOF is already on disk)."""
        return self._owned.stop(timeout_s=20.0)
