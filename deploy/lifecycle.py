"""How a long-running process (``cdp run``, ``cdp api``, ``cdp worker``) starts and stops.

Exit codes (docs/operations.md):

====== ====================================================================================
0      stopped cleanly after SIGTERM/SIGINT: everything processed was committed
1      failed while running (a bug): restarted, it goes on from the last committed offsets
2      configuration: an invalid ``CDP_*`` setting, tag catalog, sources file, master keys
3      could not start: the port is in use, Kafka or Redis did not answer within
       ``CDP_STARTUP_TIMEOUT_S``, a child process failed before it was ready
128+N  stopped by signal N without finishing (130 SIGINT, 143 SIGTERM): the stop took
       longer than ``CDP_SHUTDOWN_TIMEOUT_S`` or a second signal came; what was not
       committed is read again on the next start (at-least-once)
====== ====================================================================================

A stop is bounded whatever else is down: the first signal marks the process as stopping
(``/healthz`` answers 503) and starts a watchdog thread; the stop then runs as usual
(agents stop, offsets are committed, the producer flushes), and if it has not finished
when the bound passes, or a second signal comes, the watchdog kills the child processes
and ends this one with ``os._exit``. A thread, not a task: a stop hangs precisely when the
event loop waits for a service that is not there, or spins reconnecting to it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import redis
import structlog
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from contracts.errors import CDPError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
#: uvicorn's own code when its server cannot start, kept for every start failure.
EXIT_START = 3

#: Share of the bound a child process gets for its own stop: it ends by itself a little
#: before its supervisor, whose deadline is the full bound, would kill it.
CHILD_SHARE = 0.8
#: Share of the bound after which a supervisor kills the children still running.
KILL_SHARE = 0.9


class StartError(CDPError):
    """The process cannot start (port, unreachable service, failed child): one line, exit 3."""


def signal_code(signum: int) -> int:
    """The shell's exit status of a process ended by ``signum``."""
    return 128 + signum


