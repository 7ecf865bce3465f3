"""HSC-MAE: the student masked autoencoder over pooled clip features, and its objective.

Laid out as facebookresearch/mae's ``models_mae.py``: :meth:`HSCMAE.forward_view` masks,
:meth:`HSCMAE.forward_encoder` and :meth:`HSCMAE.forward_decoder` map, and :meth:`HSCMAE.forward_loss`
returns the named loss terms of one batch (the levels of :mod:`hscmae.losses`). Training
(:mod:`hscmae.engine`) sums them; inference (:mod:`hscmae.inference`) calls :meth:`HSCMAE.embed`.

Inputs are per-clip vectors pooled over seconds, standardised with training-set statistics held in
buffers (so a saved model embeds raw features on its own). Masking makes the student's view:

- ``"time"`` (what ``"auto"`` resolves to on per-second features): ``ratio * T_i`` (rounded half up, at most
  ``T_i - 1``: :func:`seconds_dropped`) of a clip's valid seconds are left out of its pooled mean: a real
  partial observation, as at test time when seconds are missing. Dropping seconds changes every entry of
  the pooled vector, so here the *masked entries* are all ``D`` entries of each clip that lost at least one
  second (clips with one second lose none and do not count in the masked reconstruction loss).
- ``"element"`` (what ``"auto"`` resolves to on clip-level features, one vector per clip, where no second
  can be dropped; :meth:`hscmae.config.MethodConfig.for_input`): each entry of a clip's standardised
  vector is set to 0 (the training mean) with probability ``ratio`` and the kept entries are scaled by
  ``1 / (1 - ratio)``, so the input's scale does not change between training and clean inputs. The
  *masked entries* are those entries.

The decoders reconstruct the clean standardised vector from the latent of the masked view. The EMA
teacher (a copy of the encoders, updated by :mod:`hscmae.schedules`) sees clean inputs only; its
canonical space (:func:`teacher_space`) supplies the soft positives and the distillation targets.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from hscmae import losses
from hscmae.cca import CanonicalMap, canonical_space
from hscmae.config import LossConfig, ModelConfig
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
            # Output map applied by embed(): identity unless set_output_map() installs a CCA one.
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

    def forward_view(self, batch: Mapping[str, Tensor], clean: dict[str, Tensor], *, ratio: float, mode: str,
                     generator: torch.Generator) -> tuple[dict[str, Tensor], dict[str, Tensor | None]]:
        """The student's masked standardised view ``[B, D]`` and its reconstruction mask ``[B, D]`` (True: masked).

        Args:
            batch: raw pooled ``batch[m]: [B, D]``; in ``"time"`` mode also ``m_seq: [B, T, D]``, ``m_valid: [B, T]``.
            clean: ``self.standardize(batch)``, returned as is (masks ``None``) when ``ratio`` is 0.
            ratio, mode: ``LossConfig.mask_ratio`` and ``mask_mode`` (``"time"`` or ``"element"``: ``"auto"`` is
                resolved for the data first); noise comes from ``generator``.
        """
        if ratio == 0:
            return clean, {m: None for m in MODALITIES}
        if mode not in ("time", "element"):
            raise ValueError(f"mask_mode {mode!r}: resolve it for the data first (MethodConfig.for_input)")
        view, mask = {}, {}
        for m in MODALITIES:
            if mode == "element":
                view[m], mask[m] = mask_elements(clean[m], ratio=ratio, generator=generator)
            else:
                pooled, lost = mask_seconds(batch[f"{m}_seq"], batch[f"{m}_valid"], ratio=ratio, generator=generator)
                view[m] = self.standardize({**batch, m: pooled})[m]
                mask[m] = lost.unsqueeze(1).expand_as(view[m])
        return view, mask

    def forward_loss(self, batch: Mapping[str, Tensor], *, config: LossConfig, teacher: nn.ModuleDict | None,
                     generator: torch.Generator) -> dict[str, Tensor]:
        """Each active loss term (``config.active``) on one batch of raw pooled features ``batch[m]: [B, D]``.

        Deep CCA sees the student's latents of the clean inputs; the local InfoNCE, reconstruction and
        distillation terms see the latents of the masked view (:meth:`forward_view`); the ``teacher``
        (EMA encoders, needed when ``config.needs_teacher``) sees clean inputs, and its canonical space
        supplies the soft positives and the distillation targets. Masking noise comes from ``generator``.
        """
        cfg = config
        clean = self.standardize(batch)
        view, mask = self.forward_view(batch, clean, ratio=cfg.mask_ratio, mode=cfg.mask_mode, generator=generator)
        latent = self.forward_encoder(view)
        canonical, cmap = teacher_space(teacher, clean, ridge=cfg.cca_ridge) if teacher is not None else (None, None)
        out: dict[str, Tensor] = {}
        if cfg.use_global:
            # Deep CCA on the clean inputs (the student's view is clean already when nothing is masked).
            z = latent if view is clean else self.forward_encoder(clean)
            out["global"] = losses.cca_loss(z["audio"], z["visual"], k=cfg.cca_k, ridge=cfg.cca_ridge)
        if cfg.use_local:
            targets = (losses.soft_targets(canonical, topk=cfg.topk, temperature=cfg.teacher_temperature,
                                           self_weight=cfg.self_weight)
                       if cfg.topk > 0 else torch.eye(len(batch["audio"]), device=batch["audio"].device))
            out["local"] = losses.multi_positive_infonce(latent["audio"], latent["visual"], targets,
                                                         temperature=cfg.nce_temperature)
        if cfg.use_recon:
            recon = self.forward_decoder(latent)
            terms = [losses.reconstruction_loss(recon[m], clean[m], mask[m] if cfg.recon_target == "masked" else None)
                     for m in MODALITIES]
            out["recon"] = sum(terms) / len(terms)
        if cfg.use_distill:
            out["distill"] = losses.distill_loss(cmap(latent), canonical)
        return out

    @property
    def output_map(self) -> CanonicalMap:
        """The map :meth:`embed` applies to the latents: identity unless :meth:`set_output_map` installed one."""
        return CanonicalMap({m: getattr(self, f"{m}_out_center") for m in MODALITIES},
                            {m: getattr(self, f"{m}_out_matrix") for m in MODALITIES})

    def set_output_map(self, cmap: CanonicalMap | None) -> None:
        """Make :meth:`embed` return ``cmap(z)`` (centres ``[L]``, matrices ``[L, L]``); ``None`` resets to identity."""
        for m in MODALITIES:
            latent = self.config.latent
            getattr(self, f"{m}_out_center").copy_(torch.zeros(latent) if cmap is None else cmap.mean[m])
            getattr(self, f"{m}_out_matrix").copy_(torch.eye(latent) if cmap is None else cmap.matrix[m])

    def embed(self, raw: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Raw pooled clean features ``[B, D]`` -> output embeddings ``[B, L]``."""
        return self.output_map(self.forward_encoder(self.standardize(raw)))


