"""The built-in synthetic feature set has the structure it promises."""

from __future__ import annotations

import numpy as np
import pytest

from hscmae.cca import fit_cca
from hscmae.synthetic import SyntheticConfig, generate, shard_meta, write_synthetic
from pipeline.shards import load_feature_set, uses_random_weights

SMALL = dict(clips=800, classes=5, seconds=6, audio_dim=24, visual_dim=40, signal_dim=6)


@pytest.fixture(scope="module")
def clips():
    return generate(SyntheticConfig(**SMALL))


def centroid_predictions(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, classes: int) -> np.ndarray:
    centroids = np.stack([train_x[train_y == c].mean(axis=0) for c in range(classes)])
    return np.argmin(((x[:, None, :] - centroids[None]) ** 2).sum(axis=2), axis=1)


def test_generation_is_deterministic_in_the_seed(clips):
    again = generate(SyntheticConfig(**SMALL))
    np.testing.assert_array_equal(again.audio, clips.audio)
    np.testing.assert_array_equal(again.visual, clips.visual)
    np.testing.assert_array_equal(again.split, clips.split)
    other = generate(SyntheticConfig(**SMALL, seed=1))
    assert not np.allclose(other.visual, clips.visual)


def test_shapes_and_planted_fractions(clips):
    assert clips.audio.shape == (800, 6, 24) and clips.visual.shape == (800, 6, 40)
    assert clips.audio.dtype == np.float32
    assert (clips.audio_class != clips.label).sum() == round(0.1 * 800)
    two = clips.second_class >= 0
    assert two.sum() == round(0.2 * 800)
    assert np.all(clips.second_class[two] != clips.label[two])
    assert np.bincount(clips.label).tolist() == [160] * 5


def test_splits_are_stratified_with_the_configured_sizes(clips):
    counts = {s: int((clips.split == s).sum()) for s in ("train", "val", "test")}
    assert counts == {"test": 160, "val": 80, "train": 560}
    for split, n in counts.items():
        per_class = np.bincount(clips.label[clips.split == split], minlength=5)
        assert per_class.max() - per_class.min() <= 1, (split, per_class)


def test_class_signal_is_recoverable_and_spurious_audio_follows_its_source(clips):
    audio, visual = clips.audio.mean(axis=1), clips.visual.mean(axis=1)
    train, test = clips.split == "train", clips.split == "test"
    clean = train & (clips.audio_class == clips.label)
    # visual carries the label: class centroids classify held-out clips far above chance (0.2)
    visual_pred = centroid_predictions(visual[clean], clips.label[clean], visual[test], 5)
    assert np.mean(visual_pred == clips.label[test]) > 0.6
    # spurious clips' audio sits with the class it was drawn from, not with the label
    spurious = clips.audio_class != clips.label
    audio_pred = centroid_predictions(audio[clean], clips.label[clean], audio[spurious], 5)
    follows_source = np.mean(audio_pred == clips.audio_class[spurious])
    assert follows_source > 0.45 and follows_source > 4 * np.mean(audio_pred == clips.label[spurious])


def test_cross_modal_correlation_lives_in_signal_dim_directions(clips):
    train = clips.split == "train"
    cca = fit_cca(clips.audio.mean(axis=1)[train], clips.visual.mean(axis=1)[train], k=12, ridge=0.0)
    assert cca.correlations[5] > 0.55  # six shared signature dims
    assert cca.correlations[6] < 0.45  # beyond them only noise correlates (by chance)
    assert cca.correlations[5] - cca.correlations[6] > 2 * (cca.correlations[6] - cca.correlations[11])


def test_event_fills_a_run_of_seconds(clips):
    # seconds outside every event hold noise only: their energy is the noise floor
    energy = (clips.visual**2).mean(axis=2)  # [N, T]
    floor = SyntheticConfig().noise ** 2
    assert energy.min() == pytest.approx(floor, rel=0.6)
    assert np.median(energy.max(axis=1)) > 1.5 * floor


def test_written_shards_load_with_honest_metadata(tmp_path):
    config = SyntheticConfig(**{**SMALL, "clips": 100, "val_fraction": 0.0})
    folder = write_synthetic(config, tmp_path)
    assert sorted(p.name for p in folder.glob("*.parquet")) == ["test.parquet", "train.parquet"]
    features = load_feature_set(folder)
    clips = generate(config)
    assert len(features) == 100 and features.dims == (24, 40)
    assert features.meta == shard_meta(config)
    assert features.meta["audio"]["weights"] == "none" and not uses_random_weights(features.meta)
    row = int(np.flatnonzero(features.clip_id == "syn-000007")[0])
    np.testing.assert_array_equal(features.visual[row], clips.visual[7])
    assert features.label_id[row] == clips.label[7] and features.split[row] == clips.split[7]
    before = (folder / "train.parquet").stat().st_mtime_ns
    assert write_synthetic(config, tmp_path) == folder
    assert (folder / "train.parquet").stat().st_mtime_ns == before  # reused, not rewritten


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="spurious_fraction"):
        SyntheticConfig(spurious_fraction=1.5)
    with pytest.raises(ValueError, match="4 clips per class"):
        SyntheticConfig(clips=10, classes=5)
