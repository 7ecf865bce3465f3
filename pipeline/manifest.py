"""Manifests: one row per clip, saying what to fetch, which seconds to cut and its label.

Schema (this module owns it): ``clip_id`` (unique, ``[A-Za-z0-9_.-]+``), ``dataset``,
``source`` (a YouTube id, a path inside an archive, or a file path), ``source_kind``
(``youtube`` | ``archive`` | ``file``), ``clip_start_s``/``clip_end_s`` (where the clip
sits in the source; ``clip_end_s`` NaN means "to the end of the source"), ``event_start_s``/``event_end_s`` (the annotated event, relative
to the clip; NaN when the dataset has no event annotation), ``label``, ``label_id``, ``split`` (``train``/``val``/``test``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.atomic import atomic_path
from pipeline.shards import CLIP_ID_PATTERN, SPLITS

MANIFEST_COLUMNS = (
    "clip_id", "dataset", "source", "source_kind", "clip_start_s", "clip_end_s",
    "event_start_s", "event_end_s", "label", "label_id", "split",
)
SOURCE_KINDS = ("youtube", "archive", "file")
_FLOAT_COLUMNS = ("clip_start_s", "clip_end_s", "event_start_s", "event_end_s")


class ManifestError(ValueError):
    """A manifest breaks the contract; the message names the file, the row and the problem."""


def validate_manifest(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """Check ``frame`` against the schema and return it with canonical dtypes and column order.

    Raises :class:`ManifestError` naming ``where`` and the first offending row.
    """
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(f"{where}: missing columns {missing}")
    frame = frame.loc[:, list(MANIFEST_COLUMNS)].reset_index(drop=True)

    def fail(mask: np.ndarray | pd.Series, problem: str) -> None:
        rows = np.flatnonzero(np.asarray(mask))
        if len(rows):
            row = int(rows[0])
            raise ManifestError(
                f"{where}, row {row} (clip_id {frame.at[row, 'clip_id']!r}): {problem}"
                + (f" ({len(rows)} rows in all)" if len(rows) > 1 else "")
            )

    ids = frame["clip_id"].astype("string")
    fail(ids.isna() | ~ids.fillna("").str.fullmatch(CLIP_ID_PATTERN.pattern.strip("^$")), "clip_id must match [A-Za-z0-9_.-]+ (no path separators)")
    fail(ids.duplicated(), "duplicate clip_id")
    fail(~frame["source_kind"].isin(SOURCE_KINDS), f"source_kind must be one of {SOURCE_KINDS}")
    fail(frame["source"].isna() | (frame["source"].astype(str) == ""), "source is empty")
    fail(frame["label"].isna() | (frame["label"].astype(str) == ""), "label is absent")
    fail(~frame["split"].isin(SPLITS), f"split must be one of {SPLITS}")
    for column in _FLOAT_COLUMNS:
        values = pd.to_numeric(frame[column], errors="coerce")
        fail(values.isna() & frame[column].notna(), f"{column} is not a number")
        frame[column] = values.astype("float64")
    fail(frame["clip_start_s"].isna(), "clip_start_s is missing")
    fail(frame["clip_start_s"] < 0, "clip_start_s is negative")
    fail(frame["clip_end_s"] <= frame["clip_start_s"], "clip_end_s is not after clip_start_s")
    fail(frame["event_end_s"] < frame["event_start_s"], "event_end_s is before event_start_s")
    label_ids = pd.to_numeric(frame["label_id"], errors="coerce")
    fail(label_ids.isna() | (label_ids < 0), "label_id is absent or negative")
    frame["label_id"] = label_ids.astype("int32")
    pairs = frame[["label", "label_id"]].drop_duplicates()
    fail(frame["label"].isin(pairs["label"][pairs["label"].duplicated()]), "one label has several label_ids")
    fail(frame["label_id"].isin(pairs["label_id"][pairs["label_id"].duplicated()]), "one label_id has several labels")
    for column in ("clip_id", "dataset", "source", "source_kind", "label", "split"):
        frame[column] = frame[column].astype(str)
    return frame


def write_manifest(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Validate ``frame`` and write it to Parquet atomically."""
    frame = validate_manifest(frame, str(path))
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)


def read_manifest(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and validate a manifest written by :func:`write_manifest`."""
    return validate_manifest(pd.read_parquet(path), str(path))
