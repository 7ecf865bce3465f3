"""Failure records: a clip that could not be acquired, decoded or extracted becomes a row.

Nothing is zero-filled to hide a failure; stages return their failures as data and the
flows write them as a table next to their outputs.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from pipeline.io.atomic import atomic_path

FAILURE_COLUMNS = ("clip_id", "stage", "kind", "message")


@dataclass(frozen=True)
class Failure:
    """One clip that a stage could not process.

    Args:
        clip_id: the manifest's clip id.
        stage: ``acquire``, ``segment``, ``extract`` or ``import``.
        kind: a short machine-readable reason (``no_audio``, ``silent``, ``unavailable``...).
        message: what a person needs to know, with numbers where there are any.
    """

    clip_id: str
    stage: str
    kind: str
    message: str


def failures_frame(failures: list[Failure]) -> pd.DataFrame:
    """Failures as a DataFrame with columns ``clip_id, stage, kind, message``."""
    return pd.DataFrame([asdict(f) for f in failures], columns=list(FAILURE_COLUMNS))


def write_failures(path: str | os.PathLike[str], failures: list[Failure]) -> Path:
    """Write failures atomically to Parquet (an empty table when there are none)."""
    with atomic_path(path) as tmp:
        failures_frame(failures).to_parquet(tmp, index=False)
    return Path(path)


def read_failures(path: str | os.PathLike[str]) -> list[Failure]:
    """Read a failures table written by :func:`write_failures`."""
    frame = pd.read_parquet(path)
    return [Failure(**row) for row in frame[list(FAILURE_COLUMNS)].to_dict("records")]
