"""A Redis server from Debian's ``redis-server`` package, AOF everysec, on loopback."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import redis

from deploy.local.kafka import port_open
from deploy.local.process import LocalStackError, Owned, wait_until


@dataclass(frozen=True)
class RedisServer:
    """One redis-server whose data, AOF and log live under ``home``."""

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
        binary = shutil.which("redis-server")
        if binary is None:
            raise LocalStackError("redis-server not found: apt-get install redis-server")
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
