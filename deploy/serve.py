"""Serve the HTTP API from one or several processes on one port."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Iterator
from functools import partial
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import faust
import mode
import structlog
import uvicorn
from fastapi import FastAPI

from deploy.app import create_app
from deploy.lifecycle import CHILD_SHARE, EXIT_OK, EXIT_START, KILL_SHARE, STOP, StartError
from deploy.logs import configure
from deploy.settings import Settings

log = structlog.get_logger()

#: How long stopping processes get after SIGTERM before they are killed, when no stop of
#: this process bounds it (tests that run children directly).
STOP_GRACE_S = 20.0
#: prctl(2): the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1
#: prctl(2): the process's name as ``ps -o comm`` and ``/proc/<pid>/comm`` show it.
PR_SET_NAME = 15


class PortInUse(StartError):
    """The API's port is held by another process."""


def api_processes(settings: Settings) -> int:
    """How many API processes to run: the setting, else one per CPU."""
    return settings.api.processes()


def serving(settings: Settings, workers: int) -> Settings:
    """``settings`` as the API processes get them: each knows how many share the port
    (each enforces its share of the deployment's limits)."""
    return settings.model_copy(update={"api": settings.api.model_copy(update={"workers": workers})})


def process_app(settings: Settings) -> FastAPI:
    """Build the API inside one serving process (each configures its own logging)."""
    configure(settings.log_level, settings.log_json)
    return create_app(settings)


def uvicorn_config(settings: Settings, app: Any, **options: Any) -> uvicorn.Config:
    """The listener every API process uses; the fastest loop and parser uvicorn has.

    Without uvicorn's proxy headers: it would take the client address from
    ``X-Forwarded-For`` whenever the peer is loopback. Ingest reads the header itself, from
    the configured trusted proxies only (``ingest/client.py``).
    """
    return uvicorn.Config(
        app,
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        loop=settings.api.loop,
        http=settings.api.http,
        # Requests still running this long into a stop are cut: the lifespan's shutdown
        # (flushing the producer) gets the rest of the bound.
        timeout_graceful_shutdown=max(int(settings.shutdown_timeout_s / 2), 1),
        proxy_headers=False,
        **options,
    )


def shared_socket(host: str, port: int) -> socket.socket:
    """A listening socket in the port's SO_REUSEPORT group.

    Each process has its own, and the kernel spreads new connections over them; one shared
    socket would let whichever process woke first accept a whole burst of connections (and
    keep them: clients hold connections open), leaving the others idle.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # Nagle's algorithm against the client's delayed ACK adds ~40 ms to every response.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def check_port_free(host: str, port: int) -> None:
    """Raise ``PortInUse`` when anything listens on the port, whether or not it shares it.

    A socket without SO_REUSEPORT cannot bind where any socket is bound, so this also keeps
    a second ``cdp api`` from silently joining the port group of a running one.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"port {host}:{port} is already in use (CDP_API__PORT): "
                    "is another cdp api or cdp run serving it?"
                ) from exc
            raise


def die_with(parent: int, name: str) -> None:
    """Stop this process when ``parent`` dies, even by SIGKILL (Linux), so no child is left
    holding the port or the partitions without its supervisor; name it ``name`` for ``ps``
    and ``top`` (every child is otherwise a "python").

    The child leaves the terminal's process group: Ctrl-C reaches only the supervisor,
    which passes the stop on. Reaching both, the supervisor's SIGTERM would be the child's
    second signal, which ends a process at once (deploy/lifecycle.py).
    """
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        libc.prctl(PR_SET_NAME, name.encode()[:15])
    if os.getppid() != parent:  # it died before we asked
        os._exit(0)


class ChildFailed(StartError):
    """A child process exited before it was ready: the same fault would repeat on a restart."""


class ApiProcessFailed(ChildFailed):
    """An API process exited before it served."""


#: Times in a row a child killed by a signal before it was ready is started again.
KILLED_STARTING_RESTARTS = 3


