"""Evaluation protocol: partial observation (dropped seconds, or entries of clip-level vectors) and what the tables
say: seed-noise marks, input level, training budget, tuning."""

from __future__ import annotations

import numpy as np
import pytest

from hscmae.config import ExperimentConfig
from hscmae.data import ClipArrays
from hscmae.evaluate import drop_entries, drop_seconds, evaluate_partial
from hscmae.metrics import mean_average_precision
from hscmae.report import BEST, WITHIN_NOISE, markdown_table, mean_over_seeds, noise_marks


def clip_arrays(lengths_audio: list[int], lengths_visual: list[int], t: int = 10, seed: int = 0) -> ClipArrays:
    rng = np.random.default_rng(seed)
    n = len(lengths_audio)
    valid = {m: np.arange(t)[None, :] < np.array(ls)[:, None]
             for m, ls in (("a", lengths_audio), ("v", lengths_visual))}
    return ClipArrays(audio=rng.normal(size=(n, t, 3)).astype(np.float32),
                      visual=rng.normal(size=(n, t, 4)).astype(np.float32),
                      audio_valid=valid["a"], visual_valid=valid["v"], label_id=np.arange(n) % 2)


@pytest.mark.parametrize(("fraction", "audio_kept", "visual_kept"), [
    # valid seconds per clip: audio 10, 7, 3, 1, 2; visual 10, 10, 5, 4, 1
    # dropped = floor(fraction * n + 1/2), capped at n - 1: 0.3 -> 3, 2, 1, 0, 1 | 3, 3, 2, 1, 0
    (0.3, [7, 5, 2, 1, 1], [7, 7, 3, 3, 1]),
    # 0.5 -> 5, 4, 2, 0, 1 | 5, 5, 3, 2, 0
    (0.5, [5, 3, 1, 1, 1], [5, 5, 2, 2, 1]),
])
def test_drop_seconds_drops_the_stated_share_and_keeps_one(fraction, audio_kept, visual_kept):
    data = clip_arrays([10, 7, 3, 1, 2], [10, 10, 5, 4, 1])
    dropped = drop_seconds(data, fraction)
    assert dropped.audio_valid.sum(axis=1).tolist() == audio_kept
    assert dropped.visual_valid.sum(axis=1).tolist() == visual_kept
    # only seconds that were valid are kept; features are untouched
    assert not (dropped.audio_valid & ~data.audio_valid).any() and not (dropped.visual_valid & ~data.visual_valid).any()
    np.testing.assert_array_equal(dropped.audio, data.audio)
    # seeded: the same draw again, another with another seed
    np.testing.assert_array_equal(drop_seconds(data, fraction).visual_valid, dropped.visual_valid)
    assert not np.array_equal(drop_seconds(data, fraction, seed=1).audio_valid, dropped.audio_valid)


def test_dropped_seconds_are_spread_over_the_clip():
    data = clip_arrays([10] * 400, [10] * 400)
    kept = drop_seconds(data, 0.3).audio_valid
    share = kept.mean(axis=0)  # each second is kept with probability 0.7
    assert np.all(np.abs(share - 0.7) < 0.1), share


NO_FILL = {"audio": np.full(3, np.nan), "visual": np.full(4, np.nan)}  # per-second data never use it


def clip_level(n: int, seed: int = 0) -> ClipArrays:
    """``n`` clips of one second (clip-level features, ``T = 1``): audio 40-d, visual 50-d, labels 0/1."""
    rng = np.random.default_rng(seed)
    valid = np.ones((n, 1), dtype=bool)
    return ClipArrays(audio=rng.normal(size=(n, 1, 40)).astype(np.float32),
                      visual=rng.normal(size=(n, 1, 50)).astype(np.float32),
                      audio_valid=valid, visual_valid=valid.copy(), label_id=np.arange(n) % 2)


def test_drop_entries_sets_the_stated_share_of_each_vector_to_the_fill():
    data = clip_level(300)
    fill = {"audio": np.full(40, 7.0, dtype=np.float32), "visual": np.full(50, -7.0, dtype=np.float32)}
    dropped = drop_entries(data, 0.3, fill=fill, modalities=("audio", "visual"))
    for m, d in (("audio", 40), ("visual", 50)):
        changed = dropped.features(m) != data.features(m)
        # round(0.3 * D) of each clip's entries: 12 of 40, 15 of 50, each one set to the fill value
        assert changed.sum(axis=(1, 2)).tolist() == [round(0.3 * d)] * 300
        assert np.all(dropped.features(m)[changed] == fill[m][0])
        assert np.all(np.abs(changed.mean(axis=(0, 1)) - 0.3) < 0.1)  # spread over the entries
    np.testing.assert_array_equal(dropped.audio_valid, data.audio_valid)
    only_audio = drop_entries(data, 0.3, fill=fill, modalities=("audio",))
    np.testing.assert_array_equal(only_audio.visual, data.visual)
    assert drop_entries(data, 0.3, fill=fill, modalities=()) is data


def test_partial_columns_of_clip_level_input_drop_entries_not_repeat_the_plain_score():
    data = clip_level(60, seed=1)
    assert data.clip_level_modalities == ("audio", "visual")
    fill = {m: x.mean(axis=0) for m, x in zip(("audio", "visual"), data.pooled())}

    def embedder(clips: ClipArrays) -> tuple[np.ndarray, np.ndarray]:  # the pooled vector, first 40 dims
        a, v = clips.pooled()
        return a, v[:, :40]

    found = evaluate_partial(embedder, data, fill=fill, drops=(0.5,))
    labels = data.label_id
    a, v = embedder(drop_entries(data, 0.5, fill=fill, modalities=("audio", "visual")))
    assert found["drop50_a2v_map"] == pytest.approx(mean_average_precision(a, v, labels, labels), abs=1e-12)
    assert found["drop50_a2v_map"] != pytest.approx(mean_average_precision(*embedder(data), labels, labels), abs=1e-6)


