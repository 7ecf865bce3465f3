"""sha256 of files, read in blocks so multi-GB archives and weights stay in bounded memory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

_BLOCK = 1 << 20


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
