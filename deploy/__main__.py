"""``python -m deploy`` is the ``cdp`` command."""

from deploy.cli import main

main()
