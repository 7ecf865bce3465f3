"""Manifests for your own labelled videos: a folder-per-class tree or a CSV.

CSV columns: ``path,label`` required; ``split``, ``start``/``end`` (seconds, both or
neither) and ``clip_id`` optional. ``start``/``end`` are where the clip is cut from the
file (``times="clip"``, default) or the annotated event within the whole file
(``times="event"``, as in the demo set's ``labels.csv``). Relative paths are relative to the CSV's folder.
Without a ``clip_id`` column, a clip id is derived from the path relative to the root:
``dog/videos/a b.mp4`` -> ``dog.videos.a_b`` (unsafe characters become ``_``; two files
mapping to one id are an error). Splits come from the CSV, from a split file, or a
seeded stratified holdout; a val part is carved from train when there is none.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import pandas as pd

from pipeline.manifest import Anomaly, ManifestBuild, ManifestError, validate_manifest
from pipeline.shards import CLIP_ID_PATTERN, SPLITS, is_clip_id
from pipeline.splits import carve_val, stratified_holdout

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class SplitConfig:
    """How clips without a given split are split: stratified test holdout, then val carved from train."""

    test_fraction: float = 0.2
    val_fraction: float = 0.1
    seed: int = 0


def folder_label(name: str) -> str:
    """A folder name as a class name: ``"Rail transport"`` -> ``"rail_transport"``."""
    return re.sub(r"[\s-]+", "_", name.strip().lower())


def clip_id_from_path(relative: str) -> str:
    """A safe, stable clip id from a relative path: folders joined by ``.``, suffix removed."""
    path = PurePosixPath(relative.replace("\\", "/"))
    parts = [p for p in path.with_suffix("").parts if p not in ("/", "..", ".")]
    return ".".join(_UNSAFE.sub("_", p) for p in parts)


def scan_class_tree(root: str | os.PathLike[str]) -> tuple[pd.DataFrame, list[Anomaly]]:
    """Video files under ``root/<class>/**``: a frame with ``path`` (relative, posix) and ``folder``.

    Files directly under ``root`` have no class and are reported, not used.
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder")
    records, anomalies = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES):
        relative = path.relative_to(root).as_posix()
        if "/" not in relative:
            anomalies.append(Anomaly("unlabelled_file", relative, "video directly under the root, not in a class folder"))
            continue
        records.append({"path": relative, "folder": relative.split("/", 1)[0]})
    return pd.DataFrame.from_records(records, columns=["path", "folder"]), anomalies


def _label_ids(labels: pd.Series, classes: Sequence[str] | None, where: str, lines: np.ndarray) -> np.ndarray:
    known = list(classes) if classes is not None else sorted(labels.unique())
    unknown = ~labels.isin(known).to_numpy()
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise ManifestError(f"{where}, {lines[i]}: label {labels.iloc[i]!r} is not in the class list {known}")
    return labels.map({c: i for i, c in enumerate(known)}).to_numpy()


def read_labels_csv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and check a labels CSV; adds ``line`` (its line in the file) to each row.

    Raises :class:`ManifestError` naming the file, the line and the problem (missing column,
    empty cell, non-numeric or reversed times, unknown split).
    """
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    frame.columns = [c.strip() for c in frame.columns]
    missing = [c for c in ("path", "label") if c not in frame.columns]
    if ("start" in frame.columns) != ("end" in frame.columns):
        missing.append("end" if "start" in frame.columns else "start")
    if missing:
        raise ManifestError(f"{path}: missing columns {missing} (have {list(frame.columns)})")
    frame["line"] = [f"line {i + 2}" for i in range(len(frame))]
    for column in [c for c in ("path", "label", "split", "start", "end", "clip_id") if c in frame.columns]:
        empty = np.flatnonzero(frame[column].str.strip().isin(["", "nan", "NaN"]).to_numpy())
        if len(empty):
            raise ManifestError(f"{path}, {frame.at[int(empty[0]), 'line']}: '{column}' is empty or NaN")
        frame[column] = frame[column].str.strip()
    if "start" in frame.columns:
        for column in ("start", "end"):
            values = pd.to_numeric(frame[column], errors="coerce")
            bad = np.flatnonzero((values.isna() | ~np.isfinite(values)).to_numpy())
            if len(bad):
                raise ManifestError(f"{path}, {frame.at[int(bad[0]), 'line']}: '{column}' "
                                    f"{frame.at[int(bad[0]), column]!r} is not a finite number")
            frame[column] = values
        reversed_ = np.flatnonzero((frame["end"] <= frame["start"]).to_numpy() | (frame["start"] < 0).to_numpy())
        if len(reversed_):
            row = int(reversed_[0])
            raise ManifestError(f"{path}, {frame.at[row, 'line']}: end {frame.at[row, 'end']} is not after "
                                f"start {frame.at[row, 'start']} (or start is negative)")
    if "split" in frame.columns:
        bad = np.flatnonzero(~frame["split"].isin(SPLITS).to_numpy())
        if len(bad):
            raise ManifestError(f"{path}, {frame.at[int(bad[0]), 'line']}: split {frame.at[int(bad[0]), 'split']!r} "
                                f"is not one of {SPLITS}")
    return frame


def _check_ids(ids: pd.Series, frame: pd.DataFrame, where: str) -> None:
    unsafe = np.flatnonzero(~ids.map(is_clip_id).to_numpy(dtype=bool))
    if len(unsafe):
        i = int(unsafe[0])
        raise ManifestError(f"{where}, {frame['line'].iloc[i]}: clip_id {ids.iloc[i]!r} must match "
                            f"{CLIP_ID_PATTERN.pattern} (no path separators)")
    dup = np.flatnonzero(ids.duplicated(keep=False).to_numpy())
    if len(dup):
        first, second = int(dup[0]), int(dup[1])
        raise ManifestError(f"{where}, {frame['line'].iloc[second]}: duplicate clip_id {ids.iloc[second]!r} "
                            f"(also {frame['line'].iloc[first]}: {frame['path'].iloc[first]})")


def read_split_file(path: str | os.PathLike[str], frame: pd.DataFrame) -> np.ndarray:
    """Split of each clip of ``frame`` from a CSV with columns ``path`` or ``clip_id``, and ``split``."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    key = next((k for k in ("clip_id", "path") if k in table.columns), None)
    if key is None or "split" not in table.columns:
        raise ManifestError(f"{path}: needs columns (clip_id or path) and split, has {list(table.columns)}")
    bad = np.flatnonzero(~table["split"].isin(SPLITS).to_numpy())
    if len(bad):
        raise ManifestError(f"{path}, line {int(bad[0]) + 2}: split {table.at[int(bad[0]), 'split']!r} is not one of {SPLITS}")
    dup = np.flatnonzero(table[key].duplicated().to_numpy())
    if len(dup):
        raise ManifestError(f"{path}, line {int(dup[0]) + 2}: {key} {table.at[int(dup[0]), key]!r} listed twice")
    mapping = dict(zip(table[key], table["split"]))
    split = frame[key].map(mapping)
    if split.isna().any():
        i = int(np.flatnonzero(split.isna().to_numpy())[0])
        raise ManifestError(f"{path}: no split for {key} {frame[key].iloc[i]!r} ({split.isna().sum()} clips in all)")
    extra = sorted(set(mapping) - set(frame[key]))
    if extra:
        raise ManifestError(f"{path}: {len(extra)} entries match no clip (first: {extra[0]!r})")
    return split.to_numpy(dtype=object)


def make_splits(labels: np.ndarray, given: np.ndarray | None, splitting: SplitConfig) -> np.ndarray:
    """Split names ``[N]``: ``given``, or a stratified test holdout; then val carved from train if absent."""
    if given is None:
        split = np.where(stratified_holdout(labels, splitting.test_fraction, splitting.seed), "test", "train")
    else:
        split = np.asarray(given, dtype=object)
    if splitting.val_fraction > 0:
        split = carve_val(split, labels, splitting.val_fraction, splitting.seed)
    return np.asarray(split, dtype=object)


def build_folder_manifest(source: str | os.PathLike[str], *, dataset: str = "folder",
                          classes: Sequence[str] | None = None, split_file: str | os.PathLike[str] | None = None,
                          splitting: SplitConfig = SplitConfig(), times: Literal["clip", "event"] = "clip",
                          ) -> ManifestBuild:
    """Manifest of a folder-per-class tree or a labels CSV (``source_kind`` ``file``).

    Args:
        source: the tree's root, or a CSV ``path,label[,split][,start,end][,clip_id]``.
        dataset: the name written in the ``dataset`` column.
        classes: allowed labels in ``label_id`` order (default: the sorted labels found).
        split_file: CSV ``(clip_id|path),split`` replacing the CSV's or the default split.
        splitting: the seeded split used when none is given.
        times: whether a CSV's ``start``/``end`` cut the clip or mark the event in the file.
    """
    source = Path(source)
    anomalies: list[Anomaly] = []
    if source.is_dir():
        frame, anomalies = scan_class_tree(source)
        if frame.empty:
            raise ManifestError(f"{source}: no video files ({', '.join(VIDEO_SUFFIXES)}) in class folders")
        frame["line"] = "file " + frame["path"]
        by_slug = {folder_label(c): c for c in classes} if classes is not None else {}
        frame["label"] = frame["folder"].map(lambda f: by_slug.get(folder_label(f), f)) if classes is not None \
            else frame["folder"]
        root = source
    else:
        frame, root = read_labels_csv(source), source.parent
    lines = frame["line"].to_numpy()
    label_ids = _label_ids(frame["label"], classes, str(source), lines)
    if "clip_id" not in frame.columns:
        frame["clip_id"] = frame["path"].map(clip_id_from_path)
    _check_ids(frame["clip_id"], frame, str(source))
    if split_file is not None:
        given = read_split_file(split_file, frame)
    else:
        given = frame["split"].to_numpy(dtype=object) if "split" in frame.columns else None
    split = make_splits(frame["label"].to_numpy(), given, splitting)
    cut = "start" in frame.columns and times == "clip"
    event = "start" in frame.columns and times == "event"
    result = pd.DataFrame({
        "clip_id": frame["clip_id"], "dataset": dataset,
        "source": [str((root / p).resolve()) for p in frame["path"]], "source_kind": "file",
        "clip_start_s": frame["start"] if cut else 0.0, "clip_end_s": frame["end"] if cut else np.nan,
        "event_start_s": frame["start"] if event else np.nan, "event_end_s": frame["end"] if event else np.nan,
        "label": frame["label"], "label_id": label_ids, "split": split,
    })
    names = tuple(classes) if classes is not None else tuple(sorted(frame["label"].unique()))
    present = set(frame["label"])
    anomalies += [Anomaly("empty_class", c, "no clips") for c in names if c not in present]
    policies = {"times": times, "split": "given" if given is not None else "stratified", "test_fraction": splitting.test_fraction,
                "val_fraction": splitting.val_fraction, "seed": splitting.seed}
    return ManifestBuild(frame=validate_manifest(result, str(source)), anomalies=anomalies, classes=names,
                         policies=policies)
