"""The local key wrapper: master keys from a file or the environment, reloaded on rotation."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from privacy.crypto import MasterKeyError, MasterKeys


class LocalWrapper:
    """A ``KeyWrapper`` over ``MasterKeys`` read from a file (or given once).

    ``cdp keys rotate-master`` rewrites the file with a new current key-encryption key; every
    running process picks it up at its next key creation (the file's mtime changed) or when
    it meets a data key wrapped under a key-encryption key it does not know yet.
    """

    def __init__(self, load: Callable[[], MasterKeys], path: Path | None = None) -> None:
        self._load = load
        self._path = path
        self._lock = threading.Lock()
        self._mtime = self._stat()
        self.keys = load()

    @classmethod
    def from_file(cls, path: Path) -> LocalWrapper:
        """Keys from ``path``, reloaded when it changes."""
        return cls(lambda: MasterKeys.load(path), path)

    @classmethod
    def fixed(cls, keys: MasterKeys) -> LocalWrapper:
        """Keys given once (``CDP_PRIVACY__MASTER_KEYS``: restart to rotate)."""
        return cls(lambda: keys)

    def _stat(self) -> float | None:
        try:
            return os.stat(self._path).st_mtime if self._path else None
        except FileNotFoundError:
            return None

    def _reload(self, force: bool = False) -> None:
        mtime = self._stat()
        if force or mtime != self._mtime:
            with self._lock:
                self.keys, self._mtime = self._load(), mtime

    @property
    def current(self) -> str:
        """The current key-encryption key's id (the file's, if it changed)."""
        self._reload()
        return self.keys.current

    def wrap(self, kek_id: str, dek: bytes) -> bytes:
        """Wrap under a known key-encryption key."""
        return self.keys.wrap(kek_id, dek)

    def unwrap(self, kek_id: str, wrapped: bytes) -> bytes:
        """Unwrap, reloading the keys once if the key-encryption key is new to this process."""
        if kek_id not in self.keys.keks:
            self._reload(force=True)
        return self.keys.unwrap(kek_id, wrapped)

    def blind(self, type_name: str, value: str) -> str:
        """The blind index of a value (the index key never rotates)."""
        return self.keys.blind(type_name, value)


class Absent:
    """The ``KeyWrapper`` of a process without master keys: it may destroy data keys (an
    erasure's shred needs no master key), never create or open one."""

    def _refuse(self) -> MasterKeyError:
        return MasterKeyError(
            "this process has no master keys (CDP_PRIVACY__MASTER_KEYS or the key file)"
        )

    @property
    def current(self) -> str:
        """Refused."""
        raise self._refuse()

    def wrap(self, kek_id: str, dek: bytes) -> bytes:
        """Refused."""
        raise self._refuse()

    def unwrap(self, kek_id: str, wrapped: bytes) -> bytes:
        """Refused."""
        raise self._refuse()