@torch.no_grad()
def teacher_space(teacher: nn.ModuleDict, clean: Mapping[str, Tensor], *,
                  ridge: float) -> tuple[dict[str, Tensor], CanonicalMap]:
    """The EMA teacher's CCA path: its latents of the clean standardised batch ``clean[m]: [B, D]``, mapped by a
    linear CCA fitted on them into its canonical space (``[B, K]`` per modality), and that map."""
    latent = {m: teacher[m](clean[m]) for m in MODALITIES}
    return canonical_space(latent, ridge=ridge)


def mask_elements(x: Tensor, *, ratio: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Zero each entry of ``x: [B, D]`` independently with probability ``ratio``, scale the rest by ``1 / (1 - ratio)``.

    Returns the masked view ``[B, D]`` and the mask ``[B, D]`` (True = masked). Noise is drawn on the
    CPU from ``generator`` so runs repeat exactly on any device.
    """
    mask = (torch.rand(x.shape, generator=generator) < ratio).to(x.device)
    return x.masked_fill(mask, 0.0) / (1.0 - ratio), mask


def mask_seconds(seq: Tensor, valid: Tensor, *, ratio: float,
                 generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Leave :func:`seconds_dropped` random valid seconds out of each clip's mean.

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


def seconds_dropped(n_valid, ratio: float):
    """How many of a clip's ``n_valid`` seconds go at ``ratio``: ``ratio * n`` rounded half up, at most ``n - 1``.

    ``n_valid``: ``[N]`` numpy array or torch tensor (training masks and test-time dropping,
    :func:`hscmae.evaluate.drop_seconds`, share this rule); returns the same kind, as floats.
    """
    return ((2 * ratio * n_valid + 1) // 2).clip(max=n_valid - 1)