class Children:
    """Spawned processes of one kind, kept running beside this one.

    Child ``slot`` (0 to count - 1) keeps its number across restarts. Each child gets an
    event it sets once it is ready (serving, consuming). ``check``
    restarts a child that died after it was ready and raises ``ChildFailed`` for one that
    exited before: a fault at start (bad settings, a catalog that does not load) would only
    repeat. A child killed by a signal while starting (the kernel's OOM killer, an operator)
    is no such fault: it is started again, up to ``KILLED_STARTING_RESTARTS`` times in a
    row. ``stop`` sends SIGTERM and kills those still running after a grace period.
    """

    kind = "child"
    failure: type[ChildFailed] = ChildFailed

    def __init__(self, target: Any, args: tuple[Any, ...], count: int) -> None:
        self.target, self.args, self.count = target, args, count
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[tuple[BaseProcess, Any]] = []
        self._announced: set[int | None] = set()
        self._killed_starting = [0] * count

    def _spawn(self, slot: int) -> tuple[BaseProcess, Any]:
        ready = self.context.Event()
        process = self.context.Process(
            target=self.target, args=(*self.args, slot, os.getpid(), ready), daemon=False
        )
        process.start()
        return process, ready

    @property
    def pids(self) -> list[int | None]:
        """The children's process ids."""
        return [p.pid for p, _ in self.processes]

    def start(self) -> Children:
        """Spawn the processes."""
        self.processes = [self._spawn(slot) for slot in range(self.count)]
        log.info(f"{self.kind}.processes", count=self.count, pids=self.pids)
        return self

    def check(self) -> None:
        """Replace a process that died after it was ready; raise if one never was. Log
        each process once when it is first seen ready (operators and tests wait for it)."""
        for i, (process, ready) in enumerate(self.processes):
            if process.is_alive():
                if process.pid not in self._announced and ready.is_set():
                    self._announced.add(process.pid)
                    self._killed_starting[i] = 0
                    log.info(f"{self.kind}.process_ready", slot=i, pid=process.pid)
                continue
            code = process.exitcode
            if not ready.is_set():
                if code is None or code >= 0:
                    raise self.failure(
                        f"{self.kind} process {process.pid} exited with {code} "
                        "before it was ready; see its log"
                    )
                name = signal.Signals(-code).name if -code in signal.valid_signals() else -code
                if self._killed_starting[i] >= KILLED_STARTING_RESTARTS:
                    raise self.failure(
                        f"{self.kind} process {process.pid} was killed by {name} before it "
                        f"was ready, {self._killed_starting[i] + 1} times in a row "
                        "(out of memory? see the kernel log)"
                    )
                self._killed_starting[i] += 1
                log.warning(
                    f"{self.kind}.process_killed_starting", slot=i, pid=process.pid, signal=name
                )
                self.processes[i] = self._spawn(i)
                continue
            log.warning(f"{self.kind}.process_died", pid=process.pid, exitcode=process.exitcode)
            self.processes[i] = self._spawn(i)

    def terminate(self) -> None:
        """SIGTERM every process still running (each then stops within its own bound)."""
        for process, _ in self.processes:
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL every process still running."""
        for process, _ in self.processes:
            if process.is_alive():
                process.kill()

    def stop(self, grace_s: float = STOP_GRACE_S) -> bool:
        """SIGTERM every process, kill those still running after ``grace_s``; return
        whether every one stopped by itself."""
        self.terminate()
        deadline = time.monotonic() + grace_s
        clean = True
        for process, _ in self.processes:
            process.join(max(deadline - time.monotonic(), 0))
            if process.is_alive():
                clean = False
                log.warning(f"{self.kind}.process_killed", pid=process.pid, after_s=grace_s)
                process.kill()
                process.join()
        return clean


class _BoundedServer(uvicorn.Server):
    """uvicorn whose stop is bounded: a signal begins this process's stop (``/healthz``
    answers 503, a watchdog ends the process after ``CDP_SHUTDOWN_TIMEOUT_S``, a second
    signal ends it at once), and a clean stop exits 0 instead of re-raising the signal."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        STOP.begin(sig)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


class _ReadyServer(_BoundedServer):
    """An API process's server: tells its supervisor once it serves."""

    def __init__(self, config: uvicorn.Config, ready: Any) -> None:
        super().__init__(config)
        self.ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.ready.set()


def _serve_one(settings: Settings, slot: int, parent: int, ready: Any) -> None:
    """One API process: its own socket in the port group, its own app."""
    die_with(parent, "cdp-api")
    STOP.install(settings.shutdown_timeout_s)
    config = uvicorn_config(settings, partial(process_app, settings), factory=True)
    _ReadyServer(config, ready).run(sockets=[shared_socket(settings.api.host, settings.api.port)])