class Stop:
    """This process's stop: marked by the first signal, bounded, forced by a second one.

    ``install`` sets the bound (a process without one only marks its stop: tests build
    apps in their own process). ``on_begin`` hooks run when the stop begins (a supervisor
    passes the signal on to its children at once), ``on_force`` hooks just before a forced
    exit (they kill the children).
    """

    def __init__(self) -> None:
        self.bound_s: float | None = None
        self.signum: int | None = None
        #: The exit code a failure recorded before the stop (``fail``); wins over the rest.
        self.code: int | None = None
        #: Something was cut short (a child killed): a clean exit becomes a signal's code.
        self.incomplete = False
        self.began: float | None = None
        self._lock = threading.Lock()
        self._begin_hooks: list[Callable[[], None]] = []
        self._force_hooks: list[Callable[[], None]] = []

    def install(self, bound_s: float) -> Stop:
        """Bound this process's stop to ``bound_s`` seconds from its beginning."""
        self.bound_s = bound_s
        return self

    def on_begin(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` when the stop begins."""
        self._begin_hooks.append(hook)

    def on_force(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` before a forced exit."""
        self._force_hooks.append(hook)

    @property
    def stopping(self) -> bool:
        """Whether this process is stopping (``/healthz`` then answers 503)."""
        return self.began is not None

    def begin(self, signum: int | None = None) -> None:
        """Begin the stop (``signum``: the signal that asked for it; None: a failure or the
        end of the work); a signal after the stop began ends the process at once."""
        with self._lock:
            first = self.began is None
            if first:
                self.began = time.monotonic()
                self.signum = signum
            elif signum is not None and self.signum is None:
                self.signum = signum
        if not first:
            if signum is not None:
                self.force(f"second signal ({signal.Signals(signum).name})")
            return
        if self.bound_s is not None:
            threading.Thread(target=self._watch, name="stop-watchdog", daemon=True).start()
        for hook in self._begin_hooks:
            hook()

    def fail(self, code: int) -> None:
        """Record why the process is about to stop: its exit code."""
        if self.code is None:
            self.code = code

    def remaining(self, share: float = 1.0) -> float:
        """Seconds until ``share`` of the bound has passed since the stop began."""
        bound = self.bound_s if self.bound_s is not None else 20.0
        began = self.began if self.began is not None else time.monotonic()
        return max(began + bound * share - time.monotonic(), 0.0)

    def exit_code(self, code: int) -> int:
        """The code to exit with once the stop finished by itself with ``code``."""
        if self.code is not None:
            return self.code
        if code == EXIT_OK and self.incomplete and self.signum is not None:
            return signal_code(self.signum)
        return code

    def forced_code(self) -> int:
        """The code of a forced exit."""
        if self.code is not None:
            return self.code
        return signal_code(self.signum) if self.signum is not None else EXIT_FAILED

    def force(self, why: str) -> None:
        """Kill the children and end this process now."""
        for hook in self._force_hooks:
            try:
                hook()
            except Exception:  # noqa: BLE001, S110 - the exit must happen whatever a hook does
                pass
        code = self.forced_code()
        sys.stderr.write(
            f"cdp: stopped by {why} before the stop finished (exit {code}); "
            "what was not committed is read again on the next start\n"
        )
        sys.stderr.flush()
        os._exit(code)

    def _watch(self) -> None:
        time.sleep(self.remaining())
        self.force(f"the shutdown timeout ({self.bound_s:g} s, CDP_SHUTDOWN_TIMEOUT_S)")


#: The stop of this process (signals are per process).
STOP = Stop()


def guard_start() -> None:
    """Until the command's own handlers take over, a signal ends it at once with the
    signal's code (nothing is consumed or committed yet), rather than Python's default
    death by the signal: a supervisor that stops a command still starting gets 143/130."""

    def early(signum: int, _: object) -> None:
        sys.stderr.write(f"cdp: stopped while starting ({signal.Signals(signum).name})\n")
        sys.stderr.flush()
        os._exit(signal_code(signum))

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, early)


def wait_for_kafka(bootstrap: str, timeout_s: float) -> None:
    """Return once Kafka answers a metadata request; ``StartError`` after ``timeout_s``."""
    # librdkafka would log every refused connection; the one line below says it all.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            if admin.list_topics(timeout=max(min(left, 3.0), 0.1)).brokers:
                return
        except KafkaException:
            pass
        if time.monotonic() >= deadline:
            raise StartError(
                f"Kafka at {bootstrap} did not answer within {timeout_s:g} s "
                "(CDP_KAFKA__BOOTSTRAP_SERVERS; CDP_STARTUP_TIMEOUT_S)"
            )
        time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))


#: The first Redis that never refuses a script's write once the script has written (a full
#: disk or maxmemory is checked before its first write only): before it, such a refusal can
#: cut a script in half, and a Lua script is not rolled back. Valkey (every release) is a fork
#: of Redis 7.2.
SCRIPTS_WHOLE_SINCE = (7, 2)


def warn_if_scripts_can_be_cut(client: redis.Redis, where: str) -> None:
    """Log a warning when the server is a Redis older than ``SCRIPTS_WHOLE_SINCE``."""
    info = client.info("server")
    if "valkey_version" in info:
        return
    version = str(info.get("redis_version", "0"))
    if tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) < SCRIPTS_WHOLE_SINCE:
        structlog.get_logger().warning(
            "redis.scripts_can_be_cut",
            version=version,
            at=where,
            why="a full disk or maxmemory can refuse a write in the middle of a script, "
            "leaving a batch half applied",
            do="use Redis 7.2 or later, or Valkey (docs/operations.md, Redis's disk full)",
        )


def wait_for_redis(url: str, timeout_s: float) -> None:
    """Return once Redis answers PING; ``StartError`` after ``timeout_s``."""
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or 6379}"  # never the password
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                client.ping()
                warn_if_scripts_can_be_cut(client, where)
                return
            except redis.RedisError as exc:
                error = str(exc)
            if time.monotonic() >= deadline:
                raise StartError(
                    f"Redis at {where} did not answer within {timeout_s:g} s "
                    f"(CDP_REDIS__URL; CDP_STARTUP_TIMEOUT_S): {error}"
                )
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))
    finally:
        client.close()
