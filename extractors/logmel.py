"""VGGish log-mel frontend in torch: waveform batches to ``[B, frames, 64]`` and to 0.96 s examples.

Matches the published recipe (``mel_features.log_mel_spectrogram``):

* STFT **magnitude** (not power) of 400-sample periodic-Hann frames every 160 samples, each
  zero-padded to a 512-point FFT, with no centring (frames start at sample 0);
* the recipe's own mel matrix: HTK mel scale, triangles that are linear **in mel** (not in Hz,
  as in librosa/torchaudio filter banks), no area normalisation, DC bin zeroed;
* ``log(mel + 0.01)``; non-overlapping examples of 96 frames, incomplete tails dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

from extractors import vggish_params as vp


def hertz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """HTK mel scale, as the recipe defines it."""
    return vp.MEL_HIGH_FREQUENCY_Q * torch.log1p(hz / vp.MEL_BREAK_FREQUENCY_HERTZ)


def mel_matrix(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The recipe's spectrogram-to-mel matrix: ``[257, 64]``; ``mel = magnitude @ matrix``."""
    bins_mel = hertz_to_mel(torch.linspace(0.0, vp.SAMPLE_RATE / 2, vp.NUM_SPECTROGRAM_BINS, dtype=torch.float64))
    edges = torch.linspace(
        float(hertz_to_mel(torch.tensor(float(vp.MEL_MIN_HZ), dtype=torch.float64))),
        float(hertz_to_mel(torch.tensor(float(vp.MEL_MAX_HZ), dtype=torch.float64))),
        vp.NUM_MEL_BINS + 2, dtype=torch.float64,
    )
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    matrix = torch.clamp(torch.minimum(rising, falling), min=0.0)
    matrix[0, :] = 0.0  # HTK excludes the DC bin.
    return matrix.to(dtype)


def num_frames(num_samples: int) -> int:
    """STFT frames the recipe gets from ``num_samples`` (no padding)."""
    if num_samples < vp.STFT_WINDOW_LENGTH_SAMPLES:
        return 0
    return 1 + (num_samples - vp.STFT_WINDOW_LENGTH_SAMPLES) // vp.STFT_HOP_LENGTH_SAMPLES


def num_examples(num_samples: int) -> int:
    """Complete 0.96 s examples in ``num_samples`` of 16 kHz audio."""
    frames = num_frames(num_samples)
    if frames < vp.EXAMPLE_WINDOW_FRAMES:
        return 0
    return 1 + (frames - vp.EXAMPLE_WINDOW_FRAMES) // vp.EXAMPLE_HOP_FRAMES


class LogMelFrontend(nn.Module):
    """Waveforms ``[B, S]`` (16 kHz mono float) to log-mel ``[B, frames, 64]``; runs on any device."""

    def __init__(self) -> None:
        super().__init__()
        # torch centres the 400-sample window inside each 512-sample FFT frame; padding the
        # signal by the same amount on both sides makes frame i start at sample i * 160,
        # exactly like the recipe's frames (zero-padding the window at either end leaves the
        # magnitude unchanged).
        self.pad = (vp.FFT_LENGTH - vp.STFT_WINDOW_LENGTH_SAMPLES) // 2
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=vp.FFT_LENGTH,
            win_length=vp.STFT_WINDOW_LENGTH_SAMPLES,
            hop_length=vp.STFT_HOP_LENGTH_SAMPLES,
            window_fn=torch.hann_window,  # periodic by default, as in the recipe
            power=1.0,  # magnitude
            center=False,
        )
        self.register_buffer("mel", mel_matrix(torch.float32), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """``waveform: [B, S]`` -> log-mel ``[B, num_frames(S), 64]`` (float32)."""
        padded = F.pad(waveform.float(), (self.pad, self.pad))
        magnitude = self.spectrogram(padded).transpose(1, 2)  # [B, frames, 257]
        return torch.log(magnitude @ self.mel + vp.LOG_OFFSET)

    def examples(self, waveforms: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        """Clips of any lengths ``[S_i]`` -> examples ``[sum E_i, 96, 64]`` and the counts ``E_i``.

        Clips are zero-padded to a common length for one batched STFT; the padded tail only
        adds frames past each clip's own complete examples, which are dropped.
        """
        counts = [num_examples(int(w.shape[0])) for w in waveforms]
        longest = max(int(w.shape[0]) for w in waveforms)
        batch = torch.stack([F.pad(w, (0, longest - int(w.shape[0]))) for w in waveforms])
        log_mel = self.forward(batch)
        windows = log_mel.unfold(1, vp.EXAMPLE_WINDOW_FRAMES, vp.EXAMPLE_HOP_FRAMES)  # [B, E, 64, 96]
        parts = [windows[i, :n].transpose(1, 2) for i, n in enumerate(counts)]
        return torch.cat(parts), counts
