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
from uvicorn.config import STARTUP_FAILURE

from contracts.errors import CDPError
from deploy.app import create_app
from deploy.logs import configure
from deploy.settings import Settings

log = structlog.get_logger()

#: How long stopping processes get after SIGTERM before they are killed.
STOP_GRACE_S = 20.0
#: prctl(2): the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


class PortInUse(CDPError):
    """The API's port is held by another process."""


class ApiProcessFailed(CDPError):
    """An API process exited before it served: the same fault would repeat on a restart."""


def api_processes(settings: Settings) -> int:
    """How many API processes to run: the setting, else one per CPU."""
    return settings.api.workers or os.cpu_count() or 1


def process_app(settings: Settings) -> FastAPI:
    """Build the API inside one serving process (each configures its own logging)."""
    configure(settings.log_level, settings.log_json)
    return create_app(settings)


def uvicorn_config(settings: Settings, app: Any, **options: Any) -> uvicorn.Config:
    """The listener every API process uses; the fastest loop and parser uvicorn has."""
    return uvicorn.Config(
        app,
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        loop=settings.api.loop,
        http=settings.api.http,
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
                raise PortInUse(f"{host}:{port} is already in use") from exc
            raise


def _die_with(parent: int) -> None:
    """Stop this process when ``parent`` dies, even by SIGKILL (Linux), so no API process is
    left holding the port without its supervisor."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before we asked
        os._exit(0)


def _serve_one(settings: Settings, parent: int) -> None:
    """One API process: its own socket in the port group, its own app."""
    _die_with(parent)
    config = uvicorn_config(settings, partial(process_app, settings), factory=True)
    uvicorn.Server(config).run(sockets=[shared_socket(settings.api.host, settings.api.port)])


class ApiProcesses:
    """Spawned API processes serving the port beside each other (and beside this process).

    Each builds its own app (Kafka producer, Redis pool) from ``settings``. ``check`` restarts
    one that died after it served and raises ``ApiProcessFailed`` for one that never did;
    ``stop`` sends SIGTERM and kills those still running after ``STOP_GRACE_S``.
    """

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings, self.count = settings, count
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[BaseProcess] = []

    def _spawn(self) -> BaseProcess:
        process = self.context.Process(
            target=_serve_one, args=(self.settings, os.getpid()), daemon=False
        )
        process.start()
        return process

    def start(self) -> ApiProcesses:
        """Spawn the processes (they serve once their app started)."""
        self.processes = [self._spawn() for _ in range(self.count)]
        log.info("api.processes", count=self.count, pids=[p.pid for p in self.processes])
        return self

    def check(self) -> None:
        """Replace a process that died; raise if one could not start."""
        for i, process in enumerate(self.processes):
            if process.is_alive():
                continue
            if process.exitcode == STARTUP_FAILURE:
                raise ApiProcessFailed(f"API process {process.pid} could not start; see its log")
            log.warning("api.process_died", pid=process.pid, exitcode=process.exitcode)
            self.processes[i] = self._spawn()

    def stop(self) -> None:
        """SIGTERM every process; kill those still running after ``STOP_GRACE_S``."""
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in self.processes:
            process.join(max(deadline - time.monotonic(), 0))
            if process.is_alive():
                process.kill()
                process.join()


def serve(settings: Settings, workers: int) -> int:
    """Serve the API with ``workers`` processes until SIGTERM/SIGINT; return the exit code."""
    check_port_free(settings.api.host, settings.api.port)
    if workers <= 1:
        config = uvicorn_config(settings, partial(process_app, settings), factory=True)
        uvicorn.Server(config).run()
        return 0
    stopping: list[int] = []

    def stop(signum: int, _: FrameType | None) -> None:
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    processes = ApiProcesses(settings, workers).start()
    try:
        while not stopping:
            time.sleep(0.2)
            if not stopping:  # Ctrl-C reaches the processes too: none is restarted then
                processes.check()
    except ApiProcessFailed as exc:
        log.error("api.process_failed", error=str(exc))
        return STARTUP_FAILURE
    finally:
        processes.stop()
    return 0


class _QuietServer(uvicorn.Server):
    """uvicorn inside faust: faust owns the signals."""

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
                    raise RuntimeError(f"API could not start on port {settings.api.port}")
                await asyncio.sleep(0.05)
            if others.count:
                others.start()

        @mode.Service.timer(1.0)
        async def _keep_processes(self) -> None:
            others.check()  # ApiProcessFailed stops the worker: the fault would repeat

        async def on_stop(self) -> None:
            await asyncio.to_thread(others.stop)
            server.should_exit = True
            if self.serving is not None:
                await self.serving
