"""The built-in generated feature set has the structure it promises (weakly paired, non-linear)."""

from __future__ import annotations

import numpy as np
import pytest

from hscmae.synthetic import SyntheticConfig, generate, shard_meta, write_synthetic
from pipeline.features.shards import load_feature_set, uses_random_weights

SMALL = dict(clips=1000, classes=5, seconds=6, audio_dim=24, visual_dim=48, signal_dim=8, nuisance_dim=4,
             hidden=64, test_fraction=0.2, val_fraction=0.1)


@pytest.fixture(scope="module")
def clips():
    return generate(SyntheticConfig(**SMALL))


def pooled(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return (x * valid[:, :, None]).sum(axis=1) / valid.sum(axis=1, keepdims=True)


def standardised(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    return (x - x[train].mean(axis=0)) / (x[train].std(axis=0) + 1e-6)


def centroid_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, classes: int) -> float:
    centroids = np.stack([x[train & (y == c)].mean(axis=0) for c in range(classes)])
    pred = np.argmin(((x[test][:, None, :] - centroids[None]) ** 2).sum(axis=2), axis=1)
    return float(np.mean(pred == y[test]))


def knn_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, classes: int, k: int = 5) -> float:
    dist = ((x[test][:, None, :] - x[train][None]) ** 2).sum(axis=2)
    votes = y[train][np.argsort(dist, axis=1)[:, :k]]
    pred = np.array([np.bincount(v, minlength=classes).argmax() for v in votes])
    return float(np.mean(pred == y[test]))


def test_generation_is_deterministic_in_the_seed(clips):
    again = generate(SyntheticConfig(**SMALL))
    np.testing.assert_array_equal(again.audio, clips.audio)
    np.testing.assert_array_equal(again.visual_valid, clips.visual_valid)
    np.testing.assert_array_equal(again.split, clips.split)
    other = generate(SyntheticConfig(**SMALL, seed=1))
    assert not np.allclose(other.visual, clips.visual)


def test_shapes_and_planted_fractions(clips):
    assert clips.audio.shape == (1000, 6, 24) and clips.visual.shape == (1000, 6, 48)
    assert clips.audio.dtype == np.float32
    assert np.bincount(clips.label).tolist() == [200] * 5
    two = clips.second_class >= 0
    assert two.sum() == round(0.2 * 1000) and np.all(clips.second_class[two] != clips.label[two])
    spurious = clips.distractor >= 0
    assert spurious.sum() == round(0.15 * 1000)
    # the co-occurring class is a fixed partner of the label, never the label itself
    np.testing.assert_array_equal(clips.distractor[spurious], clips.partner[clips.label[spurious]])
    assert np.all(clips.partner != np.arange(5))


def test_missing_seconds_are_trailing_and_independent_per_modality(clips):
    for valid, x in ((clips.audio_valid, clips.audio), (clips.visual_valid, clips.visual)):
        lengths = valid.sum(axis=1)
        # valid seconds are a prefix; the rest is zero padding
        np.testing.assert_array_equal(valid, np.arange(6)[None, :] < lengths[:, None])
        assert np.all(x[~valid] == 0) and np.all(np.abs(x[valid]).sum(axis=1) > 0)
        assert lengths.min() >= 4
        short = lengths < 6
        assert 0.15 < short.mean() < 0.3  # 30 % truncated, to a length drawn from 4..6 (6 = untouched)
    both = (clips.audio_valid.sum(axis=1) < 6) & (clips.visual_valid.sum(axis=1) < 6)
    assert both.sum() < 0.5 * (clips.audio_valid.sum(axis=1) < 6).sum()  # not the same clips in both


def test_splits_are_stratified_with_the_configured_sizes(clips):
    counts = {s: int((clips.split == s).sum()) for s in ("train", "val", "test")}
    assert counts == {"test": 200, "val": 100, "train": 700}
    for split, n in counts.items():
        per_class = np.bincount(clips.label[clips.split == split], minlength=5)
        assert per_class.max() - per_class.min() <= 1, (split, per_class)