def test_partial_metrics_are_the_map_of_the_reembedded_clips():
    data = clip_arrays([10, 9, 8, 7, 6, 5], [6, 7, 8, 9, 10, 4])

    def embedder(clips: ClipArrays) -> tuple[np.ndarray, np.ndarray]:  # mean over valid seconds, first 3 dims
        a, v = clips.pooled()
        return a, v[:, :3]

    found = evaluate_partial(embedder, data, fill=NO_FILL, drops=(0.5,))
    a, v = embedder(drop_seconds(data, 0.5))
    labels = data.label_id
    assert found["drop50_a2v_map"] == pytest.approx(mean_average_precision(a, v, labels, labels), abs=1e-12)
    assert found["drop50_v2a_map"] == pytest.approx(mean_average_precision(v, a, labels, labels), abs=1e-12)
    assert found["drop50_mean_map"] == pytest.approx((found["drop50_a2v_map"] + found["drop50_v2a_map"]) / 2)
    full = evaluate_partial(embedder, data, fill=NO_FILL, drops=(0.0,))
    assert full["drop0_a2v_map"] == pytest.approx(mean_average_precision(*embedder(data), labels, labels))


def stats(mean: float, std: float, n: int = 3) -> dict[str, float]:
    return {"mean": mean, "std": std, "n": n}


def test_noise_marks_against_a_hand_made_table():
    summary = {
        "a": {"m": stats(0.500, 0.010)},  # best
        "b": {"m": stats(0.492, 0.004)},  # 0.008 below, within the best's std (0.010)
        "c": {"m": stats(0.480, 0.025)},  # 0.020 below, within its own std (0.025)
        "d": {"m": stats(0.470, 0.005)},  # 0.030 below, beyond both stds
        "e": {"other": stats(0.9, 0.0)},  # no value in this column
    }
    assert noise_marks(summary, "m") == {"a": BEST, "b": WITHIN_NOISE, "c": WITHIN_NOISE, "d": ""}
    one_seed = {"a": {"m": stats(0.5, 0.0, 1)}, "b": {"m": stats(0.5, 0.0, 1)}, "c": {"m": stats(0.49, 0.0, 1)}}
    assert noise_marks(one_seed, "m") == {"a": BEST, "b": BEST, "c": ""}


def test_markdown_table_shows_marks_partial_columns_and_legend():
    summary = {"x": {"mean_map": stats(0.6, 0.01), "drop30_mean_map": stats(0.41, 0.02)},
               "y": {"mean_map": stats(0.595, 0.002), "drop30_mean_map": stats(0.45, 0.01)}}
    info = {"dataset": "d", "source": "s", "clips": {"train": 1, "val": 2, "test": 3}, "weights": "w",
            "seeds": [0, 1, 2], "clip_level": []}
    table = markdown_table(summary, info)
    row = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith(("| x", "| y"))}
    assert "**0.600 ± 0.010**" in row["x"] and "0.595 ± 0.002 ≈" in row["y"]
    assert "**0.450 ± 0.010**" in row["y"] and "0.410 ± 0.020 |" in row["x"]  # 0.04 apart: beyond both stds
    assert "30 % s dropped" in table and "within one standard deviation of the best" in table
    assert "seeds: 3" in table and "model selection" in table and "train 1, val 2, test 3" in table
    assert "input: per-second features" in table and "tuning" not in table  # no config given: no budget, no tuning


def test_header_says_the_input_level_the_training_budget_and_the_tuning():
    summary = {"hscmae": {"mean_map": stats(0.6, 0.01), "drop30_mean_map": stats(0.5, 0.01)}}
    info = {"dataset": "d", "source": "s", "clips": {"train": 1, "val": 2, "test": 3}, "weights": "w",
            "seeds": [0], "clip_level": ["audio", "visual"]}
    table = markdown_table(summary, info, ExperimentConfig(methods=["hscmae", "linear-cca"], epochs=40, patience=15))
    header = [line for line in table.splitlines() if line.startswith(">")]
    assert "> input: clip-level features in every modality (one vector per clip, T = 1); the sample level " \
           "(mask_mode auto → element) masks entries of the pooled vector" in table
    assert "30 % entries dropped" in table and "30 % s dropped" not in table
    assert "> training: at most 40 epochs, stops early after 15 epochs without a better val mAP  " in header
    assert header[-1] == "> tuning: none (each method's default recipe)  "
    tuned = ExperimentConfig(methods=["clip"], patience=50, epochs=40,
                             tuning={"trials_per_method": 20, "storage": "sqlite:///t/studies.db",
                                     "studies": {"clip": "clip-abc"}, "best_val_score": {"clip": 0.5}})
    table = markdown_table(summary, {**info, "clip_level": ["visual"]}, tuned)
    assert "> tuning: tuned on val: 20 trials per method (Optuna study in sqlite:///t/studies.db)  " in table
    assert "training: at most 40 epochs, no early stopping (patience ≥ epochs)" in table
    assert "clip-level features in visual" in table and "30 % dropped" in table


def test_loss_curves_average_the_seeds_still_training_at_each_epoch() -> None:
    # early stopping ends seeds at different epochs: epoch 3 has two seeds left, epoch 4 one
    curves = [[4.0, 3.0, 2.0, 1.0], [6.0, 5.0, 4.0], [2.0, 1.0]]
    assert mean_over_seeds(curves).tolist() == [4.0, 3.0, 3.0, 1.0]
