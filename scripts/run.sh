#!/usr/bin/env bash
# Install everything, start the local real stack, then run the platform on the embedded
# default with a demo feed through the HTTP API (Ctrl-C stops it; `cdp down` stops services).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/cdp up
exec .venv/bin/cdp run --demo "$@"
