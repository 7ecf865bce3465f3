"""VEGAS manifest (Zhou et al., CVPR 2018) from its per-class folder tree.

VEGAS ships as video files in one folder per class (10 classes, about 28,100 clips of up to
10 s) and no official split. The card (``data_manifests/vegas.yaml``) gives the classes and
the default split rule: seeded, class-stratified 80/20 train/test, then 10% of train as val.
"""

from __future__ import annotations

import os

from pipeline.datasets.cards import DatasetCard, load_card
from pipeline.datasets.folder import BadRowPolicy, SplitConfig, build_folder_manifest
from pipeline.datasets.schema import Anomaly, ManifestBuild


def card_splitting(card: DatasetCard) -> SplitConfig:
    """The split rule the card states (fractions and seed), falling back to :class:`SplitConfig` defaults."""
    defaults = SplitConfig()
    return SplitConfig(
        test_fraction=float(card.splits.get("test_fraction", defaults.test_fraction)),
        val_fraction=float(card.splits.get("val_fraction", defaults.val_fraction)),
        seed=int(card.splits.get("seed", defaults.seed)),
    )


def build_vegas_manifest(root: str | os.PathLike[str], *, card: DatasetCard | None = None,
                         split_file: str | os.PathLike[str] | None = None,
                         splitting: SplitConfig | None = None, on_bad_row: BadRowPolicy = "error",
                         allow_outside_root: bool = False) -> ManifestBuild:
    """Manifest of a VEGAS tree ``root/<class>/**/<video>``; class folders must be card classes.

    Args:
        root: the dataset folder holding one folder per class.
        card: the VEGAS card (default ``data_manifests/vegas.yaml``).
        split_file: CSV ``(clip_id|path),split``; otherwise the card's split rule or ``splitting``.
        splitting: overrides the card's split rule.
        on_bad_row, allow_outside_root: as in :func:`pipeline.datasets.folder.build_folder_manifest`.
    """
    card = card or load_card("vegas")
    build = build_folder_manifest(root, dataset=card.name, classes=card.classes, split_file=split_file,
                                  splitting=splitting or card_splitting(card), on_bad_row=on_bad_row,
                                  allow_outside_root=allow_outside_root)
    expected = card.expected.get("videos")
    if expected is not None and len(build.frame) != int(expected):
        build.anomalies.append(Anomaly("count_differs", "", f"{len(build.frame)} videos found; the card expects "
                                       f"about {expected}"))
    return build
