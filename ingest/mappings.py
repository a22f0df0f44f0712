"""The mappings of every source, loaded from a directory and reloaded when it changes."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import structlog

from ingest.mapping import Mapping, MappingError, load_mapping

log = structlog.get_logger()

#: How often (seconds) the directory is looked at for changed files, at most.
RELOAD_CHECK_S = 2.0


def _files(where: Path) -> list[Path]:
    if where.is_dir():
        return sorted([*where.glob("*.yaml"), *where.glob("*.yml")])
    return [where]


def _by_source(mappings: Iterable[Mapping]) -> dict[str, Mapping]:
    """Index mappings by source; a source claimed by two mappings is an error."""
    out: dict[str, Mapping] = {}
    for mapping in mappings:
        for source in mapping.sources:
            if source in out:
                raise MappingError(
                    f"source {source!r} is mapped by both {out[source].name!r} and {mapping.name!r}"
                )
            out[source] = mapping
    return out


def load_all(where: Path) -> dict[str, Mapping]:
    """Load every mapping file at ``where`` (a directory of ``*.yaml`` or one file), by
    source; ``MappingError`` names the file and the path of the first error."""
    if not where.exists():
        raise MappingError(f"{where}: no such file or directory")
    return _by_source(load_mapping(p) for p in _files(where))


class MappingRegistry:
    """Each source's mapping; re-read when a file changes, keeping the last good set
    (with the error logged) when the new one is invalid."""

    def __init__(self, where: Path, check_s: float = RELOAD_CHECK_S) -> None:
        self.where = where
        self.check_s = check_s
        self._stamp = self._stat()
        self._by_source = load_all(where)
        self._next_check = time.monotonic() + check_s
        #: The error of the last reload that failed (None once one succeeded).
        self.error: str | None = None

    def _stat(self) -> tuple[tuple[str, int, int], ...]:
        try:
            return tuple(
                (str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in _files(self.where)
            )
        except OSError:
            return ()

    def for_source(self, source: str) -> Mapping | None:
        """The mapping of ``source`` (None: its events are taken as sent)."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.check_s
            self.reload()
        return self._by_source.get(source)

    def reload(self) -> bool:
        """Re-read the files if they changed; return whether a new set was taken."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            loaded = load_all(self.where)
        except MappingError as exc:
            self.error = str(exc)
            log.error("ingest.mapping_invalid", error=self.error, kept=sorted(self._by_source))
            return False
        self._by_source, self.error = loaded, None
        log.info("ingest.mappings_loaded", sources=sorted(loaded))
        return True

    def mappings(self) -> dict[str, Mapping]:
        """Every source's mapping, as loaded now."""
        return dict(self._by_source)
