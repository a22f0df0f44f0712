#!/usr/bin/env bash
# Install everything, then run the whole test suite. The fixtures start real Kafka and Redis
# (or use CDP_TEST_KAFKA_BOOTSTRAP / CDP_TEST_REDIS_URL, or a Docker engine if one answers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/cdp contracts export --check
exec .venv/bin/python -m pytest "$@"
