"""The manifest of videos a trained model has not seen (to embed them): class folders or a labels CSV.

New clips belong to no training split: every clip is ``test`` unless the labels CSV names splits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd

from pipeline.datasets.folder import LABELS_CSV, SplitConfig, build_folder_manifest, read_labels_csv, scan_class_tree


def new_videos_manifest(videos: Path, work: Path, times: Literal["clip", "event"] = "clip") -> pd.DataFrame:
    """The manifest of ``videos`` (a class-folder tree, a folder with ``labels.csv``, or a labels CSV), dataset
    ``videos.stem``; when the listing names no splits, ``work/splits.csv`` is written to make every clip ``test``.
    ``times``: whether a labels CSV's ``start``/``end`` cut each clip or mark the event in the whole file
    (:func:`pipeline.datasets.folder.build_folder_manifest`; the demo set's ``labels.csv`` marks events)."""
    listing = videos / LABELS_CSV if videos.is_dir() else videos  # what build_folder_manifest reads
    listed = read_labels_csv(listing)[0] if listing.is_file() else scan_class_tree(videos)[0]
    split_file = None
    if "split" not in listed.columns:  # new clips belong to no training split: all "test"
        split_file = work / "splits.csv"
        split_file.parent.mkdir(parents=True, exist_ok=True)
        listed[["path"]].assign(split="test").to_csv(split_file, index=False)
    return build_folder_manifest(videos, dataset=videos.stem, split_file=split_file, times=times,
                                 splitting=SplitConfig(val_fraction=0.0)).frame
