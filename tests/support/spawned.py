"""A `cdp` command run as its own process, as an operator or a supervisor runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

T = TypeVar("T")


class Spawned:
    """``python -m deploy ARGS`` with ``env``; its output goes to a log of its own."""

    def __init__(self, args: list[str], env: dict[str, str], home: Path) -> None:
        self.args = args
        self.env = {**os.environ, "CDP_LOG_LEVEL": "warning", **env}
        self.log = home / f"{'-'.join(args[:1])}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Spawned:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "deploy", *self.args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def tail(self, chars: int = 3000) -> str:
        """The last ``chars`` of the log."""
        return self.log.read_text(errors="replace")[-chars:]

    def wait_for(self, what: str, condition: Callable[[], T | None], timeout_s: float = 180) -> T:
        """Poll ``condition`` until it returns something true while the process lives."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}\n{self.tail()}"
            assert time.monotonic() < deadline, f"{what}: not after {timeout_s} s\n{self.tail()}"
            try:
                found = condition()
            except httpx.TransportError:
                found = None
            if found:
                return found
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 120) -> tuple[int, float]:
        """Send ``sig``; return the exit code and the seconds the process took to exit."""
        assert self.proc is not None
        began = time.monotonic()
        self.proc.send_signal(sig)
        return self.exited(began, timeout_s)

    def exited(self, began: float, timeout_s: float = 120) -> tuple[int, float]:
        """Wait for the exit; return its code and the seconds since ``began``."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"still running after {timeout_s} s\n{self.tail()}") from None
        return code, time.monotonic() - began

    def kill(self) -> None:
        """SIGKILL the process if it still runs (cleanup)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
