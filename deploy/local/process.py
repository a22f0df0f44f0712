"""Start, find and stop the local service processes this tool owns (by pid file)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from contracts.errors import CDPError

#: Children started by this interpreter, kept so they can be reaped (and so Popen does not
#: warn that a detached service "is still running" when the handle is collected).
_children: dict[int, subprocess.Popen[bytes]] = {}


class LocalStackError(CDPError):
    """A local service could not be started or stopped."""


@dataclass(frozen=True)
class Owned:
    """A process recorded in ``pidfile`` whose command line contains ``marker``."""

    pidfile: Path
    marker: str

    def pid(self) -> int | None:
        """Return the pid if the recorded process is alive and still ours."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None
        return pid if self.marker.encode() in cmdline else None

    def spawn(self, argv: list[str], log_path: Path, cwd: Path) -> int:
        """Start ``argv`` detached from our session, logging to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                start_new_session=True,
            )
        _children[proc.pid] = proc
        self.pidfile.write_text(str(proc.pid))
        return proc.pid

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout_s``; return whether anything was stopped."""
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        if not _wait(lambda: self._gone(pid), timeout_s):
            os.kill(pid, signal.SIGKILL)
            _wait(lambda: self._gone(pid), 10.0)
        self.pidfile.unlink(missing_ok=True)
        return True

    def kill(self) -> None:
        """SIGKILL the process (tests of crash behaviour)."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            _wait(lambda: self._gone(pid), 10.0)

    def _gone(self, pid: int) -> bool:
        _reap_zombie(pid)
        return self.pid() is None


def _wait(done: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.1)
    return done()


def _reap_zombie(pid: int) -> None:
    """Collect our own exited child so it stops showing in /proc (no-op otherwise)."""
    child = _children.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _children[pid]
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return


def wait_until(ready: Callable[[], bool], timeout_s: float, what: str, log_path: Path) -> None:
    """Poll ``ready`` until true or raise, pointing at the log."""
    if not _wait(ready, timeout_s):
        tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
        raise LocalStackError(f"{what} not ready after {timeout_s:.0f}s; log {log_path}:\n{tail}")
