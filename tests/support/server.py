"""Run the real API (uvicorn) in a thread of the test process, on a free port."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from deploy.app import create_app
from deploy.local.kafka import free_port
from deploy.settings import Settings


@contextmanager
def running_api(settings: Settings, owns_history: bool = False) -> Iterator[str]:
    """Serve ``settings``' app until the block ends; yield its base URL.

    ``owns_history``: the API may open the embedded ClickHouse (as in ``cdp run``).
    """
    port = free_port()
    settings = settings.model_copy(update={"api": settings.api.model_copy(update={"port": port})})
    config = uvicorn.Config(
        create_app(settings, owns_history=owns_history),
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
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
