"""Content digests of source files, kept in a small index so re-runs stay fast.

Cache keys and shard reuse depend on what a source file holds, never on its path string:
each file's sha256 is computed once and kept in a JSON index beside the outputs with the
file's size and modification time; while both are unchanged the stored digest is used, so a
re-run of thousands of clips reads no video bytes. A file changed, fixed or added in place
gets a new digest, and only the shards that hold it are recomputed.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from pipeline.atomic import atomic_path
from pipeline.digest import sha256_file

MISSING = "missing"  # the digest of a source that is not there (yet)


class SourceIndex:
    """``path -> (size, mtime_ns, sha256)`` for source files, loaded from and saved to ``index_path``."""

    def __init__(self, index_path: str | os.PathLike[str]) -> None:
        self.path = Path(index_path)
        self._lock = threading.Lock()
        try:
            self._entries: dict[str, list] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            self._entries = {}  # a damaged index is only a cache: rebuild it
        self._changed = False

    def digest(self, path: str | os.PathLike[str]) -> str:
        """sha256 of ``path``'s bytes (symlinks followed), or :data:`MISSING` when it is not a file."""
        path = Path(path)
        try:
            stat = path.stat()
        except OSError:
            return MISSING
        if not path.is_file():
            return MISSING
        key = str(path.resolve())
        with self._lock:
            entry = self._entries.get(key)
        if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            return entry[2]
        value = sha256_file(path)
        with self._lock:
            self._entries[key] = [stat.st_size, stat.st_mtime_ns, value]
            self._changed = True
        return value

    def save(self) -> None:
        """Write the index atomically when something was added or changed."""
        with self._lock:
            if not self._changed:
                return
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(self._entries, indent=0, sort_keys=True))
            self._changed = False
