"""``python -m deploy`` and the ``cdp`` script.

Importing the CLI (faust, uvicorn, the tag catalog) takes a second or two. A signal in that
time ends the command at once with the signal's exit code (130/143, as docs/operations.md
states) rather than by Python's default death; the long-running commands keep such a guard
until their own handlers take over (``deploy.lifecycle.guard_start``).
"""

import atexit
import os
import shutil
import signal
import sys
import tempfile

#: Commands that run as several processes: they count their metrics into one directory.
LONG_RUNNING = {"run", "api", "worker"}


def _share_metrics() -> None:
    """Give the processes of a long-running command one metrics directory (prometheus_client's
    multiprocess mode, chosen when it is first imported), so one scrape sees them all."""
    if len(sys.argv) < 2 or sys.argv[1] not in LONG_RUNNING:
        return
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return  # a child of such a command, or a directory the operator chose
    path = tempfile.mkdtemp(prefix="cdp-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    atexit.register(shutil.rmtree, path, True)


def _while_importing(signum: int, _: object) -> None:
    sys.stderr.write(f"cdp: stopped while starting ({signal.Signals(signum).name})\n")
    sys.stderr.flush()
    os._exit(128 + signum)


def main() -> None:
    """Run the ``cdp`` command."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _while_importing)
    _share_metrics()
    from deploy.cli import main as cli_main

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cli_main()


if __name__ == "__main__":
    main()
