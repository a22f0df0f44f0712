"""Serve the HTTP API from one or several processes on one port."""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import socket
import time
from functools import partial
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

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


class PortInUse(CDPError):
    """The API's port is held by another process."""


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
    sock.set_inheritable(True)
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


def _serve_one(settings: Settings) -> None:
    """One API process: its own socket in the port group, its own app."""
    config = uvicorn_config(settings, partial(process_app, settings), factory=True)
    uvicorn.Server(config).run(sockets=[shared_socket(settings.api.host, settings.api.port)])


def serve(settings: Settings, workers: int) -> int:
    """Serve the API with ``workers`` processes until a signal stops them; return the exit code.

    One process serves in this one. Several are spawned, each building its own app (Kafka
    producer, Redis pool) from ``settings``; this process restarts one that dies after it
    started, stops them all if one cannot start (the same fault would repeat), and on
    SIGTERM/SIGINT stops them, killing those still running after ``STOP_GRACE_S``.
    """
    check_port_free(settings.api.host, settings.api.port)
    if workers <= 1:
        config = uvicorn_config(settings, partial(process_app, settings), factory=True)
        uvicorn.Server(config).run()
        return 0
    return _Supervisor(settings, workers).run()


class _Supervisor:
    """Keep ``workers`` API processes running until told to stop."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings, self.workers = settings, workers
        self.context = multiprocessing.get_context("spawn")
        self.stopping = False

    def _start(self) -> BaseProcess:
        process = self.context.Process(target=_serve_one, args=(self.settings,), daemon=False)
        process.start()
        return process

    def _stop(self, signum: int, _: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        processes = [self._start() for _ in range(self.workers)]
        log.info("api.processes", count=self.workers, pids=[p.pid for p in processes])
        code = 0
        while not self.stopping:
            time.sleep(0.2)
            for i, process in enumerate(processes):
                if process.is_alive() or self.stopping:
                    continue
                if process.exitcode == STARTUP_FAILURE:
                    log.error("api.process_failed_to_start", pid=process.pid)
                    self.stopping, code = True, STARTUP_FAILURE
                    break
                log.warning("api.process_died", pid=process.pid, exitcode=process.exitcode)
                processes[i] = self._start()
        for process in processes:
            if process.is_alive():
                os.kill(process.pid or 0, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in processes:
            process.join(max(deadline - time.monotonic(), 0))
            if process.is_alive():
                process.kill()
                process.join()
        return code
