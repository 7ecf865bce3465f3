"""HSC-MAE student: per-modality MLP encoders and decoders over pooled clip features, and masking.

Inputs are per-clip vectors pooled over seconds, standardised with training-set statistics held in
buffers (so a saved model embeds raw features on its own). Masking makes the student's view:

- ``"time"`` (default): ``ratio * T_i`` (rounded half up, at most ``T_i - 1``) of a clip's valid seconds are
  left out of its pooled mean: a real partial observation, as at test time when seconds are missing.
  Dropping seconds changes every entry of the pooled vector, so here the *masked entries* are all
  ``D`` entries of each clip that lost at least one second (clips with one second lose none and do
  not count in the masked reconstruction loss).
- ``"element"``: each entry of a clip's standardised vector is set to 0 (the training mean) with
  probability ``ratio`` and the kept entries are scaled by ``1 / (1 - ratio)``, so the input's
  scale does not change between training and clean inputs. The *masked entries* are those entries.

The decoders reconstruct the clean standardised vector from the latent of the masked view.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from hscmae.config import ModelConfig
from hscmae.data import seconds_dropped
from pipeline.vocab import MODALITIES


class Dropout(nn.Dropout):
    """:class:`torch.nn.Dropout` (zero each entry with probability ``p``, scale the rest by
    ``1 / (1 - p)``) whose CPU mask compares ``torch.rand`` with ``p``.

    Same distribution, and no parameters or buffers, so checkpoints are unchanged. PyTorch's CPU
    ``bernoulli_`` draws one double at a time on one thread: 2.3 ms for a ``[512, 1024]`` mask against
    1.1 ms for ``rand``, which made dropout 12 % of a training step at the ``paper`` preset
    (``bench/bench_train.py``). Other devices (CUDA: a fused kernel) keep ``F.dropout``.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        keep = (torch.rand_like(x) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x * keep


def mlp(*, d_in: int, hidden: int, depth: int, d_out: int, dropout: float) -> nn.Sequential:
    """``depth`` blocks ``Linear -> LayerNorm -> GELU -> Dropout`` of width ``hidden``, then ``Linear``:
    ``[B, d_in] -> [B, d_out]``."""
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.LayerNorm(hidden), nn.GELU(), Dropout(dropout)]
    return nn.Sequential(*layers, nn.Linear(hidden, d_out))


@dataclass
class StudentOutput:
    """``latent[m]: [B, L]`` from the student's view; ``recon[m]: [B, D_m]`` standardised reconstruction."""

    latent: dict[str, Tensor]
    recon: dict[str, Tensor]


