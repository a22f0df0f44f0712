"""Run the real API (uvicorn) in a thread of the test process, on a free port."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from deploy.app import create_app
from deploy.lifecycle import STOP, Stop
from deploy.local.kafka import free_port
from deploy.serve import ApiProcesses
from deploy.settings import Settings


@contextmanager
def running_api(settings: Settings, owns_history: bool = False, stop: Stop = STOP) -> Iterator[str]:
    """Serve ``settings``' app until the block ends; yield its base URL.

    ``owns_history``: the API may open the embedded ClickHouse (as in ``cdp run``);
    ``stop``: the stop ``/healthz`` reports (this test process's is never begun).
    """
    port = free_port()
    api = settings.api.model_copy(update={"port": port, "workers": 1})
    settings = settings.model_copy(update={"api": api})
    config = uvicorn.Config(
        create_app(settings, owns_history=owns_history, stop=stop),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        proxy_headers=False,  # as deploy/serve.py: the client is the peer unless trusted
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"api-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("API server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def running_api_processes(settings: Settings, count: int = 2) -> Iterator[str]:
    """Serve ``settings``' app from ``count`` processes on one port, as ``cdp api`` and
    ``cdp run`` do; yield the base URL once every process answered."""
    port = free_port()
    api = settings.api.model_copy(update={"port": port, "workers": count})
    settings = settings.model_copy(update={"api": api})
    processes = ApiProcesses(settings, count).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_pids(base, count, processes)
        yield base
    finally:
        processes.stop()


def wait_for_pids(base: str, count: int, processes: ApiProcesses, timeout_s: float = 90) -> None:
    """Open new connections until ``count`` different processes answered ``/healthz``."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < count:
        processes.check()
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(seen)} of {count} API processes answered")
        try:
            seen.add(httpx.get(base + "/healthz", timeout=5).json()["pid"])
        except httpx.HTTPError:
            time.sleep(0.1)
