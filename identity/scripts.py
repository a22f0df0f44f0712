"""Load the Lua scripts with the helpers they share (EVALSHA scripts cannot import)."""

from __future__ import annotations

from pathlib import Path

_PRELUDE = (Path(__file__).parent / "survivor.lua").read_text()


def load(path: Path) -> str:
    """Return the script at ``path`` with the shared helpers in front of it."""
    return _PRELUDE + path.read_text()