class ApiProcesses(Children):
    """Spawned API processes serving the port beside each other (and beside this process).

    Each builds its own app (Kafka producer, Redis pool) from ``settings``.
    """

    kind = "api"
    failure = ApiProcessFailed

    def __init__(self, settings: Settings, count: int) -> None:
        super().__init__(_serve_one, (child_settings(settings),), count)


def child_settings(settings: Settings) -> Settings:
    """A child process's settings: its stop ends a little before its supervisor's."""
    bound = settings.shutdown_timeout_s * CHILD_SHARE
    return settings.model_copy(update={"shutdown_timeout_s": bound})


def serve(settings: Settings, workers: int) -> int:
    """Serve the API with ``workers`` processes until SIGTERM/SIGINT; return the exit code
    (deploy/lifecycle.py)."""
    check_port_free(settings.api.host, settings.api.port)
    STOP.install(settings.shutdown_timeout_s)
    settings = serving(settings, workers)
    if workers <= 1:
        config = uvicorn_config(settings, partial(process_app, settings), factory=True)
        server = _BoundedServer(config)
        server.run()
        return STOP.exit_code(EXIT_OK if server.started else EXIT_START)

    def stop(signum: int, _: FrameType | None) -> None:
        STOP.begin(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    processes = ApiProcesses(settings, workers)
    STOP.on_begin(processes.terminate)
    STOP.on_force(processes.kill)
    processes.start()
    try:
        while not STOP.stopping:
            time.sleep(0.2)
            if not STOP.stopping:
                processes.check()
    except ApiProcessFailed as exc:
        log.error("api.process_failed", error=str(exc))
        STOP.fail(EXIT_START)
    finally:
        STOP.begin()
        if not processes.stop(STOP.remaining(KILL_SHARE)):
            STOP.incomplete = True
    return STOP.exit_code(EXIT_OK)


class _QuietServer(uvicorn.Server):
    """uvicorn inside faust: faust owns the signals (and begins the bounded stop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def attach_api(app: faust.App, settings: Settings, workers: int) -> None:
    """Serve the API from the worker (``cdp run``) and from ``workers - 1`` more processes.

    The worker's own API owns the embedded ClickHouse; it also listens on a loopback port of
    its own, to which the other processes forward the segment routes (they cannot open the
    history). Every process shares the public port.
    """
    check_port_free(settings.api.host, settings.api.port)
    settings = serving(settings, workers)
    public = shared_socket(settings.api.host, settings.api.port)
    internal = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    internal.bind(("127.0.0.1", 0))
    internal.listen(256)
    owner = f"http://127.0.0.1:{internal.getsockname()[1]}"
    config = uvicorn_config(settings, create_app(settings, owns_history=True))
    server = _QuietServer(config)
    others = ApiProcesses(
        settings.model_copy(
            update={"api": settings.api.model_copy(update={"history_owner": owner})}
        ),
        workers - 1,
    )

    @app.service
    class Api(mode.Service):
        """The HTTP API in the worker's event loop, and the API processes beside it."""

        serving: asyncio.Task[None] | None = None

        async def on_start(self) -> None:
            self.serving = asyncio.ensure_future(server.serve(sockets=[public, internal]))
            while not server.started:
                if self.serving.done():
                    STOP.fail(EXIT_START)
                    raise StartError(f"API could not start on port {settings.api.port}")
                await asyncio.sleep(0.05)

        async def on_stop(self) -> None:
            server.should_exit = True
            if self.serving is not None:
                await self.serving

    if others.count:
        supervise(app, others)


def supervise(app: faust.App, children: Children) -> None:
    """Start ``children`` with ``app``, keep them running, stop them before it stops.

    A child that exits before it was ready stops the app (``ChildFailed``, exit 3): the fault
    would repeat; one killed by a signal while starting, or that dies later, is restarted
    (see ``Children``). The children are told to stop as soon
    as this process's stop begins, and killed if they outlast its bound.
    """
    STOP.on_begin(children.terminate)
    STOP.on_force(children.kill)

    @app.service
    class Supervisor(mode.Service):
        async def on_start(self) -> None:
            children.start()

        @mode.Service.timer(1.0)
        async def _keep(self) -> None:
            if STOP.stopping:
                return  # a child stopping now is not restarted
            try:
                children.check()
            except ChildFailed as exc:
                log.error(f"{children.kind}.process_failed", error=str(exc))
                STOP.fail(EXIT_START)
                raise

        async def on_stop(self) -> None:
            STOP.begin()
            if not await asyncio.to_thread(children.stop, STOP.remaining(KILL_SHARE)):
                STOP.incomplete = True