class HSCMAE(nn.Module):
    """Student masked autoencoder over pooled audio and visual features.

    Args:
        in_dims: feature size per modality, e.g. ``{"audio": 128, "visual": 2048}``.
        config: hidden width, depth and latent size, dropout.
    """

    def __init__(self, *, in_dims: Mapping[str, int], config: ModelConfig) -> None:
        super().__init__()
        self.in_dims = {m: int(in_dims[m]) for m in MODALITIES}
        self.config = config
        self.encoders = nn.ModuleDict({
            m: mlp(d_in=d, hidden=config.hidden, depth=config.depth, d_out=config.latent, dropout=config.dropout)
            for m, d in self.in_dims.items()
        })
        self.decoders = nn.ModuleDict({
            m: mlp(d_in=config.latent, hidden=config.hidden, depth=config.depth, d_out=d, dropout=config.dropout)
            for m, d in self.in_dims.items()
        })
        for m, d in self.in_dims.items():
            self.register_buffer(f"{m}_mean", torch.zeros(d))
            self.register_buffer(f"{m}_std", torch.ones(d))
            # Output map applied by embed(): identity unless set_output_projection() installs a CCA one.
            self.register_buffer(f"{m}_out_center", torch.zeros(config.latent))
            self.register_buffer(f"{m}_out_matrix", torch.eye(config.latent))

    def set_input_stats(self, pooled: Mapping[str, np.ndarray]) -> None:
        """Store per-dimension mean and std of training features ``pooled[m]: [N, D]``.

        Constant dimensions get std 1 (they standardise to 0 instead of dividing by zero).
        """
        for m in MODALITIES:
            x = np.asarray(pooled[m], dtype=np.float64)
            std = x.std(axis=0)
            std[std < 1e-8] = 1.0
            getattr(self, f"{m}_mean").copy_(torch.from_numpy(x.mean(axis=0)))
            getattr(self, f"{m}_std").copy_(torch.from_numpy(std))

    def standardize(self, raw: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Raw pooled features ``[B, D]`` -> standardised ``[B, D]``."""
        return {m: (raw[m] - getattr(self, f"{m}_mean")) / getattr(self, f"{m}_std") for m in MODALITIES}

    def forward_encoder(self, x: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Standardised ``x[m]: [B, D]`` -> latents ``[B, L]``."""
        return {m: self.encoders[m](x[m]) for m in MODALITIES}

    def forward_decoder(self, z: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Latents ``z[m]: [B, L]`` -> standardised reconstructions ``[B, D]``."""
        return {m: self.decoders[m](z[m]) for m in MODALITIES}

    def forward(self, x: Mapping[str, Tensor]) -> StudentOutput:
        """Encode the (masked) standardised view and reconstruct it."""
        latent = self.forward_encoder(x)
        return StudentOutput(latent=latent, recon=self.forward_decoder(latent))

    def set_output_projection(self, center: Mapping[str, Tensor] | None = None,
                              matrix: Mapping[str, Tensor] | None = None) -> None:
        """Make :meth:`embed` return ``(z - center[m]) @ matrix[m]`` (``[L]``, ``[L, L]``); None resets to identity."""
        for m in MODALITIES:
            latent = self.config.latent
            getattr(self, f"{m}_out_center").copy_(torch.zeros(latent) if center is None else center[m])
            getattr(self, f"{m}_out_matrix").copy_(torch.eye(latent) if matrix is None else matrix[m])

    def embed(self, raw: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Raw pooled clean features ``[B, D]`` -> output embeddings ``[B, L]``."""
        z = self.forward_encoder(self.standardize(raw))
        return {m: (z[m] - getattr(self, f"{m}_out_center")) @ getattr(self, f"{m}_out_matrix") for m in MODALITIES}


def mask_elements(x: Tensor, *, ratio: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Zero each entry of ``x: [B, D]`` independently with probability ``ratio``, scale the rest by ``1 / (1 - ratio)``.

    Returns the masked view ``[B, D]`` and the mask ``[B, D]`` (True = masked). Noise is drawn on the
    CPU from ``generator`` so runs repeat exactly on any device.
    """
    mask = (torch.rand(x.shape, generator=generator) < ratio).to(x.device)
    return x.masked_fill(mask, 0.0) / (1.0 - ratio), mask


def mask_seconds(seq: Tensor, valid: Tensor, *, ratio: float,
                 generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Leave :func:`hscmae.data.seconds_dropped` random valid seconds out of each clip's mean.

    Args:
        seq: ``[B, T, D]`` raw features; valid: ``[B, T]`` bool.
    Returns:
        pooled raw mean of the kept seconds ``[B, D]``, and ``[B]`` bool: True where a second was left out.
    """
    n_valid = valid.sum(dim=1)
    count = seconds_dropped(n_valid, ratio)
    noise = torch.rand(valid.shape, generator=generator).to(seq.device).masked_fill(~valid, float("inf"))
    rank = noise.argsort(dim=1).argsort(dim=1)
    keep = valid & (rank >= count.unsqueeze(1))
    weights = keep.to(seq.dtype)
    pooled = torch.einsum("btd,bt->bd", seq, weights) / weights.sum(dim=1, keepdim=True)
    return pooled, count > 0
