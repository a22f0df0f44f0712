"""``python -m deploy`` and the ``cdp`` script.

Importing the CLI (faust, uvicorn, the tag catalog) takes a second or two. A signal in that
time ends the command at once with the signal's exit code (130/143, as docs/operations.md
states) rather than by Python's default death; the long-running commands keep such a guard
until their own handlers take over (``deploy.lifecycle.guard_start``).
"""

import os
import signal
import sys


def _while_importing(signum: int, _: object) -> None:
    sys.stderr.write(f"cdp: stopped while starting ({signal.Signals(signum).name})\n")
    sys.stderr.flush()
    os._exit(128 + signum)


def main() -> None:
    """Run the ``cdp`` command."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _while_importing)
    from deploy.cli import main as cli_main

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cli_main()


if __name__ == "__main__":
    main()
