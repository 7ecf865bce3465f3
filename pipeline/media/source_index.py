"""Content digests of source files, kept in a small index so re-runs stay fast.

Cache keys and shard reuse depend on what a source file holds, never on its path string:
each file's sha256 is computed once and kept in a JSON index beside the outputs with the
file's size and modification time; while both are unchanged the stored digest is used, so a
re-run of thousands of clips reads no video bytes. A file changed, fixed or added in place
gets a new digest, and only the shards that hold it are recomputed. A zip archive gets one
digest per member (its decompressed bytes), so a zip with one clip replaced or added
recomputes only the shards holding that clip.
"""

from __future__ import annotations

import json
import os
import threading
import zipfile
from pathlib import Path

from tqdm import tqdm

from pipeline.io.atomic import atomic_path
from pipeline.io.digest import sha256_file, sha256_stream

MISSING = "missing"  # the digest of a source that is not there (yet)


class SourceIndex:
    """``path -> (size, mtime_ns, sha256)`` for source files, and ``path!members -> (size, mtime_ns,
    {member: sha256})`` for zip archives, loaded from and saved to ``index_path``."""

    def __init__(self, index_path: str | os.PathLike[str]) -> None:
        self.path = Path(index_path)
        self._lock = threading.Lock()
        try:
            self._entries: dict[str, list] = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            self._entries = {}  # a damaged index is only a cache: rebuild it
        self._changed = False

    def digest(self, path: str | os.PathLike[str], member: str | None = None) -> str:
        """sha256 of ``path``'s bytes (symlinks followed), or of zip member ``member``'s decompressed bytes;
        :data:`MISSING` when the file (or the member) is not there.

        A zip that cannot be read member by member (damaged, encrypted, an unsupported compression)
        is keyed by its whole bytes for every member, recorded like a readable one so it is read once
        per change (acquisition then fails on it as before).
        """
        path = Path(path)
        try:
            stat = path.stat()
        except OSError:
            return MISSING
        if not path.is_file():
            return MISSING
        key = str(path.resolve()) + ("" if member is None else "!members")
        with self._lock:
            entry = self._entries.get(key)
        if not (entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns):
            value = sha256_file(path) if member is None else (_member_digests(path) or sha256_file(path))
            entry = [stat.st_size, stat.st_mtime_ns, value]
            with self._lock:
                self._entries[key] = entry
                self._changed = True
        value = entry[2]
        return value if isinstance(value, str) else value.get(member, MISSING)

    def save(self) -> None:
        """Write the index atomically when something was added or changed."""
        with self._lock:
            if not self._changed:
                return
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(self._entries, indent=0, sort_keys=True))
            self._changed = False


def _member_digests(path: Path) -> dict[str, str] | None:
    """``member name -> sha256 of its decompressed bytes`` for every file in the zip ``path``; None when it
    cannot be read member by member."""
    try:
        with zipfile.ZipFile(path) as bundle:
            files = [info for info in bundle.infolist() if not info.is_dir()]
            digests = {}
            with tqdm(total=sum(i.file_size for i in files), unit="B", unit_scale=True, leave=False,
                      desc=f"sha256 of {path.name}'s members", disable=None) as bar:  # None: off unless a terminal
                for info in files:
                    with bundle.open(info) as member:
                        digests[info.filename] = sha256_stream(member, bar)
            return digests
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError):  # damaged, encrypted, unsupported
        return None
