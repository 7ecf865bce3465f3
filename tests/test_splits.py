"""Seeded stratified splits, checked by counting."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.datasets.splits import carve_val, stratified_holdout


def test_holdout_is_stratified_seeded_and_sized():
    labels = np.repeat(["a", "b", "c"], [50, 30, 20])
    mask = stratified_holdout(labels, 0.2, seed=3)
    assert {k: int(mask[labels == k].sum()) for k in "abc"} == {"a": 10, "b": 6, "c": 4}
    np.testing.assert_array_equal(mask, stratified_holdout(labels, 0.2, seed=3))
    assert not np.array_equal(mask, stratified_holdout(labels, 0.2, seed=4))


def test_carve_val_only_touches_train_and_keeps_existing_val():
    labels = np.repeat([0, 1], 20)
    split = np.array(["train"] * 15 + ["test"] * 5 + ["train"] * 15 + ["test"] * 5, dtype=object)
    carved = carve_val(split, labels, 0.2, seed=0)
    assert (carved[split == "test"] == "test").all()
    assert [(carved[labels == k] == "val").sum() for k in (0, 1)] == [3, 3]
    np.testing.assert_array_equal(carve_val(carved, labels, 0.5, seed=1), carved)


def test_class_with_one_item_is_named():
    with pytest.raises(ValueError, match="class 'z' has only one item"):
        stratified_holdout(["a", "a", "z"], 0.5, seed=0)


def test_too_few_items_for_the_fraction_is_explained():
    with pytest.raises(ValueError, match="6 items of 3 classes with fraction 0.2: 2 held out and 4 kept"):
        stratified_holdout(["a", "a", "b", "b", "c", "c"], 0.2, seed=0)
