"""Fixtures of the privacy tests (the shared ones are in tests/conftest.py)."""
