"""The VGGish log-mel frontend against the recipe computed independently with librosa and numpy."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from extractors import vggish_params as vp
from extractors.logmel import LogMelFrontend, mel_matrix, num_examples, num_frames

SR = vp.SAMPLE_RATE


def real_looking_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """A chirp (200 Hz -> 3.4 kHz) plus a harmonic tone and a little noise, ``[S]`` float64."""
    t = np.arange(round(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    chirp = 0.3 * np.sin(2 * np.pi * (200 * t + 1600 / seconds * t**2))
    harmonics = sum(0.1 / k * np.sin(2 * np.pi * 220 * k * t) for k in range(1, 8))
    return chirp + harmonics + 0.02 * rng.standard_normal(t.size)


def reference_mel_matrix() -> np.ndarray:
    """The recipe's matrix from librosa's HTK mel scale: triangles linear in mel, DC bin zeroed. ``[257, 64]``."""
    bins_mel = librosa.hz_to_mel(np.linspace(0, SR / 2, vp.FFT_LENGTH // 2 + 1), htk=True)
    edges = librosa.hz_to_mel(librosa.mel_frequencies(vp.NUM_MEL_BINS + 2, fmin=vp.MEL_MIN_HZ, fmax=vp.MEL_MAX_HZ, htk=True), htk=True)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    weights = np.maximum(0, np.minimum((bins_mel[:, None] - lower) / (center - lower),
                                       (upper - bins_mel[:, None]) / (upper - center)))
    weights[0] = 0.0
    return weights


def reference_log_mel(x: np.ndarray) -> np.ndarray:
    """Recipe frames (400 samples every 160, from sample 0), periodic Hann, |rfft_512|, mel, log(+0.01)."""
    frames = librosa.util.frame(x, frame_length=400, hop_length=160, axis=0)  # [F, 400]
    window = librosa.filters.get_window("hann", 400, fftbins=True)  # periodic
    magnitude = np.abs(np.fft.rfft(frames * window, n=512))
    return np.log(magnitude @ reference_mel_matrix() + 0.01)


def test_mel_matrix_matches_the_recipe_not_librosa_filter_bank() -> None:
    ours = mel_matrix().numpy()
    np.testing.assert_allclose(ours, reference_mel_matrix(), atol=1e-10)
    # librosa's own HTK filter bank is linear in Hz, not in mel: a real (small) difference.
    hz_linear = librosa.filters.mel(sr=SR, n_fft=512, n_mels=64, fmin=125, fmax=7500, htk=True, norm=None).T
    assert np.abs(ours - hz_linear).max() > 1e-3


def test_log_mel_matches_librosa_reference() -> None:
    x = real_looking_audio(3.3)
    ours = LogMelFrontend()(torch.tensor(x, dtype=torch.float32)[None])[0].numpy()
    ref = reference_log_mel(x)
    assert ours.shape == ref.shape == (num_frames(len(x)), 64)
    # float32 STFT versus float64: log-mel agrees to 1e-4 (measured ~6e-6).
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_librosa_stft_agrees_when_framed_like_the_recipe() -> None:
    # librosa (like torch) centres the 400-sample window inside the 512-sample frame; padding by
    # 56 samples on both sides gives the recipe's frames.
    x = real_looking_audio(1.5, seed=1)
    stft = np.abs(librosa.stft(np.pad(x, 56), n_fft=512, hop_length=160, win_length=400, window="hann", center=False)).T
    ref = np.log(stft @ reference_mel_matrix() + 0.01)
    ours = LogMelFrontend()(torch.tensor(x, dtype=torch.float32)[None])[0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_spectrogram_is_magnitude_not_power() -> None:
    # Doubling the amplitude adds log 2 to a magnitude log-mel (log 4 for power) where the band is loud.
    x = real_looking_audio(1.2)
    frontend = LogMelFrontend()
    quiet = frontend(torch.tensor(x, dtype=torch.float32)[None])[0].numpy()
    loud = frontend(torch.tensor(2 * x, dtype=torch.float32)[None])[0].numpy()
    strong = quiet > np.log(10.0)  # the 0.01 offset shifts the difference by < 1e-3 there
    assert strong.sum() > 200
    np.testing.assert_allclose((loud - quiet)[strong], np.log(2.0), atol=1e-3)  # power: log 4


@pytest.mark.parametrize(("samples", "frames", "examples"), [
    (399, 0, 0), (400, 1, 0), (15599, 95, 0), (15600, 96, 0), (16000, 98, 1), (31999, 198, 1), (32000, 198, 2),
    (160000, 998, 10), (1800 * 16000, 179998, 1800),
])
def test_frame_and_example_counts(samples: int, frames: int, examples: int) -> None:
    assert num_frames(samples) == frames
    assert num_examples(samples) == examples


def test_batched_examples_equal_each_clip_alone() -> None:
    clips = [real_looking_audio(s, seed=i) for i, s in enumerate((2.5, 1.0, 3.9))]
    frontend = LogMelFrontend()
    examples, counts = frontend.examples([torch.tensor(c, dtype=torch.float32) for c in clips])
    assert counts == [2, 1, 3]  # one per whole second
    assert examples.shape == (6, vp.NUM_FRAMES, vp.NUM_BANDS)
    chunked = frontend.clip_examples(torch.tensor(clips[2], dtype=torch.float32), chunk_seconds=1)
    np.testing.assert_allclose(chunked.numpy(), examples[3:].numpy(), atol=1e-5, rtol=0)
    start = 0
    for clip, n in zip(clips, counts):
        frames = reference_log_mel(clip)
        ref = np.stack([frames[100 * k: 100 * k + 96] for k in range(n)])  # 96-frame examples, one per second
        np.testing.assert_allclose(examples[start:start + n].numpy(), ref, atol=1e-4, rtol=0)
        start += n
