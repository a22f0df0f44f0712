# Developer shortcuts; CI runs scripts/test.sh (the README's test command).
PY := .venv/bin/python

.PHONY: install format lint typecheck test test-unit test-integration bench up down

install:
	bash scripts/install.sh

format:
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

typecheck:
	.venv/bin/mypy

test:
	bash scripts/test.sh

test-unit:
	$(PY) -m pytest tests/unit

test-integration:
	$(PY) -m pytest tests/integration

bench: up
	$(PY) bench/ingest_rate.py

up:
	.venv/bin/cdp up

down:
	.venv/bin/cdp down
