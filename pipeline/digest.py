"""sha256 of files, read in blocks so multi-GB archives and weights stay in bounded memory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tqdm import tqdm

_BLOCK = 1 << 20


def sha256_file(path: str | os.PathLike[str], *, progress: bool = False) -> str:
    """Hex sha256 of a file's bytes; ``progress`` shows a byte-count bar for large files."""
    digest = hashlib.sha256()
    size = Path(path).stat().st_size
    with open(path, "rb") as fh, tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {Path(path).name}",
                                      disable=None if progress else True, leave=False) as bar:
        while block := fh.read(_BLOCK):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()
