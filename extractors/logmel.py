"""VGGish log-mel frontend in torch: waveform batches to ``[B, frames, 64]`` and to 0.96 s examples.

Matches the published recipe (``mel_features.log_mel_spectrogram``):

* STFT **magnitude** (not power) of 400-sample periodic-Hann frames every 160 samples, each
  zero-padded to a 512-point FFT, with no centring (frames start at sample 0);
* the recipe's own mel matrix: HTK mel scale, triangles that are linear **in mel** (not in Hz,
  as in librosa/torchaudio filter banks), no area normalisation, DC bin zeroed;
* ``log(mel + 0.01)``; examples of 96 frames starting every 100 frames (one per second of the clip,
  this project's grid: see ``vggish_params.GRID_HOP_SECONDS``), incomplete tails dropped.
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
    """0.96 s examples on the one-second grid in ``num_samples`` of 16 kHz audio: one per whole second.

    Example ``k`` spans frames ``[100k, 100k + 96)``, which fit in the STFT frames of ``k + 1`` whole
    seconds, so the count of whole seconds is also the count of examples that fit.
    """
    return num_samples // vp.SAMPLE_RATE


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
        return self._log_mel(F.pad(waveform.float(), (self.pad, self.pad)))

    def _log_mel(self, padded: torch.Tensor) -> torch.Tensor:
        magnitude = self.spectrogram(padded).transpose(1, 2)  # [B, frames, 257]
        return torch.log(magnitude @ self.mel + vp.LOG_OFFSET)

    def clip_examples(self, waveform: torch.Tensor, chunk_seconds: int = 60) -> torch.Tensor:
        """One clip ``[S]`` -> its examples on the one-second grid ``[num_examples(S), 96, 64]``.

        Computed ``chunk_seconds`` at a time from just the samples each chunk needs, so memory
        does not grow with the clip's length; equal to :meth:`forward` over the whole clip.
        """
        count, length = num_examples(int(waveform.shape[0])), int(waveform.shape[0])
        span = (vp.EXAMPLE_WINDOW_FRAMES - 1) * vp.STFT_HOP_LENGTH_SAMPLES + vp.FFT_LENGTH  # padded samples of one example
        parts = [torch.empty(0, vp.EXAMPLE_WINDOW_FRAMES, vp.NUM_BANDS, device=waveform.device)]
        for first_second in range(0, count, chunk_seconds):
            seconds = min(chunk_seconds, count - first_second)
            # frame i starts at padded sample 160 i, i.e. sample 160 i - pad of the clip
            first = first_second * vp.SAMPLE_RATE - self.pad
            last = first + (seconds - 1) * vp.SAMPLE_RATE + span
            piece = waveform[max(0, first):min(length, last)].float()
            piece = F.pad(piece, (max(0, -first), max(0, last - length)))
            log_mel = self._log_mel(piece[None])[0]  # [frames, 64]
            windows = log_mel.unfold(0, vp.EXAMPLE_WINDOW_FRAMES, vp.GRID_HOP_FRAMES)  # [seconds, 64, 96]
            parts.append(windows[:seconds].transpose(1, 2))
        return torch.cat(parts)

    def examples(self, waveforms: list[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        """Clips of any lengths ``[S_i]`` -> examples ``[sum E_i, 96, 64]`` (one per whole second) and the counts ``E_i``."""
        parts = [self.clip_examples(w) for w in waveforms]
        return torch.cat(parts), [len(p) for p in parts]
