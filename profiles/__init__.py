"""Unified profiles (arrives with the stream core, issue 3)."""
