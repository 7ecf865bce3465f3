"""Seeded, stratified splits: train/test for datasets without one, val carved from train."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def stratified_holdout(labels: Sequence[object] | np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask ``[N]``: True for a seeded, class-stratified ``fraction`` of the items.

    Raises ``ValueError`` naming the class when one has too few items to stratify.
    """
    labels = np.asarray(labels)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    values, counts = np.unique(labels, return_counts=True)
    if (counts < 2).any():
        raise ValueError(f"cannot stratify: class {str(values[counts < 2][0])!r} has only one item")
    n, c = len(labels), len(values)
    held_count = int(np.ceil(fraction * n))
    if min(held_count, n - held_count) < c:
        # in hundredths, rounded inwards: ceil(f * n) >= c and n - ceil(f * n) >= c
        bound = f"at least {-(-100 * c // n) / 100}" if held_count < c else f"at most {100 * (n - c) // n / 100}"
        raise ValueError(f"cannot stratify {n} items of {c} classes with fraction {fraction}: {held_count} held out "
                         f"and {n - held_count} kept, but each side needs one item per class (a fraction of {bound} "
                         "would do)")
    from sklearn.model_selection import train_test_split  # here, not at the top: it takes seconds to import

    _, held = train_test_split(np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=seed)
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return mask


def carve_val(split: Sequence[str] | np.ndarray, labels: Sequence[object] | np.ndarray,
              fraction: float, seed: int) -> np.ndarray:
    """Split names ``[N]`` with a stratified ``fraction`` of ``train`` turned into ``val``.

    Returns a copy unchanged when a ``val`` split already exists.
    """
    split = np.asarray(split, dtype=object).copy()
    if (split == "val").any():
        return split
    train = np.flatnonzero(split == "train")
    held = stratified_holdout(np.asarray(labels)[train], fraction, seed)
    split[train[held]] = "val"
    return split