def test_default_set_has_300_val_and_test_clips_and_realistic_dims():
    c = SyntheticConfig()
    test = int(np.ceil(c.test_fraction * c.clips))
    val = int(np.ceil(c.val_fraction / (1 - c.test_fraction) * (c.clips - test)))
    assert test >= 300 and val >= 300
    assert (c.audio_dim, c.visual_dim) == (128, 1024)


def test_classes_are_not_one_linear_blob_per_modality(clips):
    """Several modes per class through a non-linear generator: the class centroid (a linear rule)
    classifies clearly worse than 5 nearest neighbours. In a linear-Gaussian set (one Gaussian
    per class) the centroid rule is the optimal one and would match or beat k-NN."""
    train, test = clips.split == "train", clips.split == "test"
    for x, valid in ((clips.audio, clips.audio_valid), (clips.visual, clips.visual_valid)):
        z = standardised(pooled(x, valid), train)
        centroid = centroid_accuracy(z, clips.label, train, test, 5)
        knn = knn_accuracy(z, clips.label, train, test, 5)
        assert centroid < 0.8 and knn > centroid + 0.08, (centroid, knn)


def test_nuisance_lives_in_one_modality_only(clips):
    """The audio nuisance code is linearly readable from audio features, not from visual ones."""
    train, test = clips.split == "train", clips.split != "train"
    target = clips.audio_nuisance[:, 0]

    def held_out_r2(x: np.ndarray) -> float:
        z = standardised(x, train)
        design = np.c_[z, np.ones(len(z))]
        coef = np.linalg.solve(design[train].T @ design[train] + 1.0 * np.eye(design.shape[1]),
                               design[train].T @ target[train])
        residual = target[test] - design[test] @ coef
        return 1 - residual.var() / target[test].var()

    assert held_out_r2(pooled(clips.audio, clips.audio_valid)) > 0.5
    assert held_out_r2(pooled(clips.visual, clips.visual_valid)) < 0.1


def test_spurious_visual_carries_its_partner_class(clips):
    """Clips with a distractor have more neighbours of their partner class (visual) than other clips."""
    train = clips.split == "train"
    visual = standardised(pooled(clips.visual, clips.visual_valid), train)
    clean = np.flatnonzero(train & (clips.distractor < 0) & (clips.second_class < 0))
    held = np.flatnonzero(~train)
    dist = ((visual[held][:, None, :] - visual[clean][None]) ** 2).sum(axis=2)
    neighbours = clips.label[clean][np.argsort(dist, axis=1)[:, :5]]
    partner_share = (neighbours == clips.partner[clips.label[held]][:, None]).mean(axis=1)
    spurious = clips.distractor[held] >= 0
    plain = ~spurious & (clips.second_class[held] < 0)
    assert partner_share[spurious].mean() > 2 * partner_share[plain].mean() + 0.05


def test_written_shards_load_with_honest_metadata_and_valid_lengths(tmp_path):
    config = SyntheticConfig(**{**SMALL, "clips": 100, "val_fraction": 0.0})
    folder = write_synthetic(config, tmp_path)
    assert sorted(p.name for p in folder.glob("*.parquet")) == ["test.parquet", "train.parquet"]
    features = load_feature_set(folder)
    clips = generate(config)
    assert len(features) == 100 and features.dims == (24, 48)
    assert features.meta == shard_meta(config)
    assert features.meta["audio"]["weights"] == "none" and not uses_random_weights(features.meta)
    for i in range(100):
        row = int(np.flatnonzero(features.clip_id == f"syn-{i:06d}")[0])
        assert len(features.audio[row]) == clips.audio_valid[i].sum()
        np.testing.assert_array_equal(features.visual[row], clips.visual[i, clips.visual_valid[i]])
        assert features.label_id[row] == clips.label[i] and features.split[row] == clips.split[i]
    before = (folder / "train.parquet").stat().st_mtime_ns
    assert write_synthetic(config, tmp_path) == folder
    assert (folder / "train.parquet").stat().st_mtime_ns == before  # reused, not rewritten


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="spurious_fraction"):
        SyntheticConfig(spurious_fraction=1.5)
    with pytest.raises(ValueError, match="4 clips per class"):
        SyntheticConfig(clips=10, classes=5)
    with pytest.raises(ValueError, match="min_valid_seconds"):
        SyntheticConfig(seconds=5, min_valid_seconds=6)
