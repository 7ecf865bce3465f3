"""Content digests: sha256 of files (read in blocks, so multi-GB archives and weights stay in bounded
memory), of values as canonical JSON, of table rows and of source code.

A cache key or an output folder name is a hash of what decides the output (its input rows or input
files' bytes, its config, and the source of the modules that compute it), never of path strings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, BinaryIO

from tqdm import tqdm

if TYPE_CHECKING:  # frame_digest only calls the frame's methods: importing this module loads no pandas
    import pandas as pd

_BLOCK = 1 << 20
KEY_LENGTH = 16  # hex characters of a sha256 used in directory names


def sha256_stream(stream: BinaryIO, bar: tqdm | None = None) -> str:
    """Hex sha256 of what ``stream`` yields (read in blocks), advancing ``bar`` by the bytes read."""
    digest = hashlib.sha256()
    while block := stream.read(_BLOCK):
        digest.update(block)
        if bar is not None:
            bar.update(len(block))
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike[str], *, progress: bool = False) -> str:
    """Hex sha256 of a file's bytes; ``progress`` shows a byte-count bar for large files."""
    size = Path(path).stat().st_size
    with open(path, "rb") as fh, tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {Path(path).name}",
                                      disable=None if progress else True, leave=False) as bar:
        return sha256_stream(fh, bar)


def _plain(value: Any) -> Any:
    """``value`` as JSON-ready data: dataclasses and pydantic models become dicts, paths strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump"):
        return _plain(value.model_dump())
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


def digest(*parts: Any) -> str:
    """sha256 (hex) of ``parts`` as canonical JSON; dataclasses, models, paths and numpy scalars allowed."""
    text = json.dumps([_plain(p) for p in parts], sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def frame_digest(frame: pd.DataFrame) -> str:
    """sha256 of a frame's rows (column names, order and values); NaN hashes as null."""
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return digest(list(frame.columns), records)


def files_digest(paths: Iterable[str | os.PathLike[str]]) -> str:
    """sha256 over the bytes of ``paths`` (in the given order), e.g. every shard of a feature set."""
    return digest([sha256_file(p) for p in paths])


def _source_files(module: ModuleType) -> list[Path]:
    origin = Path(module.__file__ or "")
    if origin.name == "__init__.py":  # a package: every module in it
        return sorted(origin.parent.rglob("*.py"))
    return [origin]


def source_digest(*modules: str) -> str:
    """sha256 of the source of the named modules (a package counts every ``.py`` under it).

    This is the "code version that matters" in a cache key: editing any of those files
    invalidates the cache, editing anything else does not.
    """
    sha = hashlib.sha256()
    for name in sorted(modules):
        for path in _source_files(importlib.import_module(name)):
            sha.update(str(path.name).encode())
            sha.update(path.read_bytes())
    return sha.hexdigest()


def short(key: str) -> str:
    """The first :data:`KEY_LENGTH` hex characters of ``key``, for directory names."""
    return key[:KEY_LENGTH]
